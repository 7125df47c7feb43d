//! A headless chromium driven through chromedriver (WebDriver): the console's tests and the
//! browser row of the heavy RDP benchmark use the same browser, started the same way.

use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_until, ProcessGuard};

/// What keeps a chromium session alive: chromedriver, and the browser's profile in a
/// directory of its own (removed on drop; chromedriver's own profiles in /tmp are not, when
/// chromedriver is stopped rather than asked to quit).
#[derive(Debug)]
pub struct Chromium {
    _driver: ProcessGuard,
    _profile: tempfile::TempDir,
}

/// A chromium session with a `width`x`height` window and `extra` command-line flags; the
/// [`Chromium`] guard ends the browser with it.
pub async fn chromium(
    width: u32,
    height: u32,
    extra: &[&str],
) -> anyhow::Result<(fantoccini::Client, Chromium)> {
    let profile = tempfile::Builder::new()
        .prefix("deskport-chromium-")
        .tempdir()?;
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let driver = ProcessGuard::spawn(
        "chromedriver",
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    wait_until(Duration::from_secs(20), "chromedriver to listen", || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut args = vec![
        "--headless=new".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        format!("--window-size={width},{height}"),
        "--lang=en-US".to_owned(),
        format!("--user-data-dir={}", profile.path().display()),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }),
    );
    let client = fantoccini::ClientBuilder::rustls()?
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await?;
    Ok((
        client,
        Chromium {
            _driver: driver,
            _profile: profile,
        },
    ))
}

/// The pixels of the page's canvas `id` (read as a PNG data URL).
pub async fn canvas_image(
    client: &fantoccini::Client,
    id: &str,
) -> anyhow::Result<image::RgbImage> {
    let url = client
        .execute(
            "return document.getElementById(arguments[0]).toDataURL('image/png')",
            vec![serde_json::json!(id)],
        )
        .await?;
    let data = url
        .as_str()
        .and_then(|u| u.split_once(','))
        .map(|(_, data)| data)
        .ok_or_else(|| anyhow::anyhow!("canvas {id} gave no data URL: {url}"))?;
    Ok(image::load_from_memory(&crate::base64_decode(data)?)?.to_rgb8())
}
