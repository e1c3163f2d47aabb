//! Exercise monoio::fs::File under monoio::LegacyDriver and print what works.

use monoio::fs::{File, OpenOptions};
use monoio::{LegacyDriver, RuntimeBuilder};

macro_rules! check {
    ($name:expr, $e:expr) => {{
        match $e {
            Ok(v) => {
                println!("OK    {:<34} -> {:?}", $name, v);
                true
            }
            Err(e) => {
                println!("ERROR {:<34} -> {} (kind {:?}, os {:?})", $name, e, e.kind(), e.raw_os_error());
                false
            }
        }
    }};
}

fn main() {
    let feats: Vec<&str> = [
        ("legacy", true),
        ("sync", cfg!(feature = "sync")),
        ("iouring", cfg!(feature = "iouring")),
    ]
    .iter()
    .filter(|f| f.1)
    .map(|f| f.0)
    .collect();
    println!("monoio 0.2.4 features: {feats:?}; driver: LegacyDriver");
    let dir = std::env::temp_dir().join(format!("legacy-fs-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wal.log");

    let mut rt = RuntimeBuilder::<LegacyDriver>::new().build().expect("legacy runtime");
    rt.block_on(async move {
        let file = match OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).await {
            Ok(f) => {
                println!("OK    OpenOptions::open(create, rw)");
                f
            }
            Err(e) => {
                println!("ERROR OpenOptions::open -> {e}");
                return;
            }
        };
        let (r, _) = file.write_at(b"hello ".to_vec(), 0).await;
        check!("write_at(Vec, 0)", r);
        let (r, _) = file.write_all_at(vec![b'x'; 64 * 1024], 6).await;
        check!("write_all_at(64 KiB Vec, 6)", r);
        check!("sync_data()", file.sync_data().await);
        check!("sync_all()", file.sync_all().await);
        let (r, buf) = file.read_at(Vec::with_capacity(6), 0).await;
        if check!("read_at(cap 6, 0)", r) {
            println!("      read back {:?}", String::from_utf8_lossy(&buf));
        }
        let (r, buf) = file.read_exact_at(vec![0u8; 64 * 1024], 6).await;
        if check!("read_exact_at(64 KiB, 6)", r) {
            println!("      all 'x': {}", buf.iter().all(|&b| b == b'x'));
        }
        check!("metadata().len()", file.metadata().await.map(|m| m.len()));
        check!("close()", file.close().await);
        match File::open(&path).await {
            Ok(f) => {
                println!("OK    File::open (read-only)");
                let (r, _) = f.read_at(Vec::with_capacity(16), 0).await;
                check!("read_at after reopen", r);
                let (r, _) = f.write_at(b"nope".to_vec(), 0).await;
                check!("write_at on read-only (expect EBADF)", r);
            }
            Err(e) => println!("ERROR File::open -> {e}"),
        }
        check!("File::create (truncate)", File::create(&path).await.map(|_| ()));
        check!("std len after create", std::fs::metadata(&path).map(|m| m.len()));
    });
    let _ = std::fs::remove_dir_all(&dir);
}
