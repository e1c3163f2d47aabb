//! http-compare: hyper 1.x over monoio poll-io vs a hand-written HTTP/1.1 loop on
//! `httparse` + monoio rent I/O. One IoUringDriver runtime pinned to CPU 0.
//!
//! Handler semantics (both modes): `POST /write` -> read the whole body
//! (Content-Length or chunked), count the b'\n' bytes, answer `204 No Content`
//! (keep-alive). Anything else -> `404` (body drained, keep-alive).
//!
//! Usage:
//!   http-compare --mode hyper|httparse [--port 8080]
//!                [--hyper-body frames|collect] [--hyper-timer SECS] [--max-body BYTES]

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static REQS: AtomicU64 = AtomicU64::new(0);
static LINES: AtomicU64 = AtomicU64::new(0);
static BODY_BYTES: AtomicU64 = AtomicU64::new(0);

#[inline]
fn count_lines(b: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', b).count()
}

#[inline]
fn record(lines: usize, body_bytes: usize) {
    REQS.fetch_add(1, Relaxed);
    LINES.fetch_add(lines as u64, Relaxed);
    BODY_BYTES.fetch_add(body_bytes as u64, Relaxed);
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Hyper,
    Httparse,
}

#[derive(Clone, Copy)]
struct Opts {
    mode: Mode,
    port: u16,
    collect: bool,
    hyper_timer: Option<u64>,
    /// hyper I/O adapter: false = monoio poll-io (`into_poll_io`), true = monoio-compat
    /// `StreamWrapper` (poll-style facade over io_uring ops with internal buffers).
    hyper_compat_io: bool,
    max_body: usize,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        mode: Mode::Httparse,
        port: 8080,
        collect: false,
        hyper_timer: None,
        hyper_compat_io: false,
        max_body: 64 << 20,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--mode" => {
                o.mode = match v.as_str() {
                    "hyper" => Mode::Hyper,
                    "httparse" => Mode::Httparse,
                    _ => panic!("--mode hyper|httparse"),
                }
            }
            "--port" => o.port = v.parse().expect("port"),
            "--hyper-body" => o.collect = v == "collect",
            "--hyper-io" => o.hyper_compat_io = v == "compat",
            "--hyper-timer" => o.hyper_timer = Some(v.parse().expect("secs")),
            "--max-body" => o.max_body = v.parse().expect("bytes"),
            a => panic!("unknown arg {a}"),
        }
        i += 2;
    }
    o
}

fn main() {
    let o = parse_args();
    monoio::utils::bind_to_cpu_set([0]).expect("bind cpu 0");
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(1024)
        .enable_timer()
        .build()
        .expect("io_uring runtime");
    rt.block_on(async move {
        let addr = format!("127.0.0.1:{}", o.port);
        let listener = monoio::net::TcpListener::bind(&addr).expect("bind");
        eprintln!(
            "http-compare pid={} mode={} listening on {addr}",
            std::process::id(),
            if o.mode == Mode::Hyper { "hyper" } else { "httparse" }
        );
        monoio::spawn(stats_task());
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            match o.mode {
                Mode::Hyper => {
                    monoio::spawn(hyper_mode::serve(stream, o));
                }
                Mode::Httparse => {
                    monoio::spawn(async move {
                        if let Err(e) = handwritten::serve(stream, o.max_body).await {
                            if e.kind() != std::io::ErrorKind::ConnectionReset {
                                eprintln!("conn: {e}");
                            }
                        }
                    });
                }
            }
        }
    });
}

/// Prints counters every 5 s when they changed (sanity check that bodies were fully read).
async fn stats_task() {
    let mut last = 0;
    loop {
        monoio::time::sleep(Duration::from_secs(5)).await;
        let r = REQS.load(Relaxed);
        if r != last {
            last = r;
            eprintln!(
                "stats: requests={r} lines={} body_bytes={}",
                LINES.load(Relaxed),
                BODY_BYTES.load(Relaxed)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// (a) hyper 1.x over monoio poll-io
// ---------------------------------------------------------------------------
mod hyper_mode {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Incoming;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Method, Request, Response, StatusCode};
    use monoio::io::IntoPollIo;
    use monoio_compat::hyper::{MonoioIo, MonoioTimer};

    fn too_large() -> Response<Empty<Bytes>> {
        let mut r = Response::new(Empty::new());
        *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
        r.headers_mut()
            .insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
        r
    }

    async fn handle(
        req: Request<Incoming>,
        collect: bool,
        max_body: usize,
    ) -> Result<Response<Empty<Bytes>>, hyper::Error> {
        let is_write = req.method() == Method::POST && req.uri().path() == "/write";
        let mut body = req.into_body();
        if is_write {
            // Content-Length known up front: answer 413 before reading any body byte.
            // (hyper then closes the connection because the body was not consumed.)
            if hyper::body::Body::size_hint(&body).lower() > max_body as u64 {
                return Ok(too_large());
            }
            let (lines, n) = if collect {
                let b = body.collect().await?.to_bytes();
                (count_lines(&b), b.len())
            } else {
                let (mut lines, mut n) = (0, 0);
                while let Some(f) = body.frame().await {
                    if let Some(d) = f?.data_ref() {
                        lines += count_lines(d);
                        n += d.len();
                        if n > max_body {
                            return Ok(too_large()); // chunked body over the limit
                        }
                    }
                }
                (lines, n)
            };
            record(lines, n);
            let mut r = Response::new(Empty::new());
            *r.status_mut() = StatusCode::NO_CONTENT;
            Ok(r)
        } else {
            // Drain so the connection can stay alive (same as the hand-written path).
            while let Some(f) = body.frame().await {
                f?;
            }
            let mut r = Response::new(Empty::new());
            *r.status_mut() = StatusCode::NOT_FOUND;
            Ok(r)
        }
    }

    pub async fn serve(stream: monoio::net::TcpStream, o: Opts) {
        if o.hyper_compat_io {
            let io = MonoioIo::new(monoio_compat::StreamWrapper::new(stream));
            return serve_io(io, o).await;
        }
        // monoio `poll-io`: turn the completion-based stream into a readiness-based one
        // (tokio::io::AsyncRead/AsyncWrite), then adapt to hyper::rt::{Read, Write}.
        let io = match stream.into_poll_io() {
            Ok(s) => MonoioIo::new(s),
            Err(e) => {
                eprintln!("into_poll_io: {e}");
                return;
            }
        };
        serve_io(io, o).await
    }

    async fn serve_io<I>(io: I, o: Opts)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    {
        let (collect, max_body) = (o.collect, o.max_body);
        let mut b = http1::Builder::new();
        b.keep_alive(true).pipeline_flush(true);
        if let Some(secs) = o.hyper_timer {
            b.timer(MonoioTimer)
                .header_read_timeout(Duration::from_secs(secs));
        }
        let svc = service_fn(move |req| handle(req, collect, max_body));
        if let Err(e) = b.serve_connection(io, svc).await {
            if !e.is_incomplete_message() {
                eprintln!("hyper conn: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// (b) hand-written HTTP/1.1 on httparse + monoio rent I/O
// ---------------------------------------------------------------------------
mod handwritten {
    use super::*;
    use monoio::buf::IoBufMut;
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

    const MAX_HEADERS: usize = 32;
    const MAX_HEAD: usize = 64 * 1024;
    const INITIAL_BUF: usize = 64 * 1024;
    const MIN_READ: usize = 16 * 1024;

    #[derive(Clone, Copy)]
    enum Resp {
        NoContent,
        NotFound,
        BadRequest,
        PayloadTooLarge,
        HeaderTooLarge,
    }

    enum Parsed {
        /// A full request (head + body) is in the buffer.
        Done { consumed: usize, resp: Resp, close: bool },
        /// Need more bytes; `total` = bytes needed for the whole request if known.
        Need { total: Option<usize>, expect_continue: bool },
        /// Protocol error / limit hit: answer and close.
        Fail(Resp),
    }

    thread_local! {
        static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }

    /// Cached IMF-fixdate, refreshed at most once per second (like hyper's CachedDate).
    fn push_date(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        DATE.with(|d| {
            let mut d = d.borrow_mut();
            if d.0 != secs {
                let s = httpdate::fmt_http_date(now);
                d.1.copy_from_slice(s.as_bytes());
                d.0 = secs;
            }
            out.extend_from_slice(b"date: ");
            out.extend_from_slice(&d.1);
            out.extend_from_slice(b"\r\n");
        });
    }

    fn push_resp(out: &mut Vec<u8>, r: Resp, close: bool) {
        out.extend_from_slice(match r {
            Resp::NoContent => b"HTTP/1.1 204 No Content\r\n" as &[u8],
            Resp::NotFound => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n",
            Resp::BadRequest => b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            Resp::PayloadTooLarge => b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n",
            Resp::HeaderTooLarge => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
            }
        });
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }

    fn parse_usize(v: &[u8]) -> Option<usize> {
        if v.is_empty() || v.len() > 19 {
            return None;
        }
        let mut n: usize = 0;
        for &c in v {
            if !c.is_ascii_digit() {
                return None;
            }
            n = n * 10 + (c - b'0') as usize;
        }
        Some(n)
    }

    fn trim(v: &[u8]) -> &[u8] {
        let s = v.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(v.len());
        let e = v.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(s, |e| e + 1);
        &v[s..e]
    }

    fn has_token(v: &[u8], tok: &[u8]) -> bool {
        v.split(|&c| c == b',').any(|t| trim(t).eq_ignore_ascii_case(tok))
    }

    /// Chunked body: Ok(Some((consumed, lines, data_len))) when complete, Ok(None) if
    /// more bytes are needed, Err(resp) on malformed input / over the limit.
    fn decode_chunked(b: &[u8], max_body: usize) -> Result<Option<(usize, usize, usize)>, Resp> {
        let (mut p, mut lines, mut total) = (0usize, 0usize, 0usize);
        loop {
            let Some(e) = memchr::memchr(b'\n', &b[p..]) else {
                return if b.len() - p > 1024 { Err(Resp::BadRequest) } else { Ok(None) };
            };
            let mut line = &b[p..p + e];
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            let size_part = match memchr::memchr(b';', line) {
                Some(i) => &line[..i],
                None => line,
            };
            let size_part = trim(size_part);
            if size_part.is_empty() || size_part.len() > 15 {
                return Err(Resp::BadRequest);
            }
            let mut size = 0usize;
            for &c in size_part {
                let d = match c {
                    b'0'..=b'9' => c - b'0',
                    b'a'..=b'f' => c - b'a' + 10,
                    b'A'..=b'F' => c - b'A' + 10,
                    _ => return Err(Resp::BadRequest),
                };
                size = size * 16 + d as usize;
            }
            p += e + 1;
            if size == 0 {
                // trailer section, terminated by an empty line
                loop {
                    let Some(e) = memchr::memchr(b'\n', &b[p..]) else {
                        return if b.len() - p > MAX_HEAD { Err(Resp::HeaderTooLarge) } else { Ok(None) };
                    };
                    let l = &b[p..p + e];
                    p += e + 1;
                    if l.is_empty() || l == b"\r" {
                        return Ok(Some((p, lines, total)));
                    }
                }
            }
            total += size;
            if total > max_body {
                return Err(Resp::PayloadTooLarge);
            }
            if b.len() < p + size + 2 {
                return Ok(None);
            }
            lines += count_lines(&b[p..p + size]);
            p += size;
            if &b[p..p + 2] != b"\r\n" {
                return Err(Resp::BadRequest);
            }
            p += 2;
        }
    }

    fn parse_one(buf: &[u8], max_body: usize) -> Parsed {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                return if buf.len() > MAX_HEAD {
                    Parsed::Fail(Resp::HeaderTooLarge)
                } else {
                    Parsed::Need { total: None, expect_continue: false }
                };
            }
            Err(httparse::Error::TooManyHeaders) => return Parsed::Fail(Resp::HeaderTooLarge),
            Err(_) => return Parsed::Fail(Resp::BadRequest),
        };
        let http10 = req.version == Some(0);
        let mut close = http10;
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        let mut expect_continue = false;
        for h in req.headers.iter() {
            let n = h.name.as_bytes();
            if n.eq_ignore_ascii_case(b"content-length") {
                let Some(v) = parse_usize(trim(h.value)) else {
                    return Parsed::Fail(Resp::BadRequest);
                };
                if content_length.is_some_and(|c| c != v) {
                    return Parsed::Fail(Resp::BadRequest);
                }
                content_length = Some(v);
            } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
                // only "chunked" (as the final coding) is supported
                let v = trim(h.value);
                let last = v.rsplit(|&c| c == b',').next().map(trim).unwrap_or(b"");
                if !last.eq_ignore_ascii_case(b"chunked") || !trim(&v[..v.len() - last.len()]).is_empty() {
                    return Parsed::Fail(Resp::BadRequest);
                }
                chunked = true;
            } else if n.eq_ignore_ascii_case(b"connection") {
                if has_token(h.value, b"close") {
                    close = true;
                } else if http10 && has_token(h.value, b"keep-alive") {
                    close = false;
                }
            } else if n.eq_ignore_ascii_case(b"expect") {
                expect_continue = has_token(h.value, b"100-continue");
            }
        }
        if chunked && content_length.is_some() {
            return Parsed::Fail(Resp::BadRequest); // request smuggling guard
        }
        let path = req.path.unwrap_or("");
        let path = path.split('?').next().unwrap_or("");
        let is_write = req.method == Some("POST") && path == "/write";
        let resp = if is_write { Resp::NoContent } else { Resp::NotFound };

        let body = &buf[head_len..];
        if chunked {
            match decode_chunked(body, max_body) {
                Ok(Some((consumed, lines, n))) => {
                    if is_write {
                        record(lines, n);
                    }
                    Parsed::Done { consumed: head_len + consumed, resp, close }
                }
                Ok(None) => Parsed::Need { total: None, expect_continue },
                Err(r) => Parsed::Fail(r),
            }
        } else {
            let cl = content_length.unwrap_or(0);
            if cl > max_body {
                // answered before reading any of the body
                return Parsed::Fail(Resp::PayloadTooLarge);
            }
            if body.len() < cl {
                return Parsed::Need { total: Some(head_len + cl), expect_continue };
            }
            if is_write {
                record(count_lines(&body[..cl]), cl);
            }
            Parsed::Done { consumed: head_len + cl, resp, close }
        }
    }

    pub async fn serve(mut s: monoio::net::TcpStream, max_body: usize) -> std::io::Result<()> {
        let mut buf: Vec<u8> = Vec::with_capacity(INITIAL_BUF);
        let mut out: Vec<u8> = Vec::with_capacity(4096);
        let mut continue_sent = false;
        loop {
            // 1. answer every complete request already buffered (pipelining), in order
            let mut pos = 0;
            let mut close = false;
            let mut need_total: Option<usize> = None;
            loop {
                match parse_one(&buf[pos..], max_body) {
                    Parsed::Done { consumed, resp, close: c } => {
                        pos += consumed;
                        continue_sent = false;
                        push_resp(&mut out, resp, c);
                        if c {
                            close = true;
                            break;
                        }
                        if pos == buf.len() {
                            break;
                        }
                    }
                    Parsed::Need { total, expect_continue } => {
                        need_total = total;
                        if expect_continue && !continue_sent {
                            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                            continue_sent = true;
                        }
                        break;
                    }
                    Parsed::Fail(r) => {
                        push_resp(&mut out, r, true);
                        close = true;
                        break;
                    }
                }
            }
            // 2. one write for the whole batch
            if !out.is_empty() {
                let (r, o) = s.write_all(out).await;
                out = o;
                r?;
                out.clear();
            }
            if close {
                return Ok(());
            }
            // 3. compact the unconsumed tail to the front of the reusable buffer
            if pos > 0 {
                let len = buf.len();
                buf.copy_within(pos..len, 0);
                buf.truncate(len - pos);
            }
            // 4. make room: the whole request if its size is known, else at least MIN_READ
            let want = need_total.unwrap_or(0).max(buf.len() + MIN_READ);
            if buf.capacity() < want {
                buf.reserve(want - buf.len());
            }
            let len = buf.len();
            let (r, b) = s.read(buf.slice_mut(len..)).await;
            buf = b.into_inner();
            if r? == 0 {
                return Ok(());
            }
        }
    }
}
