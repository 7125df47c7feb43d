use std::net::{IpAddr, SocketAddr, TcpListener};

/// A bound listener on `ip`, port chosen by the kernel. Prefer this over [`free_port`] when
/// the code under test can take a listener: nothing can steal the port in between.
pub fn listener(ip: IpAddr) -> TcpListener {
    TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind a loopback listener on port 0")
}

/// A TCP port that was free on `ip` a moment ago (bound, read, released). For programs that
/// only take a port number; there is a small window in which another process may take it.
pub fn free_port(ip: IpAddr) -> u16 {
    listener(ip)
        .local_addr()
        .expect("read the local address of a listener")
        .port()
}
