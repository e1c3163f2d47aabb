//! The HTTP/1.1 connection loop of a shard core, on monoio's io_uring
//! sockets (SO_REUSEPORT: every core listens on the same address and the
//! kernel spreads connections over them).
//!
//! Per connection: keep-alive; pipelined requests answered in order (the
//! responses of requests already buffered go out in one write); bodies by
//! `Content-Length` (read straight into the body's own buffer) or chunked;
//! `Expect: 100-continue`; a body over `http.max_body_bytes` gets 413 before
//! it is read; the head must arrive within `http.header_timeout_ms` (408),
//! the body within `http.body_timeout_ms`, and an idle keep-alive connection
//! is closed after `http.idle_timeout_ms`. Each core takes at most its share
//! of `http.max_connections`; further connections are closed at once.
//!
//! Hand-written on `httparse` rather than on an HTTP crate: see the
//! measurement in ARCHITECTURE.md ("HTTP server").

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

use super::{handlers, reason, Request, Response};
use crate::context::CoreCtx;

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 64 << 10;
/// Most headers a request may have.
const MAX_HEADERS: usize = 64;
/// Bytes asked for per socket read.
const READ_CHUNK: usize = 64 << 10;
/// Write bodies at least this large are passed on as they arrive when
/// another node serves them (smaller ones are read whole first).
const STREAM_ABOVE: usize = 256 << 10;

/// Binds the core's listener on `addr` with SO_REUSEPORT.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind_with_config(
        addr,
        &ListenerOpts::new()
            .reuse_port(true)
            .reuse_addr(true)
            .backlog(1024),
    )
}

/// Accepts connections until the core drains, then waits (up to 30 s) for
/// the connections to finish their requests.
pub async fn serve(listener: TcpListener, ctx: Rc<CoreCtx>) {
    let per_core = (ctx.node.config.http.max_connections / ctx.node.shard_count).max(1);
    loop {
        let drain = ctx.drain_event.listen();
        if ctx.draining.get() {
            break;
        }
        monoio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    if ctx.connections.get() >= per_core {
                        tracing::warn!(shard = ctx.id, limit = per_core, "connection limit reached; closing a new connection");
                        drop(stream);
                        continue;
                    }
                    ctx.connections.set(ctx.connections.get() + 1);
                    ctx.metrics.connections.inc();
                    let ctx = ctx.clone();
                    monoio::spawn(async move {
                        connection(stream, &ctx).await;
                        ctx.connections.set(ctx.connections.get() - 1);
                        ctx.metrics.connections.dec();
                    });
                }
                Err(e) => {
                    tracing::warn!(shard = ctx.id, error = %e, "accept failed");
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = drain => break,
        }
    }
    drop(listener);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctx.connections.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}

enum Read {
    Data,
    Eof,
    Timeout,
    Drain,
    Error,
}

/// Reads more bytes onto the end of `buf` until `deadline`. When `idle`, a
/// drain of the core also ends the wait. On `Timeout` and `Drain` the buffer
/// is gone (the caller closes the connection).
async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    ctx: &CoreCtx,
    idle: bool,
) -> Read {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    let len = buf.len();
    let cap = buf.capacity();
    let owned = std::mem::take(buf);
    let wait = deadline.saturating_duration_since(Instant::now());
    let finish = |res: std::io::Result<usize>, b: Vec<u8>, buf: &mut Vec<u8>| {
        *buf = b;
        match res {
            Ok(0) => Read::Eof,
            Ok(_) => Read::Data,
            Err(_) => Read::Error,
        }
    };
    if idle {
        let drain = ctx.drain_event.listen();
        if ctx.draining.get() {
            *buf = owned;
            return Read::Drain;
        }
        monoio::select! {
            (res, b) = stream.read(owned.slice_mut(len..cap)) => finish(res, b.into_inner(), buf),
            _ = monoio::time::sleep(wait) => Read::Timeout,
            _ = drain => Read::Drain,
        }
    } else {
        monoio::select! {
            (res, b) = stream.read(owned.slice_mut(len..cap)) => finish(res, b.into_inner(), buf),
            _ = monoio::time::sleep(wait) => Read::Timeout,
        }
    }
}

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    query: String,
    minor_version: u8,
    headers: Vec<(String, Vec<u8>)>,
    len: usize,
}

impl Head {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .any(|(_, v)| {
                std::str::from_utf8(v)
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            })
    }

    fn keep_alive(&self) -> bool {
        if self.minor_version == 0 {
            self.has_token("connection", "keep-alive")
        } else {
            !self.has_token("connection", "close")
        }
    }
}

enum Parsed {
    Complete(Head),
    Partial,
    Invalid(Response),
}

fn parse_head(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let target = req.path.unwrap_or("/");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            Parsed::Complete(Head {
                method: req.method.unwrap_or("GET").to_string(),
                path: path.to_string(),
                query: query.to_string(),
                minor_version: req.version.unwrap_or(1),
                headers: req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                    .collect(),
                len,
            })
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => Parsed::Invalid(Response::error(
            431,
            format!("more than {MAX_HEADERS} request headers"),
        )),
        Err(e) => Parsed::Invalid(Response::error(400, format!("malformed HTTP request: {e}"))),
    }
}

/// How a request's body is framed.
enum Framing {
    None,
    Length(u64),
    Chunked,
}

fn framing(head: &Head) -> Result<Framing, Response> {
    let te = head.header("transfer-encoding");
    let cls: Vec<&[u8]> = head
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_slice())
        .collect();
    if te.is_some() {
        if !cls.is_empty() {
            return Err(Response::error(
                400,
                "both Transfer-Encoding and Content-Length are set",
            ));
        }
        if head.has_token("transfer-encoding", "chunked") {
            return Ok(Framing::Chunked);
        }
        return Err(Response::error(
            501,
            "unsupported Transfer-Encoding (only chunked)",
        ));
    }
    let mut length = None;
    for v in cls {
        let n: u64 = std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Response::error(400, "invalid Content-Length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(Response::error(400, "conflicting Content-Length headers"));
        }
        length = Some(n);
    }
    Ok(length.map_or(Framing::None, Framing::Length))
}

/// Appends the response to `out`.
fn encode_response(
    out: &mut Vec<u8>,
    resp: &Response,
    head_only: bool,
    keep_alive: bool,
    minor_version: u8,
) {
    use std::io::Write;
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    if resp.status != 204 && resp.status >= 200 {
        let _ = write!(out, "Content-Length: {}\r\n", resp.body.len());
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if minor_version == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
}

/// Writes the final response and closes "lingering": the write side is shut
/// down and whatever the client still sends (an unread body) is read and
/// dropped for a short while, so the kernel does not answer it with a reset
/// that could destroy the response before the client reads it.
async fn close_with(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    resp: &Response,
    head_only: bool,
    minor_version: u8,
) {
    encode_response(out, resp, head_only, false, minor_version);
    if !flush_out(stream, out).await {
        return;
    }
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut scratch = Vec::with_capacity(READ_CHUNK);
    let mut drained = 0usize;
    while drained < (16 << 20) {
        let wait = deadline.saturating_duration_since(Instant::now());
        let read = monoio::select! {
            (res, b) = stream.read(scratch) => Some((res, b)),
            _ = monoio::time::sleep(wait) => None,
        };
        match read {
            Some((Ok(n), mut b)) if n > 0 => {
                drained += n;
                b.clear();
                scratch = b;
            }
            _ => return,
        }
    }
}

async fn flush_out(stream: &mut TcpStream, out: &mut Vec<u8>) -> bool {
    if out.is_empty() {
        return true;
    }
    let (res, mut b) = stream.write_all(std::mem::take(out)).await;
    b.clear();
    *out = b;
    res.is_ok()
}

/// Decodes chunked transfer coding incrementally.
#[derive(Debug, Default)]
struct Chunked {
    /// Bytes left in the current chunk's data (`None`: at a size line).
    remaining: Option<u64>,
    /// After a chunk's data: its CRLF is still to come.
    need_crlf: bool,
    /// After the last chunk: reading trailers until an empty line.
    trailers: bool,
}

enum ChunkStep {
    NeedMore,
    Done,
}

impl Chunked {
    /// Consumes what it can from `input[*pos..]` into `body`.
    fn step(
        &mut self,
        input: &[u8],
        pos: &mut usize,
        body: &mut Vec<u8>,
        limit: u64,
    ) -> Result<ChunkStep, Response> {
        loop {
            if self.trailers {
                let rest = &input[*pos..];
                let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                    return Ok(ChunkStep::NeedMore);
                };
                let line = &rest[..nl];
                *pos += nl + 1;
                if line == b"" || line == b"\r" {
                    return Ok(ChunkStep::Done);
                }
                continue;
            }
            if self.need_crlf {
                let rest = &input[*pos..];
                if rest.len() < 2 {
                    return Ok(ChunkStep::NeedMore);
                }
                if &rest[..2] != b"\r\n" {
                    return Err(Response::error(
                        400,
                        "malformed chunked body: missing CRLF after chunk data",
                    ));
                }
                *pos += 2;
                self.need_crlf = false;
            }
            match self.remaining {
                Some(0) => unreachable!("zero-size chunks end the body"),
                Some(n) => {
                    let avail = (input.len() - *pos) as u64;
                    if avail == 0 {
                        return Ok(ChunkStep::NeedMore);
                    }
                    let take = n.min(avail) as usize;
                    body.extend_from_slice(&input[*pos..*pos + take]);
                    *pos += take;
                    let left = n - take as u64;
                    if left == 0 {
                        self.remaining = None;
                        self.need_crlf = true;
                    } else {
                        self.remaining = Some(left);
                        return Ok(ChunkStep::NeedMore);
                    }
                }
                None => {
                    let rest = &input[*pos..];
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        if rest.len() > 1024 {
                            return Err(Response::error(
                                400,
                                "malformed chunked body: chunk size line too long",
                            ));
                        }
                        return Ok(ChunkStep::NeedMore);
                    };
                    let line = std::str::from_utf8(&rest[..nl]).unwrap_or("");
                    let size = line.trim_end_matches('\r');
                    let size = size.split(';').next().unwrap_or("").trim();
                    let n = u64::from_str_radix(size, 16).map_err(|_| {
                        Response::error(
                            400,
                            format!("malformed chunked body: bad chunk size {size:?}"),
                        )
                    })?;
                    *pos += nl + 1;
                    if body.len() as u64 + n > limit {
                        return Err(Response::error(
                            413,
                            format!("request body is larger than the limit of {limit} bytes"),
                        ));
                    }
                    if n == 0 {
                        self.trailers = true;
                    } else {
                        self.remaining = Some(n);
                    }
                }
            }
        }
    }
}

/// Serves one connection until it closes, errs, times out or the core drains.
async fn connection(mut stream: TcpStream, ctx: &Rc<CoreCtx>) {
    let cfg = &ctx.node.config.http;
    let header_timeout = Duration::from_millis(cfg.header_timeout_ms);
    let body_timeout = Duration::from_millis(cfg.body_timeout_ms);
    let idle_timeout = Duration::from_millis(cfg.idle_timeout_ms);
    let limit = cfg.max_body_bytes;
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // The head.
        let mut head_start: Option<Instant> = None;
        let head = loop {
            if !buf.is_empty() {
                head_start.get_or_insert_with(Instant::now);
                match parse_head(&buf) {
                    Parsed::Complete(h) => break h,
                    Parsed::Partial if buf.len() > MAX_HEAD => {
                        let r = Response::error(
                            431,
                            format!("request head is larger than {MAX_HEAD} bytes"),
                        );
                        close_with(&mut stream, &mut out, &r, false, 1).await;
                        return;
                    }
                    Parsed::Partial => {}
                    Parsed::Invalid(r) => {
                        close_with(&mut stream, &mut out, &r, false, 1).await;
                        return;
                    }
                }
            }
            // Answer what was pipelined before waiting for more.
            if !flush_out(&mut stream, &mut out).await {
                return;
            }
            let idle = buf.is_empty();
            let deadline = match head_start {
                Some(t) => t + header_timeout,
                None => Instant::now() + idle_timeout,
            };
            match read_more(&mut stream, &mut buf, deadline, ctx, idle).await {
                Read::Data => {}
                Read::Timeout if !idle => {
                    let r = Response::error(408, "request head not received in time");
                    close_with(&mut stream, &mut out, &r, false, 1).await;
                    return;
                }
                Read::Eof | Read::Timeout | Read::Drain | Read::Error => return,
            }
        };
        let started = Instant::now();
        let mut keep_alive = head.keep_alive() && !ctx.draining.get();
        let head_only = head.method == "HEAD";
        // The body.
        let frame = match framing(&head) {
            Ok(f) => f,
            Err(r) => {
                close_with(&mut stream, &mut out, &r, head_only, head.minor_version).await;
                return;
            }
        };
        let expects_continue = head.has_token("expect", "100-continue");
        // A large write another node serves: its body goes upstream as it
        // arrives, never collected here.
        if let Framing::Length(n) = frame {
            if n <= limit && n as usize >= STREAM_ABOVE && head.method == "POST" {
                let req = Request {
                    method: head.method.clone(),
                    path: head.path.clone(),
                    query: head.query.clone(),
                    headers: head.headers.clone(),
                    body: Vec::new(),
                };
                if !handlers::write_served_here(ctx, &req) {
                    buf.drain(..head.len);
                    if expects_continue && buf.is_empty() {
                        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                        if !flush_out(&mut stream, &mut out).await {
                            return;
                        }
                    }
                    let mut body = crate::forward::Stream {
                        client: &mut stream,
                        buf: &mut buf,
                        len: n as usize,
                        deadline: Instant::now() + body_timeout,
                        taken: false,
                        complete: false,
                    };
                    let answer = handlers::forward_streaming(ctx, &req, &mut body).await;
                    let whole = body.complete;
                    let (resp, route) = answer.expect("a write path");
                    ctx.metrics.http_seconds[route].observe(started.elapsed().as_secs_f64());
                    if !whole {
                        // The rest of the body is unread: close.
                        close_with(&mut stream, &mut out, &resp, false, head.minor_version).await;
                        return;
                    }
                    keep_alive &= !ctx.draining.get();
                    encode_response(&mut out, &resp, false, keep_alive, head.minor_version);
                    if !keep_alive {
                        flush_out(&mut stream, &mut out).await;
                        return;
                    }
                    continue;
                }
            }
        }
        let body = match frame {
            Framing::None => {
                buf.drain(..head.len);
                Vec::new()
            }
            Framing::Length(n) if n > limit => {
                let r = Response::error(
                    413,
                    format!("request body of {n} bytes is larger than the limit of {limit} bytes"),
                );
                close_with(&mut stream, &mut out, &r, head_only, head.minor_version).await;
                return;
            }
            Framing::Length(n) => {
                let n = n as usize;
                let have = buf.len() - head.len;
                if have >= n {
                    let body = buf[head.len..head.len + n].to_vec();
                    buf.drain(..head.len + n);
                    body
                } else {
                    if expects_continue {
                        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                        if !flush_out(&mut stream, &mut out).await {
                            return;
                        }
                    }
                    // Read the rest straight into the body's own buffer.
                    let mut body = Vec::with_capacity(n);
                    body.extend_from_slice(&buf[head.len..]);
                    buf.clear();
                    let deadline = Instant::now() + body_timeout;
                    while body.len() < n {
                        let len = body.len();
                        let wait = deadline.saturating_duration_since(Instant::now());
                        let read = monoio::select! {
                            (res, b) = stream.read(body.slice_mut(len..n)) => Some((res, b.into_inner())),
                            _ = monoio::time::sleep(wait) => None,
                        };
                        match read {
                            Some((Ok(m), b)) if m > 0 => body = b,
                            Some(_) => return,
                            None => {
                                let r = Response::error(408, "request body not received in time");
                                close_with(
                                    &mut stream,
                                    &mut out,
                                    &r,
                                    head_only,
                                    head.minor_version,
                                )
                                .await;
                                return;
                            }
                        }
                    }
                    body
                }
            }
            Framing::Chunked => {
                if expects_continue && buf.len() == head.len {
                    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    if !flush_out(&mut stream, &mut out).await {
                        return;
                    }
                }
                let mut body = Vec::new();
                let mut dec = Chunked::default();
                let mut pos = head.len;
                let deadline = Instant::now() + body_timeout;
                loop {
                    match dec.step(&buf, &mut pos, &mut body, limit) {
                        Ok(ChunkStep::Done) => break,
                        Ok(ChunkStep::NeedMore) => {
                            buf.drain(..pos);
                            pos = 0;
                            match read_more(&mut stream, &mut buf, deadline, ctx, false).await {
                                Read::Data => {}
                                Read::Timeout => {
                                    let r =
                                        Response::error(408, "request body not received in time");
                                    close_with(
                                        &mut stream,
                                        &mut out,
                                        &r,
                                        head_only,
                                        head.minor_version,
                                    )
                                    .await;
                                    return;
                                }
                                _ => return,
                            }
                        }
                        Err(r) => {
                            close_with(&mut stream, &mut out, &r, head_only, head.minor_version)
                                .await;
                            return;
                        }
                    }
                }
                buf.drain(..pos);
                body
            }
        };
        let minor_version = head.minor_version;
        let req = Request {
            method: head.method,
            path: head.path,
            query: head.query,
            headers: head.headers,
            body,
        };
        let (resp, route) = if req.path.starts_with("/api/v1/query") && buf.is_empty() {
            // A query may run long: watch the socket meanwhile, and if the
            // client goes away, drop the handler, which cancels the query.
            let mut handler = std::pin::pin!(handlers::handle(ctx, req));
            let mut watching = true;
            loop {
                if !watching {
                    break handler.await;
                }
                let probe = Vec::with_capacity(4096);
                monoio::select! {
                    r = &mut handler => break r,
                    (res, b) = stream.read(probe) => match res {
                        Ok(n) if n > 0 => {
                            // A pipelined request: keep it, stop watching.
                            buf.extend_from_slice(&b);
                            watching = false;
                        }
                        _ => return,
                    },
                }
            }
        } else {
            handlers::handle(ctx, req).await
        };
        ctx.metrics.http_seconds[route].observe(started.elapsed().as_secs_f64());
        keep_alive &= !ctx.draining.get();
        encode_response(&mut out, &resp, head_only, keep_alive, minor_version);
        if !keep_alive {
            flush_out(&mut stream, &mut out).await;
            return;
        }
        // Keep-alive: loop; pipelined requests already in `buf` are parsed
        // before `out` is written.
        if out.len() > 256 << 10 && !flush_out(&mut stream, &mut out).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(input: &[u8], limit: u64) -> Result<Vec<u8>, u16> {
        let mut body = Vec::new();
        let mut d = Chunked::default();
        // Feed one byte at a time: every split point must work.
        let mut pos = 0;
        for end in 1..=input.len() {
            match d.step(&input[..end], &mut pos, &mut body, limit) {
                Ok(ChunkStep::Done) => return Ok(body),
                Ok(ChunkStep::NeedMore) => {}
                Err(r) => return Err(r.status),
            }
        }
        Err(0)
    }

    #[test]
    fn chunked_decoding() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n";
        assert_eq!(chunked(body, 100).unwrap(), b"hello world");
        assert_eq!(chunked(body, 8), Err(413));
        assert_eq!(chunked(b"zz\r\n", 100), Err(400));
        assert_eq!(chunked(b"5\r\nhelloXX", 100), Err(400));
        assert_eq!(chunked(b"0\r\n\r\n", 100).unwrap(), b"");
    }
}
