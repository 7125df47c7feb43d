//! The userspace gateway (SPEC §2): the firewall where there are no privileges.
//!
//! For every published service of every instance it listens on the instance's public address,
//! decides each new TCP connection and each new UDP flow with the policy engine using the real
//! peer address, forwards the allowed ones to the instance's internal address, and closes live
//! ones that a policy change revokes (with a TCP reset, so the client knows at once).
//!
//! Bounded: a connection limit (new connections beyond it are reset), an idle timeout per
//! connection or flow, and a fixed buffer per direction (a slow reader slows the writer: the
//! gateway never buffers without bound).
//!
//! It only sees traffic *to* published services: egress rules are not enforced here (the
//! instance's own outbound traffic does not pass through it); the nftables backend enforces
//! both directions.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use deskport_policy::{proto, Classifier, Decision, Direction, GroupId, Packet, Policy, RuleId};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::log::DecisionLog;

/// Limits and behaviour of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Live TCP connections plus UDP flows; beyond it new ones are refused.
    pub max_connections: usize,
    /// Live connections and flows of one source address (a source the rules allow can still
    /// be hostile); kept below `max_connections` so one address cannot take them all.
    pub max_connections_per_source: usize,
    /// A TCP connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// A UDP flow with no datagram either way for this long is forgotten.
    pub udp_idle_timeout: Duration,
    /// How long to wait for the instance to accept a forwarded connection.
    pub connect_timeout: Duration,
    /// Bytes buffered per direction of a connection.
    pub buffer_size: usize,
    /// Close live connections and flows that a policy change no longer allows.
    pub cut_revoked: bool,
    /// Decisions logged per second at most (the rest are counted).
    pub log_rate: u32,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_source: 256,
            idle_timeout: Duration::from_secs(3600),
            udp_idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            buffer_size: 64 * 1024,
            cut_revoked: true,
            log_rate: 20,
        }
    }
}

/// What [`Gateway::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Listeners now open.
    pub listening: Vec<SocketAddr>,
    /// Services that could not be published, with the reason.
    pub bind_errors: Vec<String>,
    /// Live connections and flows closed because the new policy revokes them.
    pub revoked: usize,
}

/// The userspace gateway. Cheap to clone; all clones are the same gateway.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: GatewayConfig,
    snapshot: RwLock<Arc<Snapshot>>,
    conns: Mutex<Conns>,
    next_conn: AtomicU64,
    listeners: tokio::sync::Mutex<HashMap<ListenKey, Listener>>,
    stats: Stats,
    log: DecisionLog,
}

#[derive(Debug, Default)]
struct Snapshot {
    revision: u64,
    instances: HashMap<String, InstanceView>,
}

#[derive(Debug)]
struct InstanceView {
    classifier: Arc<Classifier>,
    internal: IpAddr,
    /// (protocol, public port) → internal port.
    services: HashMap<(u8, u16), u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ListenKey {
    addr: IpAddr,
    port: u16,
    protocol: u8,
}

#[derive(Debug)]
struct Listener {
    instance: String,
    local: SocketAddr,
    task: JoinHandle<()>,
}

/// A live connection or flow, as the revocation pass needs it.
#[derive(Debug)]
struct Conn {
    instance: String,
    packet: Packet,
    cancel: watch::Sender<bool>,
}

/// The live connections and flows, and how many each source address has.
#[derive(Debug, Default)]
struct Conns {
    by_id: HashMap<u64, Conn>,
    by_source: HashMap<IpAddr, usize>,
}

#[derive(Debug, Default)]
struct Stats {
    allowed: AtomicU64,
    denied: AtomicU64,
    refused_limit: AtomicU64,
    refused_source: AtomicU64,
    revoked: AtomicU64,
    upstream_failed: AtomicU64,
    idle_closed: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    rule_hits: Mutex<HashMap<RuleId, u64>>,
}

impl Gateway {
    pub fn new(config: GatewayConfig) -> Self {
        let log = DecisionLog::new(config.log_rate);
        Self {
            inner: Arc::new(Inner {
                config,
                snapshot: RwLock::new(Arc::new(Snapshot::default())),
                conns: Mutex::new(Conns::default()),
                next_conn: AtomicU64::new(1),
                listeners: tokio::sync::Mutex::new(HashMap::new()),
                stats: Stats::default(),
                log,
            }),
        }
    }

    /// Makes `policy` the one in force: compiles it, opens and closes listeners to match the
    /// published services, and closes live connections it revokes.
    pub async fn apply(&self, policy: &Policy, revision: u64) -> ApplyReport {
        let snapshot = Arc::new(compile(policy, revision));
        let mut report = ApplyReport::default();
        {
            let mut current = self
                .inner
                .snapshot
                .write()
                .unwrap_or_else(|e| e.into_inner());
            *current = snapshot.clone();
        }

        let mut wanted: HashMap<ListenKey, String> = HashMap::new();
        for m in &policy.members {
            for s in &m.services {
                for addr in &m.addresses {
                    wanted.insert(
                        ListenKey {
                            addr: *addr,
                            port: s.public_port,
                            protocol: s.protocol,
                        },
                        m.name.clone(),
                    );
                }
            }
        }
        let mut listeners = self.inner.listeners.lock().await;
        listeners.retain(|key, l| {
            let keep = wanted.get(key) == Some(&l.instance) && !l.task.is_finished();
            if !keep {
                l.task.abort();
            }
            keep
        });
        let mut keys: Vec<_> = wanted.into_iter().collect();
        keys.sort_by_key(|(k, _)| (k.addr, k.port, k.protocol));
        for (key, instance) in keys {
            if listeners.contains_key(&key) {
                continue;
            }
            match self.listen(key, &instance).await {
                Ok(l) => {
                    listeners.insert(key, l);
                }
                Err(e) => {
                    let what = format!(
                        "{} {}:{} for {instance}: {e}",
                        if key.protocol == proto::UDP {
                            "udp"
                        } else {
                            "tcp"
                        },
                        key.addr,
                        key.port
                    );
                    tracing::error!(service = %what, "Cannot publish service");
                    report.bind_errors.push(what);
                }
            }
        }
        report.listening = listeners.values().map(|l| l.local).collect();
        report.listening.sort();
        drop(listeners);

        if self.inner.config.cut_revoked {
            report.revoked = self.revoke(&snapshot);
        }
        report
    }

    /// The local addresses of the open listeners (tests bind port 0 through the policy).
    pub async fn listening(&self) -> Vec<SocketAddr> {
        let listeners = self.inner.listeners.lock().await;
        let mut all: Vec<_> = listeners.values().map(|l| l.local).collect();
        all.sort();
        all
    }

    /// The revision in force.
    pub fn revision(&self) -> u64 {
        self.inner.snapshot().revision
    }

    /// Live connections and flows.
    pub fn active(&self) -> usize {
        self.inner.lock_conns().by_id.len()
    }

    /// Counters in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let s = &self.inner.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, help: &str, kind: &str, lines: Vec<(String, u64)>| {
            out += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
            for (labels, v) in lines {
                out += &format!("{name}{labels} {v}\n");
            }
        };
        metric(
            "deskport_gateway_decisions_total",
            "New connections and flows decided, by verdict.",
            "counter",
            vec![
                ("{verdict=\"allow\"}".into(), get(&s.allowed)),
                ("{verdict=\"deny\"}".into(), get(&s.denied)),
                ("{verdict=\"limit\"}".into(), get(&s.refused_limit)),
                ("{verdict=\"source_limit\"}".into(), get(&s.refused_source)),
            ],
        );
        let mut hits: Vec<(String, u64)> = s
            .rule_hits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(r, n)| (format!("{{rule=\"{r}\"}}"), *n))
            .collect();
        hits.sort();
        metric(
            "deskport_gateway_rule_hits_total",
            "New connections and flows allowed, by the rule that allowed them.",
            "counter",
            hits,
        );
        metric(
            "deskport_gateway_closed_total",
            "Connections and flows closed by the gateway, by reason.",
            "counter",
            vec![
                ("{reason=\"revoked\"}".into(), get(&s.revoked)),
                ("{reason=\"idle\"}".into(), get(&s.idle_closed)),
                (
                    "{reason=\"upstream_failed\"}".into(),
                    get(&s.upstream_failed),
                ),
            ],
        );
        metric(
            "deskport_gateway_bytes_total",
            "Bytes forwarded, to the instance (in) and back (out).",
            "counter",
            vec![
                ("{direction=\"in\"}".into(), get(&s.bytes_in)),
                ("{direction=\"out\"}".into(), get(&s.bytes_out)),
            ],
        );
        metric(
            "deskport_gateway_connections_active",
            "Live TCP connections and UDP flows.",
            "gauge",
            vec![(String::new(), self.active() as u64)],
        );
        metric(
            "deskport_policy_revision",
            "The policy revision in force.",
            "gauge",
            vec![(String::new(), self.revision())],
        );
        out
    }

    /// Re-decides every live connection against `snapshot`; cancels the denied ones.
    fn revoke(&self, snapshot: &Snapshot) -> usize {
        let conns = self.inner.lock_conns();
        let mut revoked = 0;
        for conn in conns.by_id.values() {
            let allowed = snapshot
                .instances
                .get(&conn.instance)
                .is_some_and(|i| i.classifier.decide(&conn.packet).is_allow());
            if !allowed && !*conn.cancel.borrow() {
                let _ = conn.cancel.send(true);
                revoked += 1;
            }
        }
        revoked
    }

    async fn listen(&self, key: ListenKey, instance: &str) -> std::io::Result<Listener> {
        let addr = SocketAddr::new(key.addr, key.port);
        let inner = self.inner.clone();
        let name = instance.to_owned();
        let (local, task) = if key.protocol == proto::UDP {
            let socket = UdpSocket::bind(addr).await?;
            let local = socket.local_addr()?;
            let task = tokio::spawn(udp_listener(inner, Arc::new(socket), key, name));
            (local, task)
        } else {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.set_reuse_address(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            socket.listen(1024)?;
            let listener = TcpListener::from_std(socket.into())?;
            let local = listener.local_addr()?;
            let task = tokio::spawn(tcp_listener(inner, listener, key, name));
            (local, task)
        };
        tracing::info!(%local, instance, "Publishing service");
        Ok(Listener {
            instance: instance.to_owned(),
            local,
            task,
        })
    }

    /// Closes every listener and connection (for a clean shutdown).
    pub async fn shutdown(&self) {
        let mut listeners = self.inner.listeners.lock().await;
        for (_, l) in listeners.drain() {
            l.task.abort();
        }
        for conn in self.inner.lock_conns().by_id.values() {
            let _ = conn.cancel.send(true);
        }
    }
}

fn compile(policy: &Policy, revision: u64) -> Snapshot {
    let mut by_groups: HashMap<Vec<GroupId>, Arc<Classifier>> = HashMap::new();
    let mut instances = HashMap::new();
    for m in &policy.members {
        let classifier = by_groups
            .entry(m.groups.clone())
            .or_insert_with(|| Arc::new(Classifier::compile(policy, &m.groups)))
            .clone();
        let Some(internal) = m.internal.or_else(|| m.addresses.first().copied()) else {
            continue;
        };
        let services = m
            .services
            .iter()
            .map(|s| ((s.protocol, s.public_port), s.internal_port))
            .collect();
        instances.insert(
            m.name.clone(),
            InstanceView {
                classifier,
                internal,
                services,
            },
        );
    }
    Snapshot {
        revision,
        instances,
    }
}

impl Inner {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides a new connection or flow from `peer` to service `key` of `instance`. On allow,
    /// registers it (counting against the limit) and returns its id, target and cancel signal.
    fn admit(
        &self,
        instance: &str,
        key: ListenKey,
        peer: SocketAddr,
    ) -> Option<(u64, SocketAddr, watch::Receiver<bool>)> {
        let snapshot = self.snapshot();
        let view = snapshot.instances.get(instance)?;
        let internal_port = *view.services.get(&(key.protocol, key.port))?;
        let remote = peer.ip().to_canonical();
        let packet = Packet::ports(Direction::Ingress, remote, key.protocol, key.port);
        let decision = view.classifier.decide(&packet);
        self.log
            .decision(instance, peer, key.protocol, key.port, decision);
        let Decision::Allow(rule) = decision else {
            self.stats.denied.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let mut conns = self.lock_conns();
        if conns.by_id.len() >= self.config.max_connections {
            self.stats.refused_limit.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, instance, limit = self.config.max_connections, "Connection limit reached; refused");
            return None;
        }
        let held = conns.by_source.get(&remote).copied().unwrap_or(0);
        if held >= self.config.max_connections_per_source {
            let refused = self.stats.refused_source.fetch_add(1, Ordering::Relaxed);
            // The first refusal of a burst, then one in 100: a flood does not flood the log.
            if refused.is_multiple_of(100) {
                tracing::warn!(%peer, instance, limit = self.config.max_connections_per_source, refused = refused + 1, "Connection limit of one source address reached; refused");
            }
            return None;
        }
        self.stats.allowed.fetch_add(1, Ordering::Relaxed);
        *self
            .stats
            .rule_hits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(rule)
            .or_insert(0) += 1;
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (cancel, cancelled) = watch::channel(false);
        *conns.by_source.entry(remote).or_insert(0) += 1;
        conns.by_id.insert(
            id,
            Conn {
                instance: instance.to_owned(),
                packet,
                cancel,
            },
        );
        Some((id, SocketAddr::new(view.internal, internal_port), cancelled))
    }

    fn forget(&self, id: u64) {
        let mut conns = self.lock_conns();
        if let Some(conn) = conns.by_id.remove(&id) {
            let source = conn.packet.remote;
            if let Some(held) = conns.by_source.get_mut(&source) {
                *held -= 1;
                if *held == 0 {
                    conns.by_source.remove(&source);
                }
            }
        }
    }
}

/// Closes a TCP connection with a reset rather than a FIN: the peer learns at once that it was
/// refused or cut, and no TIME_WAIT stays behind.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn tcp_listener(inner: Arc<Inner>, listener: TcpListener, key: ListenKey, instance: String) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "Accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match inner.admit(&instance, key, peer) {
            None => reset(&stream),
            Some((id, target, cancelled)) => {
                let inner = inner.clone();
                tokio::spawn(async move {
                    forward_tcp(&inner, stream, target, cancelled).await;
                    inner.forget(id);
                });
            }
        }
    }
}

enum End {
    Closed,
    Idle,
    Revoked,
    Failed,
}

async fn forward_tcp(
    inner: &Inner,
    client: TcpStream,
    target: SocketAddr,
    mut cancelled: watch::Receiver<bool>,
) {
    let config = &inner.config;
    let upstream =
        match tokio::time::timeout(config.connect_timeout, TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(%target, error = %e, "Instance refused the forwarded connection");
                inner.stats.upstream_failed.fetch_add(1, Ordering::Relaxed);
                reset(&client);
                return;
            }
            Err(_) => {
                tracing::warn!(%target, "Instance did not accept the forwarded connection in time");
                inner.stats.upstream_failed.fetch_add(1, Ordering::Relaxed);
                reset(&client);
                return;
            }
        };
    // Remote desktops are interactive: no Nagle delay on either leg.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let started = Instant::now();
    let activity = AtomicU64::new(0);
    let end = {
        let up = pump(
            &client,
            &upstream,
            &activity,
            started,
            config.buffer_size,
            &inner.stats.bytes_in,
        );
        let down = pump(
            &upstream,
            &client,
            &activity,
            started,
            config.buffer_size,
            &inner.stats.bytes_out,
        );
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        let check =
            (config.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        loop {
            if up_done && down_done {
                break End::Closed;
            }
            tokio::select! {
                r = &mut up, if !up_done => {
                    up_done = true;
                    if r.is_err() { break End::Failed; }
                }
                r = &mut down, if !down_done => {
                    down_done = true;
                    if r.is_err() { break End::Failed; }
                }
                _ = cancelled.changed() => {
                    if *cancelled.borrow() { break End::Revoked; }
                }
                _ = tokio::time::sleep(check) => {
                    let idle_ms = started.elapsed().as_millis() as u64 - activity.load(Ordering::Relaxed);
                    if Duration::from_millis(idle_ms) >= config.idle_timeout {
                        break End::Idle;
                    }
                }
            }
        }
    };
    match end {
        End::Revoked => {
            inner.stats.revoked.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            reset(&upstream);
        }
        End::Idle => {
            inner.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            reset(&upstream);
        }
        End::Failed => {
            // One side reset or failed: pass the reset on to the other.
            reset(&client);
            reset(&upstream);
        }
        End::Closed => {}
    }
}

/// Moves bytes `from` → `to` until EOF (then half-closes `to`) or an error.
///
/// The bytes go through a kernel pipe with `splice(2)`: socket → pipe → socket, no copy
/// through user space, which is what keeps the gateway close to direct loopback throughput.
/// The pipe is bounded (`buffer` bytes), so a slow reader stalls the writer instead of growing
/// a buffer. If a pipe cannot be made (no file descriptors left), a plain copy loop is used.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    activity: &AtomicU64,
    started: Instant,
    buffer: usize,
    counter: &AtomicU64,
) -> std::io::Result<()> {
    use nix::fcntl::{splice, FcntlArg, OFlag, SpliceFFlags};
    use std::os::fd::AsRawFd as _;
    use tokio::io::Interest;

    let Ok((pipe_r, pipe_w)) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) else {
        return copy(from, to, activity, started, buffer, counter).await;
    };
    // Best effort: the default pipe holds 64 KiB.
    let _ = nix::fcntl::fcntl(pipe_w.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(buffer as i32));
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    loop {
        from.readable().await?;
        let filled = match from.try_io(Interest::READABLE, || {
            splice(from, None, &pipe_w, None, buffer, flags).map_err(std::io::Error::from)
        }) {
            Ok(0) => {
                let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut pending = filled;
        while pending > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(&pipe_r, None, to, None, pending, flags).map_err(std::io::Error::from)
            }) {
                Ok(n) => pending -= n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        counter.fetch_add(filled as u64, Ordering::Relaxed);
        activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// The plain read/write loop behind [`pump`].
async fn copy(
    from: &TcpStream,
    to: &TcpStream,
    activity: &AtomicU64,
    started: Instant,
    buffer: usize,
    counter: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; buffer];
    loop {
        from.readable().await?;
        let n = match from.try_read(&mut buf) {
            Ok(0) => {
                let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut written = 0;
        while written < n {
            to.writable().await?;
            match to.try_write(&buf[written..n]) {
                Ok(m) => written += m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

struct UdpFlow {
    upstream: Arc<UdpSocket>,
    task: JoinHandle<()>,
    last: Arc<AtomicU64>,
}

async fn udp_listener(inner: Arc<Inner>, socket: Arc<UdpSocket>, key: ListenKey, instance: String) {
    let mut flows: HashMap<SocketAddr, UdpFlow> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let epoch = Instant::now();
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "UDP receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Flows whose relay ended (idle, revoked) are decided again.
        flows.retain(|_, f| !f.task.is_finished());
        if let Some(flow) = flows.get(&peer) {
            flow.last
                .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            if flow.upstream.send(&buf[..n]).await.is_ok() {
                inner.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            }
            continue;
        }
        let Some((id, target, cancelled)) = inner.admit(&instance, key, peer) else {
            continue;
        };
        let bind: SocketAddr = match target {
            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
            SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
        };
        let upstream = match UdpSocket::bind(bind).await {
            Ok(u) if u.connect(target).await.is_ok() => Arc::new(u),
            _ => {
                inner.stats.upstream_failed.fetch_add(1, Ordering::Relaxed);
                inner.forget(id);
                continue;
            }
        };
        if upstream.send(&buf[..n]).await.is_ok() {
            inner.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        }
        let last = Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64));
        let task = tokio::spawn(udp_relay(
            inner.clone(),
            id,
            upstream.clone(),
            socket.clone(),
            peer,
            last.clone(),
            epoch,
            cancelled,
        ));
        flows.insert(
            peer,
            UdpFlow {
                upstream,
                task,
                last,
            },
        );
    }
}

/// Relays the instance's replies of one flow back to its peer until the flow is idle or revoked.
#[allow(clippy::too_many_arguments)]
async fn udp_relay(
    inner: Arc<Inner>,
    id: u64,
    upstream: Arc<UdpSocket>,
    public: Arc<UdpSocket>,
    peer: SocketAddr,
    last: Arc<AtomicU64>,
    epoch: Instant,
    mut cancelled: watch::Receiver<bool>,
) {
    let idle = inner.config.udp_idle_timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let since = epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
        let Some(left) = idle.checked_sub(since).filter(|d| !d.is_zero()) else {
            inner.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            break;
        };
        tokio::select! {
            r = upstream.recv(&mut buf) => match r {
                Ok(n) => {
                    last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                    if public.send_to(&buf[..n], peer).await.is_ok() {
                        inner.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                // ICMP port unreachable from the instance and the like: the flow goes on.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            _ = cancelled.changed() => {
                if *cancelled.borrow() {
                    inner.stats.revoked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            _ = tokio::time::sleep(left) => {}
        }
    }
    inner.forget(id);
}
