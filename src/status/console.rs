//! The web console (`GET /admin/console`, `/` redirects there): one page, rendered here from
//! the same figures as `/status` and the admin lists, with its style and script inline (no
//! build step, no external assets). The script polls `/status` for a depth chart and rates,
//! refreshes the page's tables, and sends the admin actions (`POST /admin/...`), whose words it
//! shows. Behind the admin credentials like every `/admin/` endpoint; over HTTPS when the status
//! listener has a certificate. Runs on a status request thread.

use super::http::Response;
use super::render::{election_name, role_name};
use super::{ask, query_value, seconds, stats, Shared};
use crate::auth::permit::Operation;
use crate::election::RoleInfo;
use crate::message::now_ms;
use crate::router::{AdminReply, AdminRequest, ConnectionView, DurableView, RouterMsg};
use std::fmt::Write;

/// Text as HTML (element content or a quoted attribute value).
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The console page for `user`.
pub(super) fn page(shared: &Shared, role: &RoleInfo, user: Option<&str>) -> Response {
    let mut main = String::new();
    facts(&mut main, shared, role);
    if role.master {
        destinations(&mut main, shared, user);
        connections(&mut main, shared, user);
        durables(&mut main, shared, user);
    } else {
        let master = if role.holder.is_empty() {
            "none yet"
        } else {
            &role.holder
        };
        let _ = write!(
            main,
            "<p class=note>This broker is a slave (master: <b>{}</b>): destinations, \
             connections and subscriptions are on the master's console.</p>",
            esc(master)
        );
    }
    let title = format!("hamq {} ({})", shared.name, role_name(role));
    let body = format!(
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width\"><title>{}</title>\
         <style>{STYLE}</style></head><body><header><h1>{}</h1><span id=result></span>\
         </header><main id=main>{main}</main><script>{SCRIPT}</script></body></html>\n",
        esc(&title),
        esc(&title)
    );
    Response::new(200, "text/html; charset=utf-8", body)
}

fn facts(out: &mut String, shared: &Shared, role: &RoleInfo) {
    let holder = if role.holder.is_empty() {
        "-"
    } else {
        &role.holder
    };
    let rows = [
        ("role", role_name(role).to_string()),
        ("epoch", role.epoch.to_string()),
        ("lock holder", holder.to_string()),
        ("election", election_name(role).to_string()),
        ("database", role.database.clone()),
        (
            "uptime",
            seconds(shared.started.elapsed().as_millis() as i64),
        ),
    ];
    out.push_str("<section><h2>Broker</h2><table class=facts>");
    for (name, value) in rows {
        let _ = write!(
            out,
            "<tr><th>{name}</th><td id=\"fact-{}\">{}</td></tr>",
            name.replace(' ', "-"),
            esc(&value)
        );
    }
    out.push_str("</table></section>");
}

fn destinations(out: &mut String, shared: &Shared, user: Option<&str>) {
    let stats = stats(shared);
    let _ = write!(
        out,
        "<section><h2>Destinations</h2><p>{} connections; waiting messages hold {} of {} \
         bytes in memory.</p><svg id=chart viewBox=\"0 0 640 180\" role=img \
         aria-label=\"depth over time\"></svg><div id=legend></div><table class=list><tr>\
         <th>destination</th><th>depth</th><th>in flight</th><th>consumers</th>\
         <th>enqueued</th><th>dequeued</th><th>in/s</th><th>out/s</th><th>redelivered</th>\
         <th>dead-lettered</th><th>actions</th></tr>",
        stats.connections, stats.held_bytes, shared.memory_limit
    );
    for d in &stats.destinations {
        let name = esc(&d.name);
        let mut actions = String::new();
        if d.name.starts_with("/queue/") {
            if shared.auth.allows(user, Operation::Read, &d.name) {
                let _ = write!(
                    actions,
                    "<a href=\"/admin/browse?destination={}\">browse</a> ",
                    esc(&query_value(&d.name))
                );
            }
            if shared.auth.allows(user, Operation::Admin, &d.name) {
                for action in ["purge", "move", "delete"] {
                    let _ = write!(
                        actions,
                        "<button data-act={action} data-dest=\"{name}\">{action}</button> "
                    );
                }
                if d.name.starts_with("/queue/DLQ.") {
                    let _ = write!(
                        actions,
                        "<button data-act=retry data-dest=\"{name}\">retry</button>"
                    );
                }
            }
        }
        let c = &d.counters;
        let _ = write!(
            out,
            "<tr class=dest data-name=\"{name}\"><td>{name}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td data-rate=1 data-dest=\"{name}\">-</td>\
             <td data-rate=2 data-dest=\"{name}\">-</td><td>{}</td><td>{}</td><td>{actions}</td>\
             </tr>",
            d.depth,
            d.in_flight,
            d.consumers,
            c.enqueued,
            c.dequeued,
            c.redelivered,
            c.dead_lettered
        );
    }
    if stats.destinations.is_empty() {
        out.push_str("<tr><td colspan=11>none yet</td></tr>");
    }
    out.push_str("</table></section>");
}

fn admin_list(shared: &Shared, request: AdminRequest) -> Option<AdminReply> {
    ask(shared, |reply| RouterMsg::Admin { request, reply })
}

fn connections(out: &mut String, shared: &Shared, user: Option<&str>) {
    out.push_str("<section><h2>Connections</h2>");
    let everywhere = ["/queue/>", "/topic/>"]
        .iter()
        .all(|d| shared.auth.allows(user, Operation::Admin, d));
    let list: Vec<ConnectionView> = match admin_list(shared, AdminRequest::Connections) {
        _ if !everywhere => {
            out.push_str(
                "<p class=note>Listing connections needs admin on /queue/&gt; and \
                 /topic/&gt;.</p></section>",
            );
            return;
        }
        Some(AdminReply::Connections(list)) => list,
        _ => {
            out.push_str("<p class=note>router busy</p></section>");
            return;
        }
    };
    out.push_str(
        "<table class=list><tr><th>conn</th><th>address</th><th>login</th><th>client-id</th>\
         <th>version</th><th>connected</th><th>idle</th><th>in flight</th>\
         <th>subscriptions</th></tr>",
    );
    let now = now_ms();
    for c in &list {
        let subs: Vec<String> = c
            .subscriptions
            .iter()
            .map(|(id, destination, _)| format!("{}={}", esc(id), esc(destination)))
            .collect();
        let _ = write!(
            out,
            "<tr class=conn><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            c.id,
            esc(&c.address),
            esc(c.login.as_deref().unwrap_or("-")),
            esc(c.client_id.as_deref().unwrap_or("-")),
            c.version,
            seconds(now - c.connected),
            seconds(now - c.last_frame),
            c.subscriptions.iter().map(|s| s.2).sum::<usize>(),
            subs.join(" ")
        );
    }
    out.push_str("</table></section>");
}

fn durables(out: &mut String, shared: &Shared, user: Option<&str>) {
    out.push_str("<section><h2>Durable subscriptions</h2>");
    let Some(AdminReply::Durables(list)) = admin_list(shared, AdminRequest::Durables) else {
        out.push_str("<p class=note>router busy</p></section>");
        return;
    };
    let list: Vec<&DurableView> = list
        .iter()
        .filter(|d| shared.auth.allows(user, Operation::Admin, &d.topic))
        .collect();
    out.push_str(
        "<table class=list><tr><th>client-id</th><th>name</th><th>topic</th><th>pending</th>\
         <th>active</th><th>actions</th></tr>",
    );
    for d in &list {
        let action = if d.active {
            String::new()
        } else {
            format!(
                "<button data-act=remove-durable data-client=\"{}\" data-name=\"{}\">remove\
                 </button>",
                esc(&d.client_id),
                esc(&d.name)
            )
        };
        let _ = write!(
            out,
            "<tr class=durable><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{action}</td></tr>",
            esc(&d.client_id),
            esc(&d.name),
            esc(&d.topic),
            d.pending,
            if d.active { "yes" } else { "no" }
        );
    }
    if list.is_empty() {
        out.push_str("<tr><td colspan=6>none</td></tr>");
    }
    out.push_str("</table></section>");
}

const STYLE: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}\
header{background:#234;color:#fff;padding:8px 16px;display:flex;gap:24px;align-items:center}\
h1{font-size:18px;margin:0}h2{font-size:15px;margin:16px 0 6px}\
#result{font-family:monospace;white-space:pre-wrap}\
main{padding:0 16px 16px}table{border-collapse:collapse;background:#fff}\
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}\
.list td:nth-child(n+2):not(:last-child){text-align:right}\
.facts th{background:#eef}.note{color:#666}\
svg{width:640px;height:180px;background:#fff;border:1px solid #ddd;display:block}\
#legend span{margin-right:12px}button{font-size:12px}";

/// Chart, rates, refresh and actions. Destinations' history lives in sessionStorage, so a
/// reload keeps the chart.
const SCRIPT: &str = r##"
"use strict";
const KEY = "hamq-console-" + location.host;
// Paths resolved against the origin: a page opened as http://user:pass@host/ would otherwise
// give fetch URLs with credentials in them, which it refuses.
const at = path => location.origin + path;
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
let hist = [];
try { hist = JSON.parse(sessionStorage.getItem(KEY) || "[]"); } catch (e) { hist = []; }
function rates() {
  if (hist.length < 2) return;
  const a = hist[hist.length - 2], b = hist[hist.length - 1];
  const dt = (b.t - a.t) / 1000;
  document.querySelectorAll("td[data-rate]").forEach(td => {
    const x = a.d[td.dataset.dest], y = b.d[td.dataset.dest], i = Number(td.dataset.rate);
    td.textContent = (x && y && dt > 0) ? Math.max(0, (y[i] - x[i]) / dt).toFixed(1) : "-";
  });
}
function chart() {
  const svg = document.getElementById("chart");
  if (!svg || hist.length === 0) return;
  const last = hist[hist.length - 1].d;
  const names = Object.keys(last).sort((p, q) => last[q][0] - last[p][0]).slice(0, COLORS.length);
  const t0 = hist[0].t, span = Math.max(1, hist[hist.length - 1].t - t0);
  let max = 1;
  for (const h of hist) for (const n of names) if (h.d[n]) max = Math.max(max, h.d[n][0]);
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", 4); label.setAttribute("y", 14); label.setAttribute("font-size", 11);
  label.textContent = "depth (max " + max + ")";
  svg.appendChild(label);
  names.forEach((n, k) => {
    const points = hist.filter(h => h.d[n]).map(h =>
      (10 + 620 * (h.t - t0) / span).toFixed(1) + "," + (170 - 150 * h.d[n][0] / max).toFixed(1));
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLORS[k]);
    line.setAttribute("stroke-width", 2);
    svg.appendChild(line);
  });
  const legend = document.getElementById("legend");
  legend.replaceChildren(...names.map((n, k) => {
    const s = document.createElement("span");
    s.style.color = COLORS[k];
    s.textContent = "\u25a0 " + n + " " + last[n][0];
    return s;
  }));
}
async function poll() {
  try {
    const r = await fetch(at("/status"), { cache: "no-store" });
    const s = await r.json();
    const d = {};
    for (const x of s.destinations) d[x.name] = [x.depth, x.enqueued, x.dequeued];
    hist.push({ t: Date.now(), d });
    if (hist.length > 150) hist.shift();
    sessionStorage.setItem(KEY, JSON.stringify(hist));
  } catch (e) { return; }
  rates(); chart();
}
async function refresh() {
  try {
    const r = await fetch(at("/admin/console"), { cache: "no-store" });
    if (!r.ok) return;
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    const fresh = doc.getElementById("main");
    if (fresh) document.getElementById("main").replaceWith(fresh);
  } catch (e) { return; }
  rates(); chart();
}
async function post(url, question) {
  if (question && !confirm(question)) return;
  const r = await fetch(at(url), { method: "POST" });
  document.getElementById("result").textContent = await r.text();
  refresh();
}
const q = encodeURIComponent;
document.addEventListener("click", ev => {
  const b = ev.target.closest("button[data-act]");
  if (!b) return;
  const dest = b.dataset.dest;
  switch (b.dataset.act) {
    case "purge": return post("/admin/purge?destination=" + q(dest), "Purge " + dest + "?");
    case "delete": return post("/admin/delete?destination=" + q(dest), "Delete " + dest + "?");
    case "retry": return post("/admin/retry?destination=" + q(dest), null);
    case "move": {
      const to = prompt("Move the waiting messages of " + dest + " to queue:", "/queue/");
      return to ? post("/admin/move?from=" + q(dest) + "&to=" + q(to), null) : undefined;
    }
    case "remove-durable":
      return post("/admin/remove-durable?client-id=" + q(b.dataset.client) + "&name=" +
        q(b.dataset.name), "Remove durable subscription " + b.dataset.name + "?");
  }
});
poll();
setInterval(poll, 2000);
setInterval(refresh, 5000);
"##;
