//! The web console in a real headless browser (Debian's chromium driven through chromedriver):
//! the article's story — log in, Access & Security, the default group's 80 and 443, Edit Rules,
//! Add Rule with RDP and CIDR 127.0.0.1/32 — checked against the API and the audit log; a bad
//! CIDR shows its error and saves nothing; the warning for RDP open to everyone; "use my
//! address"; the NLA switch changes the instance and its downloadable .rdp file; CSRF; labels.
//! Each step's screenshot is kept in test-artifacts/console/.

use std::time::Duration;

use deskport_testsupport::require_program;
use fantoccini::{Client, Locator};
use serde_json::{json, Value};

use crate::cli_manager::{Manager, PASSWORD};

/// chromedriver with a headless chromium session.
pub struct Browser {
    pub client: Client,
    step: u32,
    artifacts: &'static str,
    _driver: deskport_testsupport::browser::Chromium,
}

impl Browser {
    async fn start() -> Self {
        Self::start_for("console", 1280, 1000).await
    }

    /// A browser whose window is `width`x`height`, its screenshots kept in
    /// test-artifacts/`artifacts`/.
    pub async fn start_for(artifacts: &'static str, width: u32, height: u32) -> Self {
        require_program("chromium");
        require_program("chromedriver");
        let (client, driver) = deskport_testsupport::browser::chromium(width, height, &[])
            .await
            .expect("a chromium session");
        Self {
            client,
            step: 0,
            artifacts,
            _driver: driver,
        }
    }

    /// Saves a screenshot of the page as the next step's artifact.
    pub async fn shot(&mut self, name: &str) {
        self.step += 1;
        let png = self.client.screenshot().await.unwrap();
        let path = deskport_testsupport::artifact_dir(self.artifacts)
            .join(format!("{:02}-{name}.png", self.step));
        std::fs::write(path, png).unwrap();
    }

    /// Clicks what `locator` finds and waits for the next page to load (the old one's
    /// elements go stale).
    pub async fn click_nav(&self, locator: Locator<'_>) {
        let old = self.client.find(Locator::Css("html")).await.unwrap();
        self.client
            .find(locator)
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.wait_new_page(old).await;
    }

    /// Waits until `old` (an element of the previous page) is gone and the new page loaded.
    pub async fn wait_new_page(&self, old: fantoccini::elements::Element) {
        for _ in 0..100 {
            if old.tag_name().await.is_err() {
                let ready = self
                    .client
                    .execute("return document.readyState", vec![])
                    .await
                    .unwrap();
                if ready == json!("complete") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no new page after the click on {}",
            self.client.current_url().await.unwrap()
        );
    }

    /// Waits until an element matching `css` is on the page (after a navigation).
    pub async fn wait_for(&self, css: &str) {
        for _ in 0..100 {
            if self.client.find(Locator::Css(css)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {css} on {}", self.client.current_url().await.unwrap());
    }

    /// Replaces the value of the input `id` with `text`.
    pub async fn fill(&self, id: &str, text: &str) {
        let input = self.client.find(Locator::Id(id)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn body(&self) -> String {
        self.text("body").await
    }

    /// Every visible input and select has a label.
    async fn assert_labelled(&self, page: &str) {
        let unlabelled = self
            .client
            .execute(
                "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                    .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label'))
                    .map(e => e.name || e.id);",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(unlabelled, json!([]), "inputs without a label on {page}");
    }

    /// Runs `fetch` in the page (with its cookies); the answer's status and text.
    pub async fn fetch(&self, path: &str, method: &str, form: Value) -> (u64, String) {
        let answer = self
            .client
            .execute_async(
                "const [path, method, form, done] = arguments;
                 const init = { method, redirect: 'manual' };
                 if (method === 'POST') init.body = new URLSearchParams(form);
                 fetch(path, init).then(async r => done([r.status, await r.text()]));",
                vec![json!(path), json!(method), form],
            )
            .await
            .unwrap();
        (
            answer[0].as_u64().unwrap(),
            answer[1].as_str().unwrap().to_owned(),
        )
    }
}

fn rules(m: &Manager) -> Vec<Value> {
    let list: Value =
        serde_json::from_str(&m.ok(&["rule", "list", "--group", "default", "--json"])).unwrap();
    list["security_group_rules"].as_array().unwrap().clone()
}

#[test]
fn the_article_in_the_console() {
    let dir = deskport_testsupport::data_dir();
    let m = Manager::start(dir.path());
    m.login();
    m.ok(&[
        "instance",
        "create",
        "desktop",
        "--address",
        "127.0.0.1",
        "--internal-address",
        "127.0.0.1:13389",
    ]);
    m.ok(&["instance", "rdp", "desktop", "--enable"]);
    let url = m.url.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(story(&m, &url));
}

async fn story(m: &Manager, url: &str) {
    let before = rules(m).len();
    let mut b = Browser::start().await;
    let c = b.client.clone();

    // Log in.
    c.goto(&format!("{url}/access-security")).await.unwrap();
    assert!(
        c.current_url().await.unwrap().path().ends_with("/login"),
        "a page needs a login"
    );
    b.assert_labelled("the login page").await;
    b.shot("login").await;
    c.find(Locator::Id("username"))
        .await
        .unwrap()
        .send_keys("admin")
        .await
        .unwrap();
    c.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys("wrong")
        .await
        .unwrap();
    b.click_nav(Locator::Css("form button[type=submit]")).await;
    assert!(
        b.body().await.contains("wrong user name or password"),
        "{}",
        b.body().await
    );
    // With the keyboard alone: from the user name (which kept its value), Tab to the
    // password, type it, Enter.
    let old = c.find(Locator::Css("html")).await.unwrap();
    c.find(Locator::Id("username"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let focused = c.active_element().await.unwrap();
    assert_eq!(
        focused.attr("id").await.unwrap().as_deref(),
        Some("username")
    );
    focused.send_keys("\u{E004}").await.unwrap();
    let focused = c.active_element().await.unwrap();
    assert_eq!(
        focused.attr("id").await.unwrap().as_deref(),
        Some("password"),
        "Tab reaches the password"
    );
    focused
        .send_keys(&format!("{PASSWORD}\u{E007}"))
        .await
        .unwrap();
    b.wait_new_page(old).await;

    // Access & Security: the default group.
    b.wait_for("table[aria-label='Security groups']").await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/access-security"),
        "{}: {}",
        c.current_url().await.unwrap(),
        c.source().await.unwrap()
    );
    let body = b.body().await;
    assert!(
        body.contains("Access & Security") && body.contains("default"),
        "{body}"
    );
    b.assert_labelled("Access & Security").await;
    b.shot("access-security").await;

    // Create a group (a duplicate name is refused next to its field), then delete it.
    c.find(Locator::Id("name"))
        .await
        .unwrap()
        .send_keys("default")
        .await
        .unwrap();
    b.click_nav(Locator::Css(
        "form[action='/access-security'] button[type=submit]",
    ))
    .await;
    assert!(
        !b.text("#name-error").await.is_empty(),
        "a duplicate name is refused at its field"
    );
    let name = c.find(Locator::Id("name")).await.unwrap();
    name.clear().await.unwrap();
    name.send_keys("web-servers").await.unwrap();
    c.find(Locator::Id("description"))
        .await
        .unwrap()
        .send_keys("HTTP only")
        .await
        .unwrap();
    b.click_nav(Locator::Css(
        "form[action='/access-security'] button[type=submit]",
    ))
    .await;
    assert!(
        b.body()
            .await
            .contains("Created security group web-servers"),
        "{}",
        b.body().await
    );
    b.click_nav(Locator::LinkText("Back to Access & Security"))
        .await;
    assert!(m.ok(&["sg", "list"]).contains("web-servers"));
    b.click_nav(Locator::Css(
        "button[aria-label='Delete security group web-servers']",
    ))
    .await;
    assert!(
        b.body()
            .await
            .contains("Deleted security group web-servers"),
        "{}",
        b.body().await
    );
    assert!(!m.ok(&["sg", "list"]).contains("web-servers"));
    assert!(
        c.find(Locator::Css(
            "button[aria-label='Delete security group default']"
        ))
        .await
        .is_err(),
        "default cannot be deleted"
    );

    // Edit Rules: only 80 and 443 are open.
    b.click_nav(Locator::LinkText("Edit Rules")).await;
    b.wait_for("#rules").await;
    let mut ingress_ports = Vec::new();
    for row in c.find_all(Locator::Css("#rules tbody tr")).await.unwrap() {
        let cells = row.find_all(Locator::Css("td")).await.unwrap();
        if cells[0].text().await.unwrap() == "Ingress" {
            ingress_ports.push(cells[3].text().await.unwrap());
        }
    }
    ingress_ports.sort();
    ingress_ports.dedup();
    assert_eq!(ingress_ports, ["443", "80"], "only HTTP and HTTPS come in");
    b.shot("edit-rules").await;

    // Add Rule → RDP, CIDR 127.0.0.1/32.
    b.click_nav(Locator::LinkText("Add Rule")).await;
    b.assert_labelled("Add Rule").await;
    let cidr = c.find(Locator::Id("remote_ip_prefix")).await.unwrap();
    assert_eq!(
        cidr.prop("value").await.unwrap().as_deref(),
        Some("0.0.0.0/0"),
        "CIDR is pre-filled"
    );
    c.find(Locator::Id("template"))
        .await
        .unwrap()
        .select_by_value("rdp")
        .await
        .unwrap();
    // RDP to the whole internet: a warning, before anything is saved.
    let warning = c.find(Locator::Id("open-warning")).await.unwrap();
    assert!(
        warning.is_displayed().await.unwrap(),
        "RDP open to 0.0.0.0/0 warns"
    );
    b.shot("add-rule-rdp-warning").await;
    // "Use my address" fills the caller's address.
    c.find(Locator::Id("use-my-address"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        cidr.prop("value").await.unwrap().as_deref(),
        Some("127.0.0.1/32")
    );
    assert!(
        !warning.is_displayed().await.unwrap(),
        "no warning for one address"
    );
    b.shot("add-rule-rdp-my-address").await;
    b.click_nav(Locator::Css("button[value=add]")).await;
    let body = b.body().await;
    assert!(body.contains("Added rule"), "{body}");
    let table = b.text("#rules").await;
    assert!(
        table.contains("3389") && table.contains("127.0.0.1/32"),
        "{table}"
    );
    b.shot("rule-added").await;

    // The API has it, and the audit log shows who added it.
    let api = rules(m);
    assert_eq!(api.len(), before + 1);
    assert!(
        api.iter()
            .any(|r| r["port_range_min"] == 3389 && r["remote_ip_prefix"] == "127.0.0.1/32"),
        "{api:?}"
    );
    b.click_nav(Locator::LinkText("Audit log")).await;
    let audit = b.text("#audit").await;
    assert!(audit.contains("admin") && audit.contains("3389"), "{audit}");
    b.assert_labelled("the audit log").await;
    b.shot("audit").await;

    // A bad CIDR: the error is next to the field, the values stay, nothing is saved.
    c.goto(&format!("{url}/access-security")).await.unwrap();
    b.click_nav(Locator::LinkText("Edit Rules")).await;
    b.click_nav(Locator::LinkText("Add Rule")).await;
    c.find(Locator::Id("template"))
        .await
        .unwrap()
        .select_by_value("rdp")
        .await
        .unwrap();
    let cidr = c.find(Locator::Id("remote_ip_prefix")).await.unwrap();
    cidr.clear().await.unwrap();
    cidr.send_keys("10.0.0.300/8").await.unwrap();
    b.click_nav(Locator::Css("button[value=add]")).await;
    let error = b.text("#remote_ip_prefix-error").await;
    assert!(!error.is_empty(), "an error next to the CIDR field");
    let kept = c
        .find(Locator::Id("remote_ip_prefix"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some("10.0.0.300/8"));
    b.shot("bad-cidr").await;
    assert_eq!(rules(m).len(), before + 1, "nothing saved");

    // The instance's Remote Desktop panel: the NLA switch and the .rdp file follow each other.
    b.click_nav(Locator::LinkText("Instances")).await;
    b.click_nav(Locator::LinkText("desktop")).await;
    b.assert_labelled("the instance page").await;
    let body = b.body().await;
    assert!(
        body.contains("Allow remote connections to this computer"),
        "{body}"
    );
    assert!(body.contains("Network Level Authentication"), "{body}");
    let nla = c.find(Locator::Id("nla_only")).await.unwrap();
    assert!(nla.is_selected().await.unwrap(), "NLA only by default");
    let download = c.find(Locator::Id("download-rdp")).await.unwrap();
    let rdp_path = download.attr("href").await.unwrap().unwrap();
    let (status, file) = b.fetch(&rdp_path, "GET", Value::Null).await;
    assert_eq!(status, 200);
    assert!(
        file.contains("full address:s:127.0.0.1:3389") && file.contains("enablecredsspsupport:i:1"),
        "{file}"
    );
    b.shot("instance").await;
    nla.click().await.unwrap();
    b.click_nav(Locator::Css("#remote-desktop button[type=submit]"))
        .await;
    assert!(
        b.body().await.contains("Remote Desktop is on"),
        "{}",
        b.body().await
    );
    assert!(!c
        .find(Locator::Id("nla_only"))
        .await
        .unwrap()
        .is_selected()
        .await
        .unwrap());
    let shown: Value =
        serde_json::from_str(&m.ok(&["instance", "show", "desktop", "--json"])).unwrap();
    assert_eq!(
        shown["instance"]["remote_desktop"]["nla_only"], false,
        "{shown}"
    );
    let (_, file) = b.fetch(&rdp_path, "GET", Value::Null).await;
    assert!(file.contains("enablecredsspsupport:i:0"), "{file}");
    b.shot("instance-nla-off").await;

    // A form without the CSRF token is refused, and changes nothing.
    let (status, _) = b
        .fetch("/access-security", "POST", json!({"name": "forged"}))
        .await;
    assert_eq!(status, 403);
    assert!(!m.ok(&["sg", "list"]).contains("forged"));

    // Log out: the pages need a login again.
    b.click_nav(Locator::Css("form[action='/logout'] button"))
        .await;
    c.goto(&format!("{url}/instances")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/login"));
    c.close().await.unwrap();
}
