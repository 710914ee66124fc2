//! The admin commands (`hamq status`, `hamq queues`, `hamq browse DEST`, `hamq purge DEST`): a
//! small HTTP client of the broker's status listener on this host (`status_listen`), printing
//! the plain-text tables it answers. Runs on the main thread of a short-lived process.

use crate::config::Config;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The commands and the usage line that names them.
pub const USAGE: &str = "hamq status | queues | browse /queue/NAME | purge /queue/NAME";

/// Run the command in `args` (after `hamq`); Ok(output) on an HTTP 200, Err(message) otherwise.
pub fn run(config: &Config, args: &[String]) -> Result<String, String> {
    let (method, path) = match args {
        [c] if c == "status" => ("GET", "/admin/status".to_string()),
        [c] if c == "queues" => ("GET", "/admin/queues".to_string()),
        [c, d] if c == "browse" => ("GET", format!("/admin/browse?destination={}", encode(d))),
        [c, d] if c == "purge" => ("POST", format!("/admin/purge?destination={}", encode(d))),
        _ => return Err(format!("usage: {USAGE}")),
    };
    let Some(addr) = config.status_listen else {
        return Err("status_listen is not set in the configuration: no broker to ask".to_string());
    };
    let addr = crate::server::wake_address(addr);
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("no broker answers on {addr} (status_listen): {e}"))?;
    let timeout = Some(Duration::from_secs(5));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if head.starts_with("HTTP/1.1 200") {
        Ok(body.to_string())
    } else {
        Err(body.trim_end().to_string())
    }
}

/// Percent-encode a destination for the query string.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
