//! monoio 0.2.4 (IoUringDriver): WAL sinks, TCP server, and the shared TCP client.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::fs::{File, OpenOptions};
use monoio::io::{AsyncReadRent, AsyncReadRentExt, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use monoio::{IoUringDriver, RuntimeBuilder};

use crate::common::*;
use crate::group_commit::{GroupCommit, Sink};

/// Build a pinned io_uring runtime on `cpu` and run `f` on it (blocking).
pub fn run_pinned<F, Fut, T>(cpu: usize, f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        monoio::utils::bind_to_cpu_set(Some(cpu)).expect("pin");
        let mut rt = RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(1024)
            .build()
            .expect("monoio io_uring runtime");
        rt.block_on(f())
    })
    .join()
    .expect("monoio thread panicked")
}

// ---------- WAL ----------

struct BufferedSink {
    file: File,
}

impl Sink for BufferedSink {
    async fn commit(&self, data: Vec<u8>, offset: u64, sync: bool) -> io::Result<Option<Vec<u8>>> {
        let (res, buf) = self.file.write_all_at(data, offset).await;
        res?;
        if sync {
            self.file.sync_data().await?;
        }
        Ok(Some(buf))
    }
}

/// 4 KiB-aligned heap buffer usable as a monoio owned IO buffer (for O_DIRECT).
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
    layout: Layout,
}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(BLOCK), BLOCK).unwrap();
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Self { ptr, len, layout }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

unsafe impl monoio::buf::IoBuf for AlignedBuf {
    fn read_ptr(&self) -> *const u8 {
        self.ptr
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

struct DirectSink {
    file: File,
    tail: TailBlock,
}

impl Sink for DirectSink {
    async fn commit(&self, data: Vec<u8>, offset: u64, sync: bool) -> io::Result<Option<Vec<u8>>> {
        let (aligned_off, padded, combined) = self.tail.prepare(&data, offset);
        let mut buf = AlignedBuf::zeroed(padded);
        buf.as_mut_slice()[..combined.len()].copy_from_slice(&combined);
        let (res, _buf) = self.file.write_all_at(buf, aligned_off).await;
        res?;
        self.tail.advance(&combined);
        if sync {
            self.file.sync_data().await?;
        }
        Ok(Some(data))
    }
}

pub fn wal(case: WalCase, path: &Path) -> io::Result<WalResult> {
    let path = path.to_owned();
    run_pinned(0, move || async move {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        if case.mode == FileMode::Direct {
            use std::os::unix::fs::OpenOptionsExt;
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts.open(&path).await?;
        let gc = Rc::new(GroupCommit::new(case.handoff));
        let cpu0 = thread_cpu();
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(case.secs);
        match case.mode {
            FileMode::Buffered => drive(case, gc.clone(), Rc::new(BufferedSink { file }), deadline).await?,
            FileMode::Direct => drive(case, gc.clone(), Rc::new(DirectSink { file, tail: TailBlock::default() }), deadline).await?,
        }
        let elapsed = start.elapsed();
        let cpu = thread_cpu() - cpu0;
        let s = gc.stats();
        Ok(WalResult { appends: s.appends, commits: s.commits, bytes: s.bytes, elapsed, cpu })
    })
}

async fn drive<S: Sink + 'static>(case: WalCase, gc: Rc<GroupCommit>, sink: Rc<S>, deadline: Instant) -> io::Result<()> {
    let mut handles = Vec::new();
    for t in 0..case.tasks {
        let (gc, sink) = (gc.clone(), sink.clone());
        handles.push(monoio::spawn(async move {
            let entry = vec![(t as u8) | 1; case.entry];
            while Instant::now() < deadline {
                gc.append(&*sink, &entry, case.sync).await?;
            }
            Ok::<_, io::Error>(())
        }));
    }
    for h in handles {
        h.await?;
    }
    Ok(())
}

// ---------- TCP server ----------

/// Accept `conns` connections; each either answers 4 KiB requests with 16 B
/// replies (`bulk == false`) or reads and discards until EOF (`bulk == true`).
pub fn tcp_server(conns: usize, bulk: bool, port_tx: std::sync::mpsc::Sender<u16>) -> ServerResult {
    run_pinned(0, move || async move {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        port_tx.send(listener.local_addr().unwrap().port()).unwrap();
        let cpu0 = thread_cpu();
        let mut handles = Vec::new();
        for _ in 0..conns {
            let (stream, _peer) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).unwrap();
            handles.push(monoio::spawn(serve_conn(stream, bulk)));
        }
        let mut r = ServerResult::default();
        for h in handles {
            let (reqs, bytes) = h.await;
            r.requests += reqs;
            r.bytes += bytes;
        }
        r.cpu = thread_cpu() - cpu0;
        r
    })
}

async fn serve_conn(mut stream: TcpStream, bulk: bool) -> (u64, u64) {
    let (mut reqs, mut bytes) = (0u64, 0u64);
    if bulk {
        let mut buf = Vec::with_capacity(BULK_CHUNK);
        loop {
            let (res, b) = stream.read(buf).await;
            buf = b;
            match res {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes += n as u64,
            }
        }
    } else {
        let mut req = vec![0u8; REQ_SIZE];
        let mut resp = vec![7u8; RESP_SIZE];
        loop {
            let (res, b) = stream.read_exact(req).await;
            req = b;
            if res.is_err() {
                break; // EOF: client is done
            }
            let (res, b) = stream.write_all(resp).await;
            resp = b;
            if res.is_err() {
                break;
            }
            reqs += 1;
            bytes += REQ_SIZE as u64;
        }
    }
    (reqs, bytes)
}

// ---------- TCP client (used against BOTH servers) ----------

#[derive(Debug, Clone, Copy, Default)]
pub struct ClientResult {
    pub requests: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub cpu: Duration,
}

/// monoio io_uring client pinned to CPU 1.
pub fn tcp_client(port: u16, conns: usize, bulk: bool, secs: f64) -> ClientResult {
    run_pinned(1, move || async move {
        let addr = format!("127.0.0.1:{port}");
        let mut streams = Vec::new();
        for _ in 0..conns {
            let s = TcpStream::connect(addr.as_str()).await.expect("connect");
            s.set_nodelay(true).unwrap();
            streams.push(s);
        }
        let cpu0 = thread_cpu();
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(secs);
        let mut handles = Vec::new();
        for mut s in streams {
            handles.push(monoio::spawn(async move {
                let (mut n, mut bytes) = (0u64, 0u64);
                if bulk {
                    let mut chunk = vec![1u8; BULK_CHUNK];
                    while Instant::now() < deadline {
                        let (res, b) = s.write_all(chunk).await;
                        chunk = b;
                        res.expect("bulk write");
                        bytes += BULK_CHUNK as u64;
                        n += 1;
                    }
                } else {
                    let mut req = vec![3u8; REQ_SIZE];
                    let mut resp = vec![0u8; RESP_SIZE];
                    while Instant::now() < deadline {
                        let (res, b) = s.write_all(req).await;
                        req = b;
                        res.expect("req write");
                        let (res, b) = s.read_exact(resp).await;
                        resp = b;
                        res.expect("resp read");
                        n += 1;
                        bytes += REQ_SIZE as u64;
                    }
                }
                drop(s); // EOF tells the server this connection is done
                (n, bytes)
            }));
        }
        let mut r = ClientResult::default();
        for h in handles {
            let (n, b) = h.await;
            r.requests += n;
            r.bytes += b;
        }
        r.elapsed = start.elapsed();
        r.cpu = thread_cpu() - cpu0;
        r
    })
}
