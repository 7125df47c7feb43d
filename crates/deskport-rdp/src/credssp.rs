//! Network Level Authentication with a per-user lookup (MS-CSSP over NTLM).
//!
//! ironrdp-acceptor's own CredSSP step checks one preset credential. sspi's `CredSspServer`
//! asks a `CredentialsProxy` for the secret of whatever user the client names, after the
//! NTLM AUTHENTICATE message; [`AccountProxy`] answers from deskport's account store with the
//! account's NT hash (sspi accepts `$NTLM$:<hex>` in place of a password), so every account
//! can log on with NLA and the server never needs the plaintext password. An account or a
//! source address that is locked out gets no secret, and the client is told
//! STATUS_ACCOUNT_LOCKED_OUT.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use deskport_policy::throttle::Throttle;

use ironrdp_async::{Framed, FramedRead, FramedWrite};
use ironrdp_connector::sspi::credssp::{
    CredSspServer, CredentialsProxy, EarlyUserAuthResult, NStatusCode, ServerError, ServerMode,
    ServerState, TsRequest,
};
use ironrdp_connector::sspi::{self, AuthIdentity, Username};
use ironrdp_pdu::PduHint;

use crate::accounts::Accounts;

/// Answers sspi's lookups from the account store, and remembers who was asked for. A locked
/// out account gets no secret, so its logon fails whatever the password.
#[derive(Debug)]
pub struct AccountProxy {
    accounts: Arc<Accounts>,
    throttle: Arc<Throttle>,
    /// The throttle key of the client's address (`ip:…`).
    source: String,
    asked: Arc<Mutex<Option<String>>>,
    locked: Arc<AtomicBool>,
}

impl CredentialsProxy for AccountProxy {
    type AuthenticationData = AuthIdentity;

    fn auth_data_by_user(&mut self, username: &Username) -> std::io::Result<AuthIdentity> {
        let name = username.account_name().to_owned();
        *self.asked.lock().unwrap_or_else(|e| e.into_inner()) = Some(name.clone());
        let keys = [
            format!("user:{}", name.to_ascii_lowercase()),
            self.source.clone(),
        ];
        if self
            .throttle
            .check(&keys, std::time::Instant::now())
            .is_err()
        {
            self.locked.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other(format!(
                "account {name:?} is locked out"
            )));
        }
        let account = self
            .accounts
            .get(&name)
            .ok_or_else(|| std::io::Error::other(format!("no account {name:?}")))?;
        Ok(AuthIdentity {
            // The client's own spelling of user and domain: NTOWFv2 hashes them as sent.
            username: username.clone(),
            password: format!("{}{}", sspi::NTLM_HASH_PREFIX, account.nt_hash.to_hex()).into(),
        })
    }

    fn auth_data(&mut self) -> std::io::Result<Vec<AuthIdentity>> {
        // Only the Negotiate server mode asks for every identity; NTLM mode never does.
        Ok(Vec::new())
    }
}

/// How NLA ended.
#[derive(Debug)]
pub enum NlaOutcome {
    /// The client proved the password of this account.
    Authenticated { account: String },
    /// Wrong password or unknown user (the client was told STATUS_LOGON_FAILURE).
    Denied {
        user: Option<String>,
        reason: String,
        /// The account is locked out (the client was told STATUS_ACCOUNT_LOCKED_OUT).
        locked: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct TsRequestHint;

impl PduHint for TsRequestHint {
    fn find_size(&self, bytes: &[u8]) -> ironrdp_core::DecodeResult<Option<(bool, usize)>> {
        match TsRequest::read_length(bytes) {
            Ok(length) => Ok(Some((true, length))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(ironrdp_core::other_err!("TsRequest", source: e)),
        }
    }
}

async fn send<S: FramedWrite>(framed: &mut Framed<S>, request: &TsRequest) -> anyhow::Result<()> {
    let mut out = Vec::new();
    request
        .encode_ts_request(&mut out)
        .map_err(|e| anyhow::anyhow!("encode a TSRequest: {e}"))?;
    framed.write_all(&out).await?;
    Ok(())
}

/// Runs the CredSSP exchange on `framed` (already inside TLS). With HYBRID_EX the Early User
/// Authorization Result is sent too (MS-RDPBCGR 2.2.10.2), so the client learns of a denial
/// before the connection sequence goes on.
pub async fn authenticate<S>(
    framed: &mut Framed<S>,
    accounts: Arc<Accounts>,
    throttle: Arc<Throttle>,
    source: String,
    server_public_key: Vec<u8>,
    hybrid_ex: bool,
) -> anyhow::Result<NlaOutcome>
where
    S: FramedRead + FramedWrite,
{
    let asked = Arc::new(Mutex::new(None));
    let locked = Arc::new(AtomicBool::new(false));
    let proxy = AccountProxy {
        accounts,
        throttle,
        source,
        asked: asked.clone(),
        locked: locked.clone(),
    };
    let mode = ServerMode::Ntlm(sspi::ntlm::NtlmConfig::new("deskport".to_owned()));
    let mut server = CredSspServer::new(server_public_key, proxy, mode)
        .map_err(|e| anyhow::anyhow!("start CredSSP: {e}"))?;
    let outcome = loop {
        let bytes = framed.read_by_hint(&TsRequestHint).await?;
        let request = TsRequest::from_buffer(&bytes)
            .map_err(|e| anyhow::anyhow!("decode a TSRequest: {e}"))?;
        let result = server.process(request).resolve_to_result();
        match result {
            Ok(ServerState::ReplyNeeded(reply)) => send(framed, &reply).await?,
            Ok(ServerState::Finished(identity)) => {
                break NlaOutcome::Authenticated {
                    account: asked
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone()
                        .unwrap_or_else(|| identity.username.account_name().to_owned()),
                };
            }
            Err(ServerError { ts_request, error }) => {
                let locked = locked.load(Ordering::Relaxed);
                if let Some(mut reply) = ts_request {
                    if locked {
                        reply.error_code = Some(NStatusCode::ACCOUNT_LOCKED_OUT);
                    } else if error.error_type == sspi::ErrorKind::LogonDenied {
                        // As Windows does, so that clients ask for other credentials.
                        reply.error_code = Some(NStatusCode::LOGON_FAILURE);
                    }
                    send(framed, &reply).await?;
                }
                break NlaOutcome::Denied {
                    user: asked.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                    reason: error.to_string(),
                    locked,
                };
            }
        }
    };
    if hybrid_ex {
        let result = match outcome {
            NlaOutcome::Authenticated { .. } => EarlyUserAuthResult::Success,
            NlaOutcome::Denied { .. } => EarlyUserAuthResult::AccessDenied,
        };
        let mut out = Vec::new();
        result
            .to_buffer(&mut out)
            .map_err(|e| anyhow::anyhow!("encode the early user authorization result: {e}"))?;
        framed.write_all(&out).await?;
    }
    Ok(outcome)
}
