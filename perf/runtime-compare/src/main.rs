//! runtime-compare: measure monoio 0.2.4 vs glommio 0.9.0 for tidemark shard cores.
//!
//! Usage:
//!   runtime-compare wal  [--runtime monoio|glommio|both] [--mode buffered|direct|both]
//!                        [--secs 3] [--dir /tmp] [--tasks 1,16,64] [--sizes 1024,65536] [--sync both|fdatasync|none]
//!                        [--handoff on|off]
//!   runtime-compare tcp  [--runtime ...] [--secs 3]
//!   runtime-compare all  (wal buffered + tcp)

mod common;
mod glom;
mod group_commit;
mod mono;

use std::path::PathBuf;
use std::sync::mpsc;

use common::*;

struct Args {
    cmd: String,
    runtimes: Vec<&'static str>,
    modes: Vec<FileMode>,
    secs: f64,
    dir: PathBuf,
    tasks: Vec<usize>,
    sizes: Vec<usize>,
    syncs: Vec<bool>,
    handoff: bool,
}

fn parse() -> Args {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        cmd: it.next().unwrap_or_else(|| "all".into()),
        runtimes: vec!["monoio", "glommio"],
        modes: vec![FileMode::Buffered],
        secs: 3.0,
        dir: std::env::temp_dir(),
        tasks: vec![1, 16, 64],
        sizes: vec![1024, 65536],
        syncs: vec![true, false],
        handoff: false,
    };
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let list = |v: &str| v.split(',').map(|x| x.parse().unwrap()).collect::<Vec<usize>>();
        match flag.as_str() {
            "--runtime" => {
                a.runtimes = match v.as_str() {
                    "monoio" => vec!["monoio"],
                    "glommio" => vec!["glommio"],
                    _ => vec!["monoio", "glommio"],
                }
            }
            "--mode" => {
                a.modes = match v.as_str() {
                    "buffered" => vec![FileMode::Buffered],
                    "direct" => vec![FileMode::Direct],
                    _ => vec![FileMode::Buffered, FileMode::Direct],
                }
            }
            "--handoff" => a.handoff = v == "on" || v == "true" || v == "1",
            "--secs" => a.secs = v.parse().unwrap(),
            "--dir" => a.dir = v.into(),
            "--tasks" => a.tasks = list(&v),
            "--sizes" => a.sizes = list(&v),
            "--sync" => {
                a.syncs = match v.as_str() {
                    "fdatasync" => vec![true],
                    "none" => vec![false],
                    _ => vec![true, false],
                }
            }
            _ => panic!("unknown flag {flag}"),
        }
    }
    a
}

fn main() {
    let a = parse();
    match a.cmd.as_str() {
        "wal" => wal(&a),
        "tcp" => tcp(&a),
        "all" => {
            wal(&a);
            tcp(&a);
        }
        c => panic!("unknown command {c} (wal|tcp|all)"),
    }
}

fn wal(a: &Args) {
    let dir = a.dir.join(format!("rtcmp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("## WAL group commit (executor pinned to CPU 0, {} s per case, handoff {}, dir {})", a.secs, if a.handoff { "on" } else { "off" }, dir.display());
    println!("| runtime | file API | sync | K | entry | appends/s | MB/s | avg group | commits/s | exec CPU % | other procs CPU % |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &mode in &a.modes {
        for &sync in &a.syncs {
            for &entry in &a.sizes {
                for &tasks in &a.tasks {
                    for &rt in &a.runtimes {
                        let case = WalCase { tasks, entry, sync, mode, secs: a.secs, handoff: a.handoff };
                        let path = dir.join(format!("{rt}.wal"));
                        let snap = LoadSnap::now();
                        let res = match rt {
                            "monoio" => mono::wal(case, &path),
                            _ => glom::wal(case, &path),
                        };
                        let foreign = LoadSnap::now().foreign_since(&snap);
                        let _ = std::fs::remove_file(&path);
                        let api = match (rt, mode) {
                            ("monoio", FileMode::Buffered) => "fs::File",
                            ("monoio", FileMode::Direct) => "fs::File+O_DIRECT",
                            (_, FileMode::Buffered) => "BufferedFile",
                            (_, FileMode::Direct) => "DmaFile",
                        };
                        let sync_s = if sync { "fdatasync" } else { "none" };
                        match res {
                            Ok(r) => {
                                let secs = r.elapsed.as_secs_f64();
                                println!(
                                    "| {rt} | {api} | {sync_s} | {tasks} | {} | {:.0} | {:.1} | {:.2} | {:.0} | {:.0} | {foreign} |",
                                    human(entry),
                                    r.appends as f64 / secs,
                                    r.bytes as f64 / secs / 1e6,
                                    r.appends as f64 / r.commits.max(1) as f64,
                                    r.commits as f64 / secs,
                                    r.cpu.as_secs_f64() / secs * 100.0,
                                );
                            }
                            Err(e) => println!("| {rt} | {api} | {sync_s} | {tasks} | {} | ERROR: {e} |||||", human(entry)),
                        }
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tcp(a: &Args) {
    println!("\n## Loopback TCP (server pinned to CPU 0, monoio io_uring client pinned to CPU 1, {} s)", a.secs);
    println!("| runtime | test | conns | result | server CPU % | server CPU us/op | client CPU % | other procs CPU % |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (bulk, conns) in [(false, 64usize), (true, 4usize)] {
        for &rt in &a.runtimes {
            let snap = LoadSnap::now();
            let (tx, rx) = mpsc::channel();
            let server = std::thread::spawn(move || match rt {
                "monoio" => mono::tcp_server(conns, bulk, tx),
                _ => glom::tcp_server(conns, bulk, tx),
            });
            let port = rx.recv().expect("server port");
            let c = mono::tcp_client(port, conns, bulk, a.secs);
            let s = server.join().expect("server thread");
            let foreign = LoadSnap::now().foreign_since(&snap);
            let secs = c.elapsed.as_secs_f64();
            let (test, result, ops) = if bulk {
                ("bulk 256 KiB writes", format!("{:.0} MB/s", s.bytes as f64 / secs / 1e6), s.bytes as f64 / BULK_CHUNK as f64)
            } else {
                ("req/resp 4 KiB -> 16 B", format!("{:.0} req/s", c.requests as f64 / secs), s.requests as f64)
            };
            println!(
                "| {rt} | {test} | {conns} | {result} | {:.0} | {:.1} | {:.0} | {foreign} |",
                s.cpu.as_secs_f64() / secs * 100.0,
                s.cpu.as_secs_f64() * 1e6 / ops.max(1.0),
                c.cpu.as_secs_f64() / secs * 100.0,
            );
        }
    }
}

fn human(n: usize) -> String {
    if n % 1024 == 0 { format!("{} KiB", n / 1024) } else { format!("{n} B") }
}
