//! Sound (issue 18): a virtual session has its own PulseAudio; what its programs play reaches
//! the client over `rdpsnd`. A tone played with `paplay` in the session is recorded on the
//! client's side — xfreerdp (`/sound:sys:pulse`, which takes PCM) and `deskport connect
//! --audio` (IMA ADPCM), each playing into a PulseAudio null sink of the test's, recorded with
//! `parec` — and its frequency is found again. A client that plays no sound
//! (`/audio-mode:2`) starts no capture.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use deskport_testsupport::{
    free_port, require_program, require_root, wait_until, ProcessGuard, Xvfb,
};

use crate::rdp::{add_account, xfreerdp_to, PASSWORD};
use crate::support::{environ, processes_of, UnixUser};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const RATE: u32 = 44_100;

/// A WAV file of `seconds` of a `hz` tone, stereo, amplitude 8000.
fn tone_wav(path: &Path, hz: f64, seconds: u32) {
    let samples: Vec<i16> = (0..RATE * seconds)
        .flat_map(|i| {
            let v = (8000.0
                * (2.0 * std::f64::consts::PI * hz * f64::from(i) / f64::from(RATE)).sin())
                as i16;
            [v, v]
        })
        .collect();
    deskport_testsupport::pulse::write_wav(path, &samples);
}

/// The strongest frequency (100 to 2000 Hz, in 5 Hz steps) of half a second of the recording
/// `raw`'s left channel from shortly after the sound begins, and the peak level there; `None`
/// if the recording is silent.
fn tone_in(raw: &[u8]) -> Option<(f64, i16)> {
    let left: Vec<i16> = raw
        .chunks_exact(4)
        .map(|f| i16::from_le_bytes([f[0], f[1]]))
        .collect();
    let start = left.iter().position(|s| s.unsigned_abs() > 1000)? + RATE as usize / 10;
    let window = left.get(start..start + RATE as usize / 2)?;
    let power = |hz: f64| {
        // Goertzel.
        let k = 2.0 * (2.0 * std::f64::consts::PI * hz / f64::from(RATE)).cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &x in window {
            let s0 = f64::from(x) + k * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        s1 * s1 + s2 * s2 - k * s1 * s2
    };
    let best = (20..=400)
        .map(|i| f64::from(i) * 5.0)
        .max_by(|a, b| power(*a).total_cmp(&power(*b)))?;
    let peak = window.iter().map(|s| s.saturating_abs()).max()?;
    Some((best, peak))
}

/// The session's `PULSE_SERVER`, from the environment of the account's terminal.
fn session_pulse_server(user: &str) -> Option<String> {
    let pid = processes_of(user, Some("xterm")).into_iter().next()?;
    environ(&pid)
        .into_iter()
        .find_map(|(k, v)| (k == "PULSE_SERVER").then_some(v))
}

/// `paplay FILE` in the session, as its account.
fn play_in_session(user: &UnixUser, pulse_server: &str, file: &Path) {
    let account = nix::unistd::User::from_name(&user.name).unwrap().unwrap();
    let out = Command::new("setpriv")
        .arg(format!("--reuid={}", account.uid))
        .arg(format!("--regid={}", account.gid))
        .args(["--init-groups", "paplay"])
        .arg(file)
        .env_clear()
        .env("HOME", &user.home)
        .env("PULSE_SERVER", pulse_server)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "paplay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

#[test]
fn a_tone_played_in_the_session_is_heard_by_xfreerdp_and_deskport_connect() {
    require_root();
    for program in ["pulseaudio", "parec", "paplay", "pacat", "xterm", "setpriv"] {
        require_program(program);
    }
    let dir = deskport_testsupport::data_dir();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let user = UnixUser::create(dir.path());
    let data = dir.path().join("rdp");
    add_account(&data, &user.name, PASSWORD);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[rdp_server]\nsession_x_server = \"xvfb\"\n\
         session_commands = [\"exec xterm -geometry 80x20+0+0\"]\n",
    )
    .unwrap();
    let port = free_port(LO);
    let log = dir.path().join("rdp-server.log");
    let _server = crate::rdp::rdp_server(&data, &config, port, &[], &log);
    let server_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let target = format!("127.0.0.1:{port}");
    let pulse = deskport_testsupport::pulse::PulseAudio::start(dir.path());
    let client = Xvfb::start(1024, 768);

    // xfreerdp, which takes PCM.
    let mut command = client.command("xfreerdp");
    command.env("PULSE_SERVER", pulse.server());
    let xfreerdp = crate::rdp::xfreerdp_with(
        command,
        &target,
        dir.path(),
        &user.name,
        PASSWORD,
        &["/sec:nla", "/size:800x600", "/sound:sys:pulse"],
    );
    wait_until(Duration::from_secs(30), "sound to start", || {
        (count(&server_log(), "Sound started") == 1).then_some(())
    });
    assert!(
        server_log().contains("format=\"1 PCM\""),
        "{}",
        server_log()
    );
    let pulse_server = wait_until(Duration::from_secs(10), "the session's sound", || {
        session_pulse_server(&user.name)
    });
    let heard = |name: &str, hz: f64| {
        let wav = dir.path().join(format!("{name}.wav"));
        tone_wav(&wav, hz, 2);
        let raw = dir.path().join(format!("{name}.raw"));
        let mut recording = pulse.record(&raw, 5);
        play_in_session(&user, &pulse_server, &wav);
        wait_until(Duration::from_secs(10), "the recording to end", || {
            recording.try_wait()
        });
        let bytes = std::fs::read(&raw).unwrap();
        let (found, peak) = tone_in(&bytes).unwrap_or_else(|| {
            panic!(
                "{name}: the client played nothing ({} bytes recorded)",
                bytes.len()
            )
        });
        assert!(
            (found - hz).abs() <= 5.0,
            "{name}: played {hz} Hz, the client played {found} Hz"
        );
        // The level survives the coding (amplitude 8000).
        assert!(
            (6000..=10_000).contains(&peak),
            "{name}: peak {peak} for amplitude 8000"
        );
    };
    heard("xfreerdp", 440.0);
    drop(xfreerdp);

    // deskport connect --audio, which takes IMA ADPCM.
    let window_log = dir.path().join("deskport-connect.log");
    let _window = ProcessGuard::spawn(
        "deskport connect",
        client
            .command(env!("CARGO_BIN_EXE_deskport"))
            .args(["connect", &target, "-u", &user.name, "-p", PASSWORD])
            .args(["-g", "800x600", "--audio", "--known-hosts"])
            .arg(dir.path().join("known_hosts"))
            .env("DESKPORT_CONFIG", "/dev/null")
            .env("PULSE_SERVER", pulse.server())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&window_log).unwrap()),
    )
    .unwrap();
    wait_until(Duration::from_secs(30), "sound to start again", || {
        (count(&server_log(), "Sound started") == 2).then_some(())
    });
    assert!(
        server_log().contains("format=\"17 DVI_ADPCM\""),
        "{}",
        server_log()
    );
    heard("deskport-connect", 660.0);
    drop(_window);

    // A client that plays no sound: no capture.
    let quiet = xfreerdp_to(
        &client,
        &target,
        dir.path(),
        &user.name,
        PASSWORD,
        &["/sec:nla", "/size:800x600", "/audio-mode:2"],
    );
    wait_until(Duration::from_secs(30), "the third logon", || {
        (count(&server_log(), "Session started peer") == 3).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&server_log(), "Sound started"), 2, "{}", server_log());
    assert!(
        processes_of(&user.name, Some("parec")).is_empty(),
        "a capture runs for a client without sound"
    );
    drop(quiet);
}
