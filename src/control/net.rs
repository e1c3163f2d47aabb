//! The control port's sockets: the server that answers requests, the
//! client [`Peer`] that sends them (one connection, reopened on failure),
//! and openraft's network on top of it; TLS through tokio-rustls.
//!
//! Every request has a deadline (openraft's `RPCOption` TTL for Raft
//! RPCs). A peer that cannot be reached is `Unreachable` to openraft, which
//! then backs off (500 ms) instead of retrying hot.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::rpc::{Request, Response};
use super::state::NodeId;
use super::types::{BasicNode, TypeConfig};
use super::wire::{self, Direction, Sealer, WireError, NONCE_LEN};

/// A connection, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// The control port's TLS: tokio-rustls over the node's TLS configs.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    pub fn new(t: &crate::tls::Tls) -> Tls {
        Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(t.server.clone()),
            connector: tokio_rustls::TlsConnector::from(t.client.clone()),
        }
    }
}

/// A fresh random nonce.
pub fn nonce() -> io::Result<[u8; NONCE_LEN]> {
    use std::io::Read;
    let mut n = [0u8; NONCE_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(n)
}

fn wire_err(e: WireError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Handshake frames are small: a peer that has not proved the secret yet
/// cannot make this node allocate more than this.
const HANDSHAKE_FRAME: usize = 1024;

async fn read_frame<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> io::Result<Vec<u8>> {
    read_frame_max(r, wire::MAX_FRAME).await
}

async fn read_frame_max<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    max: usize,
) -> io::Result<Vec<u8>> {
    let mut h = [0u8; 4];
    r.read_exact(&mut h).await?;
    let len = wire::frame_len(h).map_err(wire_err)?;
    if len > max {
        return Err(wire_err(WireError::TooLarge(len)));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(body)
}

async fn write_frame<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, body: &[u8]) -> io::Result<()> {
    w.write_all(&wire::frame(body)).await?;
    w.flush().await
}

/// What answers requests on the control port.
pub trait Handler: Send + Sync + 'static {
    /// Answers `req` from `peer`, the node id the peer proved in its Hello.
    fn handle(
        &self,
        peer: NodeId,
        req: Request,
    ) -> impl std::future::Future<Output = Response> + Send;
}

/// Who this node is on the wire, and how it talks.
#[derive(Debug)]
pub struct Endpoint {
    pub node_id: NodeId,
    /// Outgoing connections leave from this IP (the control port's).
    pub source_ip: Option<std::net::IpAddr>,
    pub secret: Vec<u8>,
    pub tls: Option<Tls>,
}

/// Time allowed for a handshake.
const HANDSHAKE: Duration = Duration::from_secs(3);

/// Accepts control connections until the task is dropped.
pub async fn serve<H: Handler>(listener: TcpListener, ep: Arc<Endpoint>, handler: Arc<H>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "control port accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let ep = ep.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_conn(tcp, &ep, &*handler).await {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    tracing::warn!(%peer, error = %e, "control connection closed");
                }
            }
        });
    }
}

async fn serve_conn<H: Handler>(tcp: TcpStream, ep: &Endpoint, handler: &H) -> io::Result<()> {
    let mut io: Box<dyn Io> = match &ep.tls {
        Some(t) => Box::new(
            tokio::time::timeout(HANDSHAKE, t.acceptor.accept(tcp))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake"))??,
        ),
        None => Box::new(tcp),
    };
    let sn = nonce()?;
    write_frame(&mut io, &wire::challenge(&sn)).await?;
    let body = tokio::time::timeout(HANDSHAKE, read_frame_max(&mut io, HANDSHAKE_FRAME))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "waiting for Hello"))??;
    let hello = match wire::read_hello(&body, &ep.secret, &sn) {
        Ok(h) => h,
        Err(e) => {
            let reason = match &e {
                WireError::BadProof => "wrong cluster secret".to_string(),
                other => other.to_string(),
            };
            let _ = write_frame(&mut io, &wire::refused(&reason)).await;
            return Err(wire_err(e));
        }
    };
    write_frame(
        &mut io,
        &wire::welcome(&ep.secret, &sn, &hello.client_nonce),
    )
    .await?;
    let key = wire::session_key(&ep.secret, &sn, &hello.client_nonce);
    let mut rx = Sealer::new(key, Direction::ToServer);
    let mut tx = Sealer::new(key, Direction::ToClient);
    loop {
        let body = read_frame(&mut io).await?;
        let payload = rx.open(&body).map_err(wire_err)?;
        let req: Request = serde_json::from_slice(payload)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let resp = handler.handle(NodeId(hello.node_id), req).await;
        let json = serde_json::to_vec(&resp).map_err(io::Error::other)?;
        write_frame(&mut io, &tx.seal(&json)).await?;
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing reached the peer: it can be tried again, elsewhere or later.
    #[error("cannot reach {addr}: {source}")]
    Unreachable { addr: String, source: io::Error },
    /// The peer refused this node (wrong secret, TLS): asking again will not help.
    #[error("{addr} refused this node: {reason}")]
    Refused { addr: String, reason: String },
    #[error("{addr} did not answer within {ms} ms")]
    Timeout { addr: String, ms: u128 },
    #[error("connection to {addr} failed: {source}")]
    Network { addr: String, source: io::Error },
}

struct Session {
    io: Box<dyn Io>,
    tx: Sealer,
    rx: Sealer,
}

/// One peer's control port, as a client. Not shared: one call at a time.
pub struct Peer {
    pub addr: String,
    ep: Arc<Endpoint>,
    session: Option<Session>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("addr", &self.addr).finish()
    }
}

impl Peer {
    pub fn new(addr: String, ep: Arc<Endpoint>) -> Peer {
        Peer {
            addr,
            ep,
            session: None,
        }
    }

    async fn open_tcp(&self) -> io::Result<TcpStream> {
        let Some(ip) = self.ep.source_ip else {
            return TcpStream::connect(&self.addr).await;
        };
        let to: std::net::SocketAddr = tokio::net::lookup_host(&self.addr)
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let sock = if to.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if ip.is_ipv4() == to.is_ipv4() {
            sock.bind(std::net::SocketAddr::new(ip, 0))?;
        }
        sock.connect(to).await
    }

    async fn connect(&self) -> Result<Session, CallError> {
        let unreachable = |source| CallError::Unreachable {
            addr: self.addr.clone(),
            source,
        };
        let tcp = self.open_tcp().await.map_err(unreachable)?;
        let _ = tcp.set_nodelay(true);
        let mut io: Box<dyn Io> = match &self.ep.tls {
            Some(t) => {
                let name = crate::tls::server_name(&self.addr).map_err(unreachable)?;
                // A TLS error (bad certificate, alert) is a refusal;
                // a reset or EOF is only a peer not reachable now.
                Box::new(t.connector.connect(name, tcp).await.map_err(|e| {
                    if e.kind() == io::ErrorKind::InvalidData {
                        CallError::Refused {
                            addr: self.addr.clone(),
                            reason: format!("TLS: {e}"),
                        }
                    } else {
                        unreachable(e)
                    }
                })?)
            }
            None => Box::new(tcp),
        };
        let net = |source| CallError::Network {
            addr: self.addr.clone(),
            source,
        };
        let refused = |e: WireError| CallError::Refused {
            addr: self.addr.clone(),
            reason: match e {
                WireError::Refused(r) => r,
                other => other.to_string(),
            },
        };
        // With TLS 1.3 the server checks this node's certificate after the
        // client's side of the handshake is done: a rejection arrives as an
        // alert on the first read.
        let tls = self.ep.tls.is_some();
        let body = read_frame_max(&mut io, HANDSHAKE_FRAME)
            .await
            .map_err(|e| {
                if tls && e.kind() == io::ErrorKind::InvalidData {
                    CallError::Refused {
                        addr: self.addr.clone(),
                        reason: format!("TLS: {e}"),
                    }
                } else {
                    net(e)
                }
            })?;
        let sn = wire::read_challenge(&body).map_err(refused)?;
        let cn = nonce().map_err(net)?;
        write_frame(
            &mut io,
            &wire::hello(&self.ep.secret, &sn, &cn, self.ep.node_id.0),
        )
        .await
        .map_err(net)?;
        let body = read_frame_max(&mut io, HANDSHAKE_FRAME)
            .await
            .map_err(net)?;
        wire::read_welcome(&body, &self.ep.secret, &sn, &cn).map_err(refused)?;
        let key = wire::session_key(&self.ep.secret, &sn, &cn);
        Ok(Session {
            io,
            tx: Sealer::new(key, Direction::ToServer),
            rx: Sealer::new(key, Direction::ToClient),
        })
    }

    /// Sends `req` and waits for the answer, all within `ttl`. On any
    /// failure the connection is dropped (the next call opens a new one).
    pub async fn call(&mut self, req: &Request, ttl: Duration) -> Result<Response, CallError> {
        match tokio::time::timeout(ttl, self.call_inner(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.session = None;
                Err(e)
            }
            Err(_) => {
                self.session = None;
                Err(CallError::Timeout {
                    addr: self.addr.clone(),
                    ms: ttl.as_millis(),
                })
            }
        }
    }

    async fn call_inner(&mut self, req: &Request) -> Result<Response, CallError> {
        if self.session.is_none() {
            self.session = Some(self.connect().await?);
        }
        let addr = self.addr.clone();
        let net = |source| CallError::Network {
            addr: addr.clone(),
            source,
        };
        let s = self.session.as_mut().expect("connected above");
        let json = serde_json::to_vec(req).map_err(|e| net(io::Error::other(e)))?;
        write_frame(&mut s.io, &s.tx.seal(&json))
            .await
            .map_err(net)?;
        let body = read_frame(&mut s.io).await.map_err(net)?;
        let payload = s.rx.open(&body).map_err(|e| net(wire_err(e)))?;
        serde_json::from_slice(payload)
            .map_err(|e| net(io::Error::new(io::ErrorKind::InvalidData, e)))
    }
}

/// Observes every Raft RPC's duration (for the RPC latency histogram).
pub type RpcObserver = Arc<dyn Fn(&'static str, Duration, bool) + Send + Sync>;

/// openraft's network: one [`Peer`] per target.
#[derive(Clone)]
pub struct Network {
    pub ep: Arc<Endpoint>,
    pub observe: RpcObserver,
}

/// The client openraft uses for one target.
pub struct RaftPeer {
    target: NodeId,
    peer: Peer,
    ep: Arc<Endpoint>,
    observe: RpcObserver,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> RaftPeer {
        RaftPeer {
            target,
            peer: Peer::new(node.addr.clone(), self.ep.clone()),
            ep: self.ep.clone(),
            observe: self.observe.clone(),
        }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl RaftPeer {
    async fn rpc(
        &mut self,
        name: &'static str,
        action: RPCTypes,
        req: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, BasicNode, openraft::error::Infallible>> {
        let start = Instant::now();
        let res = self.peer.call(&req, option.hard_ttl()).await;
        (self.observe)(name, start.elapsed(), res.is_ok());
        res.map_err(|e| match e {
            CallError::Unreachable { .. } | CallError::Refused { .. } => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            CallError::Timeout { .. } => RPCError::Timeout(Timeout {
                action,
                id: self.ep.node_id,
                target: self.target,
                timeout: option.hard_ttl(),
            }),
            CallError::Network { .. } => RPCError::Network(NetworkError::new(&e)),
        })
    }
}

fn unexpected(resp: &Response) -> NetworkError {
    NetworkError::new(&io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected answer {resp:?}"),
    ))
}

fn widen<E: std::error::Error>(
    e: RPCError<NodeId, BasicNode, openraft::error::Infallible>,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    match e {
        RPCError::Timeout(t) => RPCError::Timeout(t),
        RPCError::Unreachable(u) => RPCError::Unreachable(u),
        RPCError::PayloadTooLarge(p) => RPCError::PayloadTooLarge(p),
        RPCError::Network(n) => RPCError::Network(n),
        RPCError::RemoteError(r) => match r.source {},
    }
}

impl RaftNetwork<TypeConfig> for RaftPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        match self
            .rpc(
                "append_entries",
                RPCTypes::AppendEntries,
                Request::Append(rpc),
                &option,
            )
            .await
            .map_err(widen)?
        {
            Response::Append(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(RPCError::Network(unexpected(&other))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self
            .rpc(
                "install_snapshot",
                RPCTypes::InstallSnapshot,
                Request::Snapshot(rpc),
                &option,
            )
            .await
            .map_err(widen)?
        {
            Response::Snapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(RPCError::Network(unexpected(&other))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self
            .rpc("vote", RPCTypes::Vote, Request::Vote(rpc), &option)
            .await
            .map_err(widen)?
        {
            Response::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(RPCError::Network(unexpected(&other))),
        }
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("node_id", &self.ep.node_id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RaftPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftPeer")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}
