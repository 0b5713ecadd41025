//! A Rust program for the interceptor: panics caught with `catch_unwind` through hooked frames
//! (with drops on the way), trait objects, iterators and closures, a few threads, formatting.
//!
//! Protocol: prints "ready", then for every line on stdin runs one round of deterministic
//! work, prints its transcript and "round N end"; at end of input prints "bye rounds=N",
//! exits 0. Built by the tests with `rustc -O -g --edition 2024`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, Write};
use std::panic;
use std::sync::mpsc;

thread_local! {
    static DROPS: Cell<u64> = const { Cell::new(0) };
}

struct Guard(u64);
impl Drop for Guard {
    #[inline(never)]
    fn drop(&mut self) {
        DROPS.with(|d| d.set(d.get() * 3 + self.0));
    }
}

#[derive(Debug)]
struct Oops {
    depth: u32,
    value: u64,
}

#[inline(never)]
fn deep(d: u32, v: u64) -> u64 {
    let _g = Guard(d as u64 + 1);
    if d == 0 {
        match v % 4 {
            0 => panic!("boom {v}"),
            1 => panic::panic_any(Oops { depth: d, value: v }),
            2 => {
                let xs: Vec<u64> = vec![1, 2, 3];
                let i = std::hint::black_box(v as usize + 7);
                return xs[i]; // an index out of bounds panics
            }
            _ => return v * 3,
        }
    }
    std::hint::black_box(deep(d - 1, v + d as u64)) ^ d as u64
}

#[inline(never)]
fn catch(v: u64) -> String {
    match panic::catch_unwind(|| deep(6, v)) {
        Ok(x) => format!("ok {x}"),
        Err(p) => {
            if let Some(s) = p.downcast_ref::<String>() {
                format!("str {s}")
            } else if let Some(o) = p.downcast_ref::<Oops>() {
                format!("oops {} {}", o.depth, o.value)
            } else if let Some(s) = p.downcast_ref::<&str>() {
                format!("static {s}")
            } else {
                "other".to_string()
            }
        }
    }
}

trait Shape: Send {
    fn area(&self) -> f64;
    fn name(&self) -> String;
}
struct Circle(f64);
struct Square(f64);
struct Poly {
    sides: u32,
    len: f64,
}
impl Shape for Circle {
    #[inline(never)]
    fn area(&self) -> f64 {
        3.0 * self.0 * self.0
    }
    fn name(&self) -> String {
        format!("circle({:.2})", self.0)
    }
}
impl Shape for Square {
    #[inline(never)]
    fn area(&self) -> f64 {
        self.0 * self.0
    }
    fn name(&self) -> String {
        format!("square({:.1})", self.0)
    }
}
impl Shape for Poly {
    #[inline(never)]
    fn area(&self) -> f64 {
        self.sides as f64 * self.len * self.len / 4.0
    }
    fn name(&self) -> String {
        format!("poly{}x{}", self.sides, self.len)
    }
}

#[inline(never)]
fn make_shape(k: u32) -> Box<dyn Shape> {
    match k % 3 {
        0 => Box::new(Circle(k as f64 * 0.5)),
        1 => Box::new(Square(k as f64 + 0.25)),
        _ => Box::new(Poly {
            sides: 3 + k % 5,
            len: 1.5,
        }),
    }
}

struct Point {
    x: i64,
    y: i64,
}
impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{:+}, {:+}>", self.x, self.y)
    }
}

#[inline(never)]
fn worker(id: u64, r: u64) -> u64 {
    let mut s = id;
    for i in 0..20_000u64 {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(i ^ r);
    }
    let caught = catch(id * 4 + 1);
    s ^ caught.len() as u64
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rs_called(x: u64) -> u64 {
    let mut h = x;
    for i in 0..10 {
        h = h.wrapping_mul(33).wrapping_add(i);
    }
    h
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rs_never_called(x: u64) -> u64 {
    let mut h = x ^ 0x1234;
    for i in 0..10 {
        h = h.wrapping_mul(31).wrapping_add(i);
    }
    h
}

#[inline(never)]
fn round(r: u64, out: &mut impl Write) {
    DROPS.with(|d| d.set(0));
    let caught: Vec<String> = (0..12).map(|i| catch(i + r)).collect();
    writeln!(out, "  panics: {}", caught.join(" | ")).unwrap();
    writeln!(out, "  drops: {}", DROPS.with(|d| d.get())).unwrap();

    let shapes: Vec<Box<dyn Shape>> = (0..30).map(|k| make_shape(k + r as u32)).collect();
    let total: f64 = shapes.iter().map(|s| s.area()).sum();
    let names: Vec<String> = shapes.iter().take(4).map(|s| s.name()).collect();
    writeln!(out, "  shapes: {total:.4} {names:?}").unwrap();

    let v: Vec<i64> = (1..=500).map(|x| (x * 37 + r as i64) % 101 - 50).collect();
    let pos: i64 = v.iter().filter(|&&x| x > 0).sum();
    let windows = v.windows(3).filter(|w| w[0] < w[1] && w[1] < w[2]).count();
    let chunks: Vec<i64> = v.chunks(100).map(|c| c.iter().fold(1i64, |a, &x| a.wrapping_mul(x | 1)) % 1_000_007).collect();
    let mut sorted = v.clone();
    sorted.sort_by_key(|&x| (x.abs(), x));
    sorted.dedup();
    let mut counts = BTreeMap::new();
    for x in &v {
        *counts.entry(x.rem_euclid(7)).or_insert(0u32) += 1;
    }
    let mut acc = 0i64;
    let mut step = |x: i64| {
        acc = acc.wrapping_mul(3).wrapping_add(x);
        acc
    };
    let last = v.iter().map(|&x| step(x)).last().unwrap();
    writeln!(
        out,
        "  iter: {pos} {windows} {chunks:?} {} {:?} {last}",
        sorted.len(),
        counts
    )
    .unwrap();

    let (tx, rx) = mpsc::channel();
    let results: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3u64)
            .map(|id| {
                let tx = tx.clone();
                s.spawn(move || {
                    let x = worker(id, r);
                    tx.send((id, x)).unwrap();
                    x
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(tx);
    let mut got: Vec<(u64, u64)> = rx.iter().collect();
    got.sort();
    writeln!(out, "  threads: {results:x?} {}", got.len()).unwrap();

    let p = Point {
        x: r as i64 - 3,
        y: 42,
    };
    let f = 1.0f64 / (r as f64 + 3.0);
    writeln!(
        out,
        "  fmt: {p} {f:>12.5} {f:e} {:#x} {:08b} {:?} {:>6}|{:<6}|{:^6}| {:?}",
        r * 255,
        r as u8,
        Some(f),
        "ab",
        "cd",
        "ef",
        Oops {
            depth: 1,
            value: r
        }
    )
    .unwrap();
    writeln!(out, "  marker: {}", rs_called(r)).unwrap();
}

fn main() {
    panic::set_hook(Box::new(|_| {}));
    if std::env::args().count() > 100 {
        std::process::exit(rs_never_called(1) as i32);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    let mut rounds = 0u64;
    for line in std::io::stdin().lock().lines() {
        line.unwrap();
        rounds += 1;
        writeln!(out, "round {rounds}").unwrap();
        round(rounds, &mut out);
        writeln!(out, "round {rounds} end").unwrap();
        out.flush().unwrap();
    }
    writeln!(out, "bye rounds={rounds}").unwrap();
}
