//! Drawing orders and frame acknowledgement on the classic path, with the real clients. While
//! programs on the shared display draw — the RDP benchmark's workload (rectangles moving every
//! way, a text box scrolled up with CopyArea, a patch of noise sliding sideways), the screen
//! cleared to the workload's background, a terminal scrolled up line by line and down by
//! reverse index — xfreerdp (`/network:lan /bpp:32`) and rdesktop end up showing the display
//! pixel for pixel. The server's log shows the orders it sent: ScrBlts (the motion the diff
//! found) whose source and destination overlap, moving up, down and sideways, and OpaqueRects
//! to both, MultiOpaqueRects to xfreerdp only; and the frames xfreerdp acknowledged (rdesktop
//! acknowledges none: it is sent no frame markers). The same drawing with xfreerdp on the
//! graphics pipeline (`/gfx`): Surface To Surface copies, Solid Fills and planar pixels,
//! pixel for pixel too.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deskport_testsupport::workload::{self, Options};
use deskport_testsupport::{image_util, require_program, wait_until, ProcessGuard, Xvfb};
use image::RgbImage;

use crate::rdp::{
    gfx_total, log_field as field, log_total, rdesktop_args, xfreerdp, Client, RdpServer, PASSWORD,
};

/// The server's display: the workload's size.
const SIZE: (u16, u16) = workload::SCREEN;
/// Where the terminal goes (its corner locates the display on the client's screen).
const TERMINAL_AT: (u32, u32) = (40, 40);

fn server(dir: &Path) -> RdpServer {
    RdpServer::start_with(
        dir,
        &["--no-nla-only"],
        SIZE,
        &[(
            "RUST_LOG",
            "info,deskport_rdp::encode=debug,deskport_rdp::encode::bitmap=trace,\
             deskport_rdp::encode::gfx=trace",
        )],
    )
}

/// Draws on the server's display (see the module's documentation); returns the terminal, which
/// stays open and still once it has scrolled.
fn draw(server: &RdpServer, dir: &Path) -> ProcessGuard {
    require_program("xterm");
    require_program("xsetroot");
    let display = server.desktop().display().to_owned();
    workload::run(&Options {
        display: display.clone(),
        frames: 60,
        fps: 30,
        log: dir.join("workload.log"),
        wait_for_start: false,
    })
    .unwrap();
    // Everything the workload drew becomes its background colour: fills of it, in one frame,
    // in several rectangles (only where something was drawn).
    assert!(Command::new("xsetroot")
        .args(["-solid", "#1e2430"])
        .env("DISPLAY", &display)
        .status()
        .unwrap()
        .success());
    let done = dir.join("terminal-done");
    // Lines one by one (xterm scrolls with CopyArea: up), then reverse index at the top line
    // (down), slowly enough for the server to see single moves.
    let script = format!(
        "i=1; while [ $i -le 60 ]; do echo \"line $i of the terminal, scrolling up\"; \
         sleep 0.05; i=$((i+1)); done; printf '\\033[H'; \
         i=1; while [ $i -le 12 ]; do printf '\\033Mreverse index %d\\r' $i; sleep 0.05; \
         i=$((i+1)); done; touch {}; exec sleep 3600",
        done.display()
    );
    let (x, y) = TERMINAL_AT;
    let terminal = ProcessGuard::spawn(
        "xterm",
        Command::new("xterm")
            .args(["-geometry", &format!("80x24+{x}+{y}"), "-e", "sh", "-c"])
            .arg(&script)
            .env("DISPLAY", &display)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the terminal to finish scrolling",
        || done.exists().then_some(()),
    );
    terminal
}

/// Waits until `client` shows the server's display pixel for pixel (saving both screens as
/// artifacts named `name`, also when it never does).
fn shows_exactly(server: &RdpServer, client: &Xvfb, name: &str, mut running: impl FnMut() -> bool) {
    let artifacts = deskport_testsupport::artifact_dir("classic-orders");
    let save = |desktop: &RgbImage, shot: &RgbImage| {
        image_util::save_png(desktop, &artifacts.join(format!("{name}-server.png")));
        image_util::save_png(shot, &artifacts.join(format!("{name}-client.png")));
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(running(), "{name}: the client exited");
        let desktop = deskport_testsupport::screenshot(server.desktop().display()).unwrap();
        let shot = client.screenshot();
        let (tx, ty) = TERMINAL_AT;
        let needle = image::imageops::crop_imm(&desktop, tx, ty, 200, 60).to_image();
        let at = image_util::find(&shot, &needle, 0)
            .and_then(|(x, y)| Some((x.checked_sub(tx)?, y.checked_sub(ty)?)))
            .filter(|&(x, y)| {
                x + desktop.width() <= shot.width() && y + desktop.height() <= shot.height()
            });
        if let Some(at) = at {
            let differ =
                image_util::diff_fraction(&shot, at, &desktop, (0, 0), desktop.dimensions(), 0);
            if differ == 0.0 {
                save(&desktop, &shot);
                return;
            }
        }
        if Instant::now() > deadline {
            save(&desktop, &shot);
            panic!("{name}: the client does not show the server's display exactly ({at:?}); see the artifacts");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sums of three `keys` over the server's log lines that contain `what`.
fn totals(log: &str, what: &str, keys: [&str; 3]) -> (u64, u64, u64) {
    let [a, b, c] = keys.map(|k| log_total(log, what, k));
    (a, b, c)
}

/// The orders the server's log says it sent: (ScrBlt, OpaqueRect, MultiOpaqueRect).
fn orders_sent(log: &str) -> (u64, u64, u64) {
    let keys = ["scr_blt", "opaque_rect", "multi_opaque_rect"];
    totals(log, "Drawing orders sent", keys)
}

/// The bitmaps the server's log says it sent: (planar, interleaved RLE, raw).
fn bitmaps_sent(log: &str) -> (u64, u64, u64) {
    totals(log, "Bitmaps sent", ["planar", "rle", "raw"])
}

/// The copies in the server's log (trace lines named `what`: ScrBlt, SurfaceToSurface) whose
/// source and destination overlap, as the way their content moved: (dx, dy).
fn overlapping_copies(log: &str, what: &str) -> Vec<(i64, i64)> {
    let value = |line: &str, key: &str| field(line, key).map(|v| v as i64);
    let what = format!(": {what} ");
    log.lines()
        .filter(|l| l.contains(&what))
        .filter_map(|l| {
            let (x, y) = (value(l, "x")?, value(l, "y")?);
            let (w, h) = (value(l, "width")?, value(l, "height")?);
            let (dx, dy) = (x - value(l, "src_x")?, y - value(l, "src_y")?);
            (dx.abs() < w && dy.abs() < h).then_some((dx, dy))
        })
        .collect()
}

/// The server's line about the session, once the client has one.
fn session_started(server: &RdpServer) -> String {
    wait_until(Duration::from_secs(30), "the session", || {
        let log = server.log();
        let line = log.lines().find(|l| l.contains("Session started"))?;
        Some(line.to_owned())
    })
}

/// Draws (see [`draw`]) until the client `c` (called `name`) shows the display exactly, then
/// checks what both clients must have been sent: ScrBlts whose source and destination
/// overlap, for content that moved up, down and sideways (a client copying in the wrong
/// direction would show something else), and OpaqueRects. The orders sent (ScrBlt,
/// OpaqueRect, MultiOpaqueRect), and the terminal.
fn draw_and_compare(
    server: &RdpServer,
    client: &Xvfb,
    dir: &Path,
    (name, c): (&str, &mut Client),
) -> ((u64, u64, u64), ProcessGuard) {
    let terminal = draw(server, dir);
    shows_exactly(server, client, name, || c.process.try_wait().is_none());
    let log = server.log();
    let sent = orders_sent(&log);
    eprintln!("orders sent (ScrBlt, OpaqueRect, MultiOpaqueRect): {sent:?}");
    assert!(sent.0 > 0 && sent.1 > 0, "{sent:?}: {log}");
    moved_every_way(&log, "ScrBlt");
    (sent, terminal)
}

/// Asserts that the log shows copies (`what`) with overlapping source and destination for
/// content that moved up, down and sideways.
fn moved_every_way(log: &str, what: &str) {
    let moves = overlapping_copies(log, what);
    let up = moves.iter().filter(|m| m.1 < 0).count();
    let down = moves.iter().filter(|m| m.1 > 0).count();
    let sideways = moves.iter().filter(|m| m.0 != 0).count();
    eprintln!("overlapping {what}s: {up} up, {down} down, {sideways} sideways");
    assert!(up > 0 && down > 0 && sideways > 0, "{what}: {moves:?}");
}

#[test]
fn xfreerdp_draws_orders_and_acknowledges_frames() {
    let dir = deskport_testsupport::data_dir();
    let server = server(dir.path());
    let client = Xvfb::start(1400, 900);
    let mut c = xfreerdp(
        &client,
        &server,
        "alice",
        PASSWORD,
        &["/sec:tls", "/network:lan", "/bpp:32", "/size:1280x800"],
    );
    let session = session_started(&server);
    assert!(
        session.contains("scr_blt: true, opaque_rect: true, multi_opaque_rect: true")
            && session.contains("frame_acknowledge=Some(2)"),
        "xfreerdp takes the three orders and acknowledges frames: {session}"
    );
    let ((_, _, multi), _terminal) =
        draw_and_compare(&server, &client, dir.path(), ("xfreerdp", &mut c));
    let output = c.output();
    assert!(!output.contains("[ERROR]"), "{output}");
    assert!(multi > 0, "MultiOpaqueRect for xfreerdp");
    // The text goes as 24-bit interleaved RLE in the 32-bit session (most of what is not a
    // copy or a fill is text here: planar is left with next to nothing).
    let bitmaps = bitmaps_sent(&server.log());
    eprintln!("bitmaps sent (planar, RLE, raw): {bitmaps:?}");
    assert!(session.contains("mixed_depth=true"), "{session}");
    assert!(bitmaps.1 > bitmaps.0 + bitmaps.2, "{bitmaps:?}");
    // Every frame is acknowledged in the end: the last acknowledgement leaves none in flight.
    wait_until(
        Duration::from_secs(20),
        "the last frame to be acknowledged",
        || {
            let log = server.log();
            let last = log
                .lines()
                .rev()
                .find(|l| l.contains("Frame acknowledged"))?;
            (field(last, "in_flight") == Some(0)).then_some(())
        },
    );
    let acknowledged = server.log().matches("Frame acknowledged").count();
    eprintln!("xfreerdp acknowledged {acknowledged} frames");
    assert!(!server.log().contains("Frame acknowledgement ignored"));
}

/// rdesktop (which takes the server's 32 bits): ScrBlt and OpaqueRect, planar bitmaps with
/// the alpha plane it needs and never a 24-bit interleaved RLE one (it paints every bitmap at
/// the session's depth), the display shown exactly.
#[test]
fn rdesktop_draws_orders() {
    let dir = deskport_testsupport::data_dir();
    let server = server(dir.path());
    let client = Xvfb::start(1400, 900);
    let mut c = rdesktop_args(&client, &server, &["-g", "1280x800"]);
    let session = session_started(&server);
    assert!(
        session.contains("scr_blt: true, opaque_rect: true, multi_opaque_rect: false")
            && session.contains("frame_acknowledge=None"),
        "rdesktop takes ScrBlt and OpaqueRect, no MultiOpaqueRect, no frame markers: {session}"
    );
    assert!(
        session.contains(" bpp=32 ") && session.contains("mixed_depth=false"),
        "{session}"
    );
    let ((_, _, multi), _terminal) =
        draw_and_compare(&server, &client, dir.path(), ("rdesktop", &mut c));
    let output = c.output();
    assert!(
        !output.contains("unhandled") && !output.contains("failed"),
        "{output}"
    );
    assert_eq!(multi, 0);
    let log = server.log();
    assert!(!log.contains("Frame acknowledged"), "{log}");
    let (planar, rle, raw) = bitmaps_sent(&log);
    eprintln!("bitmaps sent: {planar} planar, {rle} RLE, {raw} raw");
    assert!(planar > 0 && rle == 0, "{planar} planar, {rle} RLE");
}

/// xfreerdp on the graphics pipeline: the same drawing as Surface To Surface copies (moving
/// up, down and sideways, overlapping), Solid Fills, ClearCodec and planar pixels, shown pixel
/// for pixel;
/// every frame acknowledged, nothing refused, no fallback to the classic path.
#[test]
fn xfreerdp_on_the_graphics_pipeline_copies_fills_and_paints() {
    let dir = deskport_testsupport::data_dir();
    let server = server(dir.path());
    let client = Xvfb::start(1400, 900);
    let mut c = xfreerdp(
        &client,
        &server,
        "alice",
        PASSWORD,
        &["/sec:tls", "/gfx", "/bpp:32", "/size:1280x800"],
    );
    let session = session_started(&server);
    assert!(session.contains("gfx=true"), "{session}");
    wait_until(Duration::from_secs(30), "the graphics pipeline", || {
        server
            .log()
            .contains("The screen goes over the graphics pipeline")
            .then_some(())
    });
    let _terminal = draw(&server, dir.path());
    shows_exactly(&server, &client, "xfreerdp-gfx", || {
        c.process.try_wait().is_none()
    });
    let log = server.log();
    moved_every_way(&log, "SurfaceToSurface");
    let output = c.output();
    assert!(!output.contains("[ERROR]"), "{output}");
    c.process.stop();
    let log = wait_until(Duration::from_secs(10), "the session's totals", || {
        let log = server.log();
        log.contains("Graphics pipeline totals").then_some(log)
    });
    // The text as ClearCodec (RLEX), the rest planar.
    for total in ["surface_to_surface", "solid_fills", "planar", "clear"] {
        assert!(gfx_total(&log, total) > 0, "{total}: {log}");
    }
    assert!(!log.contains("Back to the classic"), "{log}");
    assert!(!log.contains("A copy outside the screen"), "{log}");
}
