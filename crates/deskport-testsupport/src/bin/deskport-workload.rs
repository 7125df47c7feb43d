//! The heavy RDP workload of SPEC §7 on an X display (see `deskport_testsupport::workload`):
//!
//! ```text
//! deskport-workload --display :N [--frames 300] [--fps 30] [--log FILE] [--wait]
//! ```
//!
//! Draws frame 0, then (after a line on stdin with `--wait`) frames 1 to N, logging
//! `frame N drawn at T` (CLOCK_MONOTONIC ns) for each to FILE.

fn main() -> anyhow::Result<()> {
    let options = deskport_testsupport::workload::Options::parse(std::env::args().skip(1))?;
    deskport_testsupport::workload::run(&options)
}
