//! A TCP proxy in front of a database, as HAProxy or a VIP is: it forwards every connection to
//! its current backend, and [`Proxy::switch`] points it at another one and cuts the connections
//! it had (as a failover does). Threads only: an accept thread, two copy threads per
//! connection. Drop stops them all and closes every socket.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    backend: Mutex<SocketAddr>,
    /// Both sockets of every open connection, to cut them on a switch.
    open: Mutex<Vec<(TcpStream, TcpStream)>>,
    stop: AtomicBool,
}

impl Proxy {
    /// Listen on a free port of 127.0.0.1 and forward to `backend`.
    pub fn start(backend: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("address").port();
        let shared = Arc::new(Shared {
            backend: Mutex::new(backend),
            open: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let own = shared.clone();
        let accept = std::thread::spawn(move || accept_loop(listener, &own));
        Proxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Forward new connections to `backend`, and cut the ones to the old backend.
    pub fn switch(&self, backend: SocketAddr) {
        *self.shared.backend.lock().unwrap() = backend;
        self.cut_all();
    }

    fn cut_all(&self) {
        for (client, server) in self.shared.open.lock().unwrap().drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        self.cut_all();
    }
}

fn accept_loop(listener: TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let backend = *shared.backend.lock().unwrap();
        let Ok(server) = TcpStream::connect_timeout(&backend, Duration::from_secs(2)) else {
            // The backend is down: the client sees its connection closed, as with HAProxy.
            continue;
        };
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        if let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) {
            shared.open.lock().unwrap().push((c3, s3));
        }
        std::thread::spawn(move || copy(client, s2));
        std::thread::spawn(move || copy(server, c2));
    }
}

/// Bytes from `from` to `to` until either ends; then both directions are shut.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
