//! The admin endpoints beyond the figures: browse (with headers, size, age and the body's
//! first bytes), purge, move and retry, delete a queue, the connections, the durable
//! subscriptions and removing one. Plain-text tables, or JSON with `?format=json`. Runs on a
//! status request thread; asks the router (`AdminRequest`) and renders its answer.
//!
//! Permissions (when users are configured): browse needs `read` on the queue; everything that
//! changes something needs `admin` on each destination it touches; the durable subscriptions
//! listed are those whose topic the user may `admin`; the connection list shows every
//! connection's subscriptions, so it needs `admin` on all of `/queue/>` and `/topic/>`.

use super::http::{Request, Response};
use super::{ask, not_master, permitted, seconds, Shared};
use crate::auth::permit::Operation;
use crate::election::RoleInfo;
use crate::message::{now_ms, parse_destination, Kind};
use crate::router::{
    AdminReply, AdminRequest, Browsed, ConnectionView, DurableView, RouterMsg, BODY_PREVIEW,
};
use serde_json::json;
use std::fmt::Write;

/// Messages a browse shows.
const BROWSE_LIMIT: usize = 100;

/// The answer to `/admin/...` endpoint `path`, or None when there is no such endpoint.
pub(super) fn handle(
    shared: &Shared,
    role: &RoleInfo,
    request: &Request,
    user: Option<&str>,
) -> Option<Response> {
    let admin = Admin {
        shared,
        role,
        request,
        user,
    };
    let answer = match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/admin/browse") => admin.browse(),
        ("POST", "/admin/purge") => admin.on_queue(Operation::Admin, |destination| {
            AdminRequest::Purge { destination }
        }),
        ("POST", "/admin/delete") => admin.on_queue(Operation::Admin, |destination| {
            AdminRequest::Delete { destination }
        }),
        ("POST", "/admin/move") => admin.move_queue(),
        ("POST", "/admin/retry") => admin.retry(),
        ("GET", "/admin/connections") => admin.connections(),
        ("GET", "/admin/durables") => admin.durables(),
        ("POST", "/admin/remove-durable") => admin.remove_durable(),
        _ => return None,
    };
    Some(answer.unwrap_or_else(|refused| refused))
}

struct Admin<'a> {
    shared: &'a Shared,
    role: &'a RoleInfo,
    request: &'a Request,
    user: Option<&'a str>,
}

impl Admin<'_> {
    fn json(&self) -> bool {
        self.request.param("format").as_deref() == Some("json")
    }

    fn ask(&self, request: AdminRequest) -> Result<AdminReply, Response> {
        if !self.role.master {
            return Err(not_master(self.role));
        }
        ask(self.shared, |reply| RouterMsg::Admin { request, reply })
            .ok_or_else(|| Response::text(503, "router busy\n".to_string()))
    }

    /// The request's parameter `name`, a queue's name the store can hold.
    fn queue(&self, name: &str) -> Result<String, Response> {
        let bad = |why: String| Response::text(400, format!("{why}\n"));
        let value = self
            .request
            .param(name)
            .ok_or_else(|| bad(format!("give ?{name}=/queue/NAME")))?;
        match parse_destination(&value) {
            Ok(Kind::Queue) => Ok(value),
            Ok(Kind::Topic) => Err(bad(format!("{name}: {value} is a topic, not a queue"))),
            Err(why) => Err(bad(format!("{name}: {why}"))),
        }
    }

    fn permitted(&self, operation: Operation, destination: &str) -> Result<(), Response> {
        permitted(self.shared, self.user, operation, destination)
    }

    fn browse(&self) -> Result<Response, Response> {
        let destination = self.queue("destination")?;
        self.permitted(Operation::Read, &destination)?;
        let request = AdminRequest::Browse {
            destination: destination.clone(),
            limit: BROWSE_LIMIT,
        };
        let AdminReply::Browsed(list, total) = self.ask(request)? else {
            return Err(unexpected());
        };
        if self.json() {
            let messages: Vec<serde_json::Value> = list.iter().map(browsed_json).collect();
            let doc = json!({"destination": destination, "total": total, "messages": messages});
            return Ok(json_response(&doc));
        }
        Ok(Response::text(200, browse_text(&destination, &list, total)))
    }

    /// An operation on the queue `?destination=` names, needing `operation` on it.
    fn on_queue(
        &self,
        operation: Operation,
        request: impl FnOnce(String) -> AdminRequest,
    ) -> Result<Response, Response> {
        let destination = self.queue("destination")?;
        self.permitted(operation, &destination)?;
        Ok(done(self.ask(request(destination))?))
    }

    fn move_queue(&self) -> Result<Response, Response> {
        let from = self.queue("from")?;
        let to = self.queue("to")?;
        self.permitted(Operation::Admin, &from)?;
        self.permitted(Operation::Admin, &to)?;
        Ok(done(self.ask(AdminRequest::Move { from, to: Some(to) })?))
    }

    fn retry(&self) -> Result<Response, Response> {
        let from = self.queue("destination")?;
        let Some(name) = from.strip_prefix("/queue/DLQ.") else {
            let why = format!("{from} is not a dead-letter queue (/queue/DLQ.NAME)\n");
            return Err(Response::text(400, why));
        };
        self.permitted(Operation::Admin, &from)?;
        self.permitted(Operation::Admin, &format!("/queue/{name}"))?;
        Ok(done(self.ask(AdminRequest::Move { from, to: None })?))
    }

    fn connections(&self) -> Result<Response, Response> {
        self.permitted(Operation::Admin, "/queue/>")?;
        self.permitted(Operation::Admin, "/topic/>")?;
        let AdminReply::Connections(list) = self.ask(AdminRequest::Connections)? else {
            return Err(unexpected());
        };
        let now = now_ms();
        if self.json() {
            let list: Vec<serde_json::Value> =
                list.iter().map(|c| connection_json(c, now)).collect();
            return Ok(json_response(&json!({ "connections": list })));
        }
        Ok(Response::text(200, connections_text(&list, now)))
    }

    /// The durable subscriptions whose topic the user may administer.
    fn durable_list(&self) -> Result<Vec<DurableView>, Response> {
        let AdminReply::Durables(mut list) = self.ask(AdminRequest::Durables)? else {
            return Err(unexpected());
        };
        list.retain(|d| {
            self.shared
                .auth
                .allows(self.user, Operation::Admin, &d.topic)
        });
        Ok(list)
    }

    fn durables(&self) -> Result<Response, Response> {
        let list = self.durable_list()?;
        if self.json() {
            let list: Vec<serde_json::Value> = list.iter().map(durable_json).collect();
            return Ok(json_response(&json!({ "durables": list })));
        }
        Ok(Response::text(200, durables_text(&list)))
    }

    fn remove_durable(&self) -> Result<Response, Response> {
        let param = |name: &str| {
            self.request
                .param(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    Response::text(400, "give ?client-id=CLIENT-ID&name=NAME\n".to_string())
                })
        };
        let (client_id, name) = (param("client-id")?, param("name")?);
        let AdminReply::Durables(list) = self.ask(AdminRequest::Durables)? else {
            return Err(unexpected());
        };
        if let Some(found) = list
            .iter()
            .find(|d| d.client_id == client_id && d.name == name)
        {
            self.permitted(Operation::Admin, &found.topic)?;
        }
        Ok(done(
            self.ask(AdminRequest::RemoveDurable { client_id, name })?,
        ))
    }
}

/// `Done` is 200, `Refused` 409 (the state forbids it now), each with its words.
fn done(reply: AdminReply) -> Response {
    match reply {
        AdminReply::Done(words) => Response::text(200, format!("{words}\n")),
        AdminReply::Refused(words) => Response::text(409, format!("{words}\n")),
        _ => unexpected(),
    }
}

fn unexpected() -> Response {
    Response::text(500, "the router answered another question\n".to_string())
}

fn json_response(doc: &serde_json::Value) -> Response {
    Response::new(200, "application/json", format!("{doc}\n"))
}

/// A body's first bytes as one line of text (escaped), and what was left out.
fn preview(body: &[u8], size: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = format!("\"{}\"", text.escape_debug());
    if size > body.len() {
        let _ = write!(out, " ... ({} more bytes)", size - body.len());
    }
    out
}

fn browse_text(destination: &str, list: &[Browsed], total: usize) -> String {
    let mut out = format!(
        "{destination}: first {} waiting messages of {total}\n",
        list.len()
    );
    let now = now_ms();
    for m in list {
        let id = crate::message::format_message_id(m.id);
        let _ = write!(
            out,
            "message {id}  priority {}  redelivered {}",
            m.priority, m.redeliveries
        );
        let Some(c) = &m.contents else {
            out.push_str("  (body in the store)\n");
            continue;
        };
        let persistence = if c.persistent { "" } else { "  non-persistent" };
        let _ = writeln!(
            out,
            "  {} bytes  age {}{persistence}",
            c.size,
            seconds(now - c.timestamp)
        );
        if let Some(original) = &c.original_destination {
            let _ = writeln!(out, "  original-destination: {original}");
        }
        if c.expires > 0 {
            let _ = writeln!(out, "  expires in {}", seconds(c.expires - now));
        }
        for (key, value) in &c.headers {
            let _ = writeln!(out, "  {key}: {}", value.escape_debug());
        }
        let _ = writeln!(out, "  body: {}", preview(&c.body, c.size));
    }
    out
}

fn browsed_json(m: &Browsed) -> serde_json::Value {
    let mut doc = json!({
        "message_id": crate::message::format_message_id(m.id),
        "priority": m.priority,
        "redeliveries": m.redeliveries,
        "in_memory": m.contents.is_some(),
    });
    if let Some(c) = &m.contents {
        let headers: serde_json::Map<String, serde_json::Value> = c
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let extra = json!({
            "persistent": c.persistent,
            "timestamp": c.timestamp,
            "expires": c.expires,
            "original_destination": c.original_destination,
            "headers": headers,
            "size": c.size,
            "body_preview": String::from_utf8_lossy(&c.body),
            "body_preview_bytes": BODY_PREVIEW.min(c.size),
        });
        if let (Some(doc), serde_json::Value::Object(extra)) = (doc.as_object_mut(), extra) {
            doc.extend(extra);
        }
    }
    doc
}

fn connections_text(list: &[ConnectionView], now: i64) -> String {
    let mut out = format!(
        "{:>5} {:<21} {:<12} {:<12} {:<7} {:>10} {:>8} {:>9} SUBSCRIPTIONS\n",
        "CONN", "ADDRESS", "LOGIN", "CLIENT-ID", "VERSION", "CONNECTED", "IDLE", "IN-FLIGHT"
    );
    for c in list {
        let in_flight: usize = c.subscriptions.iter().map(|s| s.2).sum();
        let subs: Vec<String> = c
            .subscriptions
            .iter()
            .map(|(id, destination, _)| format!("{id}={destination}"))
            .collect();
        let _ = writeln!(
            out,
            "{:>5} {:<21} {:<12} {:<12} {:<7} {:>10} {:>8} {:>9} {}",
            c.id,
            c.address,
            c.login.as_deref().unwrap_or("-"),
            c.client_id.as_deref().unwrap_or("-"),
            c.version,
            seconds(now - c.connected),
            seconds(now - c.last_frame),
            in_flight,
            if subs.is_empty() {
                "-".to_string()
            } else {
                subs.join(" ")
            }
        );
    }
    out
}

fn connection_json(c: &ConnectionView, now: i64) -> serde_json::Value {
    let subs: Vec<serde_json::Value> = c
        .subscriptions
        .iter()
        .map(|(id, destination, in_flight)| {
            json!({"id": id, "destination": destination, "in_flight": in_flight})
        })
        .collect();
    json!({
        "id": c.id,
        "address": c.address,
        "login": c.login,
        "client_id": c.client_id,
        "version": c.version,
        "connected_seconds": (now - c.connected).max(0) as f64 / 1000.0,
        "idle_seconds": (now - c.last_frame).max(0) as f64 / 1000.0,
        "in_flight": c.subscriptions.iter().map(|s| s.2).sum::<usize>(),
        "held_in_transactions": c.held,
        "subscriptions": subs,
    })
}

fn durables_text(list: &[DurableView]) -> String {
    let mut out = format!(
        "{:<16} {:<16} {:<24} {:>8} {:>6}\n",
        "CLIENT-ID", "NAME", "TOPIC", "PENDING", "ACTIVE"
    );
    for d in list {
        let active = if d.active { "yes" } else { "no" };
        let _ = writeln!(
            out,
            "{:<16} {:<16} {:<24} {:>8} {active:>6}",
            d.client_id, d.name, d.topic, d.pending
        );
    }
    out
}

fn durable_json(d: &DurableView) -> serde_json::Value {
    json!({
        "client_id": d.client_id,
        "name": d.name,
        "topic": d.topic,
        "pending": d.pending,
        "active": d.active,
    })
}
