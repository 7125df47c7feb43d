//! The instance's desktop in the browser: the console's *Console* tab. A canvas in the page is
//! fed over a WebSocket on this listener by a relay — deskport's own RDP client
//! ([`deskport_client::browser`]) logged on to the instance's RDP server with the credentials
//! the user types.
//!
//! The relay reaches the instance the way the RD Gateway does and under the same rules: a
//! gateway token minted for the logged-in console user and that instance (short-lived; it
//! bounds opening, not the session), the instance's internal address, *Allow remote
//! connections* and *gateway access* on, project membership — rechecked whenever the store
//! says access may have changed, and a refusal ends the session. The instance's certificate
//! must be the one its RDP server reported (no trust on first use on the user's behalf).
//!
//! The WebSocket is opened only from this origin (`Origin` must name the host the request
//! came to) with the console's session cookie and the token as a second subprotocol
//! (`token.SECRET`: a browser can set no other header on a WebSocket); every session is
//! audited (opened, closed with its bytes, refused, cut). Closing the tab closes the socket,
//! which ends the RDP connection.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use deskport_client::browser::{self, Acks, FromBrowser, Input, Outgoing, Stats};
use deskport_client::session::{self, Clipboard, Ending, LocalSide, UiEvent};
use deskport_store::{GatewayEvent, GatewayGrant, Instance};
use maud::html;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::console::{page, Console, Fields, Nav};
use crate::error::ApiError;
use crate::state::AppState;

/// Browser console sessions one manager relays at most (each is an RDP client decoding a
/// desktop).
pub const MAX_SESSIONS: usize = 32;

/// How long the page has to send its logon after the socket opened.
const LOGON_WAIT: Duration = Duration::from_secs(30);

/// How long the instance has to accept the RDP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/instances/{id}/console", get(console_page))
        .route("/instances/{id}/console/token", post(mint_token))
        .route("/instances/{id}/console/ws", get(open_socket))
}

#[derive(Debug, serde::Deserialize)]
struct View {
    #[serde(default)]
    view: Option<String>,
}

/// The tabs of an instance's pages.
pub fn instance_tabs(id: Uuid, console: bool) -> maud::Markup {
    let current = |on: bool| on.then_some("page");
    html! {
        nav.tabs aria-label="Instance" {
            a href=(format!("/instances/{id}")) aria-current=[current(!console)] { "Overview" }
            a #console-tab href=(format!("/instances/{id}/console")) aria-current=[current(console)] { "Console" }
        }
    }
}

/// Why the page offers no desktop, if it cannot.
fn unavailable(i: &Instance) -> Option<&'static str> {
    if !i.rdp_enabled {
        Some("Remote connections to this instance are switched off (Overview → Remote Desktop).")
    } else if !i.rdp_gateway {
        Some("The console reaches the instance the way the RD Gateway does: switch gateway access on (Overview → Remote Desktop).")
    } else if i.cert_fingerprint.is_none() {
        Some("The instance's RDP server has not reported its certificate yet, so the console cannot check it is talking to the instance.")
    } else {
        None
    }
}

async fn console_page(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<Uuid>,
    Query(q): Query<View>,
) -> Response {
    let i = match s.store.instance(&[c.project()], id).await {
        Ok(i) => i,
        Err(e) => return crate::console::error_page(Some(&c), ApiError::from(e)),
    };
    let only = q.view.as_deref() == Some("only");
    let user = s.rdp_user.clone().unwrap_or_default();
    let desktop = html! {
        @if let Some(why) = unavailable(&i) {
            p.notice.error #console-unavailable { (why) }
        } @else {
            div #desktop
                data-ws=(format!("/instances/{id}/console/ws"))
                data-token-url=(format!("/instances/{id}/console/token"))
                data-csrf=(c.csrf())
                data-user=(user)
                data-state="idle"
                data-frames="0" {
                form #desktop-logon {
                    div.field {
                        label for="desktop-user" { "User name" }
                        input #desktop-user name="user" autocomplete="username" value=(user);
                    }
                    div.field {
                        label for="desktop-password" { "Password" }
                        input #desktop-password name="password" type="password" autocomplete="current-password";
                    }
                    div.field {
                        label for="desktop-domain" { "Domain" }
                        input #desktop-domain name="domain";
                    }
                    button #desktop-connect type="submit" { "Connect" }
                }
                div #desktop-toolbar hidden {
                    span #desktop-status role="status" {}
                    button.secondary #desktop-cad type="button" { "Ctrl+Alt+Del" }
                    button.secondary #desktop-clipboard-toggle type="button" aria-expanded="false" { "Clipboard" }
                    button.secondary #desktop-fullscreen type="button" { "Full screen" }
                    button.danger #desktop-disconnect type="button" { "Disconnect" }
                }
                div #desktop-clipboard-panel hidden {
                    label for="desktop-clipboard-text" { "Clipboard text (the desktop's copies appear here; send yours with the button)" }
                    textarea #desktop-clipboard-text rows="3" {}
                    button.secondary #desktop-clipboard-send type="button" { "Send to the desktop" }
                }
                div #desktop-screen {
                    canvas #desktop-canvas tabindex="0" aria-label=(format!("Remote desktop of {}", i.name)) {}
                }
                p #desktop-message role="alert" {}
            }
        }
    };
    let title = format!("Console of {}", i.name);
    if only {
        let markup = html! {
            (maud::DOCTYPE)
            html lang="en" {
                (crate::console::head(&title, "/static/desktop.js"))
                body.console-only {
                    p.console-back { a href=(format!("/instances/{id}/console")) { "Back to the console" } " · " (i.name) }
                    (desktop)
                }
            }
        };
        return markup.into_response();
    }
    let body = html! {
        h1 { "Instance " (i.name) }
        (instance_tabs(id, true))
        script src="/static/desktop.js" defer {}
        div.panel {
            p {
                "The instance's desktop, through this manager (no RDP port needed). "
                a #console-only href=(format!("/instances/{id}/console?view=only")) { "Show only the console" }
            }
            (desktop)
        }
    };
    page(&c, StatusCode::OK, &title, Nav::Instances, body)
}

/// Mints the gateway token a console WebSocket is opened with (POST, CSRF-checked: a page of
/// another site cannot get one).
async fn mint_token(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<Uuid>,
    Form(form): Form<Fields>,
) -> Response {
    if !c.csrf_ok(&form) {
        return ApiError::forbidden("the form's CSRF token is missing or stale: reload the page")
            .into_response();
    }
    match c.ops(&s).mint_rdp_token(id, None).await {
        Ok((_, token, secret)) => Json(serde_json::json!({
            "token": secret,
            "expires_at": deskport_api::rfc3339(token.expires_at),
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Whether `origin` (the `Origin` header) names the host the request came to.
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok());
    match (host, origin) {
        (Some(host), Some(origin)) => ["https://", "http://"]
            .iter()
            .any(|scheme| origin.strip_prefix(scheme) == Some(host)),
        _ => false,
    }
}

/// The token among the subprotocols the page asked for.
fn token_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("token.").map(str::to_owned))
        .filter(|t| !t.is_empty())
}

async fn open_socket(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !same_origin(&headers) {
        return ApiError::forbidden(
            "the console's WebSocket is opened only by the console's own pages (Origin)",
        )
        .into_response();
    }
    let Some(secret) = token_of(&headers) else {
        return ApiError::unauthorized("no console token (subprotocol token.SECRET)")
            .into_response();
    };
    let peer = c.addr();
    let grant = match s.store.gateway_grant(&secret).await {
        Ok(Ok(g)) if g.user_id == c.user_id() && g.instance.id == id => g,
        Ok(Ok(_)) => {
            return ApiError::forbidden("that token is not yours for this instance").into_response()
        }
        Ok(Err(refused)) => {
            audit(
                &s,
                refused.user_id,
                refused.project_id,
                refused.instance_id,
                GatewayEvent::Refused,
                format!("Browser console from {peer} refused: {}", refused.reason),
                peer,
            )
            .await;
            return ApiError::forbidden(refused.reason.to_string()).into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Ok(permit) = s.console_sessions.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_console_sessions",
            format!("this manager relays {MAX_SESSIONS} console sessions already; try again later"),
        )
        .into_response();
    };
    ws.protocols([browser::PROTOCOL])
        .max_message_size(browser::MAX_MESSAGE + 1024)
        .on_upgrade(move |socket| async move {
            relay(s, grant, socket, peer).await;
            drop(permit);
        })
}

async fn audit(
    s: &AppState,
    user: Option<Uuid>,
    project: Option<Uuid>,
    instance: Option<Uuid>,
    event: GatewayEvent,
    summary: String,
    peer: IpAddr,
) {
    if let Err(e) = s
        .store
        .audit_gateway(
            user,
            project,
            instance,
            event,
            summary,
            Some(peer.to_string()),
        )
        .await
    {
        tracing::warn!(error = %e, "Browser console: cannot audit");
    }
}

/// [`audit`] of what happened to `grant`'s session.
async fn audit_grant(
    s: &AppState,
    grant: &GatewayGrant,
    event: GatewayEvent,
    summary: String,
    peer: IpAddr,
) {
    audit(
        s,
        Some(grant.user_id),
        Some(grant.project_id),
        Some(grant.instance.id),
        event,
        summary,
        peer,
    )
    .await;
}

async fn send(socket: &mut WebSocket, message: Outgoing) -> bool {
    let message = match message {
        Outgoing::Binary(b) => Message::Binary(b.into()),
        Outgoing::Text(t) => Message::Text(t.into()),
    };
    socket.send(message).await.is_ok()
}

/// Tells the page the session is over, and closes the socket.
async fn end(socket: &mut WebSocket, message: &str) {
    let _ = send(
        socket,
        Outgoing::json("end", serde_json::json!({ "message": message })),
    )
    .await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "session ended".into(),
        })))
        .await;
}

/// Waits for the page's logon message.
async fn logon(socket: &mut WebSocket) -> Result<(String, String, String, (u16, u16)), String> {
    let first = tokio::time::timeout(LOGON_WAIT, socket.recv())
        .await
        .map_err(|_| format!("no logon within {} s", LOGON_WAIT.as_secs()))?;
    let text = match first {
        Some(Ok(Message::Text(t))) => t,
        Some(Ok(_)) => return Err("the first message must be the logon".into()),
        _ => return Err("the page closed the connection".into()),
    };
    match FromBrowser::parse(&text)? {
        FromBrowser::Logon {
            user,
            password,
            domain,
            width,
            height,
        } => {
            if user.is_empty() || user.len() > 256 || domain.len() > 256 || password.len() > 1024 {
                return Err("the user name (1 to 256 bytes), domain (up to 256) or password (up to 1024) is not valid".into());
            }
            Ok((user, password, domain, browser::session_size(width, height)))
        }
        _ => Err("the first message must be the logon".into()),
    }
}

/// One console session: logon, the RDP connection, then messages both ways until one side
/// ends it or access is withdrawn.
async fn relay(s: AppState, grant: GatewayGrant, mut socket: WebSocket, peer: IpAddr) {
    let i = grant.instance.clone();
    let who = format!(
        "{}: browser console of {} from {peer}",
        i.name, grant.user_name
    );
    let (user, password, domain, size) = match logon(&mut socket).await {
        Ok(v) => v,
        Err(e) => return end(&mut socket, &e).await,
    };
    let Some(pin) = i.cert_fingerprint.clone() else {
        return end(
            &mut socket,
            "the instance's RDP server has not reported its certificate yet",
        )
        .await;
    };
    let target = crate::gateway::grant_of(&grant).target;
    let (clip_tx, clip_rx) = mpsc::unbounded_channel();
    let options = deskport_client::Options {
        host: target.ip().to_string(),
        port: target.port(),
        username: user.clone(),
        password,
        domain: (!domain.is_empty()).then_some(domain),
        size,
        security: if i.rdp_nla_only {
            deskport_client::Security::Nla
        } else {
            deskport_client::Security::Auto
        },
        pin: Some(pin),
        // Not read: the pin decides.
        known_hosts: PathBuf::new(),
        connect_timeout: CONNECT_TIMEOUT,
        clipboard: Some(clip_tx),
        display_control: true,
        gfx: true,
        // The browser tab has no sound (yet).
        audio: false,
        gateway: None,
    };
    let _ = send(
        &mut socket,
        Outgoing::json(
            "status",
            serde_json::json!({"state": "connecting", "message": format!("Connecting to {} as {user}", i.name)}),
        ),
    )
    .await;
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let (ui_tx, ui_rx) = mpsc::unbounded_channel();
    let (copied_tx, copied_rx) = mpsc::unbounded_channel();
    let (server_copy_tx, mut server_copy_rx) = mpsc::unbounded_channel();
    let acks = Arc::new(Acks::default());
    let stats = Arc::new(Stats::default());
    let mut frontend = browser::Browser::new(out_tx, acks.clone(), stats.clone());
    let clipboard = Clipboard {
        from_server: clip_rx,
        copied: copied_rx,
        local: LocalSide::Channel(server_copy_tx),
    };
    // The connection and the session (which decodes and encodes pixels) run on a thread of
    // their own, off the listener's.
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
    let handle = tokio::runtime::Handle::current();
    let mut session = tokio::task::spawn_blocking(move || {
        handle.block_on(async move {
            let connected = match deskport_client::connect(&options).await {
                Ok(c) => {
                    let _ = connected_tx.send(Ok(()));
                    c
                }
                Err(e) => {
                    let _ = connected_tx.send(Err(e.to_string()));
                    return Ok(Ending::Closed);
                }
            };
            session::run(connected, &mut frontend, Some(ui_rx), None, Some(clipboard)).await
        })
    });
    match connected_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            audit_grant(
                &s,
                &grant,
                GatewayEvent::Refused,
                format!("{who}: the instance refused the logon of {user}: {e}"),
                peer,
            )
            .await;
            return end(&mut socket, &e).await;
        }
        Err(_) => return end(&mut socket, "the connection failed").await,
    }
    audit_grant(
        &s,
        &grant,
        GatewayEvent::Opened,
        format!("{who} opened (logged on as {user} at {target})"),
        peer,
    )
    .await;
    let _ = send(
        &mut socket,
        Outgoing::json(
            "status",
            serde_json::json!({"state": "connected", "message": format!("Connected to {} as {user}", i.name)}),
        ),
    )
    .await;
    let mut input = Input::default();
    let mut changes = s.store.access_changes();
    changes.mark_unchanged();
    let mut from_browser = 0u64;
    let why = loop {
        tokio::select! {
            Some(message) = out_rx.recv() => {
                if !send(&mut socket, message).await {
                    break "the page's connection dropped".to_owned();
                }
            }
            text = server_copy_rx.recv() => {
                if let Some(text) = text {
                    if !send(&mut socket, Outgoing::json("clipboard", serde_json::json!({"text": text}))).await {
                        break "the page's connection dropped".to_owned();
                    }
                }
            }
            message = socket.recv() => {
                let text = match message {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        break "the page closed the connection".to_owned();
                    }
                    Some(Ok(_)) => continue,
                };
                from_browser += text.len() as u64;
                let reply = match FromBrowser::parse(&text) {
                    Err(e) => Some(e),
                    Ok(FromBrowser::Ack { frame }) => {
                        acks.acknowledge(frame);
                        let _ = ui_tx.send(UiEvent::Wake);
                        None
                    }
                    Ok(FromBrowser::Clipboard { text }) => {
                        let _ = copied_tx.send(text);
                        None
                    }
                    Ok(FromBrowser::Resize { width, height }) => {
                        let (w, h) = browser::session_size(width, height);
                        let _ = ui_tx.send(UiEvent::Resized(w, h));
                        None
                    }
                    Ok(FromBrowser::Logon { .. }) => Some("already logged on".to_owned()),
                    Ok(other) => match input.events(&other) {
                        Ok(events) if events.is_empty() => None,
                        Ok(events) => {
                            let _ = ui_tx.send(UiEvent::Input(events));
                            None
                        }
                        Err(e) => Some(e),
                    },
                };
                if let Some(e) = reply {
                    tracing::debug!(error = %e, "Browser console: a message refused");
                    let _ = send(&mut socket, Outgoing::json("error", serde_json::json!({"message": e}))).await;
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    continue;
                }
                match s.store.recheck_grant(grant.token_id).await {
                    Ok(Err(refused)) => {
                        let reason = format!("access withdrawn: {}", refused.reason);
                        audit_grant(&s, &grant, GatewayEvent::Refused, format!("{who} cut: {}", refused.reason), peer).await;
                        end(&mut socket, &reason).await;
                        break reason;
                    }
                    Ok(Ok(_)) => {}
                    // A database that cannot answer does not cut live sessions (as for the
                    // RD Gateway); the next change rechecks.
                    Err(e) => tracing::warn!(error = %e, "Browser console: cannot recheck access"),
                }
            }
            ended = &mut session => {
                let reason = match ended {
                    Ok(Ok(Ending::Server(reason))) => format!("the session ended: {reason}"),
                    Ok(Ok(_)) => "the session ended".to_owned(),
                    Ok(Err(e)) => format!("the session failed: {e}"),
                    Err(e) => format!("the session failed: {e}"),
                };
                // What the session sent last still goes to the page.
                while let Ok(m) = out_rx.try_recv() {
                    let _ = send(&mut socket, m).await;
                }
                end(&mut socket, &reason).await;
                break reason;
            }
        }
    };
    if !session.is_finished() {
        let _ = ui_tx.send(UiEvent::Input(input.release()));
        let _ = ui_tx.send(UiEvent::Close);
        // (A blocking task cannot be aborted: the Close above ends it.)
        let _ = tokio::time::timeout(Duration::from_secs(3), &mut session).await;
    }
    let to_page = stats.bytes.load(Ordering::Relaxed);
    let frames = stats.frames.load(Ordering::Relaxed);
    tracing::info!(
        instance = %i.name,
        user = %grant.user_name,
        %peer,
        frames,
        bytes_to_page = to_page,
        bytes_from_page = from_browser,
        images = stats.images.load(Ordering::Relaxed),
        copies = stats.copies.load(Ordering::Relaxed),
        %why,
        "Browser console session closed"
    );
    audit_grant(
        &s,
        &grant,
        GatewayEvent::Closed,
        format!("{who} closed: {why} ({frames} frames, {to_page} bytes to the page)"),
        peer,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_the_consoles_own_origin_opens_the_socket() {
        let ok = headers(&[
            (header::HOST, "manager.example:8443"),
            (header::ORIGIN, "https://manager.example:8443"),
        ]);
        assert!(same_origin(&ok));
        for bad in [
            headers(&[(header::HOST, "manager.example:8443")]),
            headers(&[
                (header::HOST, "manager.example:8443"),
                (header::ORIGIN, "https://evil.example"),
            ]),
            headers(&[
                (header::HOST, "manager.example"),
                (header::ORIGIN, "https://manager.example.evil.example"),
            ]),
            headers(&[(header::HOST, "manager.example"), (header::ORIGIN, "null")]),
        ] {
            assert!(!same_origin(&bad), "{bad:?}");
        }
    }

    #[test]
    fn the_token_travels_as_a_subprotocol() {
        let h = headers(&[(
            header::SEC_WEBSOCKET_PROTOCOL,
            "deskport.console.v1, token.dpg_abc",
        )]);
        assert_eq!(token_of(&h).as_deref(), Some("dpg_abc"));
        assert_eq!(
            token_of(&headers(&[(
                header::SEC_WEBSOCKET_PROTOCOL,
                "deskport.console.v1"
            )])),
            None
        );
        assert_eq!(
            token_of(&headers(&[(header::SEC_WEBSOCKET_PROTOCOL, "token.")])),
            None
        );
    }
}
