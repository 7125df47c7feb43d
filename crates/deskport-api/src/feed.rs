//! Following the manager's agent feed: the one follower every agent uses (the firewall for
//! its policy, the RDP server for its switches).
//!
//! [`Feed::next`] long-polls `GET /api/v1/agent/policy?after=REV` on the manager it follows
//! and returns the first document newer than `after`. When that manager does not answer (or
//! answers with an error) the follower logs it once, fails over to the next manager of its
//! list, and waits a randomized, growing back-off (250 ms doubling to 5 s, ±25 %) before it
//! asks again; the first answer resets it. Agents keep enforcing what they have meanwhile: the
//! follower never returns "nothing".
//!
//! Stopping is the caller's: `next` and [`Feed::back_off`] are cancel-safe (dropping them
//! loses nothing but a request in flight), so an agent selects them against its shutdown.

use std::time::Duration;

use rand::Rng as _;

use crate::client::{Client, ClientError, ServerTrust};
use crate::policy_doc::PolicyDocument;
use crate::v1::AgentReport;

/// How long one long poll waits for a change on the manager's side.
pub const LONG_POLL: Duration = Duration::from_secs(30);

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A follower of the agent feed of one or more managers (replicas of one control plane).
#[derive(Debug)]
pub struct Feed {
    managers: Vec<Client>,
    active: usize,
    wait: Duration,
    backoff: Duration,
    last_error: Option<String>,
    /// The URL of the manager followed now, for those who show it while [`Feed::next`] runs.
    followed: tokio::sync::watch::Sender<String>,
}

impl Feed {
    /// Follows `urls` (tried in order, the first one first) with the agent `token`; `https://`
    /// managers are checked as `trust` says (every replica under the same trust: one pinned
    /// certificate they share, or a CA).
    pub fn new(
        urls: &[String],
        token: &str,
        trust: Option<&ServerTrust>,
    ) -> Result<Self, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::Decode("no manager URL given".to_owned()));
        }
        let managers = urls
            .iter()
            .map(|url| Client::with_trust(url, Some(token.to_owned()), trust))
            .collect::<Result<Vec<_>, _>>()?;
        let followed = tokio::sync::watch::channel(managers[0].base().to_owned()).0;
        Ok(Self {
            managers,
            active: 0,
            followed,
            wait: LONG_POLL,
            backoff: FIRST_BACKOFF,
            last_error: None,
        })
    }

    /// Long polls last at most `wait` on the manager's side (tests shorten it).
    pub fn with_long_poll(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The URL of the manager followed now.
    pub fn following(&self) -> &str {
        self.managers[self.active].base()
    }

    /// The URL of the manager followed now, as it changes — also during [`Feed::next`], which
    /// fails over without returning.
    pub fn watch_following(&self) -> tokio::sync::watch::Receiver<String> {
        self.followed.subscribe()
    }

    /// The first policy document newer than `after` (every document when `after` is `None`).
    /// Retries until one arrives, failing over between the managers.
    pub async fn next(&mut self, after: Option<u64>) -> PolicyDocument {
        loop {
            let manager = &self.managers[self.active];
            match manager.agent_policy(after, self.wait).await {
                Ok(Some(doc)) => {
                    self.answered();
                    return doc;
                }
                Ok(None) => self.answered(),
                Err(e) => {
                    self.failed(&e);
                    self.back_off().await;
                }
            }
        }
    }

    /// Tells the manager followed now what the agent does (its revision, its certificate).
    pub async fn report(&self, report: &AgentReport) -> Result<(), ClientError> {
        self.managers[self.active].agent_report(report).await
    }

    /// Waits the current back-off and lengthens it: for an agent that could not use the
    /// document it got (it asks again later rather than at once).
    pub async fn back_off(&mut self) {
        let jitter = rand::thread_rng().gen_range(0.75..1.25);
        tokio::time::sleep(self.backoff.mul_f64(jitter)).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn answered(&mut self) {
        self.backoff = FIRST_BACKOFF;
        if self.last_error.take().is_some() {
            tracing::info!(manager = self.following(), "The manager answers again");
        }
    }

    fn failed(&mut self, error: &ClientError) {
        let message = error.to_string();
        if self.last_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(
                manager = self.following(),
                error = message,
                "The manager does not answer; what is in force stays in force"
            );
        }
        self.last_error = Some(message);
        if self.managers.len() > 1 {
            self.active = (self.active + 1) % self.managers.len();
            self.followed
                .send_replace(self.managers[self.active].base().to_owned());
            tracing::info!(manager = self.following(), "Following another manager");
        }
    }
}
