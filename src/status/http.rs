//! The status listener's HTTP/1.1 transport: accept, read one request head, answer, close.
//!
//! An accept thread hands each connection to a thread of its own, so a slow or silent client
//! (a slowloris, a scanner, a wrong password being hashed) never delays a load balancer's
//! `/health`. What bounds it: at most `MAX_CONNECTIONS` at once (more get a 503 at once, on the
//! accept thread, with a short write timeout), the whole request head within `REQUEST_TIMEOUT`
//! of the accept however slowly it trickles in (then 408), `MAX_HEAD` bytes of it (then 431),
//! and the answer written within `WRITE_TIMEOUT`. One request per connection
//! (`Connection: close`): there is no idle connection to time out. `HEAD` is answered as `GET`
//! without the body.
//!
//! Why not a server crate: the blocking ones (tiny_http 0.12, the one the models use) have no
//! per-connection timeouts and an unbounded thread pool, and the others need an async runtime,
//! which the broker's shape rules out. The head is parsed by `httparse` (hyper's parser) and
//! query values decoded by `percent-encoding`; this file only adds the bounds.

use crate::shutdown::Shutdown;
use crate::transport::{accept_tls, Transport};
use percent_encoding::percent_decode_str;
use rustls::ServerConfig;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections served at once; more are answered 503 at once.
pub const MAX_CONNECTIONS: usize = 64;
/// From accept to the end of the request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Writing the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Each read waits at most this long, so the deadline is checked often.
const READ_STEP: Duration = Duration::from_millis(100);

/// One request, as the endpoints need it.
#[derive(Debug, Default)]
pub struct Request {
    /// `GET` also for a `HEAD` request (see `head_only`).
    pub method: String,
    pub path: String,
    /// The raw query string, after `?`.
    pub query: String,
    pub authorization: Option<String>,
    /// The request was `HEAD`: the answer carries no body.
    pub head_only: bool,
}

impl Request {
    /// The first value of query parameter `name`, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| {
                let v = v.replace('+', " ");
                percent_decode_str(&v).decode_utf8_lossy().into_owned()
            })
    }
}

/// One answer.
pub struct Response {
    pub code: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn new(code: u16, content_type: &'static str, body: String) -> Response {
        Response {
            code,
            content_type,
            body,
        }
    }

    pub fn text(code: u16, body: String) -> Response {
        Response::new(code, "text/plain; charset=utf-8", body)
    }
}

/// What answers a request; runs on the request's own thread.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Accept on `listener` until shutdown, each connection on a thread of its own; with `tls`,
/// each speaks HTTPS (the handshake counts in the request's deadline).
pub fn serve(
    listener: TcpListener,
    shutdown: Arc<Shutdown>,
    handler: Handler,
    tls: Option<Arc<ServerConfig>>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if shutdown.is_stopping() {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                log::warn!("status accept failed: {e}");
                shutdown.sleep(Duration::from_millis(100));
                continue;
            }
        };
        let accepted = Instant::now();
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let busy = format!("{MAX_CONNECTIONS} status connections are open: the limit\n");
            write(
                Transport::Plain(stream),
                &Response::text(503, busy),
                false,
                Duration::from_millis(200),
            );
            continue;
        }
        let (handler, count) = (handler.clone(), active.clone());
        let (tls, stopping) = (tls.clone(), shutdown.clone());
        let spawned = std::thread::Builder::new()
            .name("status-conn".to_string())
            .spawn(move || {
                let stream = match tls {
                    None => Ok(Transport::Plain(stream)),
                    Some(tls) => accept_tls(stream, tls, (accepted, REQUEST_TIMEOUT), &stopping),
                };
                match stream {
                    Ok(stream) => answer(stream, accepted, &handler),
                    Err(why) => log::debug!("status connection dropped: {why}"),
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn answer(mut stream: Transport, accepted: Instant, handler: &Handler) {
    let (response, head_only) = match read_request(&mut stream, accepted) {
        Ok(request) => (handler(&request), request.head_only),
        Err(refused) => (refused, false),
    };
    write(stream, &response, head_only, WRITE_TIMEOUT);
}

/// The request head, within the deadline and size bound, or the answer that refuses it.
fn read_request(stream: &mut Transport, accepted: Instant) -> Result<Request, Response> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = REQUEST_TIMEOUT.saturating_sub(accepted.elapsed());
        if left.is_zero() {
            let why = format!(
                "no whole request within {} ms\n",
                REQUEST_TIMEOUT.as_millis()
            );
            return Err(Response::text(408, why));
        }
        let _ = stream.socket().set_read_timeout(Some(left.min(READ_STEP)));
        match stream.read(&mut buf) {
            Ok(0) => return Err(Response::text(400, "the request ended early\n".to_string())),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Response::text(400, format!("reading the request: {e}\n"))),
        }
        if let Some(request) = parse(&head)? {
            return Ok(request);
        }
        if head.len() > MAX_HEAD {
            let why = format!("request head over {MAX_HEAD} bytes\n");
            return Err(Response::text(431, why));
        }
    }
}

/// `Ok(None)`: not whole yet.
fn parse(bytes: &[u8]) -> Result<Option<Request>, Response> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            let method = parsed.method.unwrap_or_default();
            let target = parsed.path.unwrap_or_default();
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let authorization = parsed
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::to_string);
            let head_only = method == "HEAD";
            Ok(Some(Request {
                method: if head_only { "GET" } else { method }.to_string(),
                path: path.to_string(),
                query: query.to_string(),
                authorization,
                head_only,
            }))
        }
        Err(e) => Err(Response::text(400, format!("not an HTTP request: {e}\n"))),
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn write(mut stream: Transport, response: &Response, head_only: bool, timeout: Duration) {
    let _ = stream.socket().set_write_timeout(Some(timeout));
    let challenge = match response.code {
        401 => "WWW-Authenticate: Basic realm=\"hamq\"\r\n",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{challenge}\
         Connection: close\r\n\r\n",
        response.code,
        reason(response.code),
        response.content_type,
        response.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(response.body.as_bytes());
    }
    let _ = stream.write_all(&out).and_then(|()| stream.flush());
    let _ = stream.close_write();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed_whole_or_asked_for_more() {
        assert!(matches!(parse(b"GET /hea"), Ok(None)));
        let request = parse(
            b"HEAD /admin/browse?destination=%2Fqueue%2Fa+b HTTP/1.1\r\n\
            Authorization: Basic eDp5\r\n\r\n",
        )
        .ok()
        .flatten()
        .expect("a whole request");
        assert_eq!((request.method.as_str(), request.head_only), ("GET", true));
        assert_eq!(request.path, "/admin/browse");
        assert_eq!(request.param("destination").as_deref(), Some("/queue/a b"));
        assert_eq!(request.authorization.as_deref(), Some("Basic eDp5"));
        assert!(parse(b"\x01\x02 garbage\r\n\r\n").is_err());
    }
}
