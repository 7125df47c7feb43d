//! The sound benchmark (issue 18): a minute of music-like sound played in a virtual session
//! (`paplay` into the session's own PulseAudio) and sent to a real client.
//!
//! - xfreerdp (`/sound:sys:pulse`) takes 16-bit PCM: raw PCM, the baseline;
//! - `deskport connect --audio` takes IMA ADPCM (deskport's `auto` coding).
//!
//! Each client plays into a PulseAudio null sink of the benchmark's. Measured per client: the
//! bytes the server sent on the connection during the minute (TCP `bytes_acked`), and the
//! CPU-seconds of the server, of the session's PulseAudio and capture (`parec`), and of the
//! client (with its player). The coding's quality is the signal-to-noise ratio of the same
//! signal coded and decoded in-process. The signal: chords of four notes with harmonics that
//! change every half second, a bass line and noise bursts (hi-hats), differently mixed left
//! and right — not a pure tone, which ADPCM would flatter.
//!
//! Prints `SOUND|client|format|seconds|bytes|kbit/s|server CPU-s|pulse CPU-s|capture CPU-s|
//! client CPU-s|SNR dB` lines; `scripts/bench sound` turns them into a section of
//! `bench/RESULTS.md`. Root only (the session runs as `nobody`). `SOUND_BENCH_SECONDS`
//! (default 60) shortens the sound.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use deskport_testsupport::servers::cpu_seconds;
use deskport_testsupport::{ProcessGuard, Xvfb};

mod support;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const PASSWORD: &str = "Sound-bench-123";
const RATE: u32 = 44_100;

/// `seconds` of the music-like signal, interleaved stereo.
fn music(seconds: u32) -> Vec<i16> {
    let chords: [[f64; 4]; 4] = [
        [261.63, 329.63, 392.00, 523.25], // C
        [220.00, 261.63, 329.63, 440.00], // Am
        [174.61, 220.00, 261.63, 349.23], // F
        [196.00, 246.94, 293.66, 392.00], // G
    ];
    let bass = [65.41, 55.00, 87.31, 98.00];
    let mut noise: u32 = 0x1234_5678;
    let mut out = Vec::with_capacity((RATE * seconds * 2) as usize);
    let tau = 2.0 * std::f64::consts::PI;
    for i in 0..RATE * seconds {
        let t = f64::from(i) / f64::from(RATE);
        let half = (t * 2.0) as usize;
        let in_chord = t * 2.0 - half as f64; // 0..1 within the half second
        let chord = &chords[half % 4];
        let envelope = (-(in_chord * 3.0)).exp();
        let mut left = 0.0;
        let mut right = 0.0;
        for (n, f) in chord.iter().enumerate() {
            let mut note = 0.0;
            for h in 1..=4 {
                note += (tau * f * f64::from(h) * t).sin() / f64::from(h * h);
            }
            let pan = n as f64 / 3.0;
            left += note * (1.0 - pan * 0.6);
            right += note * (0.4 + pan * 0.6);
        }
        let b = (tau * bass[half % 4] * t).sin() * 1.5;
        // A hi-hat every quarter second: decaying noise.
        noise = noise.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let white = f64::from(noise >> 16) / 32768.0 - 1.0;
        let quarter = t * 4.0 - (t * 4.0).floor();
        let hat = white * (-(quarter * 40.0)).exp() * 0.8;
        let l = (left * envelope + b + hat * 0.7) * 3000.0;
        let r = (right * envelope + b + hat) * 3000.0;
        out.push(l.clamp(-32767.0, 32767.0) as i16);
        out.push(r.clamp(-32767.0, 32767.0) as i16);
    }
    out
}

/// The signal-to-noise ratio (dB) of `format`'s coding of `samples`.
fn snr(format: &ironrdp_rdpsnd::pdu::AudioFormat, samples: &[i16]) -> f64 {
    use ironrdp_rdpsnd::codec::{AudioDecoder, AudioEncoder};
    let mut encoder = AudioEncoder::new(format).unwrap();
    let mut coded = Vec::new();
    encoder.encode(samples, &mut coded);
    let mut decoded = Vec::new();
    let mut decoder = AudioDecoder::new(format).unwrap();
    for block in coded.chunks(usize::from(format.n_block_align.max(1)) * 64) {
        decoder.decode(block, &mut decoded).unwrap();
    }
    let n = decoded.len().min(samples.len());
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    for (a, b) in samples[..n].iter().zip(&decoded[..n]) {
        signal += f64::from(*a).powi(2);
        noise += (f64::from(*a) - f64::from(*b)).powi(2);
    }
    if noise == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}

/// The processes named `comm`, of user `uid` if given.
fn pids(comm: &str, uid: Option<u32>) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
                && uid.is_none_or(|u| {
                    std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == u)
                })
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("sound: skipped: it needs root (the session runs as `nobody`)");
        return;
    }
    for program in ["pulseaudio", "parec", "paplay", "pacat", "xfreerdp", "ss"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            println!("sound: skipped: {program} is not installed");
            return;
        }
    }
    let seconds: u32 = std::env::var("SOUND_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = deskport_testsupport::data_dir();
    let dir = dir.path();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let signal = music(seconds);
    let wav = dir.join("music.wav");
    deskport_testsupport::pulse::write_wav(&wav, &signal);
    let snr_pcm = snr(&deskport_proto::sound::pcm(), &signal);
    let snr_adpcm = snr(&deskport_proto::sound::adpcm(), &signal);

    let data = dir.join("rdp");
    support::add_user(&data, "listener", PASSWORD);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[rdp_server]\nsession_unix_user = \"nobody\"\nsession_x_server = \"xvfb\"\n\
         session_commands = [\"exec sleep 1000000\"]\n",
    )
    .unwrap();
    let port = deskport_testsupport::free_port(LO);
    let log = dir.join("rdp-server.log");
    let server = support::rdp_server(&data, &config, port, "info", &log);
    deskport_testsupport::servers::wait_listening(port, None, "the RDP server");
    let pulse = deskport_testsupport::pulse::PulseAudio::start(dir);
    let pulse_server = pulse.server();
    let display = Xvfb::start(1024, 768);
    let target = format!("127.0.0.1:{port}");
    let starts = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("Sound started")
            .count()
    };

    let xfreerdp = || {
        let mut c = display.command("xfreerdp");
        c.arg(format!("/v:{target}"))
            .args(["/u:listener", &format!("/p:{PASSWORD}"), "/cert:ignore"])
            .args(["/sec:nla", "/size:800x600", "/sound:sys:pulse"]);
        c
    };
    let deskport = || {
        let mut c = display.command(env!("CARGO_BIN_EXE_deskport"));
        c.args(["connect", &target, "-u", "listener", "-p", PASSWORD])
            .args(["-g", "800x600", "--audio", "--known-hosts"])
            .arg(dir.join("known_hosts"))
            .env("DESKPORT_CONFIG", "/dev/null");
        c
    };
    let clients: [(&str, &str, f64, &dyn Fn() -> Command); 2] = [
        ("xfreerdp", "PCM", snr_pcm, &xfreerdp),
        (
            "deskport connect --audio",
            "IMA ADPCM",
            snr_adpcm,
            &deskport,
        ),
    ];
    for (n, (name, format, quality, command)) in clients.into_iter().enumerate() {
        let mut command = command();
        command
            .env("PULSE_SERVER", &pulse_server)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let client = ProcessGuard::spawn(name, &mut command).unwrap();
        deskport_testsupport::wait_until(Duration::from_secs(60), "sound to start", || {
            (starts() > n).then_some(())
        });
        // The session's sound server, from its socket.
        let session_pulse = pids("pulseaudio", Some(65534));
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        let number = log_text
            .split("x_display=\":")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the session's display in the server's log");
        let socket = PathBuf::from(format!("/run/user/65534/deskport-sound-{number}"));
        std::thread::sleep(Duration::from_secs(2));
        let capture = pids("parec", Some(65534));
        let client_pids: Vec<u32> = [client.pid()]
            .into_iter()
            .chain(pids("pacat", None))
            .collect();
        let sum = |p: &[u32]| p.iter().map(|pid| cpu_seconds(*pid)).sum::<f64>();
        let before = (
            support::bytes_sent(port, None),
            cpu_seconds(server.pid()),
            sum(&session_pulse),
            sum(&capture),
            sum(&client_pids),
        );
        let played = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--init-groups", "paplay"])
            .arg(&wav)
            .env_clear()
            .env("HOME", "/")
            .env("PULSE_SERVER", format!("unix:{}", socket.display()))
            // (`nobody` has no cookie: the session's socket needs none.)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(played.success(), "paplay in the session failed");
        // The last waves and the confirms.
        std::thread::sleep(Duration::from_secs(1));
        let after = (
            support::bytes_sent(port, None),
            cpu_seconds(server.pid()),
            sum(&session_pulse),
            sum(&capture),
            // deskport's player (pacat) starts with the first wave.
            cpu_seconds(client.pid()) + sum(&pids("pacat", None)),
        );
        let bytes = after.0.saturating_sub(before.0);
        let kbit = bytes as f64 * 8.0 / 1000.0 / f64::from(seconds);
        println!(
            "SOUND|{name}|{format}|{seconds}|{bytes}|{kbit:.0}|{:.2}|{:.2}|{:.2}|{:.2}|{}",
            after.1 - before.1,
            after.2 - before.2,
            after.3 - before.3,
            after.4 - before.4,
            if quality.is_finite() {
                format!("{quality:.1}")
            } else {
                "lossless".to_owned()
            }
        );
        drop(client);
        std::thread::sleep(Duration::from_secs(1));
    }
    println!(
        "SOUND|raw PCM (the signal itself)|PCM|{seconds}|{}|{:.0}|||||lossless",
        u64::from(seconds) * u64::from(RATE) * 4,
        f64::from(RATE) * 4.0 * 8.0 / 1000.0
    );
}
