//! A TCP proxy that can cut links, for cluster tests: it forwards
//! connections to a target, and on `cut` closes every connection and
//! refuses new ones; it can also refuse connections from given source IPs
//! (so a node whose outgoing connections leave from its own IP can be cut
//! off in both directions).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct State {
    cut: AtomicBool,
    blocked: Mutex<HashSet<IpAddr>>,
    conns: Mutex<Vec<(IpAddr, TcpStream)>>,
}

/// One proxy: `127.0.0.1:port` → `target`.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub port: u16,
    state: Arc<State>,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(client) = c else { continue };
                let Ok(peer) = client.peer_addr() else {
                    continue;
                };
                if st.cut.load(Ordering::Acquire) || st.blocked.lock().unwrap().contains(&peer.ip())
                {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                {
                    let mut conns = st.conns.lock().unwrap();
                    conns.push((peer.ip(), client.try_clone().unwrap()));
                    conns.push((peer.ip(), upstream.try_clone().unwrap()));
                }
                pipe(client.try_clone().unwrap(), upstream.try_clone().unwrap());
                pipe(upstream, client);
            }
        });
        Proxy { port, state }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Closes every connection and refuses new ones until `heal`.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::Release);
        for (_, c) in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Closes connections from `ip` and refuses new ones until `unblock`.
    pub fn block(&self, ip: IpAddr) {
        self.state.blocked.lock().unwrap().insert(ip);
        let mut conns = self.state.conns.lock().unwrap();
        conns.retain(|(from, c)| {
            if *from == ip {
                let _ = c.shutdown(Shutdown::Both);
                false
            } else {
                true
            }
        });
    }

    pub fn unblock(&self, ip: IpAddr) {
        self.state.blocked.lock().unwrap().remove(&ip);
    }

    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::Release);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
