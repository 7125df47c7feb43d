//! deskport's RDP client (`deskport connect`): connects with TLS or NLA, checks the server's
//! certificate against a known-hosts file (trust on first use) or a pin, then either shows the
//! desktop in an X11 window with keyboard and mouse, or writes the first complete frame to a PNG
//! file and exits (`--screenshot`, for scripts and tests).
//!
//! Layout: [`connect`] runs the connection sequence and turns every failure into a
//! [`ClientError`] a user can act on; [`session`] drives the active session and hands decoded
//! pixels to a [`session::Frontend`]: [`session::Screenshot`], [`window::Window`] or [`browser::Browser`] (the web console's
//! relay: the canvas in a browser tab, fed by the manager over a WebSocket).
//! [`rdpfile`] reads the `.rdp` files mstsc writes; [`known_hosts`] remembers certificates;
//! [`sound`] plays the session's sound (`--audio`).

pub mod browser;
pub mod connect;
pub use deskport_tls::known_hosts;
pub mod rdpfile;
pub mod session;
pub mod sound;
pub mod window;

pub use connect::{connect, ClientError, GatewayOptions, Options, Security};
