//! Test fixtures shared by every deskport test: the real parts a test needs, started and
//! cleaned up by guards.
//!
//! - [`data_dir`] / [`artifact_dir`]: a fresh temporary data directory, and a kept directory
//!   for screenshots and logs a human should look at after the run.
//! - [`free_port`] / [`listener`]: loopback ports.
//! - [`ProcessGuard`]: a child process (and its process group) that is stopped, by PID, when
//!   the guard drops — also when the test panics.
//! - [`Xvfb`]: a private X display at a size of the test's choosing.
//! - [`Netns`]: a network namespace deleted on drop, and [`veth`] to wire two of them.
//! - [`Postgres`]: a PostgreSQL cluster of the test's own on a loopback port, stopped and
//!   removed on drop.
//! - [`screenshot`] and the pixel helpers in [`image_util`].
//! - [`servers`]: FreeRDP's shadow server and xrdp with Xvnc sessions, to compare with.
//! - [`workload`] (the `deskport-workload` program), [`framecode`] and [`watch`]: the RDP
//!   benchmark's heavy workload, the frame number drawn into each of its frames, and a watcher
//!   that tells which frame a client's display shows and since when.
//!
//! This crate is only ever a dev-dependency. It panics with a clear message where a test cannot
//! go on (a missing program, no root for namespaces): a test that silently skips is a test that
//! cannot fail.

// Fixtures fail the test that uses them; panicking with context is the reporting channel here.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod browser;
mod dirs;
pub mod files;
pub mod framecode;
pub mod image_util;
mod net;
mod netns;
mod postgres;
mod process;
pub mod pulse;
pub mod servers;
mod wait;
pub mod watch;
pub mod workload;
mod xvfb;

pub use dirs::{artifact_dir, data_dir};
pub use net::{connect_from, free_port, listener};
pub use netns::{veth, Netns};
pub use postgres::Postgres;
pub use process::ProcessGuard;
pub use wait::wait_until;
pub use xvfb::{
    cursor_image, screenshot, x_connect, Animation, CursorImage, InputProbe, ProbeEvent, Xvfb,
};

/// Standard base64 (PEM bodies, data: URLs), padding optional; a character outside the
/// alphabet is an error.
pub fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .ok_or_else(|| anyhow::anyhow!("{:?} is not base64", char::from(c)))?;
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

/// Panics with a clear message unless `program` is on `PATH`. The README's test command
/// installs every program the tests use, so a miss here means that list is incomplete.
pub fn require_program(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "this test needs `{program}`, which is not on PATH; scripts/test installs it"
    );
}

/// Panics with a clear message unless the test runs as root (network namespaces, nftables).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces / nftables); run it the way scripts/test does"
    );
}
