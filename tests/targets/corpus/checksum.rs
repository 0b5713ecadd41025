//! Corpus target (rustc -O, stripped): deterministic work through std (collections,
//! formatting, sorting, hashing). Each line on stdin is a number of rounds to run; at end
//! of input it prints the checksum of all of them.
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

fn round_work(r: u64) -> u64 {
    let mut v: Vec<u64> = (0..512).map(|i| (i * 2_654_435_761) ^ r).collect();
    v.sort_unstable();
    let mut m: BTreeMap<u64, String> = BTreeMap::new();
    let mut h: HashMap<String, u64> = HashMap::new();
    for (i, x) in v.iter().enumerate().step_by(16) {
        let s = format!("{i}:{x:x}");
        m.insert(*x, s.clone());
        h.insert(s, *x);
    }
    let mut s = std::hash::DefaultHasher::new();
    for (k, v) in &m {
        k.hash(&mut s);
        v.hash(&mut s);
        h[v].hash(&mut s);
    }
    s.finish()
}

fn main() {
    let mut h = 0u64;
    let mut r = 0u64;
    for line in std::io::stdin().lines() {
        let n: u64 = line.unwrap().trim().parse().unwrap_or(0);
        for _ in 0..n {
            h = (h ^ round_work(r)).wrapping_mul(1_099_511_628_211);
            r += 1;
        }
    }
    println!("checksum {h:x}");
}
