//! The status listener (`status_listen`), for humans, load balancers, Prometheus and the `hamq`
//! admin command. It runs on master AND slave.
//!
//! `http` serves it (a thread per connection, bounded in number and time); this module answers.
//! Figures come from the router (a `RouterMsg` with a reply channel, waited on with a bound) and
//! from the election's `Role`. Endpoints (`GET`, and `HEAD` for each): `/health` (200 only on a
//! master that serves; 503 naming the state otherwise), `/status` (JSON), `/metrics`
//! (Prometheus text), `/admin/console` (the web console, see `console`; `/` leads there), and
//! for the admin command `/admin/status`, `/admin/queues` (plain-text
//! tables) and the requests of `admin` (browse, purge, move, retry, delete, connections,
//! durable subscriptions). When users are configured, the admin endpoints need HTTP Basic
//! credentials of one of them, and each admin request a permission (see `admin`).

mod admin;
mod console;
mod http;
mod render;

use crate::auth::permit::Operation;
use crate::auth::{Authenticator, Login};
use crate::election::{Phase, Role, RoleInfo};
use crate::router::{RouterMsg, Stats};
use crate::shutdown::Shutdown;
use base64::Engine;
use crossbeam_channel::{bounded, Sender};
use http::{Request, Response};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an answer from the router may take.
const ROUTER_TIMEOUT: Duration = Duration::from_secs(2);

/// A span of milliseconds as the admin tables and the console show it: `3.2 s`.
fn seconds(ms: i64) -> String {
    format!("{:.1} s", ms.max(0) as f64 / 1000.0)
}

/// A query-string value, percent-encoded (the console's links, the admin command's requests).
pub(crate) fn query_value(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

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
    /// `memory_limit` as configured (shown by slaves too).
    pub memory_limit: usize,
    /// Checks the admin endpoints' credentials and permissions.
    pub auth: Arc<Authenticator>,
    /// Held while one request's password is checked (see `admin_login`).
    pub verifying: Mutex<()>,
}

/// Bind `addr` and answer requests (see `http`) until shutdown.
pub fn spawn(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    shared: Arc<Shared>,
    shutdown: Arc<Shutdown>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    log::info!("status listening on {local} ({scheme})");
    shutdown.add_wake(crate::shutdown::wake_address(local));
    let stopping = shutdown.clone();
    let handler: http::Handler = Arc::new(move |request| route(request, &shared, &stopping));
    std::thread::Builder::new()
        .name("status".to_string())
        .spawn(move || http::serve(listener, shutdown, handler, tls))
}

/// `/health`: 200 only for a master that serves clients; each other state named.
fn health(role: &RoleInfo, stopping: bool) -> Response {
    let state = match (&role.phase, stopping) {
        (_, true) => "stopping".to_string(),
        (Phase::Serving, false) if role.master => return Response::text(200, "master\n".into()),
        (Phase::Waiting, _) if role.holder.is_empty() => "slave (no master yet)".to_string(),
        (Phase::Waiting, _) => format!("slave (master: {})", role.holder),
        (Phase::Starting, _) => "starting".to_string(),
        (Phase::Unreachable(why), _) => format!("datastore unreachable: {why}"),
        (Phase::Unfit(why), _) => format!("unfit: {why}"),
        (Phase::Recovering, _) => "recovering: master, not serving yet".to_string(),
        (Phase::Serving, _) => "not master".to_string(),
    };
    Response::text(503, format!("{state}\n"))
}

fn route(request: &Request, shared: &Shared, shutdown: &Shutdown) -> Response {
    let role = shared.role.get();
    let user = if request.path.starts_with("/admin/") {
        match admin_login(shared, request) {
            Ok(user) => user,
            Err(refused) => return refused,
        }
    } else {
        None
    };
    let user = user.as_deref();
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/health") => health(&role, shutdown.is_stopping()),
        ("GET", "/") => Response::new(
            200,
            "text/html; charset=utf-8",
            "<!DOCTYPE html><meta http-equiv=refresh content=\"0; url=/admin/console\">\
             <a href=\"/admin/console\">the console</a>\n"
                .to_string(),
        ),
        ("GET", "/admin/console") => console::page(shared, &role, user),
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
        (method, path) => admin::handle(shared, &role, request, user)
            .unwrap_or_else(|| Response::text(404, format!("no such endpoint: {method} {path}\n"))),
    }
}

/// The user named by the request's HTTP Basic credentials (None when no users are configured),
/// or the 401 answer. No delay on failure; the slow hash, one at a time, bounds guessing.
fn admin_login(shared: &Shared, request: &Request) -> Result<Option<String>, Response> {
    if !shared.auth.enabled() {
        return Ok(None);
    }
    let credentials = request.authorization.as_deref().and_then(|value| {
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
    // One password check at a time: each is a slow hash, and 32 guessers hashing at once on
    // two cores would starve the thread answering `/health` (420 ms measured in
    // tests/operations.rs); the others wait asleep. Credentials verified before need no hash,
    // so a known admin does not queue behind guessers.
    let login = match shared.auth.known_login(Some(&login), Some(&password)) {
        Some(known) => known,
        None => {
            let _one_at_a_time = shared.verifying.lock();
            shared.auth.login(Some(&login), Some(&password))
        }
    };
    match login {
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

fn master_stats(shared: &Shared, role: &RoleInfo) -> Result<Stats, Response> {
    if !role.master {
        return Err(not_master(role));
    }
    ask(shared, RouterMsg::Stats).ok_or_else(|| Response::text(503, "router busy\n".to_string()))
}

fn not_master(role: &RoleInfo) -> Response {
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
