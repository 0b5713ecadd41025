//! Benchmarks of map operations and the coverage probe (being written).

fn main() {}
