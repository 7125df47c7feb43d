//! Connecting: TCP, security negotiation, TLS with trust on first use, NLA or TLS logon, and
//! errors that say what went wrong in the user's terms. The client offers the graphics
//! pipeline (MS-RDPEGFX; decoded and composited by ironrdp-session) unless told not to, and
//! takes classic bitmap updates from servers without it.
//!
//! The server's certificate is accepted during the TLS handshake only so that it can be
//! checked right after it — against a pinned fingerprint or the known-hosts file — before
//! CredSSP or the Client Info PDU sends anything secret.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ironrdp_async::NetworkClient;
use ironrdp_connector::sspi::credssp::NStatusCode;
use ironrdp_connector::sspi::generator::NetworkRequest;
use ironrdp_connector::{
    BitmapConfig, ClientConnector, Config, ConnectionResult, ConnectorError, ConnectorErrorKind,
    ConnectorResult, Credentials, DesktopSize, ServerName,
};
use ironrdp_egfx::client::{GraphicsPipelineClient, GraphicsPipelineHandler};
use ironrdp_egfx::pdu::{
    CapabilitiesV103Flags, CapabilitiesV104Flags, CapabilitiesV107Flags, CapabilitiesV10Flags,
    CapabilitiesV81Flags, CapabilitiesV8Flags, CapabilitySet,
};
use ironrdp_pdu::gcc;
use ironrdp_pdu::nego::FailureCode;
use ironrdp_pdu::rdp::capability_sets::{
    client_codecs_capabilities, MajorPlatformType, RailSupportLevel,
};
use ironrdp_pdu::rdp::client_info::{PerformanceFlags, TimezoneInfo};
use ironrdp_tokio::TokioFramed;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use x509_cert::der::Decode as _;

use deskport_tls::known_hosts::{KnownHosts, Trust};

/// Which security the client offers (`--sec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// NLA if the server can, else TLS.
    Auto,
    /// Network Level Authentication (CredSSP) only.
    Nla,
    /// TLS only; the password goes in the Client Info PDU.
    Tls,
}

/// Everything a connection needs.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub domain: Option<String>,
    pub size: (u16, u16),
    pub security: Security,
    /// `--cert-fingerprint`: accept only this certificate (SHA-256, hex pairs).
    pub pin: Option<String>,
    /// Where trusted certificates are remembered.
    pub known_hosts: PathBuf,
    pub connect_timeout: Duration,
    /// Join the clipboard channel, reporting what the server does on it here.
    pub clipboard: Option<tokio::sync::mpsc::UnboundedSender<deskport_proto::clipboard::FromPeer>>,
    /// Join the Display Control channel (a window asks the server for its new size).
    pub display_control: bool,
    /// Offer the graphics pipeline (MS-RDPEGFX).
    pub gfx: bool,
    /// Join the sound channel and play the session's sound ([`crate::sound`]).
    pub audio: bool,
    /// Reach the host through an RD Gateway instead of directly.
    pub gateway: Option<GatewayOptions>,
}

/// An RD Gateway to go through (`--gateway`, `--gateway-token`, or a `.rdp` file's
/// `gatewayhostname` and `gatewayaccesstoken`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayOptions {
    pub host: String,
    pub port: u16,
    pub token: String,
    /// `--gateway-fingerprint`: accept only this certificate for the gateway; else the
    /// known-hosts file, as for RDP servers.
    pub pin: Option<String>,
}

impl GatewayOptions {
    pub fn endpoint(&self) -> String {
        endpoint(&self.host, self.port)
    }
}

/// `HOST:PORT`, an IPv6 address in brackets: how endpoints are named in messages and in the
/// known-hosts file.
fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// What RDP runs over: a TCP connection, or a tunnel through an RD Gateway.
pub trait Transport: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin> Transport for T {}

impl Options {
    pub fn endpoint(&self) -> String {
        endpoint(&self.host, self.port)
    }
}

/// Why a connection failed, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{endpoint} refused the connection: nothing accepts RDP there, or a firewall rejects it (is Remote Desktop enabled on the instance, and does its security group allow your address on this port?)")]
    Refused { endpoint: String },
    #[error("no answer from {endpoint} within {seconds} s: the port is probably filtered by a firewall (does the instance's security group allow your address?)")]
    Filtered { endpoint: String, seconds: u64 },
    #[error("{endpoint} closed the connection before RDP started: a firewall in front of the instance refused it (does its security group allow your address on this port?), or no RDP server answers there")]
    ClosedBeforeRdp { endpoint: String },
    #[error("cannot connect to {endpoint}: {message}")]
    Network { endpoint: String, message: String },
    #[error("the server requires Network Level Authentication (it only accepts NLA clients); connect with --sec nla or --sec auto")]
    NlaRequired,
    #[error("the server requires TLS security; connect with --sec tls or --sec auto")]
    TlsRequired,
    #[error("the server does not support Network Level Authentication (it answered NLA with standard RDP security); connect with --sec tls or --sec auto")]
    NlaUnsupported,
    #[error("the server offers only standard RDP security, whose encryption is broken and which deskport does not speak; enable TLS (or NLA) on the server")]
    StandardSecurityOnly,
    #[error("security negotiation failed: {0}")]
    Negotiation(String),
    #[error("the server refused the user name or password")]
    LogonFailed,
    #[error("the account is locked out after repeated failed logons; try again later")]
    LockedOut,
    #[error("the server denied the logon ({0})")]
    AccessDenied(String),
    #[error(
        "the certificate of {endpoint} has CHANGED.\n  known:    SHA256 {known}\n  received: SHA256 {received}\n\
         Someone could be intercepting the connection, or the server was reinstalled. If you trust the new \
         certificate, remove the line for {endpoint} from {known_hosts}."
    )]
    CertificateChanged {
        endpoint: String,
        known: String,
        received: String,
        known_hosts: String,
    },
    #[error("the certificate of {endpoint} is not the pinned one.\n  pinned:   SHA256 {pinned}\n  received: SHA256 {received}")]
    CertificateMismatch {
        endpoint: String,
        pinned: String,
        received: String,
    },
    #[error("the RD Gateway {endpoint} refused: {message}")]
    Gateway { endpoint: String, message: String },
    #[error("the server closed the connection during the handshake ({0})")]
    Closed(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    Protocol(String),
}

/// No network access for CredSSP: NTLM needs none (only Kerberos talks to a KDC).
#[derive(Debug)]
struct NoNetwork;

impl NetworkClient for NoNetwork {
    async fn send(&mut self, _request: &NetworkRequest) -> ConnectorResult<Vec<u8>> {
        Err(ironrdp_connector::general_err!(
            "this client does not contact Kerberos servers"
        ))
    }
}

/// Accepts any certificate during the handshake (signatures are still verified); the
/// certificate itself is checked afterwards against the pin or the known-hosts file.
#[derive(Debug)]
struct TrustLater(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for TrustLater {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// SHA-256 of a DER certificate, as `ab:cd:…` — the form the server prints at start.
pub use deskport_tls::fingerprint;

fn normalize_fingerprint(text: &str) -> String {
    let hex: String = text
        .trim()
        .trim_start_matches("SHA256:")
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_ascii_lowercase();
    hex.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

fn config(opts: &Options) -> Config {
    Config {
        desktop_size: DesktopSize {
            width: opts.size.0,
            height: opts.size.1,
        },
        monitor_layout: None,
        desktop_scale_factor: 0,
        desktop_physical_size: None,
        desktop_orientation: None,
        device_scale_factor: None,
        monitor_extended_layout: None,
        relative_mouse_input: false,
        enable_tls: opts.security != Security::Nla,
        enable_credssp: opts.security != Security::Tls,
        enable_standard_rdp_security: false,
        credentials: Credentials::UsernamePassword {
            username: opts.username.clone(),
            password: opts.password.clone(),
        },
        domain: opts.domain.clone(),
        client_build: 0,
        client_name: "deskport".to_owned(),
        keyboard_type: gcc::KeyboardType::IBM_ENHANCED,
        keyboard_subtype: 0,
        keyboard_functional_keys_count: 12,
        keyboard_layout: 0x409,
        connection_type: gcc::ConnectionType::Lan,
        ime_file_name: String::new(),
        // No QOI: this client decodes the classic bitmap and RemoteFX paths.
        bitmap: Some(BitmapConfig {
            lossy_compression: false,
            color_depth: 32,
            codecs: client_codecs_capabilities(&["qoi:off", "qoiz:off"]).unwrap_or_default(),
        }),
        dig_product_id: String::new(),
        client_dir: "C:\\Windows\\System32\\mstscax.dll".to_owned(),
        alternate_shell: String::new(),
        work_dir: String::new(),
        remote_application_mode: false,
        rail_support_level: RailSupportLevel::empty(),
        platform: MajorPlatformType::UNIX,
        hardware_id: None,
        request_data: None,
        // The password is given: log on with it at once (xrdp, like Windows, shows its own
        // logon screen otherwise).
        autologon: true,
        enable_audio_playback: opts.audio,
        enable_audio_capture: false,
        performance_flags: PerformanceFlags::default(),
        license_cache: None,
        timezone_info: TimezoneInfo::default(),
        // Bulk compression of the server's updates (XCRUSH, or less if the server picks less).
        compression_type: Some(ironrdp_pdu::rdp::client_info::CompressionType::Rdp61),
        // The server's pointer shapes and moves, shown as the window's X cursor.
        enable_server_pointer: true,
        pointer_software_rendering: false,
        multitransport_flags: None,
        // The graphics pipeline: its channel is joined in `connect` when this is set.
        support_dyn_vc_gfx_protocol: opts.gfx,
    }
}

/// What this client offers and reports on the graphics channel.
#[derive(Debug)]
struct Graphics;

impl GraphicsPipelineHandler for Graphics {
    /// Every version up to 10.7, all without H.264 (this client has no decoder; the 10.x
    /// sets say so with AVC_DISABLED, and ironrdp-egfx drops any set that implies AVC, which
    /// would leave only 8.0), with a small cache.
    fn capabilities(&self) -> Vec<CapabilitySet> {
        vec![
            CapabilitySet::V10_7 {
                flags: CapabilitiesV107Flags::SMALL_CACHE | CapabilitiesV107Flags::AVC_DISABLED,
            },
            CapabilitySet::V10_6 {
                flags: CapabilitiesV104Flags::SMALL_CACHE | CapabilitiesV104Flags::AVC_DISABLED,
            },
            CapabilitySet::V10_5 {
                flags: CapabilitiesV104Flags::SMALL_CACHE | CapabilitiesV104Flags::AVC_DISABLED,
            },
            CapabilitySet::V10_4 {
                flags: CapabilitiesV104Flags::SMALL_CACHE | CapabilitiesV104Flags::AVC_DISABLED,
            },
            CapabilitySet::V10_3 {
                flags: CapabilitiesV103Flags::AVC_DISABLED,
            },
            CapabilitySet::V10_2 {
                flags: CapabilitiesV10Flags::SMALL_CACHE | CapabilitiesV10Flags::AVC_DISABLED,
            },
            CapabilitySet::V10 {
                flags: CapabilitiesV10Flags::SMALL_CACHE | CapabilitiesV10Flags::AVC_DISABLED,
            },
            CapabilitySet::V8_1 {
                flags: CapabilitiesV81Flags::SMALL_CACHE,
            },
            CapabilitySet::V8 {
                flags: CapabilitiesV8Flags::SMALL_CACHE,
            },
        ]
    }

    fn on_capabilities_confirmed(&mut self, caps: &CapabilitySet) {
        tracing::info!(
            version = format!("{:#x}", caps.version().0),
            ?caps,
            "The server confirmed the graphics pipeline"
        );
    }

    fn on_close(&mut self) {
        tracing::info!("The graphics channel closed");
    }
}

/// The connector error's text with its causes ("custom error" alone says nothing).
fn chain_text(err: &ConnectorError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// The I/O error kind somewhere in the error's causes.
fn io_kind(err: &ConnectorError) -> Option<std::io::ErrorKind> {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = cause.source();
    }
    None
}

fn is_closed(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe
    )
}

/// Maps the connector's errors to what the user should know. `early`: before the server
/// answered the negotiation request, where a closed connection means a firewall or no RDP.
fn explain(err: ConnectorError, endpoint: &str, early: bool) -> ClientError {
    let text = chain_text(&err);
    let closed = io_kind(&err).is_some_and(is_closed) || {
        let lower = text.to_ascii_lowercase();
        lower.contains("eof")
            || lower.contains("not enough bytes")
            || lower.contains("connection reset")
    };
    match err.kind() {
        ConnectorErrorKind::Negotiation(failure) => match failure.code() {
            FailureCode::HYBRID_REQUIRED_BY_SERVER => ClientError::NlaRequired,
            FailureCode::SSL_REQUIRED_BY_SERVER => ClientError::TlsRequired,
            _ => ClientError::Negotiation(failure.to_string()),
        },
        _ if text.contains("server selected STANDARD_RDP_SECURITY") => {
            let advertised = text.split("but server selected").next().unwrap_or("");
            if advertised.contains("SSL") {
                ClientError::StandardSecurityOnly
            } else {
                ClientError::NlaUnsupported
            }
        }
        ConnectorErrorKind::Credssp(e) => match e.nstatus {
            Some(NStatusCode::ACCOUNT_LOCKED_OUT) => ClientError::LockedOut,
            _ => ClientError::LogonFailed,
        },
        ConnectorErrorKind::AccessDenied => {
            ClientError::AccessDenied("early user authorization result".into())
        }
        _ if text.contains("ServerSetErrorInfo") || text.contains("SetErrorInfo") => {
            ClientError::AccessDenied(text)
        }
        _ if closed && early => ClientError::ClosedBeforeRdp {
            endpoint: endpoint.to_owned(),
        },
        _ if closed => ClientError::Closed(text),
        _ => ClientError::Protocol(text),
    }
}

/// A connected session: the transport and what the connection sequence settled.
pub struct Connected {
    pub framed: TokioFramed<tokio_rustls::client::TlsStream<Box<dyn Transport>>>,
    pub result: ConnectionResult,
    pub fingerprint: String,
    /// Whether the certificate was seen for the first time (and remembered).
    pub first_use: bool,
    /// Through a gateway: its certificate's fingerprint, if it was seen for the first time
    /// (and remembered).
    pub gateway_first_use: Option<String>,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("desktop_size", &self.result.desktop_size)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A TCP connection to `host`:`port`, its failures in the user's terms.
async fn tcp(
    host: &str,
    port: u16,
    endpoint: &str,
    timeout: Duration,
) -> Result<TcpStream, ClientError> {
    let endpoint = endpoint.to_owned();
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Err(_) => {
            return Err(ClientError::Filtered {
                endpoint,
                seconds: timeout.as_secs(),
            })
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(ClientError::Refused { endpoint })
        }
        Ok(Err(e)) if is_closed(e.kind()) => return Err(ClientError::ClosedBeforeRdp { endpoint }),
        Ok(Err(e)) => {
            return Err(ClientError::Network {
                endpoint,
                message: e.to_string(),
            })
        }
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The connection RDP runs over (directly, or a tunnel through the gateway) and its local
/// address.
/// The gateway's certificate's fingerprint comes back if it was new.
async fn transport(
    opts: &Options,
) -> Result<(Box<dyn Transport>, SocketAddr, Option<String>), ClientError> {
    let Some(gw) = &opts.gateway else {
        let endpoint = opts.endpoint();
        let tcp = tcp(&opts.host, opts.port, &endpoint, opts.connect_timeout).await?;
        let local = tcp.local_addr().map_err(|e| ClientError::Network {
            endpoint,
            message: e.to_string(),
        })?;
        return Ok((Box::new(tcp), local, None));
    };
    let endpoint = gw.endpoint();
    let tcp = tcp(&gw.host, gw.port, &endpoint, opts.connect_timeout).await?;
    let local = tcp.local_addr().map_err(|e| ClientError::Network {
        endpoint: endpoint.clone(),
        message: e.to_string(),
    })?;
    // The gateway's certificate is checked (pin or known-hosts) before the token is sent.
    let (tls, cert) = tls_handshake(&gw.host, tcp, false).await?;
    let (gw_fingerprint, gw_first_use) =
        check_certificate(&endpoint, &cert, gw.pin.as_deref(), &opts.known_hosts)?;
    let request = deskport_gateway::client::Request {
        host: gw.host.clone(),
        token: gw.token.clone(),
        resource: opts.host.clone(),
        port: opts.port,
        client_name: "deskport".to_owned(),
    };
    let tunnel = tokio::time::timeout(
        opts.connect_timeout,
        deskport_gateway::client::connect(tls, &request),
    )
    .await
    .map_err(|_| {
        ClientError::Timeout(format!(
            "the RD Gateway {endpoint} did not set the tunnel up"
        ))
    })?
    .map_err(|e| ClientError::Gateway {
        endpoint,
        message: e.to_string(),
    })?;
    Ok((
        Box::new(tunnel),
        local,
        gw_first_use.then_some(gw_fingerprint),
    ))
}

/// TLS over `io` accepting any certificate for now (it is checked right after, before
/// anything secret is sent): the stream and the certificate.
async fn tls_handshake<IO>(
    host: &str,
    io: IO,
    for_credssp: bool,
) -> Result<(tokio_rustls::client::TlsStream<IO>, CertificateDer<'static>), ClientError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls_config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustLater(provider)))
        .with_no_client_auth();
    if for_credssp {
        // CredSSP binds to this handshake; a resumed session would not carry the server's key.
        tls_config.resumption = rustls::client::Resumption::disabled();
    }
    let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| ClientError::Protocol(format!("{host}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config))
        .connect(server_name, io)
        .await
        .map_err(|e| ClientError::Closed(format!("TLS: {e}")))?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| ClientError::Protocol("the server sent no certificate".into()))?
        .clone();
    Ok((tls, cert))
}

/// Checks `cert` of `endpoint` against the pin, else the known-hosts file (remembering it on
/// first use): its fingerprint and whether it was new.
fn check_certificate(
    endpoint: &str,
    cert: &CertificateDer<'_>,
    pin: Option<&str>,
    known_hosts: &std::path::Path,
) -> Result<(String, bool), ClientError> {
    let received = fingerprint(cert);
    let first_use = match pin {
        Some(pin) => {
            let pinned = normalize_fingerprint(pin);
            if pinned != received {
                return Err(ClientError::CertificateMismatch {
                    endpoint: endpoint.to_owned(),
                    pinned,
                    received,
                });
            }
            false
        }
        None => match KnownHosts::new(known_hosts).check(endpoint, &received) {
            Ok(Trust::Known) => false,
            Ok(Trust::Added) => true,
            Ok(Trust::Changed { known }) => {
                return Err(ClientError::CertificateChanged {
                    endpoint: endpoint.to_owned(),
                    known,
                    received,
                    known_hosts: known_hosts.display().to_string(),
                })
            }
            Err(e) => {
                return Err(ClientError::Protocol(format!(
                    "cannot use the known-hosts file {}: {e}",
                    known_hosts.display()
                )))
            }
        },
    };
    Ok((received, first_use))
}

/// Connects and logs on.
pub async fn connect(opts: &Options) -> Result<Connected, ClientError> {
    let endpoint = opts.endpoint();
    let (tcp, local, gateway_first_use) = transport(opts).await?;
    let mut connector = ClientConnector::new(config(opts), local);
    if let Some(tx) = &opts.clipboard {
        connector.attach_static_channel(ironrdp_cliprdr::CliprdrClient::new(Box::new(
            deskport_proto::clipboard::Backend::new(tx.clone()),
        )));
    }
    if opts.audio {
        connector.attach_static_channel(crate::sound::processor());
    }
    if opts.display_control || opts.gfx {
        let mut drdynvc = ironrdp_dvc::DrdynvcClient::new();
        if opts.display_control {
            drdynvc = drdynvc.with_dynamic_channel(
                ironrdp_displaycontrol::client::DisplayControlClient::new(|_| Ok(Vec::new())),
            );
        }
        if opts.gfx {
            drdynvc =
                drdynvc.with_dynamic_channel(GraphicsPipelineClient::new(Box::new(Graphics), None));
        }
        connector.attach_static_channel(drdynvc);
    }
    let mut framed = TokioFramed::new(tcp);
    let should_upgrade = ironrdp_async::connect_begin(&mut framed, &mut connector)
        .await
        .map_err(|e| explain(e, &endpoint, true))?;
    let tcp = framed.into_inner_no_leftover();

    // TLS: the certificate is checked before anything secret is sent.
    let (tls, cert) = tls_handshake(&opts.host, tcp, true).await?;
    let (received, first_use) =
        check_certificate(&endpoint, &cert, opts.pin.as_deref(), &opts.known_hosts)?;
    let parsed = x509_cert::Certificate::from_der(&cert)
        .map_err(|e| ClientError::Protocol(format!("the server's certificate: {e}")))?;
    let server_public_key = parsed
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes()
        .to_vec();

    let upgraded = ironrdp_async::mark_as_upgraded(should_upgrade, &mut connector);
    let mut framed = TokioFramed::new(tls);
    let outcome = ironrdp_async::connect_finalize(
        upgraded,
        connector,
        &mut framed,
        &mut NoNetwork,
        ServerName::new(opts.host.clone()),
        server_public_key,
        None,
    )
    .await
    .map_err(|e| explain(e, &endpoint, false))?;
    let result = outcome
        .into_connected()
        .map_err(|e| explain(e, &endpoint, false))?;
    Ok(Connected {
        framed,
        result,
        fingerprint: received,
        first_use,
        gateway_first_use,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_normalise() {
        assert_eq!(normalize_fingerprint("SHA256:AB:cd"), "ab:cd");
        assert_eq!(normalize_fingerprint("abcd"), "ab:cd");
    }
}
