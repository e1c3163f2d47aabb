//! glommio 0.9.0: WAL sinks (BufferedFile and DmaFile) and TCP server.

use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::io::{BufferedFile, DmaFile};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

use crate::common::*;
use crate::group_commit::{GroupCommit, Sink};

/// io_memory is glommio's registered DMA buffer arena (default 10 MiB). It is
/// registered with each of its 3 rings; with an 8 MiB RLIMIT_MEMLOCK the
/// default registration fails (glommio logs a warning and falls back to
/// unregistered buffers), so keep it small enough to fit 3x in 8 MiB.
const IO_MEMORY: usize = 2 << 20;

pub fn run_pinned<F, Fut, T>(cpu: usize, f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .io_memory(IO_MEMORY)
        .spawn(f)
        .expect("glommio executor")
        .join()
        .expect("glommio executor join")
}

fn gerr(e: glommio::GlommioError<()>) -> io::Error {
    io::Error::other(e.to_string())
}

// ---------- WAL ----------

struct BufferedSink {
    file: BufferedFile,
}

impl Sink for BufferedSink {
    async fn commit(&self, data: Vec<u8>, offset: u64, sync: bool) -> io::Result<Option<Vec<u8>>> {
        // BufferedFile::write_at consumes the Vec (no buffer reuse); one pwrite via io_uring.
        let total = data.len();
        let n = self.file.write_at(data, offset).await.map_err(gerr)?;
        if n != total {
            return Err(io::Error::other(format!("short buffered write {n}/{total}")));
        }
        if sync {
            self.file.fdatasync().await.map_err(gerr)?;
        }
        Ok(None)
    }
}

struct DirectSink {
    file: DmaFile,
    tail: TailBlock,
}

impl Sink for DirectSink {
    async fn commit(&self, data: Vec<u8>, offset: u64, sync: bool) -> io::Result<Option<Vec<u8>>> {
        let (aligned_off, padded, combined) = self.tail.prepare(&data, offset);
        let mut buf = self.file.alloc_dma_buffer(padded);
        let bytes = buf.as_bytes_mut();
        bytes[..combined.len()].copy_from_slice(&combined);
        bytes[combined.len()..].fill(0);
        let n = self.file.write_at(buf, aligned_off).await.map_err(gerr)?;
        if n != padded {
            return Err(io::Error::other(format!("short dma write {n}/{padded}")));
        }
        self.tail.advance(&combined);
        if sync {
            self.file.fdatasync().await.map_err(gerr)?;
        }
        Ok(Some(data))
    }
}

pub fn wal(case: WalCase, path: &Path) -> io::Result<WalResult> {
    let path = path.to_owned();
    run_pinned(0, move || async move {
        let gc = Rc::new(GroupCommit::new(case.handoff));
        let (cpu0, start);
        match case.mode {
            FileMode::Buffered => {
                let file = BufferedFile::create(&path).await.map_err(gerr)?;
                cpu0 = thread_cpu();
                start = Instant::now();
                drive(case, gc.clone(), Rc::new(BufferedSink { file }), start).await?;
            }
            FileMode::Direct => {
                let file = DmaFile::create(&path).await.map_err(gerr)?;
                cpu0 = thread_cpu();
                start = Instant::now();
                drive(case, gc.clone(), Rc::new(DirectSink { file, tail: TailBlock::default() }), start).await?;
            }
        }
        let elapsed = start.elapsed();
        let cpu = thread_cpu() - cpu0;
        let s = gc.stats();
        Ok(WalResult { appends: s.appends, commits: s.commits, bytes: s.bytes, elapsed, cpu })
    })
}

async fn drive<S: Sink + 'static>(case: WalCase, gc: Rc<GroupCommit>, sink: Rc<S>, start: Instant) -> io::Result<()> {
    let deadline = start + Duration::from_secs_f64(case.secs);
    let mut tasks = Vec::new();
    for t in 0..case.tasks {
        let (gc, sink) = (gc.clone(), sink.clone());
        tasks.push(glommio::spawn_local(async move {
            let entry = vec![(t as u8) | 1; case.entry];
            while Instant::now() < deadline {
                gc.append(&*sink, &entry, case.sync).await?;
            }
            Ok::<_, io::Error>(())
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

// ---------- TCP server ----------

pub fn tcp_server(conns: usize, bulk: bool, port_tx: std::sync::mpsc::Sender<u16>) -> ServerResult {
    run_pinned(0, move || async move {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        port_tx.send(listener.local_addr().unwrap().port()).unwrap();
        let cpu0 = thread_cpu();
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let stream = listener.accept().await.expect("accept");
            stream.set_nodelay(true).unwrap();
            tasks.push(glommio::spawn_local(serve_conn(stream, bulk)));
        }
        let mut r = ServerResult::default();
        for t in tasks {
            let (reqs, bytes) = t.await;
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
        let mut buf = vec![0u8; BULK_CHUNK];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes += n as u64,
            }
        }
    } else {
        let mut req = vec![0u8; REQ_SIZE];
        let resp = vec![7u8; RESP_SIZE];
        loop {
            if stream.read_exact(&mut req).await.is_err() {
                break;
            }
            if stream.write_all(&resp).await.is_err() {
                break;
            }
            reqs += 1;
            bytes += REQ_SIZE as u64;
        }
    }
    (reqs, bytes)
}
