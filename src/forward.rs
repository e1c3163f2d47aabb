//! Forwarding a request to the node that serves it ([`crate::routing`]
//! decides which), on the core that accepted it, over that core's pool of
//! keep-alive connections to each upstream (monoio, io_uring).
//!
//! The body passes through as the bytes received: never decoded,
//! `Content-Encoding` and the client's token kept. The upstream's status,
//! body and the headers clients read come back unchanged, with
//! `x-tidemark-forwarded-by: <upstream id>`.
//!
//! Safety: a forward is tried again (once, to the route decided afresh)
//! only when the upstream cannot have acted on it: the connection could
//! not be made, or the request could not be written whole (a server acts
//! on a request only once it has all of it). Once the whole request went
//! out, any failure is a 502 naming the upstream: never a second send.
//! Pooled connections are used only while younger than half the idle
//! timeout, so the upstream does not close them under a request.

use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::context::CoreCtx;
use crate::control::state::NodeId;
use crate::http::{Request, Response};
use crate::routing::{self, Route};

/// Idle connections kept per upstream, per core.
const MAX_IDLE: usize = 16;
/// How long a forwarded request may take to be answered.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes of a streamed body read from the client per read.
const STREAM_CHUNK: usize = 256 << 10;
/// The largest response head accepted from an upstream.
const MAX_HEAD: usize = 64 << 10;

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

/// Upstream headers passed back to the client.
const PASSED_BACK: [&str; 6] = [
    "content-type",
    "content-encoding",
    "retry-after",
    "x-tidemark-primary",
    "x-tidemark-writer-epoch",
    "www-authenticate",
];

/// One core's idle connections, by upstream address.
#[derive(Debug, Default)]
pub struct Pool {
    idle: HashMap<String, Vec<(TcpStream, Instant)>>,
}

impl Pool {
    fn take(&mut self, addr: &str, max_age: Duration) -> Option<TcpStream> {
        let conns = self.idle.get_mut(addr)?;
        while let Some((c, since)) = conns.pop() {
            if since.elapsed() < max_age {
                return Some(c);
            }
        }
        None
    }

    fn put(&mut self, addr: &str, conn: TcpStream) {
        let conns = self.idle.entry(addr.to_string()).or_default();
        if conns.len() < MAX_IDLE {
            conns.push((conn, Instant::now()));
        }
    }

    /// Idle connections held now.
    pub fn idle_connections(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }
}

/// Why a forward failed.
#[derive(Debug)]
pub enum Failure {
    /// Nothing the upstream could act on went out: try again.
    NotSent(io::Error),
    /// A streamed body could not be passed on whole (the upstream cannot
    /// have acted on it, but the client's body was partly consumed).
    Incomplete(String),
    /// The whole request went out: the upstream may have acted on it.
    Sent(String),
}

/// Where a forwarded request's body comes from.
#[derive(Debug)]
pub enum Body<'s, 'c> {
    /// Received whole already (`Request::body`).
    Whole,
    /// Still arriving on the client's connection: it is sent upstream as
    /// it arrives, never collected.
    Stream(&'s mut Stream<'c>),
}

/// A body still arriving: `len` bytes, the first of them already in `buf`
/// (which keeps whatever follows the body, a pipelined request).
#[derive(Debug)]
pub struct Stream<'a> {
    pub client: &'a mut TcpStream,
    pub buf: &'a mut Vec<u8>,
    pub len: usize,
    pub deadline: Instant,
    /// Set once any of it was taken from the client: the request cannot
    /// be sent again.
    pub taken: bool,
    /// Set once all of it went upstream. Taken but not complete: the
    /// client's connection must close (the rest of its body is unread).
    pub complete: bool,
}

/// The request's head as it goes upstream (the chain sealed), then `body`:
/// its bytes here (the whole body, or none when it is streamed) and the
/// length the head announces.
pub fn encode_request(
    req: &Request,
    target: &str,
    host: &str,
    chain: &[NodeId],
    auth: &str,
    body: Option<(&[u8], usize)>,
) -> Vec<u8> {
    use std::io::Write;
    let len = body.map_or(req.body.len(), |b| b.1);
    let mut out = Vec::with_capacity(512 + body.map_or(0, |b| b.0.len()));
    let _ = write!(out, "{} {target} HTTP/1.1\r\nHost: {host}\r\n", req.method);
    for (k, v) in &req.headers {
        if HOP_BY_HOP.contains(&k.as_str()) || k.starts_with("x-tidemark-forward") {
            continue;
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    let ids: Vec<String> = chain.iter().map(ToString::to_string).collect();
    let _ = write!(
        out,
        "x-tidemark-forwarded-by: {}\r\nx-tidemark-forward-auth: {auth}\r\nContent-Length: {len}\r\n\r\n",
        ids.join(","),
    );
    if let Some((b, _)) = body {
        out.extend_from_slice(b);
    }
    out
}

/// Forwards `req` (which went through `chain` before this node) to the
/// node `route` names, trying once more with a fresh route when nothing
/// was sent. `label` names the route in metrics; `reroute` decides anew.
pub async fn forward(
    ctx: &Rc<CoreCtx>,
    req: &Request,
    mut body: Body<'_, '_>,
    chain: &[NodeId],
    mut route: Route,
    label: &'static str,
    reroute: impl Fn() -> Route,
) -> Response {
    let node = &ctx.node;
    let Some(me) = node.control.view().node_id else {
        return Response::error(500, "forwarding outside a cluster");
    };
    let mut full = chain.to_vec();
    full.push(me);
    let target = if req.query.is_empty() {
        req.path.clone()
    } else {
        format!("{}?{}", req.path, req.query)
    };
    let f = &node.metrics.forward;
    for attempt in 0..2 {
        let (to, addr) = match route {
            Route::Forward { to, http_addr } => (to, http_addr),
            Route::Local => {
                // The view moved on: this node serves it now.
                return Response::error(
                    503,
                    "the request's route changed while it was being forwarded; retry",
                );
            }
            Route::Unavailable(why) => return Response::error(503, why),
            Route::Loop(why) => return Response::error(508, why),
        };
        let labels = crate::metrics::ForwardLabels {
            route: label.into(),
            upstream: to.to_string(),
        };
        let started = Instant::now();
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let auth = routing::seal_chain(
            node.config.cluster.secret.as_bytes(),
            secs,
            &req.method,
            &target,
            &full,
        );
        let bytes = match &body {
            Body::Whole => encode_request(
                req,
                &target,
                &addr,
                &full,
                &auth,
                Some((&req.body, req.body.len())),
            ),
            Body::Stream(s) => {
                encode_request(req, &target, &addr, &full, &auth, Some((&[], s.len)))
            }
        };
        let sent = bytes.len() as u64
            + match &body {
                Body::Whole => 0,
                Body::Stream(s) => s.len as u64,
            };
        let max_age = Duration::from_millis(node.config.http.idle_timeout_ms / 2);
        match exchange(&ctx.forward_pool, max_age, &addr, bytes, &mut body).await {
            Ok(resp) => {
                f.requests.get_or_create(&labels).inc();
                f.bytes_out.get_or_create(&labels).inc_by(sent);
                f.bytes_in
                    .get_or_create(&labels)
                    .inc_by(resp.body.len() as u64);
                f.seconds
                    .get_or_create(&labels)
                    .observe(started.elapsed().as_secs_f64());
                return resp.with_header("x-tidemark-forwarded-by", to.to_string());
            }
            Err(Failure::NotSent(e)) => {
                f.error(label, to, "not_sent");
                tracing::debug!(upstream = %to, %addr, error = %e, attempt, "forward not sent; deciding the route again");
                if attempt == 0 {
                    route = reroute();
                    continue;
                }
                return Response::error(
                    502,
                    format!(
                        "node {to} at {addr}, which serves this request, cannot be reached: {e}"
                    ),
                )
                .with_header("Retry-After", "1");
            }
            Err(Failure::Incomplete(why)) => {
                f.error(label, to, "incomplete");
                return Response::error(
                    502,
                    format!("the request could not be passed on whole to node {to} at {addr} ({why}); it was not applied"),
                );
            }
            Err(Failure::Sent(why)) => {
                f.error(label, to, "after_send");
                return Response::error(
                    502,
                    format!("node {to} at {addr} failed after the request was sent to it ({why}); it may or may not have been applied"),
                );
            }
        }
    }
    unreachable!("the loop returns")
}

/// Sends `request` (and a streamed body) to `addr` on a connection of
/// `pool` (one younger than `max_age`) or a new one, and reads the answer.
pub async fn exchange(
    pool: &std::cell::RefCell<Pool>,
    max_age: Duration,
    addr: &str,
    request: Vec<u8>,
    body: &mut Body<'_, '_>,
) -> Result<Response, Failure> {
    let pooled = pool.borrow_mut().take(addr, max_age);
    let mut conn = match pooled {
        Some(c) => c,
        None => {
            let a: std::net::SocketAddr = addr.parse().map_err(|_| {
                Failure::NotSent(io::Error::other(format!("{addr:?} is not an address")))
            })?;
            match monoio::time::timeout(Duration::from_secs(3), TcpStream::connect(a)).await {
                Ok(Ok(c)) => {
                    let _ = c.set_nodelay(true);
                    c
                }
                Ok(Err(e)) => return Err(Failure::NotSent(e)),
                Err(_) => {
                    return Err(Failure::NotSent(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connecting timed out",
                    )))
                }
            }
        }
    };
    let (res, _) = conn.write_all(request).await;
    if let Err(e) = res {
        return Err(Failure::NotSent(e));
    }
    if let Body::Stream(s) = body {
        pass_body(&mut conn, s).await?;
    }
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let (resp, keep) = read_response(&mut conn, deadline)
        .await
        .map_err(|e| Failure::Sent(e.to_string()))?;
    if keep {
        pool.borrow_mut().put(addr, conn);
    }
    Ok(resp)
}

/// Passes a streamed body from the client to the upstream as it arrives.
async fn pass_body(conn: &mut TcpStream, s: &mut Stream<'_>) -> Result<(), Failure> {
    use monoio::buf::IoBufMut;
    let mut left = s.len;
    // What already arrived with the head (never more than the body: the
    // caller's buffer keeps what follows it).
    let first = left.min(s.buf.len());
    let mut chunk: Vec<u8> = if first == s.buf.len() {
        std::mem::take(s.buf)
    } else {
        s.buf.drain(..first).collect()
    };
    // One buffer goes back and forth: read from the client, written
    // upstream, no copy in between; never a byte past the body is read.
    chunk.reserve(STREAM_CHUNK.saturating_sub(chunk.len()));
    loop {
        if !chunk.is_empty() {
            let n = chunk.len();
            s.taken = true;
            let (res, back) = conn.write_all(chunk).await;
            res.map_err(|e| Failure::Incomplete(format!("sending the body upstream: {e}")))?;
            chunk = back;
            chunk.clear();
            left -= n;
        }
        if left == 0 {
            break;
        }
        s.taken = true;
        let want = left.min(chunk.capacity());
        let wait = s.deadline.saturating_duration_since(Instant::now());
        let (res, back) =
            match monoio::time::timeout(wait, s.client.read(chunk.slice_mut(0..want))).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(Failure::Incomplete(
                        "the client sent its body too slowly".into(),
                    ))
                }
            };
        chunk = back.into_inner();
        match res {
            Ok(0) => {
                return Err(Failure::Incomplete(
                    "the client closed the connection mid-body".into(),
                ))
            }
            Ok(_) => {}
            Err(e) => {
                return Err(Failure::Incomplete(format!(
                    "reading the body from the client: {e}"
                )))
            }
        }
    }
    // The caller's buffer keeps its allocation for the next request.
    if s.buf.capacity() == 0 {
        *s.buf = chunk;
    }
    s.complete = true;
    Ok(())
}

/// Reads one response (Content-Length framed, as tidemark answers).
/// Returns it and whether the connection may be reused.
async fn read_response(conn: &mut TcpStream, deadline: Instant) -> io::Result<(Response, bool)> {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = r.code.unwrap_or(502);
                let mut len = 0usize;
                let mut close = r.version == Some(0);
                let mut out_headers = Vec::new();
                for h in r.headers.iter() {
                    let name = h.name.to_ascii_lowercase();
                    let value = String::from_utf8_lossy(h.value).into_owned();
                    if name == "content-length" {
                        len = value.trim().parse().map_err(|_| {
                            io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length")
                        })?;
                    } else if name == "connection" {
                        close = value.eq_ignore_ascii_case("close");
                    } else if let Some(k) = PASSED_BACK.iter().find(|k| **k == name) {
                        out_headers.push((*k, value));
                    }
                }
                let mut body = buf.split_off(head_len);
                while body.len() < len {
                    read_some(conn, &mut body, deadline).await?;
                }
                body.truncate(len);
                return Ok((
                    Response {
                        status,
                        headers: out_headers,
                        body,
                    },
                    !close,
                ));
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head too large",
                ))
            }
            Ok(httparse::Status::Partial) => read_some(conn, &mut buf, deadline).await?,
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
    }
}

async fn read_some(conn: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> io::Result<()> {
    let chunk = Vec::with_capacity(64 << 10);
    let wait = deadline.saturating_duration_since(Instant::now());
    match monoio::time::timeout(wait, conn.read(chunk)).await {
        Ok((Ok(0), _)) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the upstream closed the connection",
        )),
        Ok((Ok(_), c)) => {
            buf.extend_from_slice(&c);
            Ok(())
        }
        Ok((Err(e), _)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time")),
    }
}
