//! The status listener (`status_listen`): a minimal HTTP/1.1 server for humans, load balancers,
//! Prometheus and the `hamq` admin command. It runs on master AND slave.
//!
//! One thread accepts and answers one request per connection (bounded reads and writes, then
//! close), so a stuck client delays the next by at most `IO_TIMEOUT`. Figures come from the
//! router (a `RouterMsg` with a reply channel, waited on with a bound) and from the election's
//! `Role`. Endpoints: `GET /status` (JSON), `GET /health` (200 master, 503 slave), `GET /metrics`
//! (Prometheus text), and for the admin command `GET /admin/status`, `GET /admin/queues`,
//! `GET /admin/browse?destination=D`, `POST /admin/purge?destination=D` (plain-text tables).
//! When users are configured, the admin endpoints need HTTP Basic credentials of one of them,
//! and browse needs read, purge admin permission on the destination (see `auth`).

mod render;

use crate::auth::permit::Operation;
use crate::auth::{Authenticator, Login};
use crate::election::Role;
use crate::router::{Browsed, RouterMsg, Stats};
use crate::shutdown::Shutdown;
use base64::Engine;
use crossbeam_channel::{bounded, Sender};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bound on reading a request and writing its answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request head accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// How long an answer from the router may take.
const ROUTER_TIMEOUT: Duration = Duration::from_secs(2);

/// What the status thread reads.
pub struct Shared {
    pub name: String,
    pub started: Instant,
    pub role: Arc<Role>,
    /// The router's inbox while this broker is master.
    pub router: Mutex<Option<Sender<RouterMsg>>>,
    /// The store writer's counters (zero until this broker is master).
    pub store: Arc<crate::store::WriterStats>,
    pub flow: Arc<crate::flow_control::FlowControl>,
    /// Checks the admin endpoints' credentials and permissions.
    pub auth: Arc<Authenticator>,
}

/// Bind `addr` and answer requests on a new thread until shutdown.
pub fn spawn(
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Arc<Shutdown>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    log::info!("status listening on {local}");
    shutdown.add_wake(crate::server::wake_address(local));
    std::thread::Builder::new()
        .name("status".to_string())
        .spawn(move || {
            for stream in listener.incoming() {
                if shutdown.is_stopping() {
                    return;
                }
                match stream {
                    Ok(stream) => answer(stream, &shared),
                    Err(e) => {
                        log::warn!("status accept failed: {e}");
                        shutdown.sleep(Duration::from_millis(100));
                    }
                }
            }
        })
}

/// One HTTP answer.
pub struct Response {
    pub code: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    fn new(code: u16, content_type: &'static str, body: String) -> Response {
        Response {
            code,
            content_type,
            body,
        }
    }

    fn text(code: u16, body: String) -> Response {
        Response::new(code, "text/plain; charset=utf-8", body)
    }
}

fn answer(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let response = match read_head(&mut stream) {
        Ok(head) => route(&head, shared),
        Err(problem) => Response::text(400, format!("{problem}\n")),
    };
    let reason = match response.code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let challenge = match response.code {
        401 => "WWW-Authenticate: Basic realm=\"hamq\"\r\n",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{challenge}\
         Connection: close\r\n\r\n",
        response.code,
        response.content_type,
        response.body.len()
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(response.body.as_bytes()));
}

/// The request line and headers, up to the blank line.
fn read_head(stream: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("reading the request: {e}"))?;
        if n == 0 {
            return Err("the request ended early".to_string());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return Err(format!("request head over {MAX_REQUEST} bytes"));
        }
    }
    String::from_utf8(head).map_err(|_| "the request is not UTF-8".to_string())
}

fn route(head: &str, shared: &Shared) -> Response {
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let role = shared.role.get();
    let user = if path.starts_with("/admin/") {
        match admin_login(shared, head) {
            Ok(user) => user,
            Err(refused) => return refused,
        }
    } else {
        None
    };
    let user = user.as_deref();
    match (method, path) {
        ("GET", "/health") if role.master => Response::text(200, "master\n".to_string()),
        ("GET", "/health") => Response::text(503, format!("slave (master: {})\n", role.holder)),
        ("GET", "/status") => {
            let json = render::status_json(shared, &role, &stats(shared));
            Response::new(200, "application/json", json)
        }
        ("GET", "/metrics") => Response::new(
            200,
            "text/plain; version=0.0.4",
            render::metrics(shared, &role, &stats(shared)),
        ),
        ("GET", "/admin/status") => {
            Response::text(200, render::status_table(shared, &role, &stats(shared)))
        }
        ("GET", "/admin/queues") => match master_stats(shared, &role) {
            Ok(stats) => Response::text(200, render::queues_table(&stats)),
            Err(r) => r,
        },
        ("GET", "/admin/browse") => browse(shared, &role, query, user),
        ("POST", "/admin/purge") => purge(shared, &role, query, user),
        _ => Response::text(404, format!("no such endpoint: {method} {path}\n")),
    }
}

/// The user named by the request's HTTP Basic credentials (None when no users are configured),
/// or the 401 answer. No delay on failure: it would hold up this one thread's other requests;
/// the slow hash bounds guessing here.
fn admin_login(shared: &Shared, head: &str) -> Result<Option<String>, Response> {
    if !shared.auth.enabled() {
        return Ok(None);
    }
    let credentials = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("authorization") {
            return None;
        }
        let (scheme, encoded) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (login, password) = decoded.split_once(':')?;
        Some((login.to_string(), password.to_string()))
    });
    let Some((login, password)) = credentials else {
        let why = "authentication required: HTTP Basic credentials of a user in `users`\n";
        return Err(Response::text(401, why.to_string()));
    };
    match shared.auth.login(Some(&login), Some(&password)) {
        Login::User(user) => Ok(Some(user)),
        Login::Anonymous => Ok(None),
        Login::Refused => Err(Response::text(401, "authentication failed\n".to_string())),
    }
}

/// 403 unless `user` may do `operation` on `destination`.
fn permitted(
    shared: &Shared,
    user: Option<&str>,
    operation: Operation,
    destination: &str,
) -> Result<(), Response> {
    if shared.auth.allows(user, operation, destination) {
        return Ok(());
    }
    let why = format!("permission denied: {operation} on {destination}\n");
    Err(Response::text(403, why))
}

/// The router's figures; empty on a slave (or when the router does not answer in time).
fn stats(shared: &Shared) -> Stats {
    ask(shared, RouterMsg::Stats).unwrap_or_default()
}

fn master_stats(shared: &Shared, role: &crate::election::RoleInfo) -> Result<Stats, Response> {
    if !role.master {
        return Err(not_master(role));
    }
    ask(shared, RouterMsg::Stats).ok_or_else(|| Response::text(503, "router busy\n".to_string()))
}

fn not_master(role: &crate::election::RoleInfo) -> Response {
    Response::text(
        503,
        format!("this broker is a slave; the master is {}\n", role.holder),
    )
}

/// Send the router a request built around a reply channel and wait (bounded) for the answer.
fn ask<T>(shared: &Shared, request: impl FnOnce(Sender<T>) -> RouterMsg) -> Option<T> {
    let router = shared.router.lock().ok()?.clone()?;
    let (tx, rx) = bounded(1);
    router.send_timeout(request(tx), ROUTER_TIMEOUT).ok()?;
    rx.recv_timeout(ROUTER_TIMEOUT).ok()
}

fn destination_param(query: &str) -> Result<String, Response> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "destination")
        .map(|(_, v)| percent_decode(v))
        .filter(|d| d.starts_with("/queue/"))
        .ok_or_else(|| Response::text(400, "give ?destination=/queue/NAME\n".to_string()))
}

/// The queue an admin request on the master names, if `user` may do `operation` on it.
fn admin_queue(
    shared: &Shared,
    role: &crate::election::RoleInfo,
    query: &str,
    (user, operation): (Option<&str>, Operation),
) -> Result<String, Response> {
    if !role.master {
        return Err(not_master(role));
    }
    let destination = destination_param(query)?;
    permitted(shared, user, operation, &destination)?;
    Ok(destination)
}

fn browse(
    shared: &Shared,
    role: &crate::election::RoleInfo,
    query: &str,
    user: Option<&str>,
) -> Response {
    let destination = match admin_queue(shared, role, query, (user, Operation::Read)) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let request = |reply| RouterMsg::Browse {
        destination: destination.clone(),
        limit: 100,
        reply,
    };
    match ask::<Vec<Browsed>>(shared, request) {
        Some(list) => Response::text(200, render::browse_table(&destination, &list)),
        None => Response::text(503, "router busy\n".to_string()),
    }
}

fn purge(
    shared: &Shared,
    role: &crate::election::RoleInfo,
    query: &str,
    user: Option<&str>,
) -> Response {
    let destination = match admin_queue(shared, role, query, (user, Operation::Admin)) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let request = |reply| RouterMsg::Purge {
        destination: destination.clone(),
        reply,
    };
    match ask::<usize>(shared, request) {
        Some(n) => Response::text(200, format!("purged {n} messages from {destination}\n")),
        None => Response::text(503, "router busy\n".to_string()),
    }
}

/// `%2Fqueue%2Fa` -> `/queue/a`; malformed escapes are kept as they are.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_query_values() {
        assert_eq!(percent_decode("%2Fqueue%2Fa.b"), "/queue/a.b");
        assert_eq!(percent_decode("/queue/x+y%zz%4"), "/queue/x y%zz%4");
    }
}
