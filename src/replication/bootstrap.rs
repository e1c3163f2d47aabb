//! Bootstrap: a reader whose next entry is gone from the writer's WAL takes
//! the writer's flushed Parquet files for that shard instead, then streams
//! from the writer's watermark.
//!
//! The writer serves `GET /api/v1/replication/manifest?shard=N` (the shard's
//! files and watermark, read together) and `GET
//! /api/v1/replication/file?path=P` (one file), authenticated by an
//! `x-tidemark-replication` header: a timestamp and an HMAC of the request
//! with the cluster secret (the secret never crosses the wire).
//!
//! The reader, on a helper thread, fetches the list, downloads every file,
//! checks its size and SHA-256, and puts it in its own store (fsynced) under
//! `<writer name>-b<watermark>.parquet`, so it never collides with a file of
//! its own. Back on its core it commits one manifest record that replaces
//! the shard's files and sets its watermark to the writer's, deletes its own
//! old files, and restarts the shard's WAL and buffer after the watermark.
//! A crash before the commit leaves orphan files (removed at start-up) and
//! the reader where it was; after it, the reader resumes from the watermark.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tidemark_shards::flush::FileStore;
use tidemark_shards::manifest::FileMeta;
use tidemark_shards::replication::protocol::{check_http_auth, http_auth};
use tidemark_shards::shard::Shard;
use tidemark_shards::{ShardId, TableKey, WalSeq};

use crate::context::CoreCtx;
use crate::http::{Request, Response};

/// Allowed clock difference between reader and writer, in seconds.
const CLOCK_SKEW_SECS: u64 = 300;
const HEADER: &str = "x-tidemark-replication";

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the writer's manifest endpoint returns.
#[derive(Debug, Serialize, Deserialize)]
struct ShardFiles {
    shard: ShardId,
    flushed_seq: WalSeq,
    files: Vec<FileMeta>,
}

/// Writer: `GET /api/v1/replication/manifest` and `/api/v1/replication/file`.
pub fn serve(ctx: &CoreCtx, req: &Request) -> Response {
    let node = &ctx.node;
    if node.config.cluster.secret.is_empty() {
        return Response::error(
            404,
            "this node serves no replication files (no cluster.secret)",
        );
    }
    let target = if req.query.is_empty() {
        req.path.clone()
    } else {
        format!("{}?{}", req.path, req.query)
    };
    let authed = req.header(HEADER).is_some_and(|h| {
        check_http_auth(
            node.config.cluster.secret.as_bytes(),
            h,
            &target,
            unix_secs(),
            CLOCK_SKEW_SECS,
        )
    });
    if !authed {
        return Response::error(
            401,
            format!("{HEADER} is missing, too old, or not made with this cluster's secret"),
        );
    }
    match req.path.as_str() {
        "/api/v1/replication/manifest" => {
            let Some(shard) = req.query_param("shard").and_then(|s| s.parse::<u32>().ok()) else {
                return Response::error(400, "shard: expected a shard number");
            };
            let (files, flushed_seq) = node.manifest.shard_files(ShardId(shard));
            Response::json(
                200,
                &serde_json::to_value(ShardFiles {
                    shard: ShardId(shard),
                    flushed_seq,
                    files,
                })
                .expect("file lists serialize"),
            )
        }
        _ => {
            let Some(path) = req.query_param("path") else {
                return Response::error(400, "path: expected a file path");
            };
            // Only files the manifest lists: no path outside the store.
            if !node.manifest.contains(&path) {
                return Response::error(404, format!("{path}: not a file of this node"));
            }
            match node.store.get(&path) {
                Ok(bytes) => Response {
                    status: 200,
                    headers: vec![("Content-Type", "application/vnd.apache.parquet".into())],
                    body: bytes.to_vec(),
                },
                Err(e) => Response::error(500, format!("{path}: {e}")),
            }
        }
    }
}

/// One GET to the writer, authenticated; the body of a 200.
fn get(addr: SocketAddr, secret: &[u8], target: &str) -> Result<Vec<u8>, String> {
    let err = |e: std::io::Error| format!("GET http://{addr}{target}: {e}");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(err)?;
    let auth = http_auth(secret, unix_secs(), target);
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{HEADER}: {auth}\r\n\r\n"
    )
    .map_err(err)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(err)?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("GET http://{addr}{target}: no HTTP response head"))?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status = head.split(' ').nth(1).unwrap_or("");
    let body = raw[end + 4..].to_vec();
    if status != "200" {
        return Err(format!(
            "GET http://{addr}{target}: status {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .ok_or_else(|| format!("GET http://{addr}{target}: no Content-Length"))?;
    if body.len() != len {
        return Err(format!(
            "GET http://{addr}{target}: body cut at {} of {len} bytes",
            body.len()
        ));
    }
    Ok(body)
}

/// The path a bootstrapped file gets in the reader's store.
fn local_path(writer_path: &str, flushed: WalSeq) -> String {
    let stem = writer_path.strip_suffix(".parquet").unwrap_or(writer_path);
    format!("{stem}-b{:020}.parquet", flushed.0)
}

/// Fetches shard `shard`'s files from the writer at `addr` into `store`,
/// checked against their SHA-256. Blocking. Returns the writer's watermark
/// and the files' metadata under their local paths.
fn fetch(
    addr: SocketAddr,
    secret: &[u8],
    shard: ShardId,
    store: &FileStore,
    have: &[FileMeta],
) -> Result<(WalSeq, Vec<FileMeta>), String> {
    let list = get(
        addr,
        secret,
        &format!("/api/v1/replication/manifest?shard={shard}"),
    )?;
    let list: ShardFiles =
        serde_json::from_slice(&list).map_err(|e| format!("writer's file list: {e}"))?;
    let mut out = Vec::with_capacity(list.files.len());
    for f in list.files {
        let mut local = f.clone();
        local.path = local_path(&f.path, list.flushed_seq);
        if have
            .iter()
            .any(|h| h.path == local.path && h.sha256 == f.sha256)
        {
            out.push(local);
            continue;
        }
        let target: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("path", &f.path)
            .finish();
        let bytes = get(addr, secret, &format!("/api/v1/replication/file?{target}"))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        if bytes.len() as u64 != f.size || sha != f.sha256 {
            return Err(format!(
                "{}: got {} bytes with SHA-256 {sha}, the writer's manifest says {} bytes with {}",
                f.path,
                bytes.len(),
                f.size,
                f.sha256
            ));
        }
        store
            .put(&local.path, Bytes::from(bytes))
            .map_err(|e| e.to_string())?;
        out.push(local);
    }
    Ok((list.flushed_seq, out))
}

/// Bootstraps `shard` from the writer whose HTTP address is `http_addr`
/// (an unspecified IP means the replication address's). Returns the new
/// watermark.
pub async fn run(ctx: &Rc<CoreCtx>, shard: &Shard, http_addr: &str) -> Result<WalSeq, String> {
    let node = &ctx.node;
    let mut addr: SocketAddr = http_addr
        .parse()
        .map_err(|_| format!("the writer's HTTP address {http_addr:?} is not an address"))?;
    if addr.ip().is_unspecified() {
        let base = if node.config.in_cluster() {
            node.control
                .view()
                .primary_replication()
                .map(|p| p.1)
                .unwrap_or_default()
        } else {
            node.config.replication.writer_addr.clone()
        };
        let repl: SocketAddr = base
            .parse()
            .map_err(|_| format!("the writer's replication address {base:?} is not an address"))?;
        addr.set_ip(repl.ip());
    }
    let id = shard.id();
    let (have, _) = node.manifest.shard_files(id);
    let secret = node.config.cluster.secret.clone().into_bytes();
    let store = node.store.clone();
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("tidemark-bootstrap-{id}"))
        .spawn(move || {
            let _ = tx.send(fetch(addr, &secret, id, &store, &have));
        })
        .map_err(|e| format!("cannot start the bootstrap thread: {e}"))?;
    let (upto, files) = rx
        .await
        .map_err(|_| "the bootstrap thread died".to_string())??;
    // The writer's schemas first, so the catalog agrees with the files.
    for f in &files {
        if let Ok(table) = TableKey::new(&f.database, &f.measurement) {
            let fields: Vec<_> = f.columns.iter().map(|(n, k)| k.field(n)).collect();
            if let Err(e) = node
                .catalog
                .merge(&table, &arrow_schema::Schema::new(fields))
            {
                return Err(format!("{}: {e}", f.path));
            }
        }
    }
    let count = files.len();
    let removed = node
        .manifest
        .commit_replace(id, upto, files)
        .map_err(|e| e.to_string())?;
    shard.restart_at(upto).await.map_err(|e| e.to_string())?;
    // Deleted once no running query reads them (a failed delete is logged;
    // the file is an orphan removed at the next start).
    node.manifest.retire(&removed);
    tracing::info!(shard = %id, %upto, files = count, replaced = removed.len(), "bootstrapped from the writer's files");
    Ok(upto)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrapped_files_get_their_own_names() {
        assert_eq!(
            local_path(
                "db/m/2026/01/01/00/000-00000000000000000005.parquet",
                WalSeq(9)
            ),
            "db/m/2026/01/01/00/000-00000000000000000005-b00000000000000000009.parquet"
        );
    }
}
