//! Layer 1: listeners and sockets (socket2).
//!
//! Binds TCP listeners for IPv4, IPv6 or dual stack with a chosen backlog
//! and SO_REUSEPORT, and applies the per-connection options (TCP_NODELAY,
//! TCP_CORK) to accepted and outbound sockets.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Which address family a listener uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4 only.
    V4,
    /// IPv6 only (IPV6_V6ONLY set).
    V6,
    /// One IPv6 socket that also accepts IPv4 clients (IPV6_V6ONLY cleared).
    Dual,
}

impl IpVersion {
    /// From the conf value: 4, 6 or 0 (dual stack).
    pub fn from_number(n: u8) -> Option<IpVersion> {
        match n {
            4 => Some(IpVersion::V4),
            6 => Some(IpVersion::V6),
            0 => Some(IpVersion::Dual),
            _ => None,
        }
    }
}

impl fmt::Display for IpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpVersion::V4 => "4",
            IpVersion::V6 => "6",
            IpVersion::Dual => "0 (dual stack)",
        })
    }
}

/// Resolve `host:port` to the address a listener of `version` binds.
pub fn resolve(host: &str, port: u16, version: IpVersion) -> io::Result<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let candidates: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    let wanted = |a: &&SocketAddr| match version {
        IpVersion::V4 => a.is_ipv4(),
        IpVersion::V6 | IpVersion::Dual => a.is_ipv6(),
    };
    candidates.iter().find(wanted).copied().ok_or_else(|| {
        let need = match version {
            IpVersion::V4 => "an IPv4 address (e.g. 127.0.0.1 or 0.0.0.0)",
            IpVersion::V6 => "an IPv6 address (e.g. ::1 or ::)",
            IpVersion::Dual => "an IPv6 address for dual stack (e.g. :: or ::1)",
        };
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("host {host:?} has no address for ip_version {version}: use {need}"),
        )
    })
}

/// How to bind one listening socket.
#[derive(Debug, Clone)]
pub struct BindSpec {
    /// The address to bind (see [`resolve`]).
    pub addr: SocketAddr,
    /// The family rules for `addr`.
    pub version: IpVersion,
    /// The listen(2) backlog.
    pub backlog: i32,
    /// Set SO_REUSEPORT (one listener per loop).
    pub reuseport: bool,
}

/// Bind and listen; the socket is non-blocking and close-on-exec.
pub fn bind(spec: &BindSpec) -> io::Result<std::net::TcpListener> {
    let domain = Domain::for_address(spec.addr);
    let socket = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if spec.reuseport {
        socket.set_reuse_port(true)?;
    }
    if spec.addr.is_ipv6() {
        socket.set_only_v6(spec.version != IpVersion::Dual)?;
    }
    socket.bind(&spec.addr.into())?;
    socket.listen(spec.backlog)?;
    Ok(socket.into())
}

/// A non-blocking UDP socket bound at `addr` (one per loop with
/// `reuseport`, the kernel spreading senders over them); an IPv6 address
/// takes IPv6 only.
pub fn bind_udp(addr: SocketAddr, reuseport: bool) -> io::Result<std::net::UdpSocket> {
    bind_udp_spec(addr, reuseport, IpVersion::V4)
}

/// [`bind_udp`] with the listener's `ip_version` (dual stack for `0`).
pub fn bind_udp_spec(
    addr: SocketAddr,
    reuseport: bool,
    version: IpVersion,
) -> io::Result<std::net::UdpSocket> {
    let domain = Domain::for_address(addr);
    let socket = Socket::new(domain, Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
    if reuseport {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(version != IpVersion::Dual)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Options applied to every connection of a listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnOptions {
    /// TCP_NODELAY: disable Nagle's algorithm (`-A`).
    pub nodelay: bool,
    /// TCP_CORK: hold partial frames until the loop has drained its output
    /// queue, then push them (`-k`).
    pub cork: bool,
}

/// A TCP socket for an outbound connection to `to`: bound to `source`
/// first when one is given (port 0 lets the kernel choose), with `opts`
/// applied. Non-blocking and with its connect started (in progress) when
/// `connect`; else blocking and unconnected, for a connect submitted to the
/// ring.
pub fn outbound(
    to: SocketAddr,
    source: Option<SocketAddr>,
    opts: ConnOptions,
    connect: bool,
) -> io::Result<std::net::TcpStream> {
    if source.is_some_and(|s| s.is_ipv4() != to.is_ipv4()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("source address {source:?} is not of the family of {to}"),
        ));
    }
    let ty = if connect {
        Type::STREAM.nonblocking().cloexec()
    } else {
        Type::STREAM.cloexec()
    };
    let sock = Socket::new(Domain::for_address(to), ty, Some(Protocol::TCP))?;
    if let Some(src) = source {
        sock.bind(&src.into()).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot bind source address {src}: {e}"))
        })?;
    }
    configure(&sock, opts)?;
    if connect {
        match sock.connect(&to.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sock.into())
}

/// Make a socket non-blocking (an outbound connection under `-T
/// completion`, once its connect submission has completed).
pub fn set_nonblocking(stream: &impl std::os::fd::AsFd) -> io::Result<()> {
    socket2::SockRef::from(stream).set_nonblocking(true)
}

/// Apply `opts` to a connected socket.
pub fn configure(stream: &impl std::os::fd::AsFd, opts: ConnOptions) -> io::Result<()> {
    let sock = SockRef::from(stream);
    if opts.nodelay {
        sock.set_nodelay(true)?;
    }
    if opts.cork {
        sock.set_cork(true)?;
    }
    Ok(())
}

/// With TCP_CORK on, push out any partial frame now that the output queue is
/// empty, and cork again for the next response.
pub fn push_corked(stream: &impl std::os::fd::AsFd) -> io::Result<()> {
    let sock = SockRef::from(stream);
    sock.set_cork(false)?;
    sock.set_cork(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpStream};

    fn listener(version: IpVersion, host: &str) -> std::net::TcpListener {
        let addr = resolve(host, 0, version).expect("resolve");
        bind(&BindSpec {
            addr,
            version,
            backlog: 16,
            reuseport: false,
        })
        .expect("bind")
    }

    #[test]
    fn nodelay_and_cork_are_set_on_accepted_sockets() {
        let l = listener(IpVersion::V4, "127.0.0.1");
        let addr = l.local_addr().unwrap();
        let _client = TcpStream::connect(addr).unwrap();
        l.set_nonblocking(false).unwrap();
        let (server, _) = l.accept().unwrap();
        let sock = SockRef::from(&server);
        assert!(!sock.nodelay().unwrap());
        assert!(!sock.cork().unwrap());
        configure(
            &server,
            ConnOptions {
                nodelay: true,
                cork: true,
            },
        )
        .unwrap();
        assert!(sock.nodelay().unwrap(), "TCP_NODELAY read back");
        assert!(sock.cork().unwrap(), "TCP_CORK read back");
        push_corked(&server).unwrap();
        assert!(sock.cork().unwrap(), "still corked after a push");
    }

    #[test]
    fn ipv6_only_and_dual_stack_read_back() {
        let v6 = listener(IpVersion::V6, "::1");
        assert!(SockRef::from(&v6).only_v6().unwrap());
        let dual = listener(IpVersion::Dual, "::");
        assert!(!SockRef::from(&dual).only_v6().unwrap());
        // An IPv4 client reaches the dual-stack socket.
        let port = dual.local_addr().unwrap().port();
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("v4 client on dual stack");
    }

    #[test]
    fn reuseport_reads_back() {
        let addr = resolve("127.0.0.1", 0, IpVersion::V4).unwrap();
        let l = bind(&BindSpec {
            addr,
            version: IpVersion::V4,
            backlog: 8,
            reuseport: true,
        })
        .unwrap();
        assert!(SockRef::from(&l).reuse_port().unwrap());
        // A second socket binds the same port.
        let again = BindSpec {
            addr: l.local_addr().unwrap(),
            version: IpVersion::V4,
            backlog: 8,
            reuseport: true,
        };
        bind(&again).expect("second SO_REUSEPORT listener");
    }

    #[test]
    fn wrong_family_is_a_clear_error() {
        let err = resolve("127.0.0.1", 1, IpVersion::V6).unwrap_err();
        assert!(err.to_string().contains("ip_version 6"), "{err}");
        let err = resolve("127.0.0.1", 1, IpVersion::Dual).unwrap_err();
        assert!(err.to_string().contains("dual stack"), "{err}");
    }
}
