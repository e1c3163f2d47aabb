//! Test harness: starts the real `tidemark` binary on 127.0.0.1 with a free
//! port and a temporary data directory, and speaks raw HTTP/1.1 to it.
#![allow(dead_code, clippy::unwrap_used)]

pub mod cluster;
pub mod oracle;
pub mod proxy;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampNanosecondType};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running node. Killed (SIGKILL) when dropped.
pub struct Node {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
    log: PathBuf,
}

impl Node {
    /// Starts a node on `dir` with `extra` flags and waits until it is ready.
    pub fn start(dir: &Path, extra: &[&str]) -> Node {
        Node::start_with_env(dir, extra, &[])
    }

    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Node {
        let mut node = Node::launch(dir, extra, env);
        node.wait_ready();
        node
    }

    /// Starts a node without waiting for it to be ready.
    pub fn launch(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Node {
        let mut node = Node {
            child: None,
            port: free_port(),
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: dir.join(format!("node-{}.log", free_port())),
        };
        node.spawn();
        node
    }

    /// Waits for the process to exit (up to `timeout`) and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.as_mut()?.try_wait().unwrap() {
                self.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts the process again (after kill9 or an exit), without waiting.
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "the node is still running");
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemark"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", self.port));
        if !self.extra.iter().any(|a| a == "--shard-cores") {
            cmd.arg("--shard-cores").arg("2");
        }
        cmd.args(&self.extra)
            .env_remove("TIDEMARK_LOG")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("node exited early ({status}):\n{}", self.log());
            }
            if let Ok(r) = try_request(self.port, "GET", "/ready", &[], b"") {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node not ready in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGSTOP: the process stops, its sockets stay open.
    pub fn pause(&self) {
        let c = self.child.as_ref().unwrap();
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
    }

    /// SIGCONT after [`Node::pause`].
    pub fn resume(&self) {
        let c = self.child.as_ref().unwrap();
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_mut().unwrap();
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = c.wait().unwrap();
        self.child = None;
        status
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready();
    }

    pub fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        try_request(self.port, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} on port {}: {e}", self.port))
    }

    /// The sum of metric `name` over all its label sets (0 when absent).
    pub fn metric_sum(&self, name: &str) -> f64 {
        let text = self.req("GET", "/metrics", &[], b"").text();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn write_lp(&self, db: &str, body: &str) -> Resp {
        self.req("POST", &format!("/write?db={db}"), &[], body.as_bytes())
    }

    pub fn flush(&self) {
        let r = self.req("POST", "/api/v1/flush", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// Every row of `db.measurement` in the node's Parquet files (flush first).
    pub fn parquet_rows(&self, db: &str, measurement: &str) -> Vec<RecordBatch> {
        let root = self.dir.join("data/parquet").join(db).join(measurement);
        let mut out = Vec::new();
        for p in files_under(&root) {
            if p.extension().is_some_and(|x| x == "parquet") {
                let f = std::fs::File::open(&p).unwrap();
                let r = ParquetRecordBatchReaderBuilder::try_new(f)
                    .unwrap()
                    .build()
                    .unwrap();
                out.extend(r.map(|b| b.unwrap()));
            }
        }
        out
    }

    /// `PUT /api/v1/databases/{db}/retention` with `body`.
    pub fn put_retention(&self, db: &str, body: &str) -> Resp {
        let path = format!("/api/v1/databases/{db}/retention");
        self.req("PUT", &path, &[], body.as_bytes())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        // A failing test shows what its nodes said (the last lines).
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(150)..];
            eprintln!(
                "--- the log of the node on port {} ({} of {} lines):\n{}\n---",
                self.port,
                tail.len(),
                lines.len(),
                tail.join("\n")
            );
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.text()))
    }
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// One request on a new connection (`Connection: close`).
pub fn try_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    try_request_within(port, method, path, headers, body, Duration::from_secs(60))
}

/// [`try_request`] that gives up after `timeout` (connect, and each read).
pub fn try_request_within(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Resp> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && *v == "chunked");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    if !chunked {
        req += &format!("Content-Length: {}\r\n", body.len());
    }
    req += "\r\n";
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_responses(&raw)
        .into_iter()
        .next()
        .ok_or_else(|| std::io::Error::other("no response"))
}

/// Parses consecutive HTTP responses from `raw`.
pub fn parse_responses(raw: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            break;
        };
        let head = std::str::from_utf8(&rest[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .map_or(0, |v| v.parse().unwrap());
        let body = rest[end + 4..end + 4 + len].to_vec();
        rest = &rest[end + 4 + len..];
        if status == 100 {
            continue;
        }
        out.push(Resp {
            status,
            headers,
            body,
        });
    }
    out
}

/// (time, host, id) of rows of test measurements: `host` a tag, `id` an
/// integer field, `v` a float field.
pub fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    let mut out = Vec::new();
    for b in batches {
        let id = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.push(id.value(i));
        }
    }
    out.sort();
    out
}

pub fn count_rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

pub fn column_f64(batches: &[RecordBatch], name: &str) -> Vec<Option<f64>> {
    batches
        .iter()
        .flat_map(|b| {
            let c = b
                .column_by_name(name)
                .unwrap()
                .as_primitive::<Float64Type>()
                .clone();
            (0..c.len())
                .map(move |i| c.is_valid(i).then(|| c.value(i)))
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn tags(batches: &[RecordBatch], name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let d = b.column_by_name(name).unwrap().as_dictionary::<Int32Type>();
        let vals = d.values().as_string::<i32>();
        for i in 0..b.num_rows() {
            out.push(vals.value(d.keys().value(i) as usize).to_string());
        }
    }
    out
}

pub fn times(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            let t = b
                .column_by_name("time")
                .unwrap()
                .as_primitive::<TimestampNanosecondType>()
                .clone();
            (0..t.len()).map(move |i| t.value(i)).collect::<Vec<_>>()
        })
        .collect()
}

/// `data` gzip-compressed (a request body with `Content-Encoding: gzip`).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An Arc MessagePack columnar body for measurement `m`: rows `first ..
/// first + n` with time (ms) 1_700_000_000_000 + i, tag `host` = `h{i % 3}`,
/// fields `id` = i and `v` = i + 0.5.
pub fn mp_columnar(first: i64, n: i64) -> Vec<u8> {
    use rmp::encode::*;
    let mut out = Vec::new();
    write_map_len(&mut out, 2).unwrap();
    write_str(&mut out, "m").unwrap();
    write_str(&mut out, "m").unwrap();
    write_str(&mut out, "columns").unwrap();
    write_map_len(&mut out, 4).unwrap();
    write_str(&mut out, "time").unwrap();
    write_array_len(&mut out, n as u32).unwrap();
    for i in first..first + n {
        write_sint(&mut out, 1_700_000_000_000 + i).unwrap(); // milliseconds
    }
    write_str(&mut out, "host").unwrap();
    write_array_len(&mut out, n as u32).unwrap();
    for i in first..first + n {
        write_str(&mut out, &format!("h{}", i % 3)).unwrap();
    }
    write_str(&mut out, "id").unwrap();
    write_array_len(&mut out, n as u32).unwrap();
    for i in first..first + n {
        write_sint(&mut out, i).unwrap();
    }
    write_str(&mut out, "v").unwrap();
    write_array_len(&mut out, n as u32).unwrap();
    for i in first..first + n {
        write_f64(&mut out, i as f64 + 0.5).unwrap();
    }
    out
}

/// A file the manifest lists: its rows, SHA-256 and hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub rows: u64,
    pub sha256: String,
    pub hour: i64,
}

/// The files `manifest.log` of a stopped node lists, replayed here from the
/// record format (`len u32 | crc32c u32 | JSON`), independently of the
/// node's own reader. A torn last record is ignored.
pub fn manifest_files(node_dir: &Path) -> BTreeMap<String, Listed> {
    let data = std::fs::read(node_dir.join("data/manifest/manifest.log")).unwrap_or_default();
    let mut files = BTreeMap::new();
    let mut off = 0;
    while off + 8 <= data.len() {
        let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
        let Some(body) = data.get(off + 8..off + 8 + len) else {
            break;
        };
        let rec: serde_json::Value = serde_json::from_slice(body).unwrap();
        for p in rec["removed"].as_array().into_iter().flatten() {
            files.remove(p.as_str().unwrap());
        }
        for f in rec["files"].as_array().into_iter().flatten() {
            files.insert(
                f["path"].as_str().unwrap().to_string(),
                Listed {
                    rows: f["rows"].as_u64().unwrap(),
                    sha256: f["sha256"].as_str().unwrap().to_string(),
                    hour: f["hour"].as_i64().unwrap(),
                },
            );
        }
        off += 8 + len;
    }
    files
}

/// Every file under `root` (none if it does not exist).
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Every file under the node's store, relative to it, with its SHA-256.
pub fn stored_files(node_dir: &Path) -> BTreeMap<String, String> {
    use sha2::Digest;
    let root = node_dir.join("data/parquet");
    files_under(&root)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap().to_str().unwrap().to_string();
            (
                rel,
                hex::encode(sha2::Sha256::digest(std::fs::read(&p).unwrap())),
            )
        })
        .collect()
}

/// A CA and a certificate it signed for 127.0.0.1, as PEM files.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes a new [`Pki`] named `name` under `dir`.
pub fn pki(dir: &Path, name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // OpenSSL (psql) wants a named issuer and a CA allowed to sign.
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("tidemark test CA {name}"),
    );
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let p = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&p.ca, ca.pem()).unwrap();
    std::fs::write(&p.cert, cert.pem()).unwrap();
    std::fs::write(&p.key, key.serialize_pem()).unwrap();
    p
}

/// Runs the Python script `tests/<script>` with `request` (JSON) on its
/// stdin and returns the JSON it prints; `needs` names what it imports
/// (scripts/test.sh installs it).
pub fn python_client(script: &str, needs: &str, request: &serde_json::Value) -> serde_json::Value {
    python_script(script, &[], needs, request)
}

/// [`python_client`] with command-line arguments for the script.
pub fn python_script(
    script: &str,
    args: &[&std::ffi::OsStr],
    needs: &str,
    request: &serde_json::Value,
) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let mut child = Command::new("python3")
        .arg(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 with {needs} (scripts/test.sh installs it): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
