//! `deskport connect`: the RDP client.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use deskport_client::rdpfile::{split_host_port, RdpFile};
use deskport_client::session::{self, Ending, Screenshot};
use deskport_client::window::{self, Window};
use deskport_client::{GatewayOptions, Options, Security};

use crate::cli::UsageError;
use crate::prompt::read_password;

/// Security the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sec {
    /// NLA when the server offers it, else TLS.
    Auto,
    /// Network Level Authentication only (the password never reaches an unauthenticated server).
    Nla,
    /// TLS only (the password travels inside TLS in the Client Info PDU).
    Tls,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  deskport connect 127.0.0.1                      # the article's `rdesktop 127.0.0.1`
  deskport connect 198.18.0.2:3390 -u alice -p - < password.txt
  deskport connect office.rdp
  deskport connect 127.0.0.1 -u alice -p - --screenshot desktop.png

Exit status: 0 when the session ended normally or the screenshot was written; 1 when the
connection was refused, filtered, timed out, the logon failed or the certificate is not the
trusted one; 2 on a usage error.")]
pub struct Args {
    /// HOST[:PORT] (port 3389 unless given; IPv6 as [ADDR]:PORT) or a .rdp file.
    #[arg(value_name = "HOST[:PORT]|FILE.rdp")]
    target: String,

    /// User name (default: the .rdp file's, else the local user's).
    #[arg(short = 'u', long = "user", value_name = "USER")]
    user: Option<String>,

    /// Password; `-` reads it from the first line of stdin. Asked for when omitted.
    #[arg(
        short = 'p',
        long = "password",
        value_name = "PASSWORD|-",
        allow_hyphen_values = true
    )]
    password: Option<String>,

    /// Domain of the account.
    #[arg(short = 'd', long = "domain", value_name = "DOMAIN")]
    domain: Option<String>,

    /// Desktop size (default 1024x768; with -f the screen's size).
    #[arg(short = 'g', long = "geometry", value_name = "WxH", value_parser = crate::cmd::parse_size)]
    geometry: Option<(u16, u16)>,

    /// Full screen.
    #[arg(short = 'f', long = "fullscreen")]
    fullscreen: bool,

    /// Security to offer: auto (NLA if the server can, else TLS), nla or tls.
    #[arg(long = "sec", value_enum, value_name = "auto|nla|tls")]
    sec: Option<Sec>,

    /// Headless: write the desktop to FILE.png and exit, once every pixel has been painted
    /// and the screen then stayed still for 0.3 s (at most 2 s after it was complete).
    #[arg(long, value_name = "FILE.png")]
    screenshot: Option<PathBuf>,

    /// Give up after this many seconds without a connection (and, with --screenshot, without
    /// a complete frame).
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,

    /// Accept only the certificate with this SHA-256 fingerprint (hex, colons optional);
    /// the known-hosts file is then neither read nor written.
    #[arg(long, value_name = "SHA256")]
    cert_fingerprint: Option<String>,

    /// Where certificates are remembered (trust on first use).
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,

    /// Do not offer the graphics pipeline (MS-RDPEGFX): the server then sends classic bitmap
    /// updates. By default it is offered and used where the server supports it.
    #[arg(long)]
    no_gfx: bool,

    /// Play the session's sound here (the server's `rdpsnd` channel, IMA ADPCM or PCM),
    /// through PulseAudio's `pacat` (the pulseaudio-utils package). Not with --screenshot.
    /// Default: the .rdp file's `audiomode:i:0`.
    #[arg(long)]
    audio: bool,

    /// Go through this RD Gateway (HOST[:PORT], port 443 unless given) instead of connecting
    /// to the host directly: RDP rides in HTTPS, so the host's RDP port may stay closed. The
    /// host is then named as the gateway's token knows it (the instance's name or address).
    /// Default: the .rdp file's `gatewayhostname`.
    #[arg(long, value_name = "HOST[:PORT]")]
    gateway: Option<String>,

    /// The gateway's access token (`deskport instance rdp-token NAME`); `-` reads it from the
    /// first line of stdin (after the password, if that is read too). Default: the .rdp
    /// file's `gatewayaccesstoken`.
    #[arg(long, value_name = "TOKEN|-", allow_hyphen_values = true)]
    gateway_token: Option<String>,

    /// Accept only the gateway certificate with this SHA-256 fingerprint (the manager's, as
    /// `deskport manager` prints it); else the known-hosts file (trust on first use).
    #[arg(long, value_name = "SHA256")]
    gateway_fingerprint: Option<String>,
}

fn read_rdp_file(path: &Path) -> anyhow::Result<RdpFile> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let text = deskport_client::rdpfile::decode(&bytes)
        .map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    RdpFile::parse(&text).map_err(|e| UsageError(format!("{}: {e}", path.display())).into())
}

fn known_hosts_default() -> anyhow::Result<PathBuf> {
    Ok(crate::config::default_config_dir()
        .map_err(|e| UsageError(format!("{e:#} (or pass --known-hosts FILE)")))?
        .join("known_hosts"))
}

pub fn exec(args: Args) -> anyhow::Result<()> {
    let file = if args.target.to_ascii_lowercase().ends_with(".rdp") {
        read_rdp_file(Path::new(&args.target))?
    } else {
        let (host, port) = split_host_port(&args.target).map_err(UsageError)?;
        RdpFile {
            host: Some(host),
            port,
            ..RdpFile::default()
        }
    };
    let fullscreen = args.fullscreen || file.fullscreen;
    if fullscreen && args.screenshot.is_some() {
        return Err(UsageError("-f and --screenshot do not go together".to_owned()).into());
    }
    if args.audio && args.screenshot.is_some() {
        return Err(UsageError("--audio and --screenshot do not go together".to_owned()).into());
    }
    let host = file
        .host
        .clone()
        .ok_or_else(|| UsageError(format!("{}: no `full address` line", args.target)))?;
    let username = args
        .user
        .clone()
        .or(file.username.clone())
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .ok_or_else(|| UsageError("no user name: pass -u USER".to_owned()))?;
    let security = match args.sec {
        Some(Sec::Auto) => Security::Auto,
        Some(Sec::Nla) => Security::Nla,
        Some(Sec::Tls) => Security::Tls,
        None if file.credssp == Some(false) => Security::Tls,
        None => Security::Auto,
    };
    let size = match (args.geometry.or(file.size), fullscreen) {
        (Some(size), _) => size,
        (None, true) => window::screen_size(None).context("full screen needs an X display")?,
        (None, false) => (1024, 768),
    };
    let known_hosts = match args.known_hosts.clone() {
        Some(path) => path,
        None => known_hosts_default()?,
    };
    let password = match args.password.as_deref() {
        Some("-") => read_password(true, "")?,
        Some("") => return Err(UsageError("the password is empty".to_owned()).into()),
        Some(p) => p.to_owned(),
        None if std::io::stdin().is_terminal() => {
            read_password(false, &format!("Password for {username}@{host}: "))?
        }
        None => {
            return Err(UsageError(
                "no password: pass -p PASSWORD, or -p - to read it from stdin".to_owned(),
            )
            .into())
        }
    };
    let gateway = match args.gateway.clone().or(file.gateway.clone()) {
        None if args.gateway_token.is_some() || args.gateway_fingerprint.is_some() => {
            return Err(UsageError(
                "--gateway-token and --gateway-fingerprint need --gateway HOST[:PORT]".to_owned(),
            )
            .into())
        }
        None => None,
        Some(address) => {
            let (gw_host, gw_port) =
                split_host_port(&address).map_err(|e| UsageError(format!("--gateway: {e}")))?;
            let token = match args.gateway_token.as_deref() {
                Some("-") => read_password(true, "")?,
                Some(t) => t.trim().to_owned(),
                None => file.gateway_token.clone().unwrap_or_default(),
            };
            if token.is_empty() {
                return Err(UsageError(
                    "no gateway token: pass --gateway-token TOKEN (deskport instance rdp-token \
                     NAME makes one)"
                        .to_owned(),
                )
                .into());
            }
            Some(GatewayOptions {
                host: gw_host,
                port: gw_port.unwrap_or(443),
                token,
                pin: args.gateway_fingerprint.clone(),
            })
        }
    };
    let options = Options {
        gateway,
        host: host.clone(),
        port: file.port.unwrap_or(3389),
        username,
        password,
        domain: args.domain.clone().or(file.domain.clone()),
        size,
        security,
        pin: args.cert_fingerprint.clone(),
        known_hosts,
        connect_timeout: Duration::from_secs(args.timeout),
        clipboard: None,
        display_control: false,
        gfx: !args.no_gfx,
        // --audio, or a .rdp file's `audiomode:i:0` (play here) for a window.
        audio: args.audio || (args.screenshot.is_none() && file.audio_mode == Some(0)),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(run(options, args))
}

async fn run(mut options: Options, args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    // A window shares the clipboard (text, both ways) and asks the server to follow its size;
    // a screenshot does neither.
    let clipboard = if args.screenshot.is_none() {
        options.display_control = true;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        options.clipboard = Some(tx);
        Some(rx)
    } else {
        None
    };
    let timeout = Duration::from_secs(args.timeout);
    let connected = tokio::time::timeout(timeout, deskport_client::connect(&options))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no RDP logon at {} within {} s (the server accepted the connection but did not finish the handshake)",
                options.endpoint(),
                args.timeout
            )
        })??;
    if let (Some(fingerprint), Some(gateway)) = (&connected.gateway_first_use, &options.gateway) {
        eprintln!(
            "The certificate of the RD Gateway {} was not known; it is now trusted (remembered in {}):\n  SHA256 {fingerprint}",
            gateway.endpoint(),
            options.known_hosts.display(),
        );
    }
    if connected.first_use {
        eprintln!(
            "The certificate of {} was not known; it is now trusted (remembered in {}):\n  SHA256 {}",
            options.endpoint(),
            options.known_hosts.display(),
            connected.fingerprint
        );
    }
    let (width, height) = (
        connected.result.desktop_size.width,
        connected.result.desktop_size.height,
    );
    tracing::info!(endpoint = %options.endpoint(), width, height, "Connected");

    if let Some(path) = args.screenshot {
        let mut shot = Screenshot::new(path.clone());
        let deadline = (
            started + timeout,
            format!(
                "no complete frame from {} within {} s",
                options.endpoint(),
                args.timeout
            ),
        );
        match session::run(connected, &mut shot, None, Some(deadline), None).await? {
            Ending::Done => {
                if let Some(at) = shot.completed_at() {
                    // Read by the RDP benchmark (connect → first complete frame).
                    tracing::info!(
                        elapsed_ms = format!("{:.1}", (at - started).as_secs_f64() * 1000.0),
                        "First complete frame"
                    );
                }
                println!("{} ({width}x{height})", path.display());
                Ok(())
            }
            Ending::Server(reason) => {
                anyhow::bail!("the server ended the session before a complete frame: {reason}")
            }
            Ending::Closed => anyhow::bail!("the session ended before a complete frame"),
        }
    } else {
        let title = format!("{} — deskport", options.endpoint());
        let (mut window, events) = Window::open(None, &title, width, height, args.fullscreen)?;
        let clipboard = clipboard.and_then(|from_server| {
            let display = std::env::var("DISPLAY").unwrap_or_default();
            match deskport_desktop::clipboard::Clipboard::start_x(&display) {
                Ok(x) => Some(session::Clipboard::of_x(from_server, x)),
                Err(e) => {
                    tracing::warn!(error = %e, "No clipboard");
                    None
                }
            }
        });
        match session::run(connected, &mut window, Some(events), None, clipboard).await? {
            Ending::Server(reason) => eprintln!("Disconnected: {reason}"),
            Ending::Closed | Ending::Done => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::cmd::parse_size as parse_geometry;

    #[test]
    fn geometry() {
        assert_eq!(parse_geometry("1280x800"), Ok((1280, 800)));
        assert_eq!(parse_geometry("640X480"), Ok((640, 480)));
        assert!(parse_geometry("1280").is_err());
        assert!(parse_geometry("100x100").is_err());
        assert!(parse_geometry("9000x800").is_err());
        assert!(parse_geometry("axb").is_err());
    }
}
