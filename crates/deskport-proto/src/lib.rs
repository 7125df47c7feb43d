//! RDP logic that deskport's server (`deskport-rdp`) and client (`deskport-client`) share.
//!
//! Nothing here does I/O or knows a desktop: [`clipboard`] turns the `cliprdr` channel's
//! events and the local desktop's copies into actions ([`clipboard::ClipboardSync`]), for
//! either role; [`sound`] has the sound formats both sides use. (Certificate fingerprints, which the manager's clients share too, are
//! `deskport-tls`'s.)
//! The platform side (X11) is `deskport-desktop`'s; I/O is the session loops'.

pub mod clipboard;
pub mod sound;

/// The next item of an optional receiver (a channel a session may not have); never resolves
/// without one, so it can sit in a `select!` either way.
pub async fn next<T>(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
