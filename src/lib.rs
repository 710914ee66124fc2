//! hamq: a small, fast, highly available STOMP broker over a shared MySQL/MariaDB store.
//!
//! # Layout
//! Seven layers, bottom first; a module imports only modules of the layers below it (no cycle;
//! `tests/layout.rs` reads the sources and checks it against these layers and the README's
//! import graph):
//! 1. `codec`, `auth`, `shutdown`, `flow_control`, `memory`: need nothing of the crate.
//! 2. `message` (codec), `config` (auth, codec).
//! 3. `command`, `outbox`, `queue`, `transport`.
//! 4. `store`: all SQL.
//! 5. `router`, `election`.
//! 6. `session`, `status`.
//! 7. `server` (process life: uses them all), `admin` (a client of `status`).
//!
//! - `admin`: the `hamq` admin commands (status, queues, browse, connections, durables, purge,
//!   move, retry, delete, remove-durable): a client of the status listener, over HTTP or HTTPS;
//!   `hamq hash` (a password hash for the config).
//! - `auth`: users' password hashes (PBKDF2), verified-login cache, `permit` rules with `*`/`>`
//!   destination wildcards; asked by `session` and `status`.
//! - `config`: the `key = value` file, `HAMQ_<KEY>` overrides, validation with key and line;
//!   the datastore URL as connection options.
//! - `codec`: STOMP frames: incremental decoder with limits, encoder, header escaping.
//! - `command`: a decoded frame turned into a typed client command, or a protocol error.
//! - `memory`: glibc's arenas capped at start, freed heap returned by the `memory-trim` thread.
//! - `message`: a message as the broker holds it, destinations, ids and the MESSAGE frame.
//! - `queue`: one destination's pending messages in priority/arrival order.
//! - `router`: the single routing thread: destinations, subscriptions, in-flight deliveries,
//!   and the admin requests (browse, move, connections, durable subscriptions); a dispatcher
//!   over unit-tested parts (destination index, in-flight deliveries, memory budget, counters).
//! - `store`: all SQL: connecting with session settings of its own, what the database is
//!   (`topology`), the lock, lease and fencing epoch, the utf8mb4 schema and its conversion,
//!   recovery, the group-commit writer thread, body paging, the index of durable subscriptions
//!   by topic (the writer's and the router's), and the store's error classes.
//! - `flow_control`: producer flow control: the store backlog budget and full queues, the gates
//!   a SEND waits at.
//! - `outbox`: a connection's bounded outgoing queue: delivery window, control credits, direct
//!   writes of control frames, the writer thread's lazy start.
//! - `session`: one client connection: its reader thread (parse, execute) and writer thread
//!   (started when first needed).
//! - `transport`: a connection's byte stream, plain TCP or TLS: certificate loading, the
//!   handshake, the TLS state shared by the reader and writer threads.
//! - `shutdown`: the stop signal every loop checks; wakes the accept loops; why the broker
//!   stopped (`Failure`: a lost lock, a store failure, something that could not start).
//! - `election`: the election thread: looks at the database, then waits for the master lock
//!   (a row lock, or on a cluster a lease with a presence lock) as a slave, keeps it as master.
//! - `status`: the status listener (HTTP, or HTTPS with its own certificate): /status, /health,
//!   /metrics, the web console and the admin endpoints.
//! - `server`: process life: store connect, recovery, listener, accept loop, shutdown.

pub mod admin;
pub mod auth;
pub mod codec;
pub(crate) mod command;
pub mod config;
pub(crate) mod election;
pub(crate) mod flow_control;
pub mod memory;
pub(crate) mod message;
pub(crate) mod outbox;
pub mod queue;
pub(crate) mod router;
pub mod server;
pub(crate) mod session;
pub mod shutdown;
pub(crate) mod status;
pub(crate) mod store;
pub mod transport;
