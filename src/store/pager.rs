//! The pager: one thread with its own connection that loads message bodies for the router.
//!
//! The router asks (with `try_send`: it never blocks) for the messages behind paged-out queue
//! entries near the front of a queue; the pager reads them in one query and forwards them, with
//! the router's own key for the queue, through the forwarding function (a blocking send into the
//! router's inbox, which the router always drains). Reads only: it never writes, so it needs no
//! fencing. Idle for `idle`, it closes its connection, and it opens one again for the next
//! request (as after an error): the `mysql` crate keeps a 4 MiB read buffer per connection that
//! becomes resident as reads walk through it, so a pager that loaded a backlog would otherwise
//! hold those pages for good. Exits when the router drops its sender.

use super::{schema::load_messages, StoreError};
use crate::message::Message;
use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use mysql::Conn;
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Page requests waiting for the pager before the router's `try_send` finds it full.
const DEPTH: usize = 64;

/// Load these message ids for the router's queue `key`.
pub struct PageRequest<K> {
    pub key: K,
    pub ids: Vec<u64>,
}

/// What was found; ids missing from `messages` were removed from the store meanwhile.
pub struct Paged<K> {
    pub key: K,
    pub ids: Vec<u64>,
    pub messages: Result<HashMap<u64, Arc<Message>>, StoreError>,
}

pub type PageForward<K> = Box<dyn FnMut(Paged<K>) -> bool + Send>;

/// Opens a connection for the pager (again after a failure).
pub type Connector = Box<dyn Fn() -> Result<Conn, StoreError> + Send>;

pub fn spawn_pager<K: Send + 'static>(
    connect: Connector,
    idle: Duration,
    mut forward: PageForward<K>,
) -> std::io::Result<(Sender<PageRequest<K>>, JoinHandle<()>)> {
    let (tx, rx) = bounded::<PageRequest<K>>(DEPTH);
    let thread = std::thread::Builder::new()
        .name("store-pager".to_string())
        .spawn(move || {
            let mut conn: Option<Conn> = None;
            loop {
                let request = match rx.recv_timeout(idle) {
                    Ok(request) => request,
                    Err(RecvTimeoutError::Timeout) => {
                        conn = None;
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                };
                let messages = match conn.as_mut() {
                    Some(c) => load_messages(c, &request.ids),
                    None => connect().and_then(|c| load_messages(conn.insert(c), &request.ids)),
                };
                if messages.is_err() {
                    conn = None;
                }
                let paged = Paged {
                    key: request.key,
                    ids: request.ids,
                    messages,
                };
                if !forward(paged) {
                    return;
                }
            }
        })?;
    Ok((tx, thread))
}
