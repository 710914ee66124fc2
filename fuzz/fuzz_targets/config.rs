//! Fuzz target: the configuration parser (`hamq::config::Config::parse`).
//!
//! The input (raw, read as UTF-8 lossily, so that `config.dict` and libFuzzer's comparisons work
//! on it directly) is the file's text up to the first NUL, then environment variables
//! `NAME=VALUE`, one per NUL-separated part. Checked: no panic; an error names a line that
//! exists or a variable that was given; an accepted config keeps the rules `set` enforces
//! (positive limits, a lease of at least 2 s, logins not empty).
#![no_main]

use hamq::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    let mut parts = input.split('\0');
    let text = parts.next().unwrap_or_default();
    let env: Vec<(String, String)> = parts
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            (name.to_string(), value.to_string())
        })
        .collect();
    match Config::parse(text, "fuzz.conf", env.clone()) {
        Ok(c) => {
            assert!(c.max_command_line > 0 && c.max_header_line > 0);
            assert!(c.max_headers > 0 && c.max_frame > 0 && c.default_prefetch > 0);
            assert!(c.lease.as_secs() >= 2);
            assert!(!c.name.is_empty());
            assert!(c.users.iter().all(|(login, _)| !login.is_empty()));
            assert!(c.keepalive() < c.lease && c.store_io_timeout() < c.lease);
        }
        Err(e) => {
            let lines = text.lines().count();
            let from_file = e
                .origin
                .strip_prefix("line ")
                .and_then(|o| o.strip_suffix(" of fuzz.conf"))
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n >= 1 && n <= lines);
            let from_env = e
                .origin
                .strip_prefix("environment variable ")
                .is_some_and(|var| env.iter().any(|(name, _)| name == var));
            assert!(from_file || from_env, "bad origin: {e}");
            assert!(!e.problem.is_empty(), "{e}");
        }
    }
});
