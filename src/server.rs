//! Process life: win the election (or wait as a slave with no client port open), take over
//! (commit the epoch bump, create the schema, recover), start the store writer, pager and router,
//! bind the STOMP listeners (plain and TLS, either may be off), accept connections (one reader
//! thread each, which runs the TLS handshake if any and starts its writer), and shut down in
//! order: listeners, connections, router, pager, store writer, and only then release the lock.
//!
//! Runs on the main thread; a second listener gets an accept thread of its own. Owns the threads
//! it starts: joins each of its own, and waits for every session thread to leave the registry
//! (they are detached, so an ended connection's stack goes back at once instead of staying mapped
//! until a join).

use crate::auth::Authenticator;
use crate::codec;
use crate::config::Config;
use crate::election::{self, Election, Phase, Role};
use crate::flow_control::{FlowControl, STORE_BACKLOG_BYTES};
use crate::memory;
use crate::message::now_ms;
use crate::router::{Limits, Router, RouterMsg, INBOX_DEPTH};
use crate::session::{self, Context};
use crate::shutdown::{Failure, Shutdown};
use crate::status;
use crate::store::{self, Committed, Fence, StoreError};
use crate::transport::TlsSettings;
use crate::transport::{self, Transport};
use crossbeam_channel::{RecvTimeoutError, Sender};
use mysql::Conn;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::net::{Shutdown as Both, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Open connections, so shutdown can cut them (each session removes itself when it ends) and
/// wait for them, and the last connection id given out by any listener.
#[derive(Default)]
struct Connections {
    open: Mutex<HashMap<u64, TcpStream>>,
    /// Notified each time a session leaves `open`.
    left: Condvar,
    last_id: AtomicU64,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn leave(&self, id: u64) {
        self.lock().remove(&id);
        self.left.notify_all();
    }

    /// Until every session has left (their sockets are cut by then: each ends within a read
    /// timeout).
    fn wait_empty(&self) {
        let mut open = self.lock();
        while !open.is_empty() {
            open = self
                .left
                .wait(open)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

type Registry = Arc<Connections>;

/// Run the broker until `shutdown` is set. Err(why) when it stopped because of a failure
/// (lost the lock, store failure, a port or thread it could not open): the process then exits
/// non-zero.
/// `tls`: the TLS settings of the STOMP TLS listener and the status listener (from
/// `transport::server_config`).
/// `auth`: the users and rules of `config` (shared so that a reload can replace them).
pub fn run(
    config: Config,
    tls: TlsSettings,
    auth: Arc<Authenticator>,
    shutdown: Arc<Shutdown>,
) -> Result<(), Failure> {
    let config = Arc::new(config);
    let role = Arc::new(Role::default());
    let shared = Arc::new(status::Shared {
        name: config.name.clone(),
        started: Instant::now(),
        role: role.clone(),
        router: Mutex::new(None),
        store: Arc::default(),
        flow: Arc::new(FlowControl::new(STORE_BACKLOG_BYTES)),
        memory_limit: config.memory_limit,
        auth,
        verifying: Mutex::new(()),
    });
    // The status listener answers on slaves too (health 503): it is bound before the election.
    let status_thread = match config.status_listen {
        Some(addr) => Some(
            status::spawn(addr, tls.status.clone(), shared.clone(), shutdown.clone()).map_err(
                Failure::start(format!("cannot listen for status on {addr}")),
            )?,
        ),
        None => None,
    };
    // A standby that could not listen once it won would take the lock from nobody and serve
    // no one: it does not try for the lock until it can, and /health says why.
    if !wait_until_bindable(&config, &role, &shutdown) {
        if let Some(thread) = status_thread {
            let _ = thread.join();
        }
        return Ok(());
    }
    let election = election::spawn(config.clone(), shutdown.clone(), role)
        .map_err(Failure::start("could not start the election thread"))?;
    if wait_for_lock(&election, &shutdown) {
        if let Err(why) = serve(&config, tls.stomp, &shutdown, &shared) {
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
    match shutdown.take_failure() {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// How often a broker whose client port is taken looks again.
const BIND_RECHECK: Duration = Duration::from_secs(2);

/// Until every STOMP listener's address can be bound (each is bound and let go at once); false
/// when the broker stops first.
fn wait_until_bindable(config: &Config, role: &Role, shutdown: &Shutdown) -> bool {
    let mut told = None;
    loop {
        let unbindable = [config.stomp_listen, config.stomp_tls_listen]
            .into_iter()
            .flatten()
            .find_map(|addr| {
                TcpListener::bind(addr)
                    .err()
                    .map(|e| format!("cannot listen on {addr}: {e}"))
            });
        let Some(why) = unbindable else {
            return true;
        };
        role.set_phase(Phase::Unfit(why.clone()));
        if told.as_ref() != Some(&why) {
            log::error!("{why}; not trying for the lock until it is free (a master must serve)");
            told = Some(why);
        }
        shutdown.sleep(BIND_RECHECK);
        if shutdown.is_stopping() {
            return false;
        }
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
    tls: Option<Arc<ServerConfig>>,
    shutdown: &Arc<Shutdown>,
    shared: &status::Shared,
) -> Result<(), Failure> {
    let mut conn = store_conn(config).map_err(store_failure)?;
    let epoch = store::take_over(&mut conn, &config.name, now_ms()).map_err(store_failure)?;
    log::info!("acquired the lock (epoch {epoch})");
    shared.role.update(|r| {
        r.master = true;
        r.epoch = epoch;
        r.holder = config.name.clone();
        r.phase = Phase::Recovering;
    });
    store::prepare(&mut conn).map_err(store_failure)?;
    let max_packet = store::max_allowed_packet(&mut conn).map_err(store_failure)?;
    let frame_limits = frame_limits(config, max_packet);
    let recovered = store::recover(&mut conn).map_err(store_failure)?;
    let queued: usize = recovered
        .queues
        .values()
        .map(crate::queue::Queue::len)
        .sum();
    let count = queued + recovered.entries.len();
    // Recovery holds metadata only; bodies are paged in as consumers reach them.
    log::info!(
        "recovered {count} messages in {} destinations",
        count_destinations(&recovered)
    );
    let pipeline = Pipeline::start(
        config,
        shutdown,
        (conn, max_packet),
        epoch,
        recovered,
        shared,
    )?;
    set_router(shared, Some(pipeline.router.clone()));
    let ctx = Context {
        config: config.clone(),
        frame_limits,
        router: pipeline.router.clone(),
        store: pipeline.writer.ops.clone(),
        shutdown: shutdown.clone(),
        role: shared.role.clone(),
        flow: shared.flow.clone(),
        auth: shared.auth.clone(),
    };
    match bind_listeners(config, tls) {
        Ok(listeners) => {
            shared.role.set_phase(Phase::Serving);
            serve_listeners(listeners, ctx)
        }
        Err(why) => {
            shutdown.fail(why);
            drop(ctx);
        }
    }
    set_router(shared, None);
    pipeline.stop();
    Ok(())
}

/// The master's threads behind the sessions: store writer, pager, router, memory trimmer.
struct Pipeline {
    router: Sender<RouterMsg>,
    router_thread: JoinHandle<()>,
    pager_thread: JoinHandle<()>,
    writer: store::WriterHandle,
    trimmer: memory::Trimmer,
}

impl Pipeline {
    /// `conn` is the store writer's, with its server's `max_allowed_packet`.
    fn start(
        config: &Arc<Config>,
        shutdown: &Arc<Shutdown>,
        (conn, max_packet): (Conn, usize),
        epoch: u64,
        recovered: store::Recovered,
        shared: &status::Shared,
    ) -> Result<Pipeline, Failure> {
        let (router, router_rx) = crossbeam_channel::bounded(INBOX_DEPTH);
        let forward_tx = router.clone();
        let forward =
            Box::new(move |c: Committed| forward_tx.send(RouterMsg::Committed(c)).is_ok());
        let fail = shutdown.clone();
        let on_failure = Box::new(move |e: StoreError| fail.fail(store_failure(e)));
        // On a cluster (the lease) only a write is certified: every transaction writes the
        // epoch row. One server enforces the locking read of the row lock's fence.
        let certified = shared.role.get().election == Some(store::topology::Election::Lease);
        let fence = Fence {
            epoch,
            keepalive: config.keepalive(),
            certified,
        };
        let writer = store::spawn_writer(
            conn,
            fence,
            (&recovered.durables, recovered.next_id),
            max_packet,
            shared.store.clone(),
            forward,
            on_failure,
        )
        .map_err(Failure::start("could not start the store writer"))?;
        let pager_config = config.clone();
        let connector: store::Connector = Box::new(move || store_conn(&pager_config));
        let pager_tx = router.clone();
        let page_forward = Box::new(move |p| pager_tx.send(RouterMsg::PagedIn(p)).is_ok());
        let (pages, pager_thread) = store::spawn_pager(connector, config.keepalive(), page_forward)
            .map_err(Failure::start("could not start the pager"))?;
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
            .map_err(Failure::start("could not start the router"))?;
        let trimmer = memory::spawn_trimmer()
            .map_err(Failure::start("could not start the memory trimmer"))?;
        Ok(Pipeline {
            router,
            router_thread,
            pager_thread,
            writer,
            trimmer,
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
        self.trimmer.stop();
    }
}

/// The decoder's limits: the configured ones, and a SEND's bound from the database's packet
/// limit, logged once (a frame over it is refused before its body is read, naming the limit).
fn frame_limits(config: &Config, max_packet: usize) -> codec::Limits {
    let max_send = store::max_send(max_packet);
    log::info!(
        "a SEND may carry {max_send} bytes of body and headers: the database's \
         max_allowed_packet is {max_packet}, less {} for the rest of the row; bodies are \
         also bounded by max_frame = {}",
        max_packet - max_send,
        config.max_frame
    );
    codec::Limits {
        max_command_line: config.max_command_line,
        max_header_line: config.max_header_line,
        max_headers: config.max_headers,
        max_frame: config.max_frame,
        max_send,
    }
}

/// Why the broker stops after a store failure. A broken connection or a moved epoch means
/// the lock may be someone else's now.
fn store_failure(e: StoreError) -> Failure {
    match e {
        StoreError::Unreachable(_) | StoreError::Unconfirmed(_) | StoreError::Deposed { .. } => {
            Failure::LostLock(Box::new(e))
        }
        _ => Failure::Store(Box::new(e)),
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
    recovered.queues.len() + recovered.durables.len()
}

/// A bound STOMP listener; with TLS settings for the TLS one.
struct Listener {
    socket: TcpListener,
    tls: Option<Arc<ServerConfig>>,
}

/// Both listeners or neither: a broker that cannot open one of its ports stops.
fn bind_listeners(
    config: &Config,
    tls: Option<Arc<ServerConfig>>,
) -> Result<Vec<Listener>, Failure> {
    let mut listeners = Vec::new();
    let wanted = [(config.stomp_listen, None), (config.stomp_tls_listen, tls)];
    for (addr, tls) in wanted {
        let Some(addr) = addr else { continue };
        let socket =
            TcpListener::bind(addr).map_err(Failure::start(format!("cannot listen on {addr}")))?;
        listeners.push(Listener { socket, tls });
    }
    Ok(listeners)
}

/// Accept on every listener (the last on this thread, others on their own) until shutdown,
/// then cut every open connection and wait until every session has ended.
fn serve_listeners(mut listeners: Vec<Listener>, ctx: Context) {
    let registry: Registry = Arc::default();
    let mut accept_threads = Vec::new();
    if let Some(last) = listeners.pop() {
        for listener in listeners {
            let (own_ctx, own_registry) = (ctx.clone(), registry.clone());
            let spawned = std::thread::Builder::new()
                .name("stomp-accept".to_string())
                .spawn(move || accept_loop(listener, &own_ctx, &own_registry));
            match spawned {
                Ok(thread) => accept_threads.push(thread),
                Err(e) => ctx
                    .shutdown
                    .fail(Failure::start("could not start an accept thread")(e)),
            }
        }
        accept_loop(last, &ctx, &registry);
    }
    for thread in accept_threads {
        let _ = thread.join();
    }
    let why = ctx
        .shutdown
        .reason()
        .unwrap_or_else(|| "asked to stop".to_string());
    log::info!("shutting down ({why}): listeners closed, closing connections");
    for stream in registry.lock().values() {
        let _ = stream.shutdown(Both::Both);
    }
    drop(ctx);
    registry.wait_empty();
}

/// Accept until shutdown.
fn accept_loop(listener: Listener, ctx: &Context, registry: &Registry) {
    let what = match listener.tls {
        Some(_) => "STOMP over TLS",
        None => "STOMP",
    };
    match listener.socket.local_addr() {
        Ok(addr) => {
            log::info!("listening for {what} on {addr}");
            ctx.shutdown.add_wake(crate::shutdown::wake_address(addr));
        }
        Err(e) => ctx
            .shutdown
            .fail(Failure::start("listener has no address")(e)),
    }
    for stream in listener.socket.incoming() {
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
        start_session(stream, &listener.tls, ctx, registry);
    }
}

/// Over `max_connections`: say so in an ERROR frame and close, without starting any thread
/// (bounded write, on the accept thread). A TLS connection is just closed: an ERROR would need
/// a handshake first.
fn refuse_connection(mut stream: TcpStream, limit: usize, tls: bool) {
    use std::io::Write;
    let message = format!("too many connections: the limit is {limit}, try again later");
    log::warn!("refused a connection: {message}");
    if tls {
        return;
    }
    let frame = format!(
        "ERROR\nmessage:{message}\ncontent-type:text/plain\ncontent-length:{}\n\n{message}\0",
        message.len()
    );
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = stream.write_all(frame.as_bytes());
    let _ = stream.shutdown(Both::Write);
}

fn start_session(
    stream: TcpStream,
    tls: &Option<Arc<ServerConfig>>,
    ctx: &Context,
    registry: &Registry,
) {
    let accepted = Instant::now();
    let _ = stream.set_nodelay(true);
    let open_now = registry.lock().len();
    if open_now >= ctx.config.max_connections {
        refuse_connection(stream, ctx.config.max_connections, tls.is_some());
        return;
    }
    let Ok(handle) = stream.try_clone() else {
        return;
    };
    let id = registry.last_id.fetch_add(1, Ordering::Relaxed) + 1;
    registry.lock().insert(id, handle);
    let ctx = ctx.clone();
    let own_registry = registry.clone();
    let tls = tls.clone();
    // Detached: the session leaves the registry as its last act (see `Connections`).
    let spawned = std::thread::Builder::new()
        .name("conn-reader".to_string())
        .spawn(move || {
            let transport = match tls {
                None => Some(Transport::Plain(stream)),
                Some(tls) => {
                    let limit = (accepted, ctx.config.connect_timeout);
                    transport::accept_tls(stream, tls, limit, &ctx.shutdown)
                        .map_err(|why| log::info!("connection {id}: {why}; closing it"))
                        .ok()
                }
            };
            match transport {
                Some(transport) => session::serve(id, transport, accepted, ctx),
                None => drop(ctx),
            }
            own_registry.leave(id);
        });
    if let Err(e) = spawned {
        log::warn!("connection {id}: could not start its thread: {e}; closing it");
        registry.leave(id);
    }
}
