//! The web console: server-rendered pages with the article's screens — *Access & Security*,
//! *Edit Rules*, *Add Rule* (with *RDP* and *CIDR*), the instances with their *Remote Desktop*
//! panel, and the audit log. Every page works without JavaScript (`static/console.js` only adds
//! conveniences); every form carries the session's CSRF token; every input has a label.
//!
//! The console makes its changes through the same operations as the API handlers
//! ([`crate::ops`]: the same role check, validation and audit), so a change made here is the
//! same change the API would make.

use std::collections::HashMap;
use std::net::IpAddr;

use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use deskport_policy::template::{TemplateKind, TEMPLATES};
use deskport_policy::{GroupId, RuleId, RuleSpec};
use deskport_store::{AuditFilter, GroupRecord, Instance, Role, User};
use maud::{html, Markup, DOCTYPE};
use uuid::Uuid;

use crate::api::accounts::login as check_login;
use crate::auth::{cookie, new_token, token_hash, ClientAddr, SESSION_COOKIE};
use crate::convert;
use crate::error::ApiError;
use crate::ops::{self, Ops};
use crate::state::AppState;

const PROJECT_COOKIE: &str = "deskport_project";
const FLASH_COOKIE: &str = "deskport_flash";
const LOGIN_CSRF_COOKIE: &str = "deskport_login_csrf";
/// How long a console session lasts.
const SESSION_MS: i64 = 12 * 3600 * 1000;

pub(crate) type Fields = HashMap<String, String>;

/// The console's routes (merged at the root of the manager's application).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/access-security") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/project", post(switch_project))
        .route("/access-security", get(access_security).post(create_group))
        .route("/access-security/api", get(api_access))
        .route("/security-groups/{id}", get(edit_rules))
        .route("/security-groups/{id}/delete", post(delete_group))
        .route(
            "/security-groups/{id}/add-rule",
            get(add_rule_page).post(add_rule),
        )
        .route("/security-group-rules/{id}/delete", post(delete_rule))
        .route("/instances", get(instances))
        .route("/instances/{id}", get(instance_page))
        .route("/instances/{id}/remote-desktop", post(set_remote_desktop))
        .route("/instances/{id}/attach", post(attach_group))
        .route("/instances/{id}/detach/{group}", post(detach_group))
        .route("/instances/{id}/rdp-file", get(rdp_file))
        .route("/instances/{id}/gateway", post(gateway_connect))
        .route("/instances/{id}/gateway-rdp", post(gateway_rdp_file))
        .route("/audit", get(audit))
        .route(
            "/static/console.css",
            get(|| async { static_file("text/css", include_str!("../static/console.css")) }),
        )
        .route(
            "/static/console.js",
            get(|| async { static_file("text/javascript", include_str!("../static/console.js")) }),
        )
        .route(
            "/static/desktop.js",
            get(|| async { static_file("text/javascript", include_str!("../static/desktop.js")) }),
        )
        .merge(crate::desktop::router())
        .layer(axum::middleware::map_response(security_headers))
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Pages run no inline script and are never framed or cached.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::CACHE_CONTROL, "no-store");
    response
}

// ---- cookies, flash messages, sessions ----

fn set_cookie(name: &str, value: &str, max_age: Option<i64>) -> (header::HeaderName, String) {
    let age = max_age
        .map(|s| format!("; Max-Age={s}"))
        .unwrap_or_default();
    (
        header::SET_COOKIE,
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict{age}"),
    )
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(b) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A message shown once on the next page: `ok`, `warning` or `error`.
#[derive(Debug, Clone)]
struct Flash {
    kind: String,
    lines: Vec<String>,
}

fn flash_cookie(kind: &str, lines: &[String]) -> (header::HeaderName, String) {
    let text = std::iter::once(kind.to_owned())
        .chain(lines.iter().cloned())
        .collect::<Vec<_>>()
        .join("\n");
    set_cookie(FLASH_COOKIE, &percent_encode(&text), Some(60))
}

/// Redirects to `to`, with a message for the next page.
fn redirect_with(to: &str, kind: &str, lines: &[String]) -> Response {
    ([flash_cookie(kind, lines)], Redirect::to(to)).into_response()
}

fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A logged-in console user, the project they are looking at, and their CSRF token.
#[derive(Debug, Clone)]
pub struct Console {
    user: User,
    csrf: String,
    session_hash: String,
    project: Uuid,
    addr: IpAddr,
    flash: Option<Flash>,
    /// The certificate the manager serves, when over HTTPS.
    tls_fingerprint: Option<String>,
}

impl Console {
    fn project_name(&self) -> &str {
        self.user
            .memberships
            .iter()
            .find(|m| m.project_id == self.project)
            .map(|m| m.project_name.as_str())
            .unwrap_or("?")
    }

    pub(crate) fn csrf(&self) -> &str {
        &self.csrf
    }

    pub(crate) fn project(&self) -> Uuid {
        self.project
    }

    pub(crate) fn addr(&self) -> IpAddr {
        self.addr
    }

    pub(crate) fn user_id(&self) -> Uuid {
        self.user.id
    }

    /// Whether the page offers changes (the operations check again).
    fn can_change(&self) -> bool {
        ops::allowed(&self.user, self.project, Role::Member)
    }

    pub(crate) fn csrf_ok(&self, form: &Fields) -> bool {
        form.get("csrf").is_some_and(|t| constant_eq(t, &self.csrf))
    }

    /// The user's changes, within the project shown.
    pub(crate) fn ops<'a>(&'a self, s: &'a AppState) -> Ops<'a> {
        s.ops(&self.user, self.addr, vec![self.project])
    }
}

impl FromRequestParts<AppState> for Console {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let addr = ClientAddr::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?
            .0;
        let to_login = || Redirect::to("/login").into_response();
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login());
        };
        let session_hash = token_hash(token);
        let session = state
            .store
            .session(&session_hash, crate::now_ms())
            .await
            .map_err(|e| error_page(None, ApiError::from(e)))?
            .ok_or_else(to_login)?;
        let user = session.user;
        let chosen = cookie(&parts.headers, PROJECT_COOKIE)
            .and_then(|p| p.parse::<Uuid>().ok())
            .filter(|p| user.role_in(*p).is_some());
        let project = chosen
            .or_else(|| {
                user.memberships
                    .iter()
                    .find(|m| m.project_name == "default")
                    .or(user.memberships.first())
                    .map(|m| m.project_id)
            })
            .ok_or_else(|| {
                error_page(
                    None,
                    ApiError::forbidden("you belong to no project; ask an administrator"),
                )
            })?;
        let flash = cookie(&parts.headers, FLASH_COOKIE).map(|v| {
            let text = percent_decode(v);
            let mut lines = text.lines().map(str::to_owned);
            Flash {
                kind: lines.next().unwrap_or_default(),
                lines: lines.collect(),
            }
        });
        Ok(Console {
            user,
            csrf: session.csrf_token,
            session_hash,
            project,
            addr,
            flash,
            tls_fingerprint: state.tls_fingerprint.clone(),
        })
    }
}

// ---- layout ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Instances,
    Access,
    Audit,
}

fn current(on: bool) -> Option<&'static str> {
    on.then_some("page")
}

fn csrf_field(c: &Console) -> Markup {
    html! { input type="hidden" name="csrf" value=(c.csrf); }
}

/// A page's `<head>`: its title, the console's style sheet and `script`.
pub(crate) fn head(title: &str, script: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " — deskport" }
            link rel="stylesheet" href="/static/console.css";
            script src=(script) defer {}
        }
    }
}

/// A whole page: header with navigation, project switcher and log-out, then `body`.
pub(crate) fn page(
    c: &Console,
    status: StatusCode,
    title: &str,
    nav: Nav,
    body: Markup,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, "/static/console.js"))
            body {
                header.top {
                    a.brand href="/" { "deskport" }
                    nav aria-label="Main" {
                        a href="/instances" aria-current=[current(nav == Nav::Instances)] { "Instances" }
                        a href="/access-security" aria-current=[current(nav == Nav::Access)] { "Access & Security" }
                        a href="/audit" aria-current=[current(nav == Nav::Audit)] { "Audit log" }
                    }
                    form #project-switch method="post" action="/project" {
                        (csrf_field(c))
                        label for="project" { "Project" }
                        select #project name="project" {
                            @for m in &c.user.memberships {
                                option value=(m.project_id) selected[m.project_id == c.project] { (m.project_name) }
                            }
                        }
                        button.secondary type="submit" { "Switch" }
                    }
                    form method="post" action="/logout" {
                        (csrf_field(c))
                        span { (c.user.name) }
                        button.secondary type="submit" { "Log out" }
                    }
                }
                main {
                    @if let Some(f) = &c.flash {
                        div.notice.(f.kind) role="status" {
                            @for line in &f.lines { div { (line) } }
                        }
                    }
                    (body)
                }
                (access_footer(c.tls_fingerprint.as_deref()))
            }
        }
    };
    let mut response = (status, markup).into_response();
    if c.flash.is_some() {
        let (name, value) = set_cookie(FLASH_COOKIE, "", Some(0));
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().append(name, v);
        }
    }
    response
}

/// An error as a page (with the layout when the user is known).
pub(crate) fn error_page(c: Option<&Console>, e: ApiError) -> Response {
    let title = match e.status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::CONFLICT => "Conflict",
        s if s.is_client_error() => "Not accepted",
        _ => "Something went wrong",
    };
    let body = html! {
        h1 { (title) }
        div.notice.error role="alert" { (e.message) }
        p { a href="/access-security" { "Back to Access & Security" } }
    };
    match c {
        Some(c) => page(c, e.status, title, Nav::Access, body),
        None => (
            e.status,
            html! {
                (DOCTYPE)
                html lang="en" {
                    head { meta charset="utf-8"; title { (title) " — deskport" } link rel="stylesheet" href="/static/console.css"; }
                    body { main { (body) } }
                }
            },
        )
            .into_response(),
    }
}

fn forbidden_csrf(c: &Console) -> Response {
    error_page(
        Some(c),
        ApiError::forbidden(
            "this form expired or came from another site; reload the page and try again",
        ),
    )
}

// ---- log in, log out, project ----

#[derive(Debug, serde::Deserialize)]
struct LoginQuery {
    #[serde(default)]
    error: Option<String>,
}

/// How the console is reached: the certificate's fingerprint to compare with the one the
/// browser shows (and to pin in the CLI and agents), or that this is plain loopback HTTP.
fn access_footer(fingerprint: Option<&str>) -> Markup {
    html! {
        footer.access {
            @if let Some(fp) = fingerprint {
                "This manager's HTTPS certificate: "
                code #manager-fingerprint { "SHA256:" (fp) }
                " — pin it with "
                code { "--manager-fingerprint" }
                " (agents) or compare it with what "
                code { "deskport login" }
                " prints."
            } @else {
                "Served over plain HTTP on the loopback interface only."
            }
        }
    }
}

fn login_form(
    csrf: &str,
    username: &str,
    error: Option<&str>,
    fingerprint: Option<&str>,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Log in — deskport" }
                link rel="stylesheet" href="/static/console.css";
            }
            body {
                main.login {
                    h1 { "Log in to deskport" }
                    @if let Some(error) = error {
                        div.notice.error role="alert" { (error) }
                    }
                    form.stacked.panel method="post" action="/login" {
                        input type="hidden" name="csrf" value=(csrf);
                        div.field {
                            label for="username" { "User name" }
                            input #username type="text" name="username" value=(username) autocomplete="username" required autofocus;
                        }
                        div.field {
                            label for="password" { "Password" }
                            input #password type="password" name="password" autocomplete="current-password" required;
                        }
                        button type="submit" { "Log in" }
                    }
                }
                (access_footer(fingerprint))
            }
        }
    }
}

async fn login_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let existing = cookie(&headers, LOGIN_CSRF_COOKIE).map(str::to_owned);
    let csrf = existing.clone().unwrap_or_else(|| new_token("").0);
    let body = login_form(&csrf, "", q.error.as_deref(), s.tls_fingerprint.as_deref());
    let mut response = body.into_response();
    if existing.is_none() {
        let (name, value) = set_cookie(LOGIN_CSRF_COOKIE, &csrf, None);
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().append(name, v);
        }
    }
    response
}

async fn login(
    State(s): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> Response {
    let username = form.get("username").map(|u| u.trim()).unwrap_or_default();
    let password = form.get("password").map(String::as_str).unwrap_or_default();
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    let given = form.get("csrf").map(String::as_str).unwrap_or_default();
    if expected.is_empty() || !constant_eq(expected, given) {
        let csrf = new_token("").0;
        let mut response = (
            StatusCode::FORBIDDEN,
            login_form(
                &csrf,
                username,
                Some("This form expired; please log in again."),
                s.tls_fingerprint.as_deref(),
            ),
        )
            .into_response();
        let (name, value) = set_cookie(LOGIN_CSRF_COOKIE, &csrf, None);
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().append(name, v);
        }
        return response;
    }
    let user = match check_login(&s, addr, username, password).await {
        Ok(u) => u,
        Err(e) => {
            let form = login_form(
                expected,
                username,
                Some(&e.message),
                s.tls_fingerprint.as_deref(),
            );
            return (e.status, form).into_response();
        }
    };
    let (token, hash) = new_token("dps_");
    let csrf = new_token("").0;
    if let Err(e) = s
        .store
        .create_session(user.id, &hash, &csrf, crate::now_ms() + SESSION_MS)
        .await
    {
        return error_page(None, e.into());
    }
    tracing::info!(user = user.name, %addr, "Console login");
    (
        // Several Set-Cookie headers: appended, not replacing each other.
        AppendHeaders([
            set_cookie(SESSION_COOKIE, &token, Some(SESSION_MS / 1000)),
            set_cookie(LOGIN_CSRF_COOKIE, "", Some(0)),
        ]),
        Redirect::to("/access-security"),
    )
        .into_response()
}

async fn logout(State(s): State<AppState>, c: Console, Form(form): Form<Fields>) -> Response {
    if !c.csrf_ok(&form) {
        return forbidden_csrf(&c);
    }
    if let Err(e) = s.store.delete_session(&c.session_hash).await {
        return error_page(Some(&c), e.into());
    }
    (
        [set_cookie(SESSION_COOKIE, "", Some(0))],
        Redirect::to("/login"),
    )
        .into_response()
}

async fn switch_project(c: Console, Form(form): Form<Fields>) -> Response {
    if !c.csrf_ok(&form) {
        return forbidden_csrf(&c);
    }
    match form
        .get("project")
        .and_then(|p| p.parse::<Uuid>().ok())
        .filter(|p| c.user.role_in(*p).is_some())
    {
        Some(p) => (
            [set_cookie(PROJECT_COOKIE, &p.to_string(), None)],
            Redirect::to("/access-security"),
        )
            .into_response(),
        None => error_page(Some(&c), ApiError::not_found("project")),
    }
}

// ---- Access & Security ----

fn field_error(errors: &HashMap<String, String>, name: &str) -> Markup {
    html! {
        @if let Some(e) = errors.get(name) {
            div.error id=(format!("{name}-error")) { (e) }
        }
    }
}

/// The errors of a refused change, by form field (`""` for the form as a whole).
fn errors_of(e: &ApiError) -> HashMap<String, String> {
    let mut map = HashMap::new();
    if e.details.is_empty() {
        map.insert(e.field.clone().unwrap_or_default(), e.message.clone());
    } else {
        for d in &e.details {
            map.entry(d.field.clone().unwrap_or_default())
                .or_insert_with(|| d.message.clone());
        }
    }
    map
}

async fn project_groups(s: &AppState, c: &Console) -> Result<Vec<GroupRecord>, ApiError> {
    Ok(s.store
        .list_groups(&[c.project])
        .await?
        .into_iter()
        .filter(|g| g.project_id == c.project)
        .collect())
}

fn access_tabs(api: bool) -> Markup {
    html! {
        nav.tabs aria-label="Access & Security" {
            a href="/access-security" aria-current=[current(!api)] { "Security Groups" }
            a href="/access-security/api" aria-current=[current(api)] { "API Access" }
        }
    }
}

async fn access_security(State(s): State<AppState>, c: Console) -> Response {
    render_access(&s, &c, StatusCode::OK, &Fields::new(), &HashMap::new()).await
}

async fn render_access(
    s: &AppState,
    c: &Console,
    status: StatusCode,
    values: &Fields,
    errors: &HashMap<String, String>,
) -> Response {
    let groups = match project_groups(s, c).await {
        Ok(g) => g,
        Err(e) => return error_page(Some(c), e),
    };
    let value = |k: &str| values.get(k).cloned().unwrap_or_default();
    let body = html! {
        h1 { "Access & Security" }
        (access_tabs(false))
        p.muted { "Security groups are sets of IP filter rules that are applied to the network settings of an instance. Project: " strong { (c.project_name()) } }
        table aria-label="Security groups" {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Description" } th scope="col" { "Rules" } th scope="col" { "Actions" } } }
            tbody {
                @for g in &groups {
                    tr {
                        td { (g.group.name) }
                        td { (g.group.description) }
                        td { (g.group.rules.len()) }
                        td.actions {
                            a.button href=(format!("/security-groups/{}", g.group.id.0)) { "Edit Rules" }
                            @if g.group.name != "default" && c.can_change() {
                                form method="post" action=(format!("/security-groups/{}/delete", g.group.id.0)) {
                                    (csrf_field(c))
                                    button.danger type="submit" aria-label=(format!("Delete security group {}", g.group.name)) { "Delete Security Group" }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if c.can_change() {
            h2 { "Create Security Group" }
            form.stacked.panel method="post" action="/access-security" {
                (csrf_field(c))
                (field_error(errors, ""))
                div.field.invalid[errors.contains_key("name")] {
                    label for="name" { "Name" }
                    input #name type="text" name="name" value=(value("name")) required aria-describedby="name-error";
                    (field_error(errors, "name"))
                }
                div.field.invalid[errors.contains_key("description")] {
                    label for="description" { "Description" }
                    input #description type="text" name="description" value=(value("description"));
                    (field_error(errors, "description"))
                }
                button type="submit" { "Create Security Group" }
            }
        }
    };
    page(c, status, "Access & Security", Nav::Access, body)
}

async fn api_access(c: Console, headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:8080")
        .to_owned();
    let url = format!("http://{host}");
    let body = html! {
        h1 { "Access & Security" }
        (access_tabs(true))
        div.panel {
            p { "The HTTP API: " code { (url) "/api/v1" } " — described by " a href="/api/v1/openapi.json" { "its OpenAPI document" } "." }
            p { "Log the command-line client in with your user name and password:" }
            div.command {
                label.muted for="cmd-login" { "Command" }
                input #cmd-login type="text" readonly value=(format!("deskport login {url} --user {}", c.user.name));
                button.secondary type="button" data-copy="cmd-login" { "Copy" }
            }
        }
    };
    page(&c, StatusCode::OK, "API Access", Nav::Access, body)
}

async fn create_group(State(s): State<AppState>, c: Console, Form(form): Form<Fields>) -> Response {
    if !c.csrf_ok(&form) {
        return forbidden_csrf(&c);
    }
    let name = form.get("name").map(|n| n.trim()).unwrap_or_default();
    let description = form
        .get("description")
        .map(|d| d.trim())
        .unwrap_or_default();
    match c.ops(&s).create_group(c.project, name, description).await {
        Ok(g) => redirect_with(
            &format!("/security-groups/{}", g.group.id.0),
            "ok",
            &[format!("Created security group {}.", g.group.name)],
        ),
        Err(e) if e.status == StatusCode::FORBIDDEN => error_page(Some(&c), e),
        Err(e) => {
            let mut errors = errors_of(&e);
            if let Some(m) = errors.remove("") {
                errors.insert("name".to_owned(), m);
            }
            render_access(&s, &c, e.status, &form, &errors).await
        }
    }
}

async fn delete_group(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<Uuid>,
    Form(form): Form<Fields>,
) -> Response {
    if !c.csrf_ok(&form) {
        return forbidden_csrf(&c);
    }
    match c.ops(&s).delete_group(GroupId(id)).await {
        Ok(g) => redirect_with(
            "/access-security",
            "ok",
            &[format!("Deleted security group {}.", g.group.name)],
        ),
        Err(e) => redirect_with("/access-security", "error", &[e.message]),
    }
}

fn protocol_label(p: Option<&str>) -> String {
    match p {
        None => "Any".to_owned(),
        Some(p) => p.to_ascii_uppercase(),
    }
}

fn port_label(r: &deskport_api::v1::RuleView) -> String {
    let icmp = matches!(r.protocol.as_deref(), Some("icmp" | "icmpv6"));
    match (r.port_range_min, r.port_range_max) {
        (None, _) => "Any".to_owned(),
        (Some(t), code) if icmp => match code {
            Some(c) => format!("type {t}, code {c}"),
            None => format!("type {t}"),
        },
        (Some(a), Some(b)) if a != b => format!("{a} - {b}"),
        (Some(a), _) => a.to_string(),
    }
}

async fn edit_rules(State(s): State<AppState>, c: Console, Path(id): Path<Uuid>) -> Response {
    let groups = match project_groups(&s, &c).await {
        Ok(g) => g,
        Err(e) => return error_page(Some(&c), e),
    };
    let Some(g) = groups.iter().find(|g| g.group.id.0 == id) else {
        return error_page(Some(&c), ApiError::not_found("security group"));
    };
    let names: HashMap<Uuid, &str> = groups
        .iter()
        .map(|g| (g.group.id.0, g.group.name.as_str()))
        .collect();
    let view = convert::group(g);
    let body = html! {
        h1 { "Manage Security Group Rules: " (g.group.name) }
        div.actions {
            @if c.can_change() {
                a.button href=(format!("/security-groups/{id}/add-rule")) { "Add Rule" }
            }
            a.button.secondary href="/access-security" { "Back to Access & Security" }
        }
        h2 { "Rules" }
        table #rules {
            thead { tr {
                th scope="col" { "Direction" } th scope="col" { "Ether Type" } th scope="col" { "IP Protocol" }
                th scope="col" { "Port Range" } th scope="col" { "Remote" } th scope="col" { "Description" } th scope="col" { "Actions" }
            } }
            tbody {
                @if view.security_group_rules.is_empty() {
                    tr { td.muted colspan="7" { "No rules: this group admits nothing." } }
                }
                @for r in &view.security_group_rules {
                    tr {
                        td { @if r.direction == "egress" { "Egress" } @else { "Ingress" } }
                        td { (r.ethertype) }
                        td { (protocol_label(r.protocol.as_deref())) }
                        td { (port_label(r)) }
                        td {
                            @if let Some(p) = &r.remote_ip_prefix { (p) " (CIDR)" }
                            @else if let Some(gid) = r.remote_group_id { (names.get(&gid).copied().unwrap_or("?")) " (Security Group)" }
                            @else { "Any" }
                        }
                        td { (r.description) }
                        td {
                            @if c.can_change() {
                                form method="post" action=(format!("/security-group-rules/{}/delete", r.id)) {
                                    (csrf_field(&c))
                                    button.danger type="submit" aria-label=(format!("Delete rule {} {}", protocol_label(r.protocol.as_deref()), port_label(r))) { "Delete Rule" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(
        &c,
        StatusCode::OK,
        &format!("Edit Rules: {}", g.group.name),
        Nav::Access,
        body,
    )
}

/// What the *Rule* menu entry needs: open ports, an ICMP type/code, a protocol, or nothing.
fn kind_of(id: &str) -> &'static str {
    match TEMPLATES.iter().find(|t| t.id == id).map(|t| t.kind) {
        Some(TemplateKind::CustomPorts(_)) => "ports",
        Some(TemplateKind::CustomIcmp) => "icmp",
        Some(TemplateKind::OtherProtocol) => "other",
        _ => "fixed",
    }
}

fn my_cidr(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

async fn add_rule_page(State(s): State<AppState>, c: Console, Path(id): Path<Uuid>) -> Response {
    let mut values = Fields::new();
    values.insert("template".into(), "custom_tcp".into());
    values.insert("remote_ip_prefix".into(), "0.0.0.0/0".into());
    render_add_rule(&s, &c, id, StatusCode::OK, &values, &HashMap::new()).await
}

async fn render_add_rule(
    s: &AppState,
    c: &Console,
    id: Uuid,
    status: StatusCode,
    values: &Fields,
    errors: &HashMap<String, String>,
) -> Response {
    let groups = match project_groups(s, c).await {
        Ok(g) => g,
        Err(e) => return error_page(Some(c), e),
    };
    let Some(g) = groups.iter().find(|g| g.group.id.0 == id) else {
        return error_page(Some(c), ApiError::not_found("security group"));
    };
    let value = |k: &str| values.get(k).cloned().unwrap_or_default();
    let is = |k: &str, v: &str| values.get(k).map(String::as_str) == Some(v);
    let kinds: HashMap<&str, &str> = TEMPLATES.iter().map(|t| (t.id, kind_of(t.id))).collect();
    let kinds = serde_json::to_string(&kinds).unwrap_or_default();
    let kind = kind_of(&value("template"));
    let range = is("port_mode", "range");
    let sg = is("remote", "sg");
    let cidr = value("remote_ip_prefix");
    let risky = ["ssh", "rdp"].contains(&value("template").as_str())
        && !sg
        && (cidr == "0.0.0.0/0" || cidr == "::/0");
    let field = |name: &str, label: &str, input: Markup, hint: Option<&str>, hidden: bool| {
        html! {
            div.field.invalid[errors.contains_key(name)] id=(format!("f-{name}")) hidden[hidden] {
                label for=(name) { (label) }
                (input)
                @if let Some(h) = hint { div.hint { (h) } }
                (field_error(errors, name))
            }
        }
    };
    let text = |name: &str| {
        html! { input id=(name) type="text" name=(name) value=(value(name)) aria-describedby=(format!("{name}-error")); }
    };
    let body = html! {
        h1 { "Add Rule" }
        p.muted { "Security group " strong { (g.group.name) } ". Rules define which traffic is allowed to instances assigned to the security group." }
        @if let Some(e) = errors.get("") {
            div.notice.error role="alert" { (e) }
        }
        form.stacked.panel #add-rule method="post" action=(format!("/security-groups/{id}/add-rule")) data-kinds=(kinds) data-my-cidr=(my_cidr(c.addr)) {
            (csrf_field(c))
            (field("template", "Rule", html! {
                select #template name="template" {
                    @for t in TEMPLATES {
                        option value=(t.id) selected[is("template", t.id)] { (t.label) }
                    }
                }
            }, None, false))
            (field("direction", "Direction", html! {
                select #direction name="direction" {
                    option value="ingress" selected[!is("direction", "egress")] { "Ingress" }
                    option value="egress" selected[is("direction", "egress")] { "Egress" }
                }
            }, None, false))
            (field("port_mode", "Open Port", html! {
                select #port_mode name="port_mode" {
                    option value="port" selected[!range] { "Port" }
                    option value="range" selected[range] { "Port Range" }
                }
            }, Some("For Custom TCP and UDP rules."), kind != "ports"))
            (field("port", "Port", text("port"), Some("A port, 1-65535."), kind != "ports" || range))
            (field("port_range_min", "From Port", text("port_range_min"), None, kind != "ports" || !range))
            (field("port_range_max", "To Port", text("port_range_max"), None, kind != "ports" || !range))
            (field("icmp_type", "Type", text("icmp_type"), Some("ICMP type, 0-255."), kind != "icmp"))
            (field("icmp_code", "Code", text("icmp_code"), Some("ICMP code, 0-255; empty for any."), kind != "icmp"))
            (field("protocol", "IP Protocol", text("protocol"), Some("A protocol number 0-255 or a name (tcp, udp, icmp, …)."), kind != "other"))
            (field("remote", "Remote", html! {
                select #remote name="remote" {
                    option value="cidr" selected[!sg] { "CIDR" }
                    option value="sg" selected[sg] { "Security Group" }
                }
            }, None, false))
            div.field.invalid[errors.contains_key("remote_ip_prefix")] #f-remote_ip_prefix hidden[sg] {
                label for="remote_ip_prefix" { "CIDR" }
                div.inline {
                    input #remote_ip_prefix type="text" name="remote_ip_prefix" value=(cidr) aria-describedby="remote_ip_prefix-error";
                    button.secondary #use-my-address type="submit" name="action" value="my-address" formnovalidate { "Use my address (" (my_cidr(c.addr)) ")" }
                }
                div.hint { "Classless Inter-Domain Routing (e.g. 192.168.0.0/24): only addresses in this block may connect." }
                (field_error(errors, "remote_ip_prefix"))
            }
            (field("remote_group_id", "Security Group", html! {
                select #remote_group_id name="remote_group_id" {
                    @for other in &groups {
                        option value=(other.group.id.0) selected[is("remote_group_id", &other.group.id.0.to_string())] { (other.group.name) }
                    }
                }
            }, Some("Members of this group may connect."), !sg))
            (field("ethertype", "Ether Type", html! {
                select #ethertype name="ethertype" {
                    option value="IPv4" selected[!is("ethertype", "IPv6")] { "IPv4" }
                    option value="IPv6" selected[is("ethertype", "IPv6")] { "IPv6" }
                }
            }, None, false))
            (field("description", "Description", text("description"), None, false))
            div.notice.warning #open-warning role="status" hidden[!risky] {
                "This opens the port to the whole internet. Remote Desktop and SSH are attacked constantly: prefer your own address (" (my_cidr(c.addr)) ")."
            }
            div.actions {
                button type="submit" name="action" value="add" { "Add" }
                a.button.secondary href=(format!("/security-groups/{id}")) { "Cancel" }
            }
        }
    };
    page(c, status, "Add Rule", Nav::Access, body)
}

fn number(form: &Fields, name: &str, errors: &mut HashMap<String, String>) -> Option<i64> {
    let text = form.get(name).map(|v| v.trim()).unwrap_or_default();
    if text.is_empty() {
        return None;
    }
    match text.parse::<i64>() {
        Ok(n) => Some(n),
        Err(_) => {
            errors.insert(name.to_owned(), format!("{text:?} is not a number"));
            None
        }
    }
}

async fn add_rule(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<Uuid>,
    Form(mut form): Form<Fields>,
) -> Response {
    if !c.csrf_ok(&form) {
        return forbidden_csrf(&c);
    }
    if form.get("action").map(String::as_str) == Some("my-address") {
        form.insert("remote".into(), "cidr".into());
        form.insert("remote_ip_prefix".into(), my_cidr(c.addr));
        let family = if c.addr.is_ipv6() { "IPv6" } else { "IPv4" };
        form.insert("ethertype".into(), family.into());
        return render_add_rule(&s, &c, id, StatusCode::OK, &form, &HashMap::new()).await;
    }
    let template = form.get("template").cloned().unwrap_or_default();
    let kind = kind_of(&template);
    let mut errors = HashMap::new();
    let (min, max, port_fields) = match kind {
        "ports" if form.get("port_mode").map(String::as_str) == Some("range") => (
            number(&form, "port_range_min", &mut errors),
            number(&form, "port_range_max", &mut errors),
            ("port_range_min", "port_range_max"),
        ),
        "ports" => {
            let p = number(&form, "port", &mut errors);
            if p.is_none() && !errors.contains_key("port") {
                errors.insert("port".into(), "give a port, 1-65535".into());
            }
            (p, p, ("port", "port"))
        }
        "icmp" => (
            number(&form, "icmp_type", &mut errors),
            number(&form, "icmp_code", &mut errors),
            ("icmp_type", "icmp_code"),
        ),
        _ => (None, None, ("port_range_min", "port_range_max")),
    };
    let sg = form.get("remote").map(String::as_str) == Some("sg");
    let cidr = form
        .get("remote_ip_prefix")
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    if !sg && cidr.is_empty() {
        errors.insert(
            "remote_ip_prefix".into(),
            "give a CIDR, e.g. 203.0.113.7/32 or 0.0.0.0/0".into(),
        );
    }
    if !errors.is_empty() {
        return render_add_rule(&s, &c, id, StatusCode::BAD_REQUEST, &form, &errors).await;
    }
    let spec = RuleSpec {
        template: Some(template),
        direction: form.get("direction").cloned(),
        ethertype: form.get("ethertype").cloned(),
        protocol: (kind == "other").then(|| form.get("protocol").cloned().unwrap_or_default()),
        port_range_min: min,
        port_range_max: max,
        remote_ip_prefix: (!sg).then_some(cidr),
        remote_group_id: if sg {
            form.get("remote_group_id").cloned()
        } else {
            None
        },
        description: form
            .get("description")
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty()),
    };
    match c.ops(&s).create_rule(GroupId(id), &spec).await {
        Ok((record, notes)) => {
            let view = convert::rule(&record);
            let mut lines = vec![format!(
                "Added rule: {} {} {} from {}.",
                if view.direction == "egress" {
                    "egress"
                } else {
                    "ingress"
                },
                protocol_label(view.protocol.as_deref()),
                port_label(&view),
                view.remote_ip_prefix
                    .as_deref()
                    .unwrap_or("a security group")
            )];
            let warn = notes.iter().any(|n| n.code == "open_to_internet");
            lines.extend(notes.iter().map(|n| n.message.clone()));
            redirect_with(
                &format!("/security-groups/{id}"),
                if warn { "warning" } else { "ok" },
                &lines,
            )
        }
        Err(e) => {
            let mut errors = HashMap::new();
            for (field, message) in errors_of(&e) {
                let name = match field.as_str() {
                    "port_range_min" => port_fields.0.to_owned(),
                    "port_range_max" => port_fields.1.to_owned(),
                    "security_group_id" => String::new(),
                    _ => field,
                };
                // The API's field names, in the words of the form.
                let message = message
                    .replace("remote_ip_prefix", "CIDR")
                    .replace("port_range_min", "port")
                    .replace("port_range_max", "port")
                    .replace("remote_group_id", "security group");
                errors.entry(name).or_insert(message);
            }
            render_add_rule(&s, &c, id, e.status, &form, &errors).await
        }
    }
}

async fn delete_rule(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<Uuid>,
    Form(form): Form<Fields>,
) -> Response {
    if !c.csrf_ok(&form) {
        return forbidden_csrf(&c);
    }
    match c.ops(&s).delete_rule(RuleId(id)).await {
        Ok(r) => redirect_with(
            &format!("/security-groups/{}", r.rule.group.0),
            "ok",
            &["Deleted the rule; connections it allowed are cut by the firewall.".to_owned()],
        ),
        Err(e) => redirect_with("/access-security", "error", &[e.message]),
    }
}

// ---- instances ----

async fn instances(State(s): State<AppState>, c: Console) -> Response {
    let list = match s.store.list_instances(&[c.project]).await {
        Ok(l) => l,
        Err(e) => return error_page(Some(&c), e.into()),
    };
    let body = html! {
        h1 { "Instances" }
        @if list.is_empty() {
            p.muted { "No instances yet: create one with " code { "deskport instance create NAME --address IP" } " or the API." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Public address" } th scope="col" { "Security Groups" } th scope="col" { "Remote Desktop" }
                } }
                tbody {
                    @for i in &list {
                        tr {
                            td { a href=(format!("/instances/{}", i.id)) { (i.name) } }
                            td.mono { (convert::endpoint(i)) }
                            td { (i.groups.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(", ")) }
                            td { (rdp_badge(i)) }
                        }
                    }
                }
            }
        }
    };
    page(&c, StatusCode::OK, "Instances", Nav::Instances, body)
}

fn rdp_badge(i: &Instance) -> Markup {
    html! {
        @if i.rdp_enabled {
            span.badge.on { "On" @if i.rdp_nla_only { " · NLA only" } }
        } @else {
            span.badge.off { "Off" }
        }
    }
}

async fn instance_page(State(s): State<AppState>, c: Console, Path(id): Path<Uuid>) -> Response {
    let (i, groups) = match async {
        let i = s.store.instance(&[c.project], id).await?;
        let groups = project_groups(&s, &c).await?;
        Ok::<_, ApiError>((i, groups))
    }
    .await
    {
        Ok(v) => v,
        Err(e) => return error_page(Some(&c), e),
    };
    let view = convert::instance(&i, s.rdp_user.as_deref());
    let attached: Vec<Uuid> = i.groups.iter().map(|(g, _)| g.0).collect();
    let command = |id: &str, label: &str, text: &str| {
        html! {
            div.command {
                label for=(id) { (label) }
                input id=(id) type="text" readonly value=(text);
                button.secondary type="button" data-copy=(id) aria-label=(format!("Copy the {label} command")) { "Copy" }
            }
        }
    };
    let body = html! {
        h1 { "Instance " (i.name) }
        (crate::desktop::instance_tabs(i.id, false))
        div.panel {
            h2 { "Overview" }
            table {
                tbody {
                    tr { th scope="row" { "Public address" } td.mono { (i.public_address) } }
                    tr { th scope="row" { "RDP port" } td.mono { (i.public_rdp_port) @if let Some(a) = i.internal_address { " → " (a) ":" (i.rdp_port) } } }
                    tr { th scope="row" { "Agent" } td { @if let Some(seen) = &view.agent_seen_at { "last seen " (seen) @if let Some(r) = view.agent_revision { ", enforcing revision " (r) } } @else { span.muted { "not seen yet" } } } }
                }
            }
        }
        div.panel {
            h2 { "Security Groups" }
            ul {
                @for (gid, name) in &i.groups {
                    li.actions {
                        a href=(format!("/security-groups/{}", gid.0)) { (name) }
                        @if c.can_change() {
                            form method="post" action=(format!("/instances/{}/detach/{}", i.id, gid.0)) {
                                (csrf_field(&c))
                                button.danger type="submit" aria-label=(format!("Detach security group {name}")) { "Detach" }
                            }
                        }
                    }
                }
            }
            @let free: Vec<&GroupRecord> = groups.iter().filter(|g| !attached.contains(&g.group.id.0)).collect();
            @if c.can_change() && !free.is_empty() {
                form.inline method="post" action=(format!("/instances/{}/attach", i.id)) {
                    (csrf_field(&c))
                    div.field {
                        label for="attach-group" { "Attach security group" }
                        select #attach-group name="group" {
                            @for g in &free { option value=(g.group.id.0) { (g.group.name) } }
                        }
                    }
                    button type="submit" { "Attach" }
                }
            }
        }
        div.panel #remote-desktop {
            h2 { "Remote Desktop" }
            form method="post" action=(format!("/instances/{}/remote-desktop", i.id)) {
                (csrf_field(&c))
                div.switch {
                    input #enabled type="checkbox" name="enabled" value="on" checked[i.rdp_enabled] disabled[!c.can_change()];
                    label for="enabled" { "Allow remote connections to this computer" }
                }
                div.switch {
                    input #nla_only type="checkbox" name="nla_only" value="on" checked[i.rdp_nla_only] disabled[!c.can_change()];
                    label for="nla_only" { "Allow connections only from computers running Remote Desktop with Network Level Authentication (recommended)" }
                }
                div.switch {
                    input #gateway type="checkbox" name="gateway" value="on" checked[i.rdp_gateway] disabled[!c.can_change()];
                    label for="gateway" { "Gateway access: allow the project's members to connect through the RD Gateway on this manager's HTTPS port (no public RDP port needed)" }
                }
                @if c.can_change() { button type="submit" { "Save" } }
            }
            h2 { "Server certificate" }
            p {
                "SHA-256 fingerprint: "
                @if let Some(f) = &i.cert_fingerprint { code #fingerprint { (f) } }
                @else { span.muted { "not reported yet (the instance's RDP server reports it when it starts)" } }
            }
            h2 { "Connect" }
            (command("cmd-rdesktop", "rdesktop", &view.connect.rdesktop))
            (command("cmd-xfreerdp", "xfreerdp", &view.connect.xfreerdp))
            (command("cmd-deskport", "deskport", &view.connect.deskport))
            p { a.button #download-rdp href=(format!("/instances/{}/rdp-file", i.id)) download=(format!("{}.rdp", file_stem(&i.name))) { "Download .rdp file" } }
            @if i.rdp_enabled && i.rdp_gateway {
                h2 { "Connect through the gateway" }
                @if s.rd_gateway.is_some() {
                    p { "No public RDP port needed: a short-lived token (5 minutes to connect) lets you through this manager's HTTPS port to this instance." }
                    form method="post" action=(format!("/instances/{}/gateway", i.id)) {
                        (csrf_field(&c))
                        button #gateway-connect type="submit" { "Connect through the gateway" }
                    }
                } @else {
                    p.muted #no-gateway { (NO_GATEWAY) }
                }
            }
        }
    };
    page(
        &c,
        StatusCode::OK,
        &format!("Instance {}", i.name),
        Nav::Instances,
        body,
    )
}

async fn set_remote_desktop(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<Uuid>,
    Form(form): Form<Fields>,
) -> Response {
    if !c.csrf_ok(&form) {
        return forbidden_csrf(&c);
    }
    let enabled = form.get("enabled").is_some_and(|v| v == "on");
    let nla_only = form.get("nla_only").is_some_and(|v| v == "on");
    let gateway = form.get("gateway").is_some_and(|v| v == "on");
    let back = format!("/instances/{id}");
    let result = c
        .ops(&s)
        .set_remote_desktop(id, Some(enabled), Some(nla_only), Some(gateway))
        .await;
    match result {
        Ok(i) => redirect_with(
            &back,
            "ok",
            &[format!(
                "Remote Desktop is {}{}; gateway access is {}.",
                if i.rdp_enabled { "on" } else { "off" },
                if i.rdp_enabled && i.rdp_nla_only {
                    ", NLA only"
                } else {
                    ""
                },
                if i.rdp_gateway { "on" } else { "off" }
            )],
        ),
        Err(e) => redirect_with(&back, "error", &[e.message]),
    }
}

async fn attach_group(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<Uuid>,
    Form(form): Form<Fields>,
) -> Response {
    if !c.csrf_ok(&form) {
        return forbidden_csrf(&c);
    }
    let back = format!("/instances/{id}");
    let result = async {
        let group = form
            .get("group")
            .and_then(|g| g.parse::<Uuid>().ok())
            .ok_or_else(|| ApiError::bad_request("invalid", "choose a security group"))?;
        c.ops(&s).attach_group(id, &group.to_string()).await
    }
    .await;
    match result {
        Ok(_) => redirect_with(&back, "ok", &["Attached the security group.".to_owned()]),
        Err(e) => redirect_with(&back, "error", &[e.message]),
    }
}

async fn detach_group(
    State(s): State<AppState>,
    c: Console,
    Path((id, group)): Path<(Uuid, Uuid)>,
    Form(form): Form<Fields>,
) -> Response {
    if !c.csrf_ok(&form) {
        return forbidden_csrf(&c);
    }
    let back = format!("/instances/{id}");
    let result = c.ops(&s).detach_group(id, GroupId(group)).await;
    match result {
        Ok(_) => redirect_with(&back, "ok", &["Detached the security group.".to_owned()]),
        Err(e) => redirect_with(&back, "error", &[e.message]),
    }
}

/// A file name from an instance name: letters, digits, `-`, `_`, `.`.
fn file_stem(name: &str) -> String {
    let stem: String = name
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || "-_.".contains(ch) {
                ch
            } else {
                '_'
            }
        })
        .collect();
    if stem.trim_matches('.').is_empty() {
        "instance".to_owned()
    } else {
        stem
    }
}

/// The `.rdp` file mstsc (and deskport connect, xfreerdp, Remmina) opens.
pub fn rdp_file_text(i: &Instance, user: Option<&str>) -> String {
    let host = match i.public_address {
        IpAddr::V6(a) => format!("[{a}]"),
        a => a.to_string(),
    };
    let mut lines = vec![
        format!("full address:s:{host}:{}", i.public_rdp_port),
        format!("server port:i:{}", i.public_rdp_port),
    ];
    if let Some(u) = user {
        lines.push(format!("username:s:{u}"));
    }
    lines.extend([
        "screen mode id:i:1".to_owned(),
        "desktopwidth:i:1280".to_owned(),
        "desktopheight:i:800".to_owned(),
        "session bpp:i:32".to_owned(),
        format!("enablecredsspsupport:i:{}", u8::from(i.rdp_nla_only)),
        // The certificate is self-signed: warn, and let the user compare the fingerprint.
        "authentication level:i:2".to_owned(),
        "prompt for credentials:i:0".to_owned(),
    ]);
    lines.join("\r\n") + "\r\n"
}

async fn rdp_file(State(s): State<AppState>, c: Console, Path(id): Path<Uuid>) -> Response {
    let i = match s.store.instance(&[c.project], id).await {
        Ok(i) => i,
        Err(e) => return error_page(Some(&c), e.into()),
    };
    let text = rdp_file_text(&i, s.rdp_user.as_deref());
    (
        [
            (header::CONTENT_TYPE, "application/x-rdp".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.rdp\"", file_stem(&i.name)),
            ),
        ],
        text,
    )
        .into_response()
}

// ---- audit log ----

#[derive(Debug, Default, serde::Deserialize)]
struct AuditQuery {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    target_id: String,
}

async fn audit(State(s): State<AppState>, c: Console, Query(q): Query<AuditQuery>) -> Response {
    let some = |v: &str| Some(v.trim().to_owned()).filter(|v| !v.is_empty());
    let filter = AuditFilter {
        action: some(&q.action),
        actor: some(&q.actor),
        target_id: some(&q.target_id),
        after_id: None,
        limit: 200,
    };
    let events = match s.store.list_audit(&[c.project], &filter).await {
        Ok(e) => e,
        Err(e) => return error_page(Some(&c), e.into()),
    };
    let body = html! {
        h1 { "Audit log" }
        form.inline.panel method="get" action="/audit" role="search" {
            div.field { label for="actor" { "Actor" } input #actor type="text" name="actor" value=(q.actor); }
            div.field { label for="action" { "Action" } input #action type="text" name="action" value=(q.action) placeholder="e.g. rule.create"; }
            div.field { label for="target_id" { "Target id" } input #target_id type="text" name="target_id" value=(q.target_id); }
            button type="submit" { "Filter" }
            a.button.secondary href="/audit" { "Clear" }
        }
        table #audit {
            thead { tr {
                th scope="col" { "Time" } th scope="col" { "Actor" } th scope="col" { "From" } th scope="col" { "Action" } th scope="col" { "Summary" }
            } }
            tbody {
                @if events.is_empty() { tr { td.muted colspan="5" { "No events." } } }
                @for e in &events {
                    tr {
                        td.mono { (deskport_api::rfc3339(e.created_at)) }
                        td { (e.actor) }
                        td.mono { (e.source.as_deref().unwrap_or("")) }
                        td.mono { (e.action) }
                        td { (e.summary) }
                    }
                }
            }
        }
    };
    page(&c, StatusCode::OK, "Audit log", Nav::Audit, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_text_survives_the_cookie() {
        let text = "warning\nAdded rule: ingress TCP 3389 from 0.0.0.0/0.\nÜmlaut; = , \"quotes\"";
        assert_eq!(percent_decode(&percent_encode(text)), text);
        assert!(!percent_encode(text).contains([';', ' ', ',', '"', '\n']));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn file_names_are_safe() {
        assert_eq!(file_stem("my desktop/../x"), "my_desktop_.._x");
        assert_eq!(file_stem(".."), "instance");
    }

    #[test]
    fn csrf_comparison() {
        assert!(constant_eq("abc", "abc"));
        assert!(!constant_eq("abc", "abd"));
        assert!(!constant_eq("abc", "abcd"));
    }
}

// ---- the RD Gateway ----

/// The gateway's `HOST:PORT` as the browser reached this manager (its `Host` header; 443 when
/// it names no port).
fn gateway_host(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let has_port = match host.rfind(']') {
        Some(end) => host[end..].contains(':'),
        None => host.contains(':'),
    };
    if has_port {
        host.to_owned()
    } else {
        format!("{host}:443")
    }
}

/// The `.rdp` file of [`rdp_file_text`] with the RD Gateway at `gateway` and `token` as its
/// access token.
pub fn gateway_rdp_file_text(
    i: &Instance,
    user: Option<&str>,
    gateway: &str,
    token: &str,
) -> String {
    let mut text = rdp_file_text(i, user);
    for line in [
        format!("gatewayhostname:s:{gateway}"),
        "gatewayusagemethod:i:1".to_owned(),
        "gatewayprofileusagemethod:i:1".to_owned(),
        "gatewaycredentialssource:i:5".to_owned(),
        format!("gatewayaccesstoken:s:{token}"),
    ] {
        text += &line;
        text += "\r\n";
    }
    text
}

/// Why the console offers no *Connect through the gateway*: the command and file it makes point
/// at this manager, which serves the RD Gateway only over HTTPS and with `rd_gateway` on.
const NO_GATEWAY: &str = "This manager serves no RD Gateway (it is switched off, or the manager is on plain HTTP): mint a token with 'deskport instance rdp-token' for the gateway you use.";

/// Mints a gateway token for the logged-in user and shows how to use it: the xfreerdp command
/// and the `.rdp` file (downloaded with the token, never in a URL).
async fn gateway_connect(
    State(s): State<AppState>,
    c: Console,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Form(form): Form<Fields>,
) -> Response {
    if !c.csrf_ok(&form) {
        return forbidden_csrf(&c);
    }
    let back = format!("/instances/{id}");
    if s.rd_gateway.is_none() {
        return redirect_with(&back, "error", &[NO_GATEWAY.to_owned()]);
    }
    let (i, token, secret) = match c.ops(&s).mint_rdp_token(id, None).await {
        Ok(v) => v,
        Err(e) => return redirect_with(&back, "error", &[e.message]),
    };
    let gateway = gateway_host(&headers);
    let view = convert::instance(&i, s.rdp_user.as_deref());
    let user = view
        .connect
        .xfreerdp
        .split_whitespace()
        .find_map(|w| w.strip_prefix("/u:"))
        .unwrap_or("USER")
        .to_owned();
    let host = match i.public_address {
        IpAddr::V6(a) => format!("[{a}]"),
        a => a.to_string(),
    };
    let xfreerdp = format!(
        "xfreerdp /v:{host}:{} /g:{gateway} /gat:{secret} /gt:http /u:{user}",
        i.public_rdp_port
    );
    let body = html! {
        h1 { "Connect to " (i.name) " through the gateway" }
        div.panel #gateway {
            p { "Token " code { (token.id) } " opens connections until " (deskport_api::rfc3339(token.expires_at)) "; a connection it opened lasts until it ends. Revoking the token, switching remote connections or gateway access off, or leaving the project cuts it." }
            div.command {
                label for="cmd-gateway-xfreerdp" { "xfreerdp" }
                input #cmd-gateway-xfreerdp type="text" readonly value=(xfreerdp);
                button.secondary type="button" data-copy="cmd-gateway-xfreerdp" aria-label="Copy the xfreerdp command" { "Copy" }
            }
            form method="post" action=(format!("/instances/{}/gateway-rdp", i.id)) {
                (csrf_field(&c))
                input type="hidden" name="token" value=(secret);
                input type="hidden" name="gateway" value=(gateway);
                button #download-gateway-rdp type="submit" { "Download .rdp file" }
            }
            p { a href=(back) { "Back to " (i.name) } }
        }
    };
    page(
        &c,
        StatusCode::OK,
        &format!("Connect to {} through the gateway", i.name),
        Nav::Instances,
        body,
    )
}

/// The `.rdp` file for a gateway token the logged-in user holds for this instance.
async fn gateway_rdp_file(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<Uuid>,
    Form(form): Form<Fields>,
) -> Response {
    if !c.csrf_ok(&form) {
        return forbidden_csrf(&c);
    }
    let back = format!("/instances/{id}");
    let token = form.get("token").map(String::as_str).unwrap_or_default();
    let grant = match s.store.gateway_grant(token).await {
        Ok(Ok(g)) if g.user_id == c.user.id && g.instance.id == id => g,
        Ok(Ok(_)) => {
            return redirect_with(
                &back,
                "error",
                &["that token is not yours for this instance".to_owned()],
            )
        }
        Ok(Err(refused)) => return redirect_with(&back, "error", &[refused.to_string()]),
        Err(e) => return error_page(Some(&c), e.into()),
    };
    let gateway = form.get("gateway").map(String::as_str).unwrap_or_default();
    let valid_gateway = !gateway.is_empty()
        && gateway
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ".-:[]".contains(ch));
    if !valid_gateway {
        return redirect_with(
            &back,
            "error",
            &["the gateway address is not valid".to_owned()],
        );
    }
    let text = gateway_rdp_file_text(&grant.instance, s.rdp_user.as_deref(), gateway, token);
    (
        [
            (header::CONTENT_TYPE, "application/x-rdp".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}-gateway.rdp\"",
                    file_stem(&grant.instance.name)
                ),
            ),
        ],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod gateway_tests {
    #![allow(clippy::unwrap_used)]

    use axum::http::{header, HeaderMap, HeaderValue};

    #[test]
    fn the_gateway_is_where_the_browser_reached_the_manager() {
        for (host, gateway) in [
            ("manager.example", "manager.example:443"),
            ("manager.example:8443", "manager.example:8443"),
            ("[2001:db8::1]", "[2001:db8::1]:443"),
            ("[2001:db8::1]:9443", "[2001:db8::1]:9443"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static(host));
            assert_eq!(super::gateway_host(&headers), gateway);
        }
    }

    #[test]
    fn the_gateway_rdp_file_names_the_gateway_and_the_token() {
        let instance = deskport_store::Instance {
            id: uuid::Uuid::nil(),
            project_id: uuid::Uuid::nil(),
            name: "desk".into(),
            public_address: "198.51.100.7".parse().unwrap(),
            public_rdp_port: 13389,
            internal_address: None,
            rdp_port: 3389,
            groups: Vec::new(),
            rdp_enabled: true,
            rdp_nla_only: true,
            rdp_gateway: true,
            cert_fingerprint: None,
            agent_seen_at: None,
            agent_revision: None,
            created_at: 0,
        };
        let text =
            super::gateway_rdp_file_text(&instance, Some("alice"), "gw.example:443", "dpg_x");
        let lines: Vec<&str> = text.split("\r\n").collect();
        for line in [
            "full address:s:198.51.100.7:13389",
            "username:s:alice",
            "gatewayhostname:s:gw.example:443",
            "gatewayusagemethod:i:1",
            "gatewayprofileusagemethod:i:1",
            "gatewaycredentialssource:i:5",
            "gatewayaccesstoken:s:dpg_x",
        ] {
            assert!(lines.contains(&line), "{line} missing from {text}");
        }
    }
}
