//! Looking at a running broker from outside: its status listener over HTTP, its figures in
//! /metrics, and its resident memory from /proc.

use super::TIMEOUT;
use base64::Engine;
use std::io::{Read, Write};
use std::net::TcpStream;

/// (status code, body) of one HTTP request to the status listener on `port`.
pub fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let (code, _, body) = http_as(port, method, path, None);
    (code, body)
}

/// (status code, head, body) of one HTTP request, with Basic credentials when given.
pub fn http_as(
    port: u16,
    method: &str,
    path: &str,
    user: Option<(&str, &str)>,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the status listener");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let authorization = user
        .map(|(u, p)| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            format!("Authorization: Basic {token}\r\n")
        })
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{authorization}\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(length, body.len(), "Content-Length");
    (code, head.to_string(), body.to_string())
}

/// The value of the unlabelled series `name` in /metrics of the status listener on `port`.
pub fn metric(port: u16, name: &str) -> u64 {
    let (code, body) = http(port, "GET", "/metrics");
    assert_eq!(code, 200, "GET /metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
        .parse()
        .unwrap_or_else(|e| panic!("{name} is not a number: {e}"))
}

/// Threads of the live process `pid`.
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .count()
}

/// Memory mappings of the live process `pid`.
pub fn mapping_count(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .expect("the process's maps")
        .lines()
        .count()
}

/// Resident set size of `pid` in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
