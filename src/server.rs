//! Process life: win the election (or wait as a slave with no client port open), take over
//! (commit the epoch bump, create the schema, recover), start the store writer, pager and router,
//! bind the STOMP listener, accept connections (one reader thread each, which starts its
//! writer), and shut down in order: listener, connections, router, pager, store writer, and only
//! then release the lock.
//!
//! Runs on the main thread. Owns the threads it starts and joins every one of them.

use crate::auth::Authenticator;
use crate::config::Config;
use crate::election::{self, Election, Role, RoleInfo};
use crate::flow_control::{FlowControl, STORE_BACKLOG_BYTES};
use crate::message::now_ms;
use crate::router::{Limits, Router, RouterMsg, INBOX_DEPTH};
use crate::session::{self, Context};
use crate::shutdown::Shutdown;
use crate::status;
use crate::store::{self, lock, Committed, Fence, StoreError};
use crossbeam_channel::{RecvTimeoutError, Sender};
use mysql::Conn;
use std::collections::HashMap;
use std::net::{Shutdown as Both, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Open connections, so shutdown can cut them; each session removes itself when it ends.
type Registry = Arc<Mutex<HashMap<u64, TcpStream>>>;

/// Run the broker until `shutdown` is set. Err(reason) when it stopped because of a failure
/// (lost the lock, store failure): the process then exits non-zero.
pub fn run(config: Config, shutdown: Arc<Shutdown>) -> Result<(), String> {
    let config = Arc::new(config);
    let role = Arc::new(Role::default());
    let auth = Authenticator::new(config.users.clone(), config.permits.clone())
        .map_err(|e| format!("cannot read /dev/urandom for the login cache's key: {e}"))?;
    let shared = Arc::new(status::Shared {
        name: config.name.clone(),
        started: Instant::now(),
        role: role.clone(),
        router: Mutex::new(None),
        store: Arc::default(),
        flow: Arc::new(FlowControl::new(STORE_BACKLOG_BYTES)),
        auth: Arc::new(auth),
    });
    // The status listener answers on slaves too (health 503): it is bound before the election.
    let status_thread = match config.status_listen {
        Some(addr) => Some(
            status::spawn(addr, shared.clone(), shutdown.clone())
                .map_err(|e| format!("cannot listen for status on {addr}: {e}"))?,
        ),
        None => None,
    };
    let election = election::spawn(config.clone(), shutdown.clone(), role)
        .map_err(|e| format!("could not start the election thread: {e}"))?;
    if wait_for_lock(&election, &shutdown) {
        if let Err(why) = serve(&config, &shutdown, &shared) {
            shutdown.fail(why);
        }
    }
    // Everything written: only now may a slave take over.
    let _ = election.release.send(());
    let _ = election.thread.join();
    shutdown.begin();
    if let Some(thread) = status_thread {
        let _ = thread.join();
    }
    match shutdown.failure() {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// True once this broker holds the lock; false when it stops first (a slave stops at once).
fn wait_for_lock(election: &Election, shutdown: &Shutdown) -> bool {
    loop {
        match election.won.recv_timeout(Duration::from_millis(50)) {
            Ok(()) => return true,
            Err(RecvTimeoutError::Timeout) if !shutdown.is_stopping() => {}
            Err(_) => return false,
        }
    }
}

/// Master: take over and serve until shutdown.
fn serve(
    config: &Arc<Config>,
    shutdown: &Arc<Shutdown>,
    shared: &status::Shared,
) -> Result<(), String> {
    let mut conn = store_conn(config).map_err(|e| e.to_string())?;
    let epoch = lock::take_over(&mut conn, &config.name, now_ms()).map_err(|e| e.to_string())?;
    log::info!("acquired the lock (epoch {epoch})");
    shared.role.set(RoleInfo {
        master: true,
        epoch,
        holder: config.name.clone(),
    });
    store::prepare(&mut conn).map_err(|e| e.to_string())?;
    let recovered = store::recover(&mut conn).map_err(|e| e.to_string())?;
    let count = recovered.queued.len() + recovered.entries.len();
    // Recovery holds metadata only; bodies are paged in as consumers reach them.
    log::info!(
        "recovered {count} messages in {} destinations",
        count_destinations(&recovered)
    );
    let pipeline = Pipeline::start(config, shutdown, conn, epoch, recovered, shared)?;
    set_router(shared, Some(pipeline.router.clone()));
    let ctx = Context {
        config: config.clone(),
        router: pipeline.router.clone(),
        store: pipeline.writer.ops.clone(),
        shutdown: shutdown.clone(),
        role: shared.role.clone(),
        flow: shared.flow.clone(),
        auth: shared.auth.clone(),
    };
    let sessions = match TcpListener::bind(config.stomp_listen) {
        Ok(listener) => accept_loop(listener, ctx),
        Err(e) => {
            shutdown.fail(format!("cannot listen on {}: {e}", config.stomp_listen));
            drop(ctx);
            Vec::new()
        }
    };
    for session in sessions {
        let _ = session.join();
    }
    set_router(shared, None);
    pipeline.stop();
    Ok(())
}

/// The master's threads behind the sessions: store writer, pager, router.
struct Pipeline {
    router: Sender<RouterMsg>,
    router_thread: JoinHandle<()>,
    pager_thread: JoinHandle<()>,
    writer: store::WriterHandle,
}

impl Pipeline {
    fn start(
        config: &Arc<Config>,
        shutdown: &Arc<Shutdown>,
        conn: Conn,
        epoch: u64,
        recovered: store::Recovered,
        shared: &status::Shared,
    ) -> Result<Pipeline, String> {
        let (router, router_rx) = crossbeam_channel::bounded(INBOX_DEPTH);
        let forward_tx = router.clone();
        let forward =
            Box::new(move |c: Committed| forward_tx.send(RouterMsg::Committed(c)).is_ok());
        let fail = shutdown.clone();
        let on_failure = Box::new(move |e: StoreError| fail.fail(failure_reason(e)));
        let fence = Fence {
            epoch,
            keepalive: config.keepalive(),
        };
        let writer = store::spawn_writer(
            conn,
            fence,
            (&recovered.durables, recovered.next_id),
            (shared.store.clone(), shared.flow.clone()),
            forward,
            on_failure,
        )
        .map_err(|e| format!("could not start the store writer: {e}"))?;
        let pager_config = config.clone();
        let connector: store::Connector = Box::new(move || store_conn(&pager_config));
        let pager_tx = router.clone();
        let page_forward = Box::new(move |p| pager_tx.send(RouterMsg::PagedIn(p)).is_ok());
        let (pages, pager_thread) = store::spawn_pager(connector, config.keepalive(), page_forward)
            .map_err(|e| format!("could not start the pager: {e}"))?;
        let limits = Limits {
            max_redeliveries: config.max_redeliveries,
            memory_limit: config.memory_limit,
            max_subscriptions: config.max_subscriptions,
            max_queue_depth: config.max_queue_depth,
            max_transaction_bytes: config.max_transaction_bytes,
        };
        let flow = shared.flow.clone();
        let router_thread = Router::new(writer.ops.clone(), pages, limits, flow, recovered)
            .spawn(router_rx)
            .map_err(|e| format!("could not start the router: {e}"))?;
        Ok(Pipeline {
            router,
            router_thread,
            pager_thread,
            writer,
        })
    }

    /// After the sessions: the router hands over its last writes, then the writer drains.
    fn stop(self) {
        let _ = self.router.send(RouterMsg::Shutdown);
        drop(self.router);
        let _ = self.router_thread.join();
        let _ = self.pager_thread.join();
        drop(self.writer.ops);
        let _ = self.writer.thread.join();
    }
}

/// Why the broker stops after a store failure. A broken connection or a moved epoch means
/// the lock may be someone else's now.
fn failure_reason(e: StoreError) -> String {
    match e {
        StoreError::Unreachable(_) | StoreError::Unconfirmed(_) | StoreError::Deposed { .. } => {
            format!("lost the lock: {e}")
        }
        _ => format!("store failure: {e}"),
    }
}

fn set_router(shared: &status::Shared, router: Option<Sender<RouterMsg>>) {
    if let Ok(mut slot) = shared.router.lock() {
        *slot = router;
    }
}

/// A store connection with the lease's session settings and bounded calls.
fn store_conn(config: &Config) -> Result<Conn, StoreError> {
    store::connect(
        &config.datastore,
        config.lease,
        config.store_io_timeout(),
        config.lease,
    )
}

fn count_destinations(recovered: &store::Recovered) -> usize {
    let mut names: Vec<&str> = recovered.queued.iter().map(|(d, _, _)| &**d).collect();
    names.sort_unstable();
    names.dedup();
    names.len() + recovered.durables.len()
}

/// Accept until shutdown, then cut every open connection; returns the session threads to join.
fn accept_loop(listener: TcpListener, ctx: Context) -> Vec<JoinHandle<()>> {
    let registry: Registry = Arc::default();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    match listener.local_addr() {
        Ok(addr) => {
            log::info!("listening for STOMP on {addr}");
            ctx.shutdown.add_wake(wake_address(addr));
        }
        Err(e) => ctx.shutdown.fail(format!("listener has no address: {e}")),
    }
    let mut next_id = 0u64;
    for stream in listener.incoming() {
        if ctx.shutdown.is_stopping() {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning on the error.
                log::warn!("accept failed: {e}");
                ctx.shutdown.sleep(Duration::from_millis(100));
                continue;
            }
        };
        next_id += 1;
        if let Some(thread) = start_session(next_id, stream, &ctx, &registry) {
            threads.push(thread);
        }
        threads.retain(|t| !t.is_finished());
    }
    let why = ctx
        .shutdown
        .failure()
        .unwrap_or_else(|| "asked to stop".to_string());
    log::info!("shutting down ({why}): listener closed, closing connections");
    drop(listener);
    if let Ok(open) = registry.lock() {
        for stream in open.values() {
            let _ = stream.shutdown(Both::Both);
        }
    }
    threads
}

/// Over `max_connections`: say so in an ERROR frame and close, without starting any thread
/// (bounded write, on the accept thread).
fn refuse_connection(mut stream: TcpStream, limit: usize) {
    use std::io::Write;
    let message = format!("too many connections: the limit is {limit}, try again later");
    log::warn!("refused a connection: {message}");
    let frame = format!(
        "ERROR\nmessage:{message}\ncontent-type:text/plain\ncontent-length:{}\n\n{message}\0",
        message.len()
    );
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = stream.write_all(frame.as_bytes());
    let _ = stream.shutdown(Both::Write);
}

/// `0.0.0.0:port` cannot be connected to: wake the loop (or reach it) through loopback instead.
pub fn wake_address(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut wake = addr;
    if addr.ip().is_unspecified() {
        wake.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    wake
}

fn start_session(
    id: u64,
    stream: TcpStream,
    ctx: &Context,
    registry: &Registry,
) -> Option<JoinHandle<()>> {
    let _ = stream.set_nodelay(true);
    let open_now = registry.lock().map(|open| open.len()).unwrap_or(0);
    if open_now >= ctx.config.max_connections {
        refuse_connection(stream, ctx.config.max_connections);
        return None;
    }
    let handle = stream.try_clone().ok()?;
    if let Ok(mut open) = registry.lock() {
        open.insert(id, handle);
    }
    let ctx = ctx.clone();
    let registry = registry.clone();
    std::thread::Builder::new()
        .name("conn-reader".to_string())
        .spawn(move || {
            session::serve(id, stream, ctx);
            if let Ok(mut open) = registry.lock() {
                open.remove(&id);
            }
        })
        .ok()
}
