//! The routing forward path of a node (issue #13): a client's write, as
//! the HTTP server holds it, re-headed (`forward::encode_request`: the
//! chain sealed with HMAC-SHA256, hop-by-hop headers dropped, the body
//! passed through as received) and sent over the core's pooled keep-alive
//! connection to the upstream node (`forward::exchange`), whose answer is
//! read back. The upstream is a minimal HTTP/1.1 responder on 127.0.0.1
//! (it reads each whole request and answers 204), on the same monoio core,
//! so the bench measures the forwarding node's work plus loopback, not
//! ingest.
//!
//! Ids: `node_forward/<format>/rows=<N>`; one iteration is one request of
//! N TSBS cpu-only rows (tidemark-loadgen's generator); throughput counts
//! rows. `direct` ids send the same request bytes straight to the upstream
//! on a keep-alive connection (no re-heading, no pool), as the baseline.
//! After the criterion runs, every forwarded request's latency (all runs,
//! warm-up included) is printed as HdrHistogram percentiles.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hdrhistogram::Histogram;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use tidemark::control::state::NodeId;
use tidemark::forward::{self, Body, Pool};
use tidemark::http::Request;
use tidemark_benches::HOSTS;
use tidemark_loadgen::gen::{self, Generator, Schema};
use tidemark_shards::runtime::{self, DriverChoice};

/// 2026-01-01T00:00:00Z.
const START_NS: i64 = 1_767_225_600_000_000_000;

/// Answers every request on `conn` with 204 once it has all of it.
async fn respond(mut conn: TcpStream) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    loop {
        // The head, then the body it announces.
        let (head_len, body_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                break (n, len);
            }
            if !read_more(&mut conn, &mut buf).await {
                return;
            }
        };
        while buf.len() < head_len + body_len {
            if !read_more(&mut conn, &mut buf).await {
                return;
            }
        }
        buf.drain(..head_len + body_len);
        let (res, _) = conn
            .write_all(b"HTTP/1.1 204 No Content\r\nx-tidemark-writer-epoch: 1\r\n\r\n".to_vec())
            .await;
        if res.is_err() {
            return;
        }
    }
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let chunk = Vec::with_capacity(256 << 10);
    let (res, chunk) = conn.read(chunk).await;
    match res {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&chunk);
            true
        }
        _ => false,
    }
}

async fn upstream() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    monoio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let _ = c.set_nodelay(true);
            monoio::spawn(respond(c));
        }
    });
    addr
}

fn request(format: gen::Format, rows: usize) -> Request {
    let mut g = Generator::new(Schema::Cpu, HOSTS, START_NS, 10_000_000_000, 1);
    let body = gen::encode(format, &g.rows(rows));
    let (path, content_type) = match format {
        gen::Format::Lp => ("/api/v1/write/line-protocol", "text/plain"),
        _ => ("/api/v1/write/msgpack", "application/msgpack"),
    };
    Request {
        method: "POST".into(),
        path: path.into(),
        query: String::new(),
        headers: vec![
            ("host".into(), b"reader-2:8000".to_vec()),
            ("x-arc-database".into(), b"bench".to_vec()),
            ("content-type".into(), content_type.as_bytes().to_vec()),
            ("authorization".into(), b"Bearer 0123456789abcdef".to_vec()),
            ("content-length".into(), body.len().to_string().into_bytes()),
        ],
        body,
    }
}

fn bench(c: &mut Criterion) {
    let (mut rt, _) = runtime::build(DriverChoice::Auto, 1024).expect("runtime");
    let addr = rt.block_on(upstream());
    let pool = Rc::new(RefCell::new(Pool::default()));
    let mut reports = Vec::new();
    for (format, name) in [
        (gen::Format::Lp, "lp"),
        (gen::Format::MsgpackColumnar, "msgpack-columnar"),
    ] {
        for rows in [1_000usize, 5_000] {
            let req = request(format, rows);
            let hist = Rc::new(RefCell::new(
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
            ));
            let mut g = c.benchmark_group(format!("node_forward/{name}/rows={rows}"));
            g.throughput(Throughput::Elements(rows as u64));
            g.bench_function("forwarded", |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            let t = Instant::now();
                            let target = req.path.clone();
                            let auth = tidemark::routing::seal_chain(
                                b"cluster-secret",
                                1_767_225_600,
                                &req.method,
                                &target,
                                &[NodeId(2)],
                            );
                            let bytes = forward::encode_request(
                                &req,
                                &target,
                                &addr,
                                &[NodeId(2)],
                                &auth,
                                Some((&req.body, req.body.len())),
                            );
                            let resp = forward::exchange(
                                &pool,
                                Duration::from_secs(60),
                                &addr,
                                bytes,
                                &mut Body::Whole,
                            )
                            .await
                            .expect("forwarded");
                            assert_eq!(resp.status, 204);
                            hist.borrow_mut()
                                .record(t.elapsed().as_micros().max(1) as u64)
                                .expect("in range");
                        }
                        start.elapsed()
                    })
                })
            });
            // Baseline: the client's own bytes, straight to the upstream.
            let mut raw = format!(
                "POST {} HTTP/1.1\r\nHost: x\r\nx-arc-database: bench\r\nContent-Length: {}\r\n\r\n",
                req.path,
                req.body.len()
            )
            .into_bytes();
            raw.extend_from_slice(&req.body);
            g.bench_function("direct", |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let a: std::net::SocketAddr = addr.parse().expect("addr");
                        let mut conn = TcpStream::connect(a).await.expect("connect");
                        let _ = conn.set_nodelay(true);
                        let start = Instant::now();
                        for _ in 0..iters {
                            let (res, _) = conn.write_all(raw.clone()).await;
                            res.expect("sent");
                            let mut got = Vec::new();
                            while !got.ends_with(b"\r\n\r\n") {
                                let (res, chunk) = conn.read(Vec::with_capacity(256)).await;
                                assert!(res.expect("read") > 0);
                                got.extend_from_slice(&chunk);
                            }
                        }
                        start.elapsed()
                    })
                })
            });
            g.finish();
            reports.push((format!("node_forward/{name}/rows={rows}/forwarded"), hist));
        }
    }
    println!("\nper-request latency of the forwarded cases (HdrHistogram, all runs):");
    println!("| id | requests | p50 µs | p99 µs | p99.9 µs | max µs |");
    println!("|---|---|---|---|---|---|");
    for (id, h) in reports {
        let h = h.borrow();
        println!(
            "| {id} | {} | {} | {} | {} | {} |",
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
