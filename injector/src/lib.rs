//! The injector: everything xcover does to a running process from the outside.
//!
//! It stops every thread of a target with ptrace, reads and writes its memory, makes remote
//! system calls and remote function calls in a stopped thread, and loads the agent (the
//! `payload/agent` shared object) into the target with its own ELF loader.
#![deny(missing_docs)]
