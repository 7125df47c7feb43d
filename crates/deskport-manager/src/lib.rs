//! The manager (SPEC §3): deskport's control plane. It serves the HTTP API (`/api/v1`, with its
//! OpenAPI document), the web console, `/healthz` and `/metrics`, and the agents' feed; it keeps
//! everything in a [`deskport_store::Store`] (SQLite by default) and never writes SQL itself.
//! The API and the console make changes through the same operations ([`ops`]: the role check,
//! then the store).
//!
//! Entry point: [`Manager::open`] prepares the database (migrations, the first project and
//! administrator), [`Manager::run`] serves it on a listener until a shutdown future resolves
//! (tests pass port 0). The pieces are public too: [`open_store`] + [`bootstrap`], [`app`]
//! builds the router, [`serve`] runs it.

pub mod api;
pub mod auth;
pub mod console;
mod convert;
pub mod error;
mod extract;
pub mod metrics;
pub mod ops;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use deskport_policy::Quota;
use deskport_store::{Actor, SqliteBackend, Store};
use rand::Rng as _;

use crate::error::ApiError;
pub use crate::state::AppState;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    deskport_policy::unix_ms(std::time::SystemTime::now())
}

/// Where the data lives and the limits that apply.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Holds `deskport.db` (SQLite) unless `db` names another database.
    pub data_dir: PathBuf,
    /// `sqlite:PATH` (or a bare path); PostgreSQL is not implemented yet.
    pub db: Option<String>,
    pub quota: Quota,
    /// The RDP user name shown in connect commands.
    pub rdp_user: Option<String>,
    /// Largest accepted request body, bytes.
    pub body_limit: usize,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("."),
            db: None,
            quota: Quota::default(),
            rdp_user: None,
            body_limit: 64 * 1024,
        }
    }
}

/// Opens the database named by the configuration (creating the data directory and running
/// the migrations).
pub async fn open_store(config: &ManagerConfig) -> anyhow::Result<Arc<Store>> {
    let path = match config.db.as_deref() {
        None => {
            std::fs::create_dir_all(&config.data_dir).with_context(|| {
                format!("create the data directory {}", config.data_dir.display())
            })?;
            config.data_dir.join("deskport.db")
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            anyhow::bail!("PostgreSQL is not supported by this build yet; use SQLite (the default)")
        }
        Some(url) => PathBuf::from(
            url.strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url),
        ),
    };
    let backend = SqliteBackend::open(&path)
        .await
        .with_context(|| format!("open the database {}", path.display()))?;
    let store = Store::new(backend)
        .await
        .with_context(|| format!("read the database {}", path.display()))?;
    Ok(Arc::new(store))
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
    axum::Router::new()
        .nest("/api/v1", api)
        .merge(console::router())
        .route("/healthz", axum::routing::get(healthz))
        .route("/metrics", axum::routing::get(metrics))
        .fallback(|| async { ApiError::not_found("page") })
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state)
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
        s.metrics.render(revision),
    )
}

/// The state for `store` with `config`'s limits.
pub fn state(store: Arc<Store>, config: &ManagerConfig) -> AppState {
    AppState {
        store,
        quota: config.quota,
        throttle: Arc::new(deskport_policy::throttle::Throttle::default()),
        metrics: Arc::new(metrics::Metrics::default()),
        rdp_user: config.rdp_user.clone(),
    }
}

/// The manager as a service: its database open and initialised, ready to serve.
#[derive(Debug)]
pub struct Manager {
    state: AppState,
    body_limit: usize,
    generated_password: Option<String>,
}

impl Manager {
    /// Opens the database `config` names (creating it and running its migrations) and, on first
    /// start, creates the `default` project and the `admin` user with `admin_password`, else a
    /// generated one (see [`Manager::generated_password`]); a given password replaces the
    /// admin's on later starts.
    pub async fn open(
        config: &ManagerConfig,
        admin_password: Option<String>,
    ) -> anyhow::Result<Self> {
        let store = open_store(config).await?;
        let generated_password = bootstrap(&store, admin_password).await?;
        Ok(Self {
            state: state(store, config),
            body_limit: config.body_limit,
            generated_password,
        })
    }

    /// The admin's password when it was generated by this start (print it once).
    pub fn generated_password(&self) -> Option<&str> {
        self.generated_password.as_deref()
    }

    /// Serves the API, the console and the agents' feed on `listener` until `shutdown`
    /// resolves.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr().context("the listener's address")?;
        tracing::info!(%addr, "Manager started");
        serve(listener, app(self.state, self.body_limit), shutdown).await?;
        tracing::info!("Manager stopped");
        Ok(())
    }
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("serve HTTP")
}
