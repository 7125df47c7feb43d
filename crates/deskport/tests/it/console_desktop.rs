//! The instance's desktop in the browser (the console's Console tab) in a real headless
//! chromium: log in, open the tab, log on to the instance's virtual session; the canvas shows
//! the session's screen pixel for pixel; keys typed and a click on the canvas reach programs
//! in the session; the session follows the size of the browser window; clipboard text crosses
//! both ways; switching gateway access off ends the session; a WebSocket without a token or
//! from another origin is refused. Screenshots of each step are kept in
//! test-artifacts/console-desktop/.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use deskport_testsupport::{free_port, image_util, require_program, wait_until};
use fantoccini::actions::{InputSource, KeyAction, KeyActions, MouseActions, PointerAction};
use fantoccini::Locator;
use image::RgbImage;
use serde_json::{json, Value};

use crate::cli_manager::{Manager, PASSWORD as ADMIN_PASSWORD};
use crate::console::Browser;
use crate::rdp::PASSWORD;
use crate::rdp_sessions::{copy_on, paste_on, screen_size, Server};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The canvas's pixels.
async fn canvas(b: &Browser) -> RgbImage {
    deskport_testsupport::browser::canvas_image(&b.client, "desktop-canvas")
        .await
        .unwrap()
}

/// `#desktop`'s `data-NAME`.
async fn state(b: &Browser, name: &str) -> String {
    b.client
        .execute(
            "return document.getElementById('desktop').dataset[arguments[0]] || ''",
            vec![json!(name)],
        )
        .await
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits (polling the page) until `check` holds.
async fn eventually<F, Fut>(what: &str, seconds: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + Duration::from_secs(seconds);
    while std::time::Instant::now() < until {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Waits until the canvas shows exactly what `display` shows.
async fn canvas_shows(b: &mut Browser, display: &str, step: &str) -> RgbImage {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let shown = canvas(b).await;
        if let Ok(screen) = deskport_testsupport::screenshot(display) {
            if shown.dimensions() == screen.dimensions()
                && image_util::diff_fraction(
                    &shown,
                    (0, 0),
                    &screen,
                    (0, 0),
                    screen.dimensions(),
                    0,
                ) == 0.0
            {
                image_util::save_png(
                    &shown,
                    &deskport_testsupport::artifact_dir("console-desktop")
                        .join(format!("canvas-{step}.png")),
                );
                b.shot(step).await;
                return shown;
            }
            if std::time::Instant::now() > until {
                image_util::save_png(
                    &shown,
                    &deskport_testsupport::artifact_dir("console-desktop")
                        .join(format!("canvas-{step}-mismatch.png")),
                );
                image_util::save_png(
                    &screen,
                    &deskport_testsupport::artifact_dir("console-desktop")
                        .join(format!("session-{step}.png")),
                );
                panic!(
                    "the canvas ({:?}) does not show the session ({:?}) at {step}",
                    shown.dimensions(),
                    screen.dimensions()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Opens a WebSocket to `path` from the page with `protocols`; whether it opened.
async fn socket_opens(b: &Browser, path: &str, protocols: Value) -> bool {
    b.client
        .execute_async(
            "const [path, protocols, done] = arguments;
             const url = location.origin.replace(/^http/, 'ws') + path;
             const ws = new WebSocket(url, protocols);
             ws.onopen = () => { ws.close(); done(true); };
             ws.onerror = () => done(false);",
            vec![json!(path), protocols],
        )
        .await
        .unwrap()
        .as_bool()
        .unwrap()
}

/// A WebSocket upgrade request by hand (a browser cannot lie about its Origin); the answer's
/// head.
fn raw_upgrade(port: u16, path: &str, cookie: &str, token: &str, origin: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect((LO, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: deskport.console.v1, token.{token}\r\n\
         Origin: {origin}\r\nCookie: deskport_session={cookie}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let mut text = String::from_utf8_lossy(&head).into_owned();
    if text.starts_with("HTTP/1.1 4") {
        let mut body = [0u8; 512];
        let n = s.read(&mut body).unwrap_or(0);
        text.push_str(&String::from_utf8_lossy(&body[..n]));
    }
    text
}

async fn log_in(b: &Browser, url: &str) {
    b.client.goto(&format!("{url}/login")).await.unwrap();
    b.fill("username", "admin").await;
    b.fill("password", ADMIN_PASSWORD).await;
    b.click_nav(Locator::Css("form button[type=submit]")).await;
}

/// The Console tab's logon form, filled and submitted.
async fn desktop_logon(b: &Browser, user: &str, password: &str) {
    b.fill("desktop-user", user).await;
    b.fill("desktop-password", password).await;
    b.client
        .find(Locator::Id("desktop-connect"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Clicks the canvas at desktop pixel `(x, y)` with `button` (W3C numbering).
async fn click_at(b: &Browser, x: u32, y: u32, button: u64) {
    let rect = b
        .client
        .execute(
            "const c = document.getElementById('desktop-canvas');
             const r = c.getBoundingClientRect();
             return [r.left, r.top, r.width / c.width, r.height / c.height];",
            vec![],
        )
        .await
        .unwrap();
    let f = |i: usize| rect[i].as_f64().unwrap();
    let (vx, vy) = (
        f(0) + (f64::from(x) + 0.5) * f(2),
        f(1) + (f64::from(y) + 0.5) * f(3),
    );
    let mouse = MouseActions::new("mouse".into())
        .then(PointerAction::MoveTo {
            duration: None,
            x: vx.floor(),
            y: vy.floor(),
        })
        .then(PointerAction::Down { button })
        .then(PointerAction::Up { button });
    b.client.perform_actions(mouse).await.unwrap();
}

/// Types `text` with key actions (each character a key down and up) into the focused element.
async fn type_keys(b: &Browser, text: &str) {
    let mut keys = KeyActions::new("keys".into());
    for ch in text.chars() {
        keys = keys
            .then(KeyAction::Down { value: ch })
            .then(KeyAction::Up { value: ch });
    }
    b.client.perform_actions(keys).await.unwrap();
}

#[test]
fn the_desktop_in_a_browser_tab() {
    require_program("xev");
    require_program("xclip");
    require_program("stdbuf");
    let dir = deskport_testsupport::data_dir();
    let mut m = Manager::start(dir.path());
    m.login();
    let port = free_port(LO);
    let address = format!("127.0.0.1:{port}");
    let created: Value = serde_json::from_str(&m.ok(&[
        "instance",
        "create",
        "desktop",
        "--address",
        &address,
        "--internal-address",
        &address,
        "--json",
    ]))
    .unwrap();
    let id = created["instance"]["id"].as_str().unwrap().to_owned();
    let agent_token = created["agent_token"].as_str().unwrap().to_owned();
    m.ok(&["instance", "rdp", "desktop", "--enable", "--gateway"]);
    // alice's session: the terminal writing what is typed to a file, and xev reporting the
    // buttons pressed in its window (at 0,300).
    let server = Server::start_with(
        dir.path(),
        3600,
        port,
        &["--manager", &m.url, "--token", &agent_token],
        &["exec stdbuf -oL xev -geometry 300x200+0+300 -event button > SHARED/xev-$DESKPORT_ACCOUNT.txt"],
    );
    wait_until(
        Duration::from_secs(20),
        "the instance's certificate in the manager",
        || {
            let shown: Value =
                serde_json::from_str(&m.ok(&["instance", "show", "desktop", "--json"])).ok()?;
            shown["instance"]["cert_fingerprint"].as_str().map(|_| ())
        },
    );
    let url = m.url.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut b = Browser::start_for("console-desktop", 1280, 1000).await;
            log_in(&b, &url).await;

            // The Console tab of the instance's page.
            b.client
                .goto(&format!("{url}/instances/{id}"))
                .await
                .unwrap();
            b.click_nav(Locator::Id("console-tab")).await;
            b.wait_for("#desktop-logon").await;
            b.shot("logon").await;

            // No token, or a page of another origin: refused before any RDP.
            let ws = format!("/instances/{id}/console/ws");
            assert!(!socket_opens(&b, &ws, json!(["deskport.console.v1"])).await);
            assert!(
                !socket_opens(
                    &b,
                    &ws,
                    json!(["deskport.console.v1", "token.dpg_not_a_token"])
                )
                .await
            );
            let (status, _) = b
                .fetch(&format!("/instances/{id}/console/token"), "POST", json!({}))
                .await;
            assert_eq!(status, 403, "a token needs the page's CSRF token");
            // A page of another site cannot open it even with the user's cookie and a valid
            // token (a browser sends the cookie along; the Origin header gives it away).
            let csrf = b
                .client
                .execute(
                    "return document.getElementById('desktop').dataset.csrf",
                    vec![],
                )
                .await
                .unwrap();
            let (status, minted) = b
                .fetch(
                    &format!("/instances/{id}/console/token"),
                    "POST",
                    json!({ "csrf": csrf }),
                )
                .await;
            assert_eq!(status, 200, "{minted}");
            let token = serde_json::from_str::<Value>(&minted).unwrap()["token"]
                .as_str()
                .unwrap()
                .to_owned();
            let cookie = b
                .client
                .get_named_cookie("deskport_session")
                .await
                .unwrap()
                .value()
                .to_owned();
            let upgrade = |origin: &str| {
                raw_upgrade(
                    m.port,
                    &format!("/instances/{id}/console/ws"),
                    &cookie,
                    &token,
                    origin,
                )
            };
            let foreign = upgrade("http://evil.example");
            assert!(foreign.starts_with("HTTP/1.1 403"), "{foreign}");
            assert!(foreign.contains("Origin"), "{foreign}");
            let own = upgrade(&format!("http://127.0.0.1:{}", m.port));
            assert!(
                own.starts_with("HTTP/1.1 101"),
                "the same request from the console's origin: {own}"
            );

            // A wrong password: the page says so and offers the form again.
            let c = b.client.clone();
            desktop_logon(&b, "alice", "not her password").await;
            eventually("the logon to be refused", 30, || async {
                state(&b, "state").await == "ended"
            })
            .await;
            let refused = b.text("#desktop-message").await;
            eprintln!("a wrong password: {refused}");
            assert!(
                refused.contains("refused the user name or password"),
                "{refused}"
            );
            b.shot("wrong-password").await;

            // Log on as alice: the canvas shows her session, every pixel.
            desktop_logon(&b, "alice", PASSWORD).await;
            eventually("the session to connect", 30, || async {
                state(&b, "state").await == "connected"
                    && state(&b, "frames").await.parse::<u32>().unwrap_or(0) > 0
            })
            .await;
            let alice = server.display_of("alice");
            let first = canvas_shows(&mut b, &alice, "connected").await;
            let metrics = crate::firewall_gateway::http_get(m.port, "/metrics").unwrap();
            assert!(
                metrics.contains("deskport_manager_console_sessions 1\n"),
                "{metrics}"
            );
            let screen_area = b
                .client
                .execute(
                    "const s = document.getElementById('desktop-screen');
                     return [s.clientWidth, s.clientHeight];",
                    vec![],
                )
                .await
                .unwrap();
            eprintln!("session {:?}, tab area {screen_area}", first.dimensions());

            // Keys reach the terminal (the physical keys, and text as Unicode); a click
            // reaches xev.
            click_at(&b, 40, 40, 0).await;
            type_keys(&b, "hello browser 42").await;
            type_keys(&b, "\u{E007}").await; // Enter
            let typed = wait_until(Duration::from_secs(15), "the typed line", || {
                let t = server.typed("alice");
                t.contains("hello browser 42\n").then_some(t)
            });
            assert_eq!(typed, "hello browser 42\n");
            click_at(&b, 100, 350, 0).await;
            let xev = dir.path().join("shared/xev-alice.txt");
            let pressed = wait_until(Duration::from_secs(15), "xev to see the click", || {
                std::fs::read_to_string(&xev)
                    .ok()
                    .filter(|t| t.contains("ButtonPress"))
            });
            let root: Vec<i32> = pressed
                .split("root:(")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .unwrap()
                .split(',')
                .map(|v| v.trim().parse().unwrap())
                .collect();
            assert!(
                pressed.contains("button 1")
                    && root[0].abs_diff(100) <= 1
                    && root[1].abs_diff(350) <= 1,
                "a left click at (100, 350) on the session's screen: {pressed}"
            );

            // The clipboard, both ways: copied in the session, it shows in the page's panel;
            // sent from the panel, it is pasted in the session.
            let from_session = "copied in the session: grüße ✓";
            let _copy = copy_on(&alice, from_session);
            eventually("the session's copy in the page", 15, || async {
                b.client
                    .execute(
                        "return document.getElementById('desktop-clipboard-text').value",
                        vec![],
                    )
                    .await
                    .unwrap()
                    == json!(from_session)
            })
            .await;
            let from_page = "sent from the browser: ½ ✓";
            c.find(Locator::Id("desktop-clipboard-toggle"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            let text = c.find(Locator::Id("desktop-clipboard-text")).await.unwrap();
            text.clear().await.unwrap();
            text.send_keys(from_page).await.unwrap();
            c.find(Locator::Id("desktop-clipboard-send"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            wait_until(
                Duration::from_secs(15),
                "the page's text in the session",
                || (paste_on(&alice).as_deref() == Some(from_page)).then_some(()),
            );
            b.shot("clipboard").await;

            // The browser window changes size: the session follows, and the canvas shows it.
            let before = screen_size(&alice).unwrap();
            c.set_window_size(900, 700).await.unwrap();
            let after = wait_until(Duration::from_secs(20), "the session to follow", || {
                screen_size(&alice).filter(|s| *s != before)
            });
            eprintln!("session {before:?} -> {after:?}");
            assert!(
                after.0 < before.0 && after.1 < before.1,
                "{before:?} -> {after:?}"
            );
            canvas_shows(&mut b, &alice, "resized").await;

            // The manager restarts (an upgrade, a crash): the page reconnects by itself, to the
            // same session.
            let frames_before: u32 = state(&b, "frames").await.parse().unwrap();
            m.restart();
            eventually("the page to reconnect", 30, || async {
                state(&b, "state").await == "connected"
                    && state(&b, "frames").await.parse::<u32>().unwrap_or(0) > frames_before
            })
            .await;
            canvas_shows(&mut b, &alice, "reconnected").await;

            // Gateway access off: the page is told, the session ends.
            m.ok(&["instance", "rdp", "desktop", "--no-gateway"]);
            eventually("the session to end", 15, || async {
                state(&b, "state").await == "ended"
            })
            .await;
            let message = b.text("#desktop-message").await;
            assert!(message.contains("gateway access"), "{message}");
            wait_until(Duration::from_secs(10), "the relay to close", || {
                crate::firewall_gateway::http_get(m.port, "/metrics")
                    .filter(|t| t.contains("deskport_manager_console_sessions 0\n"))
            });
            b.shot("cut").await;
        });

    // Every session is in the audit log.
    let audit = m.ok(&["audit", "list", "--json", "--limit", "100"]);
    for line in [
        "browser console of admin from 127.0.0.1 opened (logged on as alice",
        "browser console of admin from 127.0.0.1 cut",
        "Browser console from 127.0.0.1 refused: the gateway token is not known",
        "browser console of admin from 127.0.0.1: the instance refused the logon of alice",
    ] {
        assert!(
            audit.contains(line),
            "{line} missing from the audit log:\n{audit}"
        );
    }
}
