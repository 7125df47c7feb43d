//! A typed client of the manager's API, for the CLI and the agents.
//!
//! Over `https://` the manager's certificate is checked as the caller's [`ServerTrust`] says
//! (a pinned fingerprint, a CA file, or the known-hosts file for trust on first use); there is
//! no way to accept any certificate. A refused certificate is [`ClientError::Tls`], which names
//! both fingerprints.

use std::sync::Arc;
use std::time::Duration;

use deskport_tls::Verifier;
pub use deskport_tls::{parse_fingerprint, ServerTrust};

use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::policy_doc::PolicyDocument;
use crate::v1::*;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The manager could not be reached (refused, timed out, DNS…).
    #[error("cannot reach the manager at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The manager answered with an error.
    #[error("{}", describe(.status, .body))]
    Api { status: u16, body: ErrorBody },
    /// The manager's certificate is not trusted (or there is no way to check it).
    #[error("will not talk to the manager at {url}: {message}")]
    Tls { url: String, message: String },
    /// The answer was not what this client understands.
    #[error("unexpected answer from the manager: {0}")]
    Decode(String),
}

fn describe(status: &u16, body: &ErrorBody) -> String {
    let field = body
        .error
        .field
        .as_ref()
        .map(|f| format!(" (field {f})"))
        .unwrap_or_default();
    let more: Vec<String> = body
        .details
        .iter()
        .skip(1)
        .map(|d| format!("; {}", d.message))
        .collect();
    format!(
        "{}{field}{} [{} {status}]",
        body.error.message,
        more.join(""),
        body.error.code
    )
}

impl ClientError {
    /// The API error code, when the manager answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.error.code),
            _ => None,
        }
    }
}

/// The manager's API at `base` (e.g. `https://manager.example:8080`), with a bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    verifier: Option<Arc<Verifier>>,
}

type R<T> = Result<T, ClientError>;

impl Client {
    /// A client of a manager at an `http://` URL (plain HTTP: the manager serves it on
    /// loopback only); an `https://` URL needs [`Client::with_trust`].
    pub fn new(base: &str, token: Option<String>) -> R<Self> {
        Self::with_trust(base, token, None)
    }

    /// A client that checks an `https://` manager's certificate as `trust` says (`trust` is
    /// not used for `http://`). An `https://` URL without `trust` is refused.
    pub fn with_trust(base: &str, token: Option<String>, trust: Option<&ServerTrust>) -> R<Self> {
        let base = base.trim_end_matches('/').to_owned();
        let tls_error = |message: String| ClientError::Tls {
            url: base.clone(),
            message,
        };
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        let mut verifier = None;
        if base.starts_with("https://") {
            let trust = trust.ok_or_else(|| {
                tls_error(
                    "no way to check its certificate: pin its fingerprint or give a CA file"
                        .to_owned(),
                )
            })?;
            let url = reqwest::Url::parse(&base).map_err(|e| tls_error(e.to_string()))?;
            let host = url
                .host_str()
                .ok_or_else(|| tls_error("the URL names no host".to_owned()))?;
            let port = url.port_or_known_default().unwrap_or(443);
            let v = Verifier::new(trust, &format!("{host}:{port}"))
                .map_err(|e| tls_error(format!("{e:#}")))?;
            let config = v.client_config().map_err(|e| tls_error(format!("{e:#}")))?;
            builder = builder.use_preconfigured_tls(config);
            verifier = Some(v);
        } else {
            let config =
                deskport_tls::verify::trust_nothing().map_err(|e| tls_error(format!("{e:#}")))?;
            builder = builder.use_preconfigured_tls(config);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(Self {
            http,
            base,
            token,
            verifier,
        })
    }

    /// The certificate fingerprint this client remembered in the known-hosts file (trust on
    /// first use), when it did.
    pub fn remembered_fingerprint(&self) -> Option<String> {
        self.verifier.as_ref().and_then(|v| v.remembered())
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> R<T> {
        let response = self.execute(request).await?;
        let text = response
            .text()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| ClientError::Decode(format!("{e}: {text}")))
    }

    async fn execute(&self, request: reqwest::RequestBuilder) -> R<reqwest::Response> {
        let request = match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        let response = request.send().await.map_err(|e| {
            match self.verifier.as_ref().and_then(|v| v.take_refusal()) {
                Some(message) => ClientError::Tls {
                    url: self.base.clone(),
                    message,
                },
                None => ClientError::Unreachable {
                    url: self.base.clone(),
                    message: root_cause(&e),
                },
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str::<ErrorBody>(&text).unwrap_or_else(|_| ErrorBody {
            error: ErrorDetail {
                code: "http_error".into(),
                message: format!("HTTP {status}: {}", text.trim()),
                field: None,
            },
            details: Vec::new(),
        });
        Err(ClientError::Api {
            status: status.as_u16(),
            body,
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> R<T> {
        self.send(self.http.get(self.url(path))).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> R<T> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    async fn delete(&self, path: &str) -> R<()> {
        self.execute(self.http.delete(self.url(path)))
            .await
            .map(|_| ())
    }

    pub async fn token(&self, request: &TokenRequest) -> R<TokenResponse> {
        self.post("/auth/tokens", request).await
    }

    pub async fn projects(&self) -> R<ProjectList> {
        self.get("/projects").await
    }

    pub async fn groups(&self) -> R<GroupList> {
        self.get("/security-groups").await
    }

    pub async fn create_group(&self, group: CreateGroup) -> R<GroupEnvelope> {
        self.post(
            "/security-groups",
            &CreateGroupRequest {
                security_group: group,
            },
        )
        .await
    }

    pub async fn delete_group(&self, id: Uuid) -> R<()> {
        self.delete(&format!("/security-groups/{id}")).await
    }

    pub async fn rules(&self, group: Option<Uuid>) -> R<RuleList> {
        match group {
            Some(g) => {
                self.get(&format!("/security-group-rules?security_group_id={g}"))
                    .await
            }
            None => self.get("/security-group-rules").await,
        }
    }

    pub async fn create_rule(&self, rule: CreateRule) -> R<RuleEnvelope> {
        self.post(
            "/security-group-rules",
            &CreateRuleRequest {
                security_group_rule: rule,
            },
        )
        .await
    }

    pub async fn delete_rule(&self, id: Uuid) -> R<()> {
        self.delete(&format!("/security-group-rules/{id}")).await
    }

    pub async fn templates(&self) -> R<TemplateList> {
        self.get("/templates").await
    }

    pub async fn instances(&self) -> R<InstanceList> {
        self.get("/instances").await
    }

    pub async fn instance(&self, id: Uuid) -> R<InstanceEnvelope> {
        self.get(&format!("/instances/{id}")).await
    }

    pub async fn create_instance(&self, instance: CreateInstance) -> R<InstanceCreated> {
        self.post("/instances", &CreateInstanceRequest { instance })
            .await
    }

    pub async fn delete_instance(&self, id: Uuid) -> R<()> {
        self.delete(&format!("/instances/{id}")).await
    }

    pub async fn set_remote_desktop(
        &self,
        id: Uuid,
        update: UpdateRemoteDesktop,
    ) -> R<InstanceEnvelope> {
        self.send(
            self.http
                .put(self.url(&format!("/instances/{id}/remote-desktop")))
                .json(&update),
        )
        .await
    }

    /// Mints an RD Gateway token for the caller to reach instance `id`.
    pub async fn create_rdp_token(&self, id: Uuid, request: &CreateRdpToken) -> R<RdpTokenCreated> {
        self.post(&format!("/instances/{id}/rdp-tokens"), request)
            .await
    }

    /// The caller's RD Gateway tokens for instance `id` (everyone's for a project admin).
    pub async fn rdp_tokens(&self, id: Uuid) -> R<RdpTokenList> {
        self.get(&format!("/instances/{id}/rdp-tokens")).await
    }

    pub async fn revoke_rdp_token(&self, id: Uuid) -> R<()> {
        self.delete(&format!("/rdp-tokens/{id}")).await
    }

    pub async fn attach_group(&self, id: Uuid, group: &str) -> R<InstanceEnvelope> {
        self.post(
            &format!("/instances/{id}/security-groups"),
            &AttachGroup {
                security_group: group.to_owned(),
            },
        )
        .await
    }

    pub async fn detach_group(&self, id: Uuid, group: Uuid) -> R<()> {
        self.delete(&format!("/instances/{id}/security-groups/{group}"))
            .await
    }

    pub async fn audit(&self, query: &str) -> R<AuditList> {
        self.get(&format!("/audit-events{query}")).await
    }

    /// The agent's desired state: at once when the manager's revision is newer than `after`,
    /// else when it changes, else `None` after about `wait` (long poll).
    pub async fn agent_policy(
        &self,
        after: Option<u64>,
        wait: Duration,
    ) -> R<Option<PolicyDocument>> {
        let mut url = format!("{}?wait={}", self.url("/agent/policy"), wait.as_secs());
        if let Some(after) = after {
            url += &format!("&after={after}");
        }
        let response = self
            .execute(self.http.get(url).timeout(wait + Duration::from_secs(10)))
            .await?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let text = response
            .text()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        PolicyDocument::from_json(&text)
            .map(Some)
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// An RD Gateway asks for a token's grant (administrators' tokens only).
    pub async fn gateway_open(&self, request: &GatewayOpen) -> R<GatewayDecision> {
        self.post("/rd-gateway/grants", request).await
    }

    /// An RD Gateway asks whether a live tunnel's grant still holds.
    pub async fn gateway_check(&self, token_id: Uuid) -> R<GatewayDecision> {
        self.send(
            self.http
                .post(self.url(&format!("/rd-gateway/grants/{token_id}/check"))),
        )
        .await
    }

    /// An RD Gateway records a tunnel's event.
    pub async fn gateway_event(&self, report: &GatewayEventReport) -> R<()> {
        self.execute(self.http.post(self.url("/rd-gateway/events")).json(report))
            .await
            .map(|_| ())
    }

    /// The count of changes that may affect grants: at once if it is not `after`, else when
    /// it changes, else after about `wait`.
    pub async fn gateway_changes(&self, after: Option<u64>, wait: Duration) -> R<GatewayChanges> {
        let mut url = format!(
            "{}?wait={}",
            self.url("/rd-gateway/changes"),
            wait.as_secs()
        );
        if let Some(after) = after {
            url += &format!("&after={after}");
        }
        self.send(self.http.get(url).timeout(wait + Duration::from_secs(10)))
            .await
    }

    pub async fn agent_report(&self, report: &AgentReport) -> R<()> {
        self.execute(self.http.post(self.url("/agent/report")).json(report))
            .await
            .map(|_| ())
    }
}

/// The innermost cause of a transport error ("Connection refused", not "error sending request").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
