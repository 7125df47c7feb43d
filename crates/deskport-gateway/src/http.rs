//! The transport's HTTP side: which request is which form, the WebSocket handshake done by
//! hand, the legacy form's two requests paired, and the writers that carry packets to the
//! client.
//!
//! What FreeRDP 2.11 does shapes this (see the crate's tests with it):
//! - WebSocket form: `RDG_OUT_DATA` with `Upgrade: websocket`; the answer is `101` with
//!   `Sec-WebSocket-Accept`, then the tunnel runs in binary frames both ways.
//! - Legacy form: `RDG_OUT_DATA` without the upgrade gets `200` and a body that never ends:
//!   10 seed bytes the client skips, then the gateway's packets. `RDG_IN_DATA` comes twice on
//!   one connection with the same `RDG-Connection-Id`: first empty (`200`, nothing else ever
//!   follows on it), then chunked, its body the client's packets for as long as the tunnel
//!   lives (never answered before the tunnel ends).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::tunnel::{self, Input, Out};
use crate::{ws, Authorizer, Limits, PATH};

/// Packets queued to a client at most (then the instance's side waits: backpressure).
const QUEUE: usize = 16;
/// The legacy form's seed: 10 bytes FreeRDP skips before the first packet (MS-TSGU says 100;
/// FreeRDP 2.11 reads 10 and Windows gateways send 10).
const SEED: [u8; 10] = [0xAB, 0xCD, 0xAB, 0xCD, 0xAB, 0xCD, 0xAB, 0xCD, 0xAB, 0xCD];

/// The RD Gateway as HTTP routes. Cloning shares the tunnels and the counters.
#[derive(Debug, Clone)]
pub struct RdGateway {
    shared: Arc<Shared>,
}

/// What every tunnel shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) limits: Limits,
    pub(crate) stats: Counters,
    tunnels: Arc<Semaphore>,
    /// Legacy tunnels whose `RDG_IN_DATA` is awaited, by connection id: where its body goes.
    pending: Mutex<HashMap<String, mpsc::Sender<Bytes>>>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) tunnels: AtomicU64,
    pub(crate) opened: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) cut: AtomicU64,
    pub(crate) busy: AtomicU64,
    pub(crate) to_instance: AtomicU64,
    pub(crate) to_client: AtomicU64,
}

/// What the gateway has done, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Tunnels open or being set up now.
    pub active: u64,
    /// Tunnels whose channel opened.
    pub opened: u64,
    /// Tunnels refused (token, channel, setup).
    pub refused: u64,
    /// Tunnels cut because their grant was withdrawn.
    pub cut: u64,
    /// Requests turned away because `max_tunnels` were in use.
    pub busy: u64,
    pub bytes_to_instances: u64,
    pub bytes_to_clients: u64,
}

impl RdGateway {
    pub fn new(authorizer: Arc<dyn Authorizer>, limits: Limits) -> Self {
        Self {
            shared: Arc::new(Shared {
                authorizer,
                limits,
                stats: Counters::default(),
                tunnels: Arc::new(Semaphore::new(limits.max_tunnels)),
                pending: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The routes to merge into an application served over HTTPS (with
    /// `into_make_service_with_connect_info::<SocketAddr>`, for the audit's peer address).
    pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        let shared = self.shared.clone();
        let service = tower_service(move |request: Request| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(handle(shared, request).await) }
        });
        axum::Router::new().route_service(PATH, service)
    }

    pub fn stats(&self) -> Stats {
        let s = &self.shared.stats;
        let active = self.shared.limits.max_tunnels - self.shared.tunnels.available_permits();
        Stats {
            active: active as u64,
            opened: s.opened.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            cut: s.cut.load(Ordering::Relaxed),
            busy: s.busy.load(Ordering::Relaxed),
            bytes_to_instances: s.to_instance.load(Ordering::Relaxed),
            bytes_to_clients: s.to_client.load(Ordering::Relaxed),
        }
    }
}

/// A function as a cloneable service (what `route_service` takes: every method reaches it,
/// `RDG_OUT_DATA` and `RDG_IN_DATA` included).
fn tower_service<F, Fut>(f: F) -> ServiceFn<F>
where
    F: Fn(Request) -> Fut + Clone,
{
    ServiceFn(f)
}

#[derive(Clone)]
struct ServiceFn<F>(F);

impl<F, Fut> tower_service::Service<Request> for ServiceFn<F>
where
    F: Fn(Request) -> Fut + Clone,
    Fut: std::future::Future<Output = Result<Response, Infallible>>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Fut {
        (self.0)(request)
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        message.to_owned(),
    )
        .into_response()
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn handle(shared: Arc<Shared>, mut request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let method = request.method().as_str().to_owned();
    let headers = request.headers().clone();
    let upgrade = text(&headers, "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    match method.as_str() {
        "RDG_OUT_DATA" if upgrade => {
            let Some(key) = text(&headers, "sec-websocket-key") else {
                return refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing");
            };
            let Some(permit) = permit(&shared) else {
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many tunnels");
            };
            let accept = ws::accept_key(key);
            let upgraded = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let io = match upgraded.await {
                    Ok(io) => TokioIo::new(io),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "RD Gateway: the upgrade failed");
                        return;
                    }
                };
                websocket(shared, io, peer, permit).await;
            });
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = response.headers_mut();
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            if let Ok(value) = HeaderValue::from_str(&accept) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, value);
            }
            response
        }
        "RDG_OUT_DATA" => {
            let Some(id) = connection_id(&headers) else {
                return refuse(StatusCode::BAD_REQUEST, "RDG-Connection-Id is missing");
            };
            let Some(permit) = permit(&shared) else {
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many tunnels");
            };
            legacy_out(shared, id, peer, permit)
        }
        "RDG_IN_DATA" => {
            let Some(id) = connection_id(&headers) else {
                return refuse(StatusCode::BAD_REQUEST, "RDG-Connection-Id is missing");
            };
            legacy_in(shared, id, request).await
        }
        _ if request.method() == Method::GET || request.method() == Method::HEAD => refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "this is an RD Gateway: RDP clients reach it with RDG_OUT_DATA and RDG_IN_DATA",
        ),
        _ => refuse(StatusCode::METHOD_NOT_ALLOWED, "not an RD Gateway request"),
    }
}

fn permit(shared: &Arc<Shared>) -> Option<OwnedSemaphorePermit> {
    let permit = shared.tunnels.clone().try_acquire_owned().ok();
    if permit.is_none() {
        shared.stats.busy.fetch_add(1, Ordering::Relaxed);
    }
    permit
}

/// `RDG-Connection-Id`, if it is a sane token (a GUID in braces, as clients send it).
fn connection_id(headers: &HeaderMap) -> Option<String> {
    let id = text(headers, "rdg-connection-id")?.trim();
    let sane = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, '{' | '}' | '-'));
    sane.then(|| id.to_ascii_lowercase())
}

/// The WebSocket form over an upgraded connection.
async fn websocket<IO>(shared: Arc<Shared>, io: IO, peer: SocketAddr, permit: OwnedSemaphorePermit)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (read, mut write) = tokio::io::split(io);
    let (out, mut rx) = mpsc::channel::<Out>(QUEUE);
    // The writer: every packet in one binary frame; what is queued goes out in one write.
    let writer = tokio::spawn(async move {
        let mut bytes = Vec::new();
        while let Some(first) = rx.recv().await {
            bytes.clear();
            let mut next = Some(first);
            while let Some(item) = next {
                match item {
                    Out::Packet(p) => bytes.extend(ws::frame(ws::OP_BINARY, &p, None)),
                    Out::Pong(p) => bytes.extend(ws::frame(ws::OP_PONG, &p, None)),
                }
                next = if bytes.len() < 256 * 1024 {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if write.write_all(&bytes).await.is_err() || write.flush().await.is_err() {
                return;
            }
        }
        let _ = write.shutdown().await;
    });
    let input = Input::Ws {
        read: Box::new(read),
        frames: ws::Decoder::new(tunnel_frame_limit()),
        buf: Vec::new(),
    };
    tunnel::run(shared, input, out, peer, "websocket").await;
    let _ = writer.await;
    drop(permit);
}

/// The largest WebSocket frame accepted: a DATA packet of 64 KiB and its header, with room.
fn tunnel_frame_limit() -> usize {
    128 * 1024
}

/// The legacy form's `RDG_OUT_DATA`: the response body carries the gateway's packets; the
/// tunnel starts now and reads the client's packets from the matching `RDG_IN_DATA`.
fn legacy_out(
    shared: Arc<Shared>,
    id: String,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) -> Response {
    let (to_tunnel, from_in) = mpsc::channel::<Bytes>(QUEUE);
    {
        let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.contains_key(&id) {
            return refuse(StatusCode::CONFLICT, "this RDG-Connection-Id is in use");
        }
        pending.insert(id.clone(), to_tunnel);
    }
    let (out, mut rx) = mpsc::channel::<Out>(QUEUE);
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(QUEUE);
    tokio::spawn(async move {
        if body_tx.send(Bytes::from_static(&SEED)).await.is_err() {
            return;
        }
        while let Some(item) = rx.recv().await {
            let Out::Packet(p) = item else { continue };
            if body_tx.send(Bytes::from(p)).await.is_err() {
                return;
            }
        }
    });
    let tunnel_shared = shared.clone();
    tokio::spawn(async move {
        tunnel::run(tunnel_shared, Input::Body(from_in), out, peer, "http").await;
        shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        drop(permit);
    });
    let mut response = Response::new(Body::new(ChannelBody(body_rx)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// The legacy form's `RDG_IN_DATA`: the first (empty) one is answered at once; the second's
/// body feeds the tunnel until either ends (it takes the tunnel's input: one per tunnel, and
/// the tunnel sees the client's end when it ends).
async fn legacy_in(shared: Arc<Shared>, id: String, request: Request) -> Response {
    let chunked = text(request.headers(), "transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    if !chunked {
        let known = shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&id);
        return match known {
            true => {
                let mut response = Response::new(Body::empty());
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                response
            }
            false => refuse(
                StatusCode::NOT_FOUND,
                "no tunnel has this RDG-Connection-Id",
            ),
        };
    }
    let Some(to_tunnel) = shared
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id)
    else {
        return refuse(
            StatusCode::NOT_FOUND,
            "no tunnel has this RDG-Connection-Id",
        );
    };
    let mut body = request.into_body();
    loop {
        tokio::select! {
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if to_tunnel.send(data).await.is_err() {
                            break;
                        }
                    }
                }
                _ => break,
            },
            _ = to_tunnel.closed() => break,
        }
    }
    refuse(StatusCode::OK, "")
}

/// A response body fed by a channel: it ends when the sender goes.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|b| Ok(http_body::Frame::data(b))))
    }
}
