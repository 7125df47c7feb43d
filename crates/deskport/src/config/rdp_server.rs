//! `[rdp_server]`: the settings of `deskport rdp-server` (and of the RDP server `deskport up`
//! runs), and what they make of `deskport_rdp`'s configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use deskport_desktop::launch::{self, XServer};
use deskport_desktop::sessions::SessionConfig;
use deskport_rdp::server::Switches;
use deskport_rdp::service::{Desktops, Lockout, SwitchSource};
use deskport_rdp::RdpServerConfig;
use serde::{Deserialize, Serialize};

use crate::cli::UsageError;

/// `[rdp_server]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RdpServerSettings {
    /// Address of the RDP port.
    pub listen: SocketAddr,
    /// Holds the account store and the TLS certificate; default `~/.local/share/deskport/rdp`.
    pub data_dir: Option<PathBuf>,
    /// Share this existing X display (e.g. `:0`); without it every account gets its own
    /// virtual desktop.
    pub display: Option<String>,
    /// Virtual desktops: the session's programs, each run with `sh -c` as the account's Unix
    /// user in a login environment, with `DISPLAY` and `DESKPORT_ACCOUNT` (the RDP account)
    /// set (the first is the session: when it exits, the user has logged off). Default: the
    /// system's desktop through `/etc/X11/Xsession` (the account's `~/.xsession`, else the
    /// session manager installed), else openbox and a terminal.
    pub session_commands: Vec<String>,
    /// Virtual desktops: end a session nobody has been connected to for this many seconds.
    pub session_timeout_secs: u64,
    /// Virtual desktops, running as root: the Unix account every session runs as (default:
    /// the one named like the RDP account; an account without one is refused).
    pub session_unix_user: Option<String>,
    /// Virtual desktops: the X server, `auto` (Xvnc where installed, else Xvfb), `xvnc` (the
    /// screen follows the client's window size) or `xvfb` (fixed size).
    pub session_x_server: XServer,
    /// *Allow remote connections to this computer*.
    pub enabled: bool,
    /// *Allow connections only from computers running Remote Desktop with NLA*.
    pub nla_only: bool,
    /// Take the two switches from this manager (with `token`, the instance's agent token);
    /// several replicas separated by commas are followed in turn.
    pub manager: Option<String>,
    pub token: Option<String>,
    /// Trust `https://` managers only with this certificate (SHA-256 fingerprint,
    /// `SHA256:ab:cd:…`); every replica listed must serve it.
    pub manager_fingerprint: Option<String>,
    /// Trust `https://` managers whose certificate this CA (PEM file) signed.
    pub manager_ca_file: Option<PathBuf>,
    /// Connections at most.
    pub max_connections: usize,
    /// Connections of one address in the connection sequence at once (less than
    /// `max_connections`: one address never takes every slot).
    pub max_handshakes_per_source: usize,
    /// New connections of one address per second (bursts of twice as many), 1 to 10000.
    pub max_new_connections_per_source_per_sec: u32,
    /// Seconds a client has to complete the connection sequence.
    pub handshake_timeout_secs: u64,
    /// Seconds a client has from connecting to logging on (NLA, or the Client Info in TLS
    /// mode), at least 1 (and at most `handshake_timeout_secs`, which bounds the whole
    /// sequence): what a stranger who never logs on can hold a connection for.
    pub logon_timeout_secs: u64,
    /// Serve `/metrics` (connections accepted, refused by reason, open, failed; sessions
    /// started) and `/healthz` on this address (`deskport rdp-server` only).
    pub metrics_listen: Option<SocketAddr>,
    /// Milliseconds between screen checks.
    pub frame_interval_ms: u64,
    /// Screen update coding: `auto` (planar or interleaved RLE bitmaps, whichever is smaller;
    /// ClearCodec or planar on the graphics pipeline) or `raw` (always uncompressed).
    pub codec: deskport_rdp::Codec,
    /// Bulk-compress screen updates for clients that offer it (xfreerdp does by default,
    /// rdesktop with -z).
    pub bulk_compression: bool,
    /// How the screen is read: `damage` (only what the X server reports as drawn) or `poll`
    /// (the whole screen at every check, compared tile by tile).
    pub capture: deskport_desktop::x11::Capture,
    /// Read screen images through MIT-SHM (shared memory) where the X server offers it, rather
    /// than through the X socket.
    pub capture_shm: bool,
    /// Failed logons (per user and per source address) before a lockout.
    pub lockout_failures: u32,
    /// Seconds the failures are counted over.
    pub lockout_window_secs: u64,
    /// Seconds of the first lockout (doubling with each further one, up to 16 times).
    pub lockout_secs: u64,
    /// Virtual desktops, running as root: open a PAM session of this service
    /// (`/etc/pam.d/NAME`; the package installs `deskport`; without that file, none) for each
    /// session's account, as a display manager does: the account phase (a refusal means no
    /// desktop), the session modules with the client's address as PAM_RHOST, their
    /// environment for the session. (The modules act on a helper process: per-process
    /// effects such as pam_limits do not reach the desktop's programs yet.) `""`: none.
    pub session_pam_service: String,
    /// Virtual desktops: give each session its own sound (a PulseAudio daemon with a null
    /// sink, where the pulseaudio package is installed) and send it to clients that play sound
    /// (`rdpsnd`).
    pub sound: bool,
    /// How sound is sent: `auto` (IMA ADPCM, a quarter of PCM's bytes, where the client
    /// decodes it; else PCM) or `pcm` (16-bit, 44.1 kHz stereo: 1.4 Mbit/s).
    pub sound_codec: deskport_rdp::channels::sound::SoundCodec,
    /// Virtual desktops: mount the drives a client shares (xfreerdp `/drive:NAME,PATH`) in
    /// the session as `~/thinclient_drives/NAME` (FUSE; `rdpdr`).
    pub drives: bool,
    /// A request to a client's drive not answered within this many seconds fails (the
    /// session's program gets EIO): a client that stalls cannot hang the session.
    pub drive_timeout_secs: u64,
}

impl Default for RdpServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 3389)),
            data_dir: None,
            display: None,
            session_commands: launch::default_commands(),
            session_timeout_secs: 3600,
            session_unix_user: None,
            session_x_server: XServer::Auto,
            enabled: true,
            nla_only: true,
            manager: None,
            token: None,
            manager_fingerprint: None,
            manager_ca_file: None,
            max_connections: 64,
            max_handshakes_per_source: deskport_rdp::admit::SourceLimits::default().handshakes,
            max_new_connections_per_source_per_sec: deskport_rdp::admit::SourceLimits::default()
                .per_second,
            handshake_timeout_secs: 20,
            logon_timeout_secs: 10,
            metrics_listen: None,
            frame_interval_ms: 33,
            codec: deskport_rdp::Codec::Auto,
            bulk_compression: true,
            capture: deskport_desktop::x11::Capture::Damage,
            capture_shm: true,
            lockout_failures: 5,
            lockout_window_secs: 900,
            lockout_secs: 60,
            session_pam_service: "deskport".to_owned(),
            sound: true,
            sound_codec: Default::default(),
            drives: true,
            drive_timeout_secs: 30,
        }
    }
}

impl RdpServerSettings {
    /// The data directory: `data_dir`, else `rdp` in the default data directory.
    pub fn dir(&self) -> anyhow::Result<PathBuf> {
        match &self.data_dir {
            Some(d) => Ok(d.clone()),
            None => Ok(super::default_data_dir()?.join("rdp")),
        }
    }

    /// The switches as configured.
    pub fn switches(&self) -> Switches {
        Switches {
            enabled: self.enabled,
            nla_only: self.nla_only,
        }
    }

    /// The server these settings describe. Without a manager, the switches are the
    /// configured ones; the sender returned changes them (when the configuration is re-read).
    pub fn server(
        &self,
    ) -> anyhow::Result<(
        RdpServerConfig,
        Option<tokio::sync::watch::Sender<Switches>>,
    )> {
        let dir = self.dir()?;
        let desktops = match &self.display {
            Some(display) => Desktops::Shadow {
                display: display.clone(),
                capture: self.capture,
                capture_shm: self.capture_shm,
            },
            None => {
                if self.session_commands.is_empty() {
                    return Err(UsageError("[rdp_server] session_commands is empty: a virtual desktop needs at least its session program".to_owned()).into());
                }
                if self.session_x_server == XServer::Xvnc && !launch::on_path("Xvnc") {
                    return Err(UsageError("[rdp_server] session_x_server = \"xvnc\" but Xvnc is not installed (the tigervnc-standalone-server package provides it; \"auto\" falls back to Xvfb)".to_owned()).into());
                }
                Desktops::Virtual(SessionConfig {
                    commands: self.session_commands.clone(),
                    disconnected_timeout: Duration::from_secs(self.session_timeout_secs.max(1)),
                    default_size: (1280, 800),
                    log_dir: dir.join("sessions"),
                    unix_user: self.session_unix_user.clone(),
                    capture: self.capture,
                    x_server: self.session_x_server,
                    capture_shm: self.capture_shm,
                    sound: self.sound,
                    pam_service: Some(self.session_pam_service.clone()).filter(|s| !s.is_empty()),
                })
            }
        };
        if self.drive_timeout_secs == 0 {
            return Err(UsageError(
                "[rdp_server] drive_timeout_secs is 0: a client's drive needs at least 1 second to answer"
                    .to_owned(),
            )
            .into());
        }
        if self.logon_timeout_secs == 0 {
            return Err(UsageError(
                "[rdp_server] logon_timeout_secs is 0: a client needs at least 1 second to log on"
                    .to_owned(),
            )
            .into());
        }
        let service = &self.session_pam_service;
        if service.contains(['/', '\0'])
            || service.chars().any(char::is_whitespace)
            || service == "."
            || service == ".."
        {
            return Err(UsageError(format!(
                "[rdp_server] session_pam_service is {service:?}: it must be the name of a file in /etc/pam.d (or \"\" for none)"
            ))
            .into());
        }
        super::firewall::check_share(
            "[rdp_server] max_handshakes_per_source",
            self.max_handshakes_per_source,
            self.max_connections,
        )?;
        if !(1..=10_000).contains(&self.max_new_connections_per_source_per_sec) {
            return Err(UsageError(format!(
                "[rdp_server] max_new_connections_per_source_per_sec is {}: it must be 1 to 10000",
                self.max_new_connections_per_source_per_sec
            ))
            .into());
        }
        let (switches, sender) = match (&self.manager, &self.token) {
            (Some(urls), Some(token)) => {
                let urls = super::firewall::manager_urls(urls)?;
                let trust = super::firewall::manager_trust(
                    &urls,
                    self.manager_fingerprint.as_deref(),
                    self.manager_ca_file.as_ref(),
                )?;
                (
                    SwitchSource::Manager {
                        urls,
                        token: token.clone(),
                        initial: self.switches(),
                        trust,
                    },
                    None,
                )
            }
            (Some(_), None) => {
                return Err(UsageError(
                    "--manager needs --token (the instance's agent token)".to_owned(),
                )
                .into())
            }
            (None, _) => {
                let (sender, receiver) = tokio::sync::watch::channel(self.switches());
                (SwitchSource::Watch(receiver), Some(sender))
            }
        };
        let config = RdpServerConfig {
            listen: self.listen,
            data_dir: dir,
            desktops,
            switches,
            max_connections: self.max_connections,
            per_source: deskport_rdp::admit::SourceLimits {
                handshakes: self.max_handshakes_per_source,
                per_second: self.max_new_connections_per_source_per_sec,
            },
            handshake_timeout: Duration::from_secs(self.handshake_timeout_secs),
            logon_timeout: Duration::from_secs(self.logon_timeout_secs),
            frame_interval: Duration::from_millis(self.frame_interval_ms),
            codec: self.codec,
            bulk_compression: self.bulk_compression,
            lockout: Lockout {
                failures: self.lockout_failures,
                window: Duration::from_secs(self.lockout_window_secs),
                lockout: Duration::from_secs(self.lockout_secs),
            },
            // A shared display has no sound of its own to send.
            sound: (self.sound && self.display.is_none()).then_some(self.sound_codec),
            // Nor a home of its own for drives.
            drives: (self.drives && self.display.is_none())
                .then(|| Duration::from_secs(self.drive_timeout_secs)),
        };
        Ok((config, sender))
    }
}
