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

/// The server key the oracle's CredSSP binds to (any bytes: TLS is not part of it).
#[cfg(any(test, feature = "fuzzing"))]
const ORACLE_KEY: [u8; 12] = [0x30, 0x0a, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

/// A CredSSP server as `authenticate` makes it, with one account (alice, "a password").
#[cfg(any(test, feature = "fuzzing"))]
fn oracle_server() -> sspi::Result<CredSspServer<AccountProxy>> {
    let mut accounts = Accounts::default();
    let _ = accounts.add("alice", "a password", 0);
    let proxy = AccountProxy {
        accounts: Arc::new(accounts),
        throttle: Arc::new(Throttle::default()),
        source: "ip:198.18.0.2".to_owned(),
        asked: Arc::new(Mutex::new(None)),
        locked: Arc::new(AtomicBool::new(false)),
    };
    let mode = ServerMode::Ntlm(sspi::ntlm::NtlmConfig::new("deskport".to_owned()));
    CredSspServer::new(ORACLE_KEY.to_vec(), proxy, mode)
}

/// The fuzzing oracle of NLA as a stranger meets it (see `fuzz/`): `data` as the client's
/// TSRequests (cut as the server cuts them), each decoded and given to the CredSSP server with
/// deskport's account lookup behind it. Nothing panics, every reply encodes, and no sequence
/// of bytes authenticates: without the password the client cannot answer the server's fresh
/// NTLM challenge.
#[cfg(feature = "fuzzing")]
pub fn fuzz_oracle(data: &[u8]) {
    let Ok(mut server) = oracle_server() else {
        return;
    };
    let mut rest = data;
    for _ in 0..8 {
        let size = match TsRequestHint.find_size(rest) {
            Ok(Some((_, size))) if size > 0 && size <= rest.len() => size,
            _ => return,
        };
        let (message, after) = rest.split_at(size);
        rest = after;
        let Ok(request) = TsRequest::from_buffer(message) else {
            return;
        };
        match server.process(request).resolve_to_result() {
            Ok(ServerState::ReplyNeeded(reply)) => {
                let mut out = Vec::new();
                assert!(
                    reply.encode_ts_request(&mut out).is_ok(),
                    "a reply that does not encode"
                );
            }
            Ok(ServerState::Finished(identity)) => {
                panic!("authenticated {:?} without the password", identity.username)
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironrdp_connector::sspi::credssp::{ClientMode, ClientState, CredSspClient, CredSspMode};

    /// A real NTLM client (sspi's, which `deskport connect` uses) logging on to the oracle's
    /// server with `password`: whether it authenticated, and every TSRequest it sent.
    fn exchange(password: &str) -> (bool, Vec<u8>) {
        let identity = AuthIdentity {
            username: Username::parse("alice").unwrap(),
            password: password.to_owned().into(),
        };
        let mut client = CredSspClient::new(
            ORACLE_KEY.to_vec(),
            sspi::Credentials::AuthIdentity(identity),
            CredSspMode::WithCredentials,
            ClientMode::Ntlm(sspi::ntlm::NtlmConfig::new("client".to_owned())),
            "TERMSRV/deskport".to_owned(),
        )
        .unwrap();
        let mut server = oracle_server().unwrap();
        let (mut sent, mut to_client) = (Vec::new(), TsRequest::default());
        for _ in 0..6 {
            let request = match client.process(to_client).resolve_to_result().unwrap() {
                ClientState::ReplyNeeded(r) | ClientState::FinalMessage(r) => r,
            };
            let mut bytes = Vec::new();
            request.encode_ts_request(&mut bytes).unwrap();
            sent.extend_from_slice(&bytes);
            match server
                .process(TsRequest::from_buffer(&bytes).unwrap())
                .resolve_to_result()
            {
                Ok(ServerState::ReplyNeeded(reply)) => to_client = reply,
                Ok(ServerState::Finished(_)) => return (true, sent),
                Err(_) => return (false, sent),
            }
        }
        (false, sent)
    }

    /// The oracle's server is a working one (the right password logs on, a wrong one does
    /// not), so "no input authenticates" means something; a real client's messages replayed
    /// against a fresh challenge do not authenticate. `DESKPORT_WRITE_FUZZ_SEEDS=DIR` writes
    /// them as the seed of the `credssp` target.
    #[test]
    fn the_oracles_server_logs_on_the_right_password_only_and_replays_fail() {
        let (ok, sent) = exchange("a password");
        assert!(ok, "the right password was refused");
        assert!(
            !exchange("another password").0,
            "a wrong password logged on"
        );
        #[cfg(feature = "fuzzing")]
        fuzz_oracle(&sent);
        crate::testing::write_fuzz_seed("credssp", "sspi-ntlm-client", &sent);
    }
}
