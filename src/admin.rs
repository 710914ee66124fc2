//! The admin commands (`hamq status`, `queues`, `browse`, `connections`, `durables`, `purge`,
//! `move`, `retry`, `delete`, `remove-durable`): a small HTTP client of a broker's status listener (`status_listen` of the configuration, or
//! `--url` / `HAMQ_ADMIN_URL`), printing the plain-text tables it answers (`--json`: the
//! `/status` document, for `status` and `queues`), with the credentials of `HAMQ_ADMIN_USER` and
//! `HAMQ_ADMIN_PASSWORD` when set. And `hamq hash`, which needs no broker: it reads a password
//! on stdin and prints its hash for the `users` key. Runs on the main thread of a short-lived
//! process.

use crate::auth::password::{self, PasswordHash};
use crate::config::Config;
use crate::status::query_value;
use base64::Engine;
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The commands and the usage line that names them.
pub const USAGE: &str = "[--url http://HOST:PORT] [--json] ADMIN-COMMAND
       hamq hash [--iterations N]       a password's hash for `users` (password on stdin)
       hamq --help | --version

ADMIN-COMMAND (--json for those that list):
  status                      this broker: role, master, epoch, database, uptime
  queues                      each destination: depth, in flight, consumers, counters
  browse /queue/NAME          the first 100 waiting messages: headers, size, age, body
  connections                 each client: address, login, subscriptions, in flight, idle
  durables                    durable topic subscriptions: client-id, name, topic, pending
  purge /queue/NAME           remove a queue's waiting messages
  move /queue/FROM /queue/TO  move up to 10000 waiting messages to another queue
  retry /queue/DLQ.NAME       move dead-lettered messages back to /queue/NAME
  delete /queue/NAME          forget a queue (and its waiting messages); none may consume
  remove-durable CLIENT-ID NAME   delete an inactive durable subscription and what it holds

The admin commands ask a broker's status listener: --url (or HAMQ_ADMIN_URL), else the
configuration's status_listen (over HTTPS when status_tls_cert is set; an https URL trusts the
CA certificate in HAMQ_ADMIN_CA, else status_tls_cert). Credentials: HAMQ_ADMIN_USER and HAMQ_ADMIN_PASSWORD (a user of
`users`; with the shipped config, guest and guest). --json: JSON instead of a table (for
status and queues, the /status document).
";

/// Run the command in `args` (after `hamq`); Ok(output) on an HTTP 200, Err(message) otherwise.
pub fn run(config: &Config, args: &[String]) -> Result<String, String> {
    let mut url = std::env::var("HAMQ_ADMIN_URL").ok();
    let mut json = false;
    let mut words = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--url" => url = Some(rest.next().ok_or("--url needs http://HOST:PORT")?.clone()),
            "--json" => json = true,
            _ => words.push(arg.as_str()),
        }
    }
    let format = if json { "&format=json" } else { "" };
    let (method, path) = match (words.as_slice(), json) {
        (["status" | "queues"], true) => ("GET", "/status".to_string()),
        (["status"], false) => ("GET", "/admin/status".to_string()),
        (["queues"], false) => ("GET", "/admin/queues".to_string()),
        (["browse", d], _) => (
            "GET",
            format!("/admin/browse?destination={}{format}", query_value(d)),
        ),
        (["connections"], _) => ("GET", format!("/admin/connections?{format}")),
        (["durables"], _) => ("GET", format!("/admin/durables?{format}")),
        (["purge", d], false) => (
            "POST",
            format!("/admin/purge?destination={}", query_value(d)),
        ),
        (["delete", d], false) => (
            "POST",
            format!("/admin/delete?destination={}", query_value(d)),
        ),
        (["retry", d], false) => (
            "POST",
            format!("/admin/retry?destination={}", query_value(d)),
        ),
        (["move", from, to], false) => (
            "POST",
            format!(
                "/admin/move?from={}&to={}",
                query_value(from),
                query_value(to)
            ),
        ),
        (["remove-durable", client_id, name], false) => (
            "POST",
            format!(
                "/admin/remove-durable?client-id={}&name={}",
                query_value(client_id),
                query_value(name)
            ),
        ),
        _ => return Err(format!("usage: hamq {USAGE}")),
    };
    let target = match url {
        Some(url) => parse_url(&url)?,
        None => match config.status_listen {
            Some(addr) => {
                let addr = crate::shutdown::wake_address(addr);
                let tls = config.status_tls_cert.is_some();
                Target {
                    addr,
                    host: addr.ip().to_string(),
                    tls,
                }
            }
            None => {
                return Err(
                    "status_listen is not set in the configuration and no --url \
                            was given: no broker to ask"
                        .to_string(),
                )
            }
        },
    };
    let addr = target.addr;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("no broker answers on {addr} (status_listen): {e}"))?;
    let timeout = Some(Duration::from_secs(5));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let credentials = credentials()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{credentials}Connection: close\r\n\r\n"
    );
    let response = if target.tls {
        let client = tls_client(config, &target.host)?;
        exchange(rustls::StreamOwned::new(client, stream), &request, addr)?
    } else {
        exchange(stream, &request, addr)?
    };
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if head.starts_with("HTTP/1.1 200") {
        Ok(body.to_string())
    } else if head.starts_with("HTTP/1.1 401") {
        Err(format!(
            "{} (give a user with HAMQ_ADMIN_USER and HAMQ_ADMIN_PASSWORD)",
            body.trim_end()
        ))
    } else {
        Err(body.trim_end().to_string())
    }
}

/// Where the admin command sends its request.
struct Target {
    addr: std::net::SocketAddr,
    /// The host as the URL names it, for the certificate's name.
    host: String,
    tls: bool,
}

/// Write the request, read the whole response (the broker closes after it).
fn exchange(
    mut stream: impl Read + Write,
    request: &str,
    addr: std::net::SocketAddr,
) -> Result<String, String> {
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.flush())
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut response = Vec::new();
    if let Err(e) = stream.read_to_end(&mut response) {
        // A TLS peer that closed without close_notify: what came is still the answer.
        if response.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(format!("reading from {addr}: {e}"));
        }
    }
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// A TLS client for the status listener at `host`, trusting the CA certificates of
/// `HAMQ_ADMIN_CA`, else those in the configuration's `status_tls_cert` (a self-signed
/// certificate, or a chain that holds its CA).
fn tls_client(config: &Config, host: &str) -> Result<rustls::ClientConnection, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let (origin, path) = match (std::env::var("HAMQ_ADMIN_CA"), &config.status_tls_cert) {
        (Ok(path), _) => ("HAMQ_ADMIN_CA", std::path::PathBuf::from(path)),
        (Err(_), Some(path)) => ("status_tls_cert", path.clone()),
        (Err(_), None) => {
            return Err("the URL is https: give the CA's certificate in HAMQ_ADMIN_CA".to_string())
        }
    };
    let shown = path.display();
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| format!("{origin} {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{origin} {shown}: not a PEM certificate: {e}"))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("{origin} {shown}: {e}"))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: not a name for a certificate: {e}"))?;
    rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(|e| format!("TLS setup: {e}"))
}

/// The `Authorization` header line from `HAMQ_ADMIN_USER` and `HAMQ_ADMIN_PASSWORD`, or nothing
/// when neither is set.
fn credentials() -> Result<String, String> {
    let user = std::env::var("HAMQ_ADMIN_USER").ok();
    let password = std::env::var("HAMQ_ADMIN_PASSWORD").ok();
    match (user, password) {
        (None, None) => Ok(String::new()),
        (Some(user), Some(password)) => {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            Ok(format!("Authorization: Basic {token}\r\n"))
        }
        _ => Err("set both HAMQ_ADMIN_USER and HAMQ_ADMIN_PASSWORD, or neither".to_string()),
    }
}

/// `hamq hash [--iterations N]`: the hash of the password on the first line of `input`, as the
/// `users` key wants it (`login:` goes before it). Reading stdin keeps the password out of shell
/// history and `ps`.
pub fn hash(args: &[String], input: impl BufRead) -> Result<String, String> {
    let iterations = match args {
        [] => password::ITERATIONS,
        [flag, n] if flag == "--iterations" => n
            .parse()
            .ok()
            .filter(|n| *n >= password::MIN_ITERATIONS)
            .ok_or(format!(
                "--iterations needs a number of at least {}",
                password::MIN_ITERATIONS
            ))?,
        _ => return Err(format!("usage: {USAGE}")),
    };
    let mut line = String::new();
    input
        .take(64 * 1024)
        .read_line(&mut line)
        .map_err(|e| format!("reading the password from stdin: {e}"))?;
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    if password.is_empty() {
        return Err("no password on stdin (an empty password is not accepted)".to_string());
    }
    if password.contains(['\r', '\n', '\0']) {
        return Err(
            "the password may not contain CR, LF or NUL (STOMP cannot send them)".to_string(),
        );
    }
    let hash = PasswordHash::new(password, iterations)
        .map_err(|e| format!("cannot read /dev/urandom for a salt: {e}"))?;
    Ok(format!("{hash}\n"))
}

/// `http://HOST:PORT`, `https://HOST:PORT` (or `HOST:PORT`, plain) as where to connect.
fn parse_url(url: &str) -> Result<Target, String> {
    use std::net::ToSocketAddrs;
    let bad = || format!("--url `{url}` is not http://HOST:PORT or https://HOST:PORT");
    let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => (false, url),
    };
    let authority = rest.trim_end_matches('/');
    let addr = authority
        .to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)?;
    let host = match authority.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => authority,
    };
    Ok(Target {
        addr,
        host: host.to_string(),
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(input: &str, args: &[&str]) -> Result<String, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        hash(&args, input.as_bytes())
    }

    #[test]
    fn hash_prints_a_hash_of_the_first_line() {
        let iterations = ["--iterations", "10000"];
        for input in ["s3cret:x\n", "s3cret:x\r\nignored", "s3cret:x"] {
            let out = hash_of(input, &iterations).unwrap();
            let line = out.strip_suffix('\n').unwrap();
            let parsed = PasswordHash::parse(line).unwrap();
            assert!(parsed.verify("s3cret:x"), "{input:?}");
            assert_eq!(parsed.iterations(), 10_000);
        }
        assert_eq!(
            hash_of("", &iterations).unwrap_err(),
            "no password on stdin (an empty password is not accepted)"
        );
        assert!(hash_of("a\0b\n", &iterations).unwrap_err().contains("NUL"));
        assert!(hash_of("pw", &["--iterations", "9999"])
            .unwrap_err()
            .contains("at least 10000"));
        assert!(hash_of("pw", &["--rounds", "9"])
            .unwrap_err()
            .starts_with("usage"));
    }
}
