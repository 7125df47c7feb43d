//! The manager (SPEC §3): deskport's control plane. It serves the HTTP API (`/api/v1`, with its
//! OpenAPI document), the web console, `/healthz` and `/metrics`, and the agents' feed; it keeps
//! everything in a [`deskport_store::Store`] (SQLite by default, PostgreSQL for several
//! replicas on one database) and never writes SQL itself.
//! The API and the console make changes through the same operations ([`ops`]: the role check,
//! then the store).
//!
//! Entry point: [`Manager::open`] prepares the database (migrations, the first project and
//! administrator), [`Manager::run`] serves it on a listener until a shutdown future resolves
//! (tests pass port 0). The pieces are public too: [`open_store`] + [`bootstrap`], [`app`]
//! builds the router, [`serve`] runs it.
//!
//! Transport: HTTPS (rustls) unless plain HTTP is asked for, which is served on loopback
//! only ([`Tls`], [`check_listen`]). The certificate is made on first start and kept in the
//! data directory (`tls/cert.pem`, `tls/key.pem` with mode 0600), or given as files; its
//! SHA-256 fingerprint is printed at start and shown in the console so that the CLI and the
//! agents can pin it. Over HTTPS every response carries HSTS and every cookie `Secure`.
//!
//! Replicas: any number of managers may serve one PostgreSQL database. Everything a request
//! depends on is in the database — sessions, API tokens, login attempts (so that 5 failures
//! allowed are 5 whichever replica they hit) — and the store hears the other replicas' commits,
//! so long-polling agents on every replica get each change. The periodic clean-up
//! ([`janitor`]) runs on one replica at a time, the one holding the database's lead lock.

pub mod api;
pub mod auth;
pub mod console;
mod convert;
mod desktop;
pub mod error;
mod extract;
pub mod gateway;
pub mod metrics;
pub mod ops;
pub mod serve;
pub mod state;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use deskport_policy::throttle::Limits;
use deskport_policy::Quota;
use deskport_store::{Actor, PostgresBackend, SqliteBackend, Store};
use rand::Rng as _;

use crate::error::ApiError;
pub use crate::serve::HttpLimits;
pub use crate::state::AppState;
pub use crate::tls::{check_listen, serve_tls, Tls, TlsIdentity};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    deskport_policy::unix_ms(std::time::SystemTime::now())
}

/// Where the data lives and the limits that apply.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Holds `deskport.db` (SQLite) unless `db` names another database.
    pub data_dir: PathBuf,
    /// `sqlite:PATH` (or a bare path), or `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`.
    pub db: Option<String>,
    pub quota: Quota,
    /// The RDP user name shown in connect commands.
    pub rdp_user: Option<String>,
    /// Largest accepted request body, bytes.
    pub body_limit: usize,
    /// HTTPS with a made or given certificate, or plain HTTP (loopback only).
    pub tls: Tls,
    /// The RD Gateway at `/remoteDesktopGateway/` (over HTTPS only) with its bounds; `None`:
    /// no gateway.
    pub rd_gateway: Option<deskport_gateway::Limits>,
    /// The listener's bounds (header-read timeout, connections per source and in all).
    pub http: HttpLimits,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("."),
            db: None,
            quota: Quota::default(),
            rdp_user: None,
            body_limit: 64 * 1024,
            tls: Tls::SelfSigned,
            rd_gateway: Some(deskport_gateway::Limits::default()),
            http: HttpLimits::default(),
        }
    }
}

/// The database a configuration names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (the default: `deskport.db` in the data directory).
    Sqlite(PathBuf),
    /// A PostgreSQL URL (may hold a password: never print it).
    Postgres(String),
}

impl Database {
    /// What `config` names: `db` if set, else the SQLite file in the data directory. A URL of
    /// another kind (`mysql://…`) is refused rather than taken for a file name.
    pub fn of(config: &ManagerConfig) -> anyhow::Result<Self> {
        let Some(url) = config.db.as_deref() else {
            return Ok(Database::Sqlite(config.data_dir.join("deskport.db")));
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Database::Postgres(url.to_owned()));
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        match url.split_once("://") {
            Some((scheme, _)) => anyhow::bail!(
                "the database URL's scheme {scheme:?} is not supported: use sqlite:PATH or \
                 postgres://USER@HOST/DATABASE"
            ),
            None if url.is_empty() => anyhow::bail!("the database URL is empty"),
            None => Ok(Database::Sqlite(PathBuf::from(url))),
        }
    }
}

impl std::fmt::Display for Database {
    /// The file, or the URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                match authority.rsplit_once('@') {
                    Some((user, host)) => {
                        let user = user.split_once(':').map_or(user, |(name, _)| name);
                        write!(f, "{scheme}://{user}@{host}{path}")
                    }
                    None => write!(f, "{url}"),
                }
            }
        }
    }
}

/// Opens the database named by the configuration (creating the data directory for the
/// default SQLite file, running the migrations).
pub async fn open_store(config: &ManagerConfig) -> anyhow::Result<Arc<Store>> {
    let store = match Database::of(config)? {
        Database::Sqlite(path) => {
            if config.db.is_none() {
                std::fs::create_dir_all(&config.data_dir).with_context(|| {
                    format!("create the data directory {}", config.data_dir.display())
                })?;
            }
            let backend = SqliteBackend::open(&path)
                .await
                .with_context(|| format!("open the database {}", path.display()))?;
            Store::new(backend)
                .await
                .with_context(|| format!("read the database {}", path.display()))?
        }
        Database::Postgres(url) => {
            let backend = PostgresBackend::open(&url)
                .await
                .context("open the PostgreSQL database")?;
            Store::new(backend)
                .await
                .context("read the PostgreSQL database")?
        }
    };
    Ok(Arc::new(store))
}

/// How often the periodic clean-up runs.
pub const JANITOR_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The periodic clean-up (expired sessions, login attempts no longer needed) every
/// [`JANITOR_EVERY`], on the one replica that leads; runs until dropped.
pub async fn janitor(store: Arc<Store>, limits: Limits) {
    let mut tick = tokio::time::interval(JANITOR_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = false;
    loop {
        tick.tick().await;
        match store.janitor(&limits, now_ms()).await {
            Ok(now_leading) => {
                if now_leading != leading {
                    tracing::info!(
                        leading = now_leading,
                        "This manager {} the periodic clean-up",
                        if now_leading {
                            "now runs"
                        } else {
                            "no longer runs"
                        }
                    );
                }
                leading = now_leading;
            }
            Err(e) => tracing::warn!(error = %e, "The periodic clean-up failed"),
        }
    }
}

/// On first start, creates the `default` project and the `admin` user. The password is
/// `admin_password` (from `DESKPORT_ADMIN_PASSWORD`), else generated and returned so the caller
/// can print it once. On later starts, a given `admin_password` replaces the admin's password.
pub async fn bootstrap(
    store: &Store,
    admin_password: Option<String>,
) -> anyhow::Result<Option<String>> {
    let generated = admin_password.is_none();
    let password = admin_password.unwrap_or_else(generate_password);
    let hash = auth::hash_password(&password)?;
    let done = store
        .bootstrap(&hash)
        .await
        .context("initialise the database")?;
    if done.created {
        tracing::info!("Created the default project and the admin user");
        return Ok(generated.then_some(password));
    }
    if !generated {
        let (_, current) = store
            .user_auth("admin")
            .await?
            .context("the admin user is missing")?;
        if !auth::verify_password(&current, &password) {
            let system = Actor {
                name: "system".into(),
                source: None,
            };
            store.set_password(&system, done.admin, &hash).await?;
            tracing::info!("Set the admin password from DESKPORT_ADMIN_PASSWORD");
        }
    }
    Ok(None)
}

/// 20 random characters without look-alikes.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rngs::OsRng;
    (0..20)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The whole HTTP application.
pub fn app(state: AppState, body_limit: usize) -> axum::Router {
    let (api, _) = api::router();
    let gateway = match &state.rd_gateway {
        Some(gateway) => gateway.routes(),
        None => axum::Router::new(),
    };
    let app = axum::Router::new()
        .nest("/api/v1", api)
        .merge(gateway)
        .merge(console::router())
        .route("/healthz", axum::routing::get(healthz))
        .route("/metrics", axum::routing::get(metrics))
        .fallback(|| async { ApiError::not_found("page") })
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit));
    let app = if state.tls_fingerprint.is_some() {
        app.layer(axum::middleware::map_response(tls::https_headers))
    } else {
        app
    };
    app.with_state(state)
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    match s.store.revision().await {
        Ok(revision) => (
            StatusCode::OK,
            Json(deskport_api::v1::Health {
                status: "ok".into(),
                revision,
            }),
        )
            .into_response(),
        Err(e) => ApiError::internal("healthz", &e).into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let revision = s.store.revision().await.unwrap_or(0);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(revision)
            + &metrics::render_store(&s.store.stats())
            + &metrics::render_http(&s.http_refusals)
            + &metrics::render_console(
                desktop::MAX_SESSIONS.saturating_sub(s.console_sessions.available_permits()),
            )
            + &s.rd_gateway
                .as_ref()
                .map(|g| metrics::render_gateway(&g.stats()))
                .unwrap_or_default(),
    )
}

/// The state for `store` with `config`'s limits.
pub fn state(store: Arc<Store>, config: &ManagerConfig) -> AppState {
    AppState {
        store,
        quota: config.quota,
        limits: Limits::default(),
        metrics: Arc::new(metrics::Metrics::default()),
        rdp_user: config.rdp_user.clone(),
        tls_fingerprint: None,
        rd_gateway: None,
        http_refusals: Arc::default(),
        console_sessions: Arc::new(tokio::sync::Semaphore::new(desktop::MAX_SESSIONS)),
    }
}

/// The manager as a service: its database open and initialised, ready to serve.
#[derive(Debug)]
pub struct Manager {
    state: AppState,
    body_limit: usize,
    http: HttpLimits,
    generated_password: Option<String>,
    tls: Option<TlsIdentity>,
}

impl Manager {
    /// Opens the database `config` names (creating it and running its migrations) and, on first
    /// start, creates the `default` project and the `admin` user with `admin_password`, else a
    /// generated one (see [`Manager::generated_password`]); a given password replaces the
    /// admin's on later starts. The TLS identity is read (or made) first: a certificate that
    /// cannot be used stops the start before the database is touched.
    pub async fn open(
        config: &ManagerConfig,
        admin_password: Option<String>,
    ) -> anyhow::Result<Self> {
        let tls = TlsIdentity::of(config)?;
        let store = open_store(config).await?;
        let generated_password = bootstrap(&store, admin_password).await?;
        let mut state = state(store, config);
        state.tls_fingerprint = tls.as_ref().map(|t| t.fingerprint.clone());
        if let (Some(_), Some(limits)) = (&tls, config.rd_gateway) {
            let authority = gateway::StoreAuthorizer::new(state.store.clone());
            state.rd_gateway = Some(deskport_gateway::RdGateway::new(
                Arc::new(authority),
                limits,
            ));
        }
        Ok(Self {
            state,
            body_limit: config.body_limit,
            http: config.http,
            generated_password,
            tls,
        })
    }

    /// The certificate served, when over HTTPS.
    pub fn tls(&self) -> Option<&TlsIdentity> {
        self.tls.as_ref()
    }

    /// The admin's password when it was generated by this start (print it once).
    pub fn generated_password(&self) -> Option<&str> {
        self.generated_password.as_deref()
    }

    /// Serves the API, the console and the agents' feed on `listener` until `shutdown`
    /// resolves: over HTTPS, or plain HTTP when so configured and `listener` is on loopback.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr().context("the listener's address")?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, scheme, "Manager started");
        let janitor = tokio::spawn(janitor(self.state.store.clone(), self.state.limits));
        let refusals = self.state.http_refusals.clone();
        let app = app(self.state, self.body_limit);
        if self.tls.is_none() {
            check_listen(addr, &Tls::PlainHttp)?;
        }
        let tls = self.tls.as_ref().map(|t| t.config.clone());
        let served = serve::serve_connections(listener, app, tls, self.http, refusals, shutdown)
            .await
            .context("serve HTTP");
        janitor.abort();
        served?;
        tracing::info!("Manager stopped");
        Ok(())
    }
}

/// Serves `app` over plain HTTP on `listener` until `shutdown` resolves; refuses a listener
/// that is not on loopback (credentials would cross the network in clear).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    check_listen(
        listener.local_addr().context("the listener's address")?,
        &Tls::PlainHttp,
    )?;
    serve::serve_connections(
        listener,
        app,
        None,
        HttpLimits::default(),
        Arc::default(),
        shutdown,
    )
    .await
    .context("serve HTTP")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(db: Option<&str>) -> anyhow::Result<Database> {
        Database::of(&ManagerConfig {
            data_dir: PathBuf::from("data"),
            db: db.map(str::to_owned),
            ..ManagerConfig::default()
        })
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            of(None).unwrap(),
            Database::Sqlite(PathBuf::from("data/deskport.db"))
        );
        assert_eq!(
            of(Some("sqlite:x.db")).unwrap(),
            Database::Sqlite("x.db".into())
        );
        assert_eq!(of(Some("y.db")).unwrap(), Database::Sqlite("y.db".into()));
        let pg = of(Some(
            "postgresql://u:secret@db:5433/deskport?sslmode=disable",
        ))
        .unwrap();
        assert_eq!(
            pg.to_string(),
            "postgresql://u@db:5433/deskport?sslmode=disable",
            "no password shown"
        );
        let err = of(Some("mysql://db/x")).unwrap_err().to_string();
        assert!(err.contains("\"mysql\""), "{err}");
        assert!(of(Some("")).is_err());
    }
}
