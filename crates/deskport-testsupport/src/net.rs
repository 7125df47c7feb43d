use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

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

/// A TCP connection to `target` from the local address `source` (another loopback address
/// such as 127.0.0.2 stands for another client), given up after 5 s; the error if it is not
/// accepted. Read timeouts are the caller's.
pub fn connect_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&target.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}
