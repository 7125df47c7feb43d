//! Test data for files, and mounts.

use std::path::Path;

/// `n` bytes of an xorshift sequence from `seed` (different seeds, different bytes): data that
/// does not repeat within a page, so a misplaced or dropped block shows.
pub fn pattern(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Whether something is mounted at `path` (in this process's mount namespace).
pub fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*path.to_string_lossy()))
}
