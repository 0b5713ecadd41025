/* The functions the benchmark calls, in assembly so their first instruction is exact. */
    .text
    .globl f_push, f_nop5, f_lea, f_idle
    .type f_push, @function
f_push:                     /* push %rbp first: the kernel emulates it */
    push %rbp
    mov %rsp, %rbp
    lea 1(%rdi), %rax
    pop %rbp
    ret
    .size f_push, .-f_push

    .p2align 4
    .type f_nop5, @function
f_nop5:                     /* a 5-byte nop first: the kernel's optimised case */
    nopl 0x0(%rax,%rax,1)
    lea 1(%rdi), %rax
    ret
    .size f_nop5, .-f_nop5

    .p2align 4
    .type f_lea, @function
f_lea:                      /* lea first: the kernel must single-step it out of line */
    lea 1(%rdi), %rax
    ret
    .size f_lea, .-f_lea

    .p2align 4
    .type f_idle, @function
f_idle:                     /* called in the "idle" scenario; never probed */
    push %rbp
    mov %rsp, %rbp
    lea 1(%rdi), %rax
    pop %rbp
    ret
    .size f_idle, .-f_idle

/* miss_count distinct functions, each `push %rbp` first, and a table of them. */
    .altmacro
    .macro missfn n
    .p2align 4
    .globl miss_\n
    .type miss_\n, @function
miss_\n:
    push %rbp
    mov %rsp, %rbp
    lea 1(%rdi), %rax
    pop %rbp
    ret
    .size miss_\n, .-miss_\n
    .endm
    .macro missptr n
    .quad miss_\n
    .endm

    .set i, 0
    .rept 20000
    missfn %i
    .set i, i+1
    .endr

    .section .data.rel.ro,"aw"
    .globl miss_table, miss_count
    .p2align 3
miss_table:
    .set i, 0
    .rept 20000
    missptr %i
    .set i, i+1
    .endr
    .section .rodata
    .p2align 3
miss_count:
    .quad 20000
    .section .note.GNU-stack,"",@progbits
