//! deskport's RDP server (SPEC §4): the Remote Desktop service of a Linux instance.
//!
//! - [`server`]: the listener, which exists only while *Allow remote connections* is on, and a
//!   task per connection (many clients at once, each bounded by a handshake timeout).
//! - [`connection`]: the connection sequence on ironrdp-acceptor, with RDP_NEG_FAILURE sent
//!   for refused security protocols, TLS, per-user NLA ([`credssp`]) or a checked Client Info
//!   logon, logon throttling, and client fixes ([`fixup`]).
//! - [`session`]: input to the desktop, screen changes to the client ([`encode`]).
//! - what is shown is a `deskport_desktop::Desktop` (an X11 display, or one virtual session per
//!   account); channel logic shared with the client is `deskport-proto`'s.
//! - [`accounts`], [`tls`]: the account store and the server's certificate.
//! - [`service`]: all of it as one service, [`RdpServer`] (`open`, then `run` until shutdown).
//! - [`channels`]: the virtual channels as modules (clipboard, display control).
//!
//! Built on the IronRDP acceptor 0.12 / pdu 0.11 family, not on ironrdp-server: its session
//! loop serves one connection per `!Send` server, checks one preset NLA credential, drops
//! negotiation failures unanswered and has no bitmap path rdesktop decodes.

pub mod accounts;
pub mod admit;
pub mod channels;
pub mod connection;
pub mod credssp;
pub mod encode;
pub mod fixup;
pub mod metrics;
pub mod server;
pub mod service;
pub mod session;
pub mod tls;

/// What unit tests share.
#[cfg(test)]
pub(crate) mod testing {
    use deskport_desktop::{Desktop, Frame, Input};

    /// With `DESKPORT_WRITE_FUZZ_SEEDS=DIR`, writes `data` as the seed `name` of the fuzz
    /// target `target` (`DIR/TARGET/NAME`); else nothing.
    pub(crate) fn write_fuzz_seed(target: &str, name: &str, data: &[u8]) {
        if let Some(dir) = std::env::var_os("DESKPORT_WRITE_FUZZ_SEEDS") {
            let dir = std::path::Path::new(&dir).join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), data).unwrap();
        }
    }

    /// A desktop that takes input and shows nothing (and has no sound).
    #[derive(Debug)]
    pub(crate) struct Blind;

    impl Desktop for Blind {
        fn size(&self) -> (u16, u16) {
            (1, 1)
        }
        fn capture(&self) -> anyhow::Result<Frame> {
            anyhow::bail!("nothing to show")
        }
        fn input(&self, _: Input) -> anyhow::Result<()> {
            Ok(())
        }
    }
}

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use accounts::Accounts;
pub use encode::Codec;
pub use service::{RdpServer, RdpServerConfig};

/// The account store as connections see it: re-read when the file changes (so that
/// `deskport rdp-server user add` takes effect without a restart); a file that cannot be read
/// keeps the previous accounts in force.
#[derive(Debug)]
pub struct AccountStore {
    path: PathBuf,
    cached: Mutex<(Option<SystemTime>, Arc<Accounts>)>,
}

impl AccountStore {
    pub fn open(path: &Path) -> Result<Self, accounts::AccountError> {
        let accounts = Accounts::load(path)?;
        let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok(Self {
            path: path.to_owned(),
            cached: Mutex::new((stamp, Arc::new(accounts))),
        })
    }

    /// The accounts now.
    pub fn current(&self) -> Arc<Accounts> {
        let stamp = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if cached.0 != stamp {
            match Accounts::load(&self.path) {
                Ok(accounts) => *cached = (stamp, Arc::new(accounts)),
                Err(e) => tracing::error!(error = %e, "Keeping the previous accounts"),
            }
        }
        cached.1.clone()
    }
}
