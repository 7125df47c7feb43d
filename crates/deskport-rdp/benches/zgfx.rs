//! ZGFX on the graphics pipeline (MS-RDPEGFX 3.1.9.1): bytes and encoder CPU with
//! `CompressionMode::Never` and `Auto`, on the heavy workload as a session sees it — the
//! `deskport-workload` scene drawn on an Xvfb at 30 frames/s, captured with DAMAGE every
//! 33 ms, diffed as a session does, and each frame's ops encoded by two `GfxEncoder`s, one per
//! mode (the same frames and ops for both; the loop goes at the pace both allow, so frames
//! accumulate more damage when it falls behind). The `Auto` stream is decoded by ironrdp's
//! client (untimed) and must show the still screen at the end; frames whose picture differs
//! from their capture on the way are counted (a capture can race the drawing, and DAMAGE
//! then reports the area again for the next frame).
//!
//!   cargo bench -p deskport-rdp --bench zgfx        (HEAVY_BENCH_FRAMES=90 for a short run)
//!
//! Measured once (2 shared cores, before motion detection, so scrolls and moves went as
//! pixels): 300 workload frames, 61 sent; Never 20.9 MB (342 kB/frame), encoder CPU 2.9 ms a
//! frame; Auto 15.5 MB (254 kB/frame, 0.74x), 102 ms a frame (35x) — ironrdp-graphics'
//! compressor goes at about 3 MB/s, far too slow for 30 frames/s: the server uses Never.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use deskport_desktop::x11::{Capture, X11Desktop};
use deskport_desktop::Desktop as _;
use deskport_rdp::channels::gfx::{processor, GfxEvent};
use deskport_rdp::encode::diff::Diff;
use deskport_rdp::encode::gfx::{GfxChannel, GfxEncoder};
use deskport_rdp::encode::ScreenEncoder;
use deskport_testsupport::{workload, Xvfb};
use ironrdp_core::{decode_cursor, ReadCursor};
use ironrdp_dvc::pdu::{DrdynvcDataPdu, DrdynvcServerPdu};
use ironrdp_dvc::DvcProcessor as _;
use ironrdp_egfx::client::{GraphicsPipelineClient, GraphicsPipelineHandler};
use ironrdp_graphics::zgfx::CompressionMode;
use ironrdp_pdu::mcs::SendDataIndication;
use ironrdp_pdu::x224::X224;

const CHANNEL: GfxChannel = GfxChannel {
    dvc_id: 1,
    mcs_id: 1004,
    user_id: 1007,
};

/// This thread's CPU time (from the kernel's scheduler statistics).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    Duration::from_nanos(stat.split_whitespace().next().unwrap().parse().unwrap())
}

struct Quiet;
impl GraphicsPipelineHandler for Quiet {}

/// An encoder for `mode` whose client-side peer (ironrdp's decoder) has confirmed the
/// capabilities, and that peer.
fn pair(mode: CompressionMode) -> (GfxEncoder, GraphicsPipelineClient) {
    let (mut server, mut events) = processor(mode);
    let mut client = GraphicsPipelineClient::new(Box::new(Quiet), None);
    server.start(CHANNEL.dvc_id).unwrap();
    for msg in client.start(CHANNEL.dvc_id).unwrap() {
        let bytes = ironrdp_core::encode_vec(msg.as_ref()).unwrap();
        for reply in server.process(CHANNEL.dvc_id, &bytes).unwrap() {
            let bytes = ironrdp_core::encode_vec(reply.as_ref()).unwrap();
            client.process(CHANNEL.dvc_id, &bytes).unwrap();
        }
    }
    let Ok(GfxEvent::Ready { caps, link, .. }) = events.try_recv() else {
        panic!("not ready");
    };
    // (The server processor goes: acknowledgements are not needed here.)
    (GfxEncoder::new(CHANNEL, caps, link), client)
}

/// The graphics channel's messages in what a session wrote.
fn messages(out: &[u8]) -> Vec<Vec<u8>> {
    let mut cursor = ReadCursor::new(out);
    let (mut done, mut partial) = (Vec::new(), None::<(usize, Vec<u8>)>);
    while !cursor.is_empty() {
        let pdu: X224<SendDataIndication<'_>> = decode_cursor(&mut cursor).unwrap();
        let dvc: DrdynvcServerPdu = ironrdp_core::decode(&pdu.0.user_data[8..]).unwrap();
        match dvc {
            DrdynvcServerPdu::Data(DrdynvcDataPdu::DataFirst(first)) => {
                partial = Some((first.length() as usize, first.into_data()));
            }
            DrdynvcServerPdu::Data(DrdynvcDataPdu::Data(d)) => match partial.as_mut() {
                Some((_, buf)) => buf.extend_from_slice(d.data()),
                None => done.push(d.into_data()),
            },
            other => panic!("{other:?}"),
        }
        if partial.as_ref().is_some_and(|(len, buf)| buf.len() == *len) {
            done.extend(partial.take().map(|(_, buf)| buf));
        }
    }
    done
}

fn main() {
    let frames: u16 = std::env::var("HEAVY_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let (w, h) = workload::SCREEN;
    let xvfb = Xvfb::start(w, h);
    let desktop = X11Desktop::connect(xvfb.display(), Capture::Damage).unwrap();
    let dir = deskport_testsupport::data_dir();
    let options = workload::Options {
        display: xvfb.display().to_owned(),
        frames,
        fps: 30,
        log: dir.path().join("workload.log"),
        wait_for_start: false,
    };
    let worker = std::thread::spawn(move || workload::run(&options));

    let (mut never, _) = pair(CompressionMode::Never);
    let (mut auto, mut client) = pair(CompressionMode::Auto);
    let mut diff = Diff::new();
    let kinds = never.op_kinds();
    let mut screen = vec![0u8; usize::from(w) * usize::from(h) * 4];
    let (mut cpu_never, mut cpu_auto) = (Duration::ZERO, Duration::ZERO);
    let (mut bytes_never, mut bytes_auto) = (0usize, 0usize);
    let mut sent = 0u32;
    // Frames whose decoded picture differs from the capture (the capture races the drawing:
    // the next frame puts it right), and whether the last one matched.
    let (mut mismatched, mut last_shown, mut settled) = (0u32, false, false);
    let mut generation = None;
    let tick = Duration::from_millis(33);
    let mut next = Instant::now();
    loop {
        let finished = worker.is_finished();
        let frame = desktop.capture().unwrap();
        let damage = generation.and_then(|g| desktop.changes_since(g));
        generation = Some(frame.generation);
        let ops = diff.ops(&frame, damage.as_deref(), kinds);
        if !ops.is_empty() {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let t = cpu();
            never.encode(&frame, &ops, &mut a).unwrap();
            let t2 = cpu();
            auto.encode(&frame, &ops, &mut b).unwrap();
            cpu_auto += cpu() - t2;
            cpu_never += t2 - t;
            bytes_never += a.len();
            bytes_auto += b.len();
            sent += 1;
            // The Auto stream decodes to the frame.
            for message in messages(&b) {
                client.process(CHANNEL.dvc_id, &message).unwrap();
            }
            for update in client.drain_output() {
                let r = update.region;
                let row = usize::from(r.right - r.left) * 4;
                for (i, y) in (r.top..r.bottom).enumerate() {
                    let at = (usize::from(y) * usize::from(w) + usize::from(r.left)) * 4;
                    screen[at..at + row].copy_from_slice(&update.data[i * row..(i + 1) * row]);
                }
            }
            let shown = screen
                .chunks_exact(4)
                .zip(frame.data.chunks_exact(4))
                .all(|(c, f)| c[..3] == [f[2], f[1], f[0]]);
            if !shown {
                mismatched += 1;
            }
            last_shown = shown;
        }
        if finished && settled {
            break;
        }
        // One more frame once the workload is over: the still screen, which must be shown.
        settled = finished;
        next += tick;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    worker.join().unwrap().unwrap();
    assert!(last_shown, "the Auto stream decodes to the still screen");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("ZGFX on the heavy workload ({frames} workload frames, {sent} frames sent, {w}x{h}):");
    for (mode, bytes, time) in [
        ("never", bytes_never, cpu_never),
        ("auto", bytes_auto, cpu_auto),
    ] {
        println!(
            "  {mode:>5}: {:>10} bytes ({:.1} kB/frame), encoder CPU {:.0} ms ({:.2} ms/frame)",
            bytes,
            bytes as f64 / f64::from(sent.max(1)) / 1000.0,
            ms(time),
            ms(time) / f64::from(sent.max(1))
        );
        println!("BENCH|zgfx-{mode}-bytes|{bytes}");
        println!("BENCH|zgfx-{mode}-cpu-ms|{:.0}", ms(time));
    }
    println!(
        "  auto/never: bytes {:.3}, CPU {:.2}x",
        bytes_auto as f64 / bytes_never.max(1) as f64,
        cpu_auto.as_secs_f64() / cpu_never.as_secs_f64().max(1e-9)
    );
    println!("  frames that differed from their capture when decoded: {mismatched} of {sent}");
    let stats = |e: &GfxEncoder| e.stats();
    println!("  encoder totals: {:?}", stats(&auto));
}
