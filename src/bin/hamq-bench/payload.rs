//! Message bodies: a text stamp `hamq-bench <run> <producer> <seq> <sent_ns>\n` (the run id
//! tells this run's messages from leftovers of earlier runs; `sent_ns` is on this process's
//! monotonic clock) padded to the requested size with a binary pattern that includes NULs, so
//! that consumers can check counts, order-free duplicates and body integrity, and compute
//! send-to-delivery latency.

use std::sync::OnceLock;
use std::time::Instant;

const MAGIC: &str = "hamq-bench";

/// Nanoseconds since the first call in this process (a monotonic clock shared by threads).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A run id unlikely to repeat: wall clock nanos mixed with the process id.
pub fn new_run_id() -> u64 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (wall ^ (u64::from(std::process::id()) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// What a body says about itself.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Stamp {
    pub run: u64,
    pub producer: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

/// The padding byte at offset `i` of a body.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// The body for `stamp`: at least the stamp line, padded with the pattern up to `size`.
pub fn encode(stamp: &Stamp, size: usize) -> Vec<u8> {
    let mut body = format!(
        "{MAGIC} {:016x} {} {} {}\n",
        stamp.run, stamp.producer, stamp.seq, stamp.sent_ns
    )
    .into_bytes();
    let start = body.len();
    body.extend((start..size.max(start)).map(pattern));
    body
}

/// Why a body is not one of ours, or is damaged.
#[derive(Debug, PartialEq, Eq)]
pub enum Bad {
    /// Not a hamq-bench body at all.
    Foreign,
    /// Ours, but the padding or the length is wrong.
    Corrupt(String),
}

/// Parses a body made by [`encode`] with the same `size`.
pub fn decode(body: &[u8], size: usize) -> Result<Stamp, Bad> {
    let nl = body
        .iter()
        .take(128)
        .position(|&b| b == b'\n')
        .ok_or(Bad::Foreign)?;
    let line = std::str::from_utf8(&body[..nl]).map_err(|_| Bad::Foreign)?;
    let mut parts = line.split(' ');
    if parts.next() != Some(MAGIC) {
        return Err(Bad::Foreign);
    }
    let field = |p: Option<&str>, radix: u32| {
        p.and_then(|s| u64::from_str_radix(s, radix).ok())
            .ok_or_else(|| Bad::Corrupt(format!("bad stamp line {line:?}")))
    };
    let run = field(parts.next(), 16)?;
    let producer = field(parts.next(), 10)? as u32;
    let seq = field(parts.next(), 10)?;
    let sent_ns = field(parts.next(), 10)?;
    let stamp = Stamp {
        run,
        producer,
        seq,
        sent_ns,
    };
    let want = size.max(nl + 1);
    if body.len() != want {
        return Err(Bad::Corrupt(format!(
            "body of {} bytes, sent with {want}",
            body.len()
        )));
    }
    if let Some(i) = (nl + 1..body.len()).find(|&i| body[i] != pattern(i)) {
        return Err(Bad::Corrupt(format!("body byte {i} changed")));
    }
    Ok(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        run: 0xfeed_beef_0000_0001,
        producer: 3,
        seq: 12345,
        sent_ns: 987_654_321,
    };

    #[test]
    fn roundtrip_with_nuls_in_the_padding() {
        let body = encode(&STAMP, 1024);
        assert_eq!(body.len(), 1024);
        assert!(body.contains(&0));
        assert_eq!(decode(&body, 1024), Ok(STAMP));
    }

    #[test]
    fn small_sizes_give_the_stamp_line_alone() {
        let body = encode(&STAMP, 1);
        assert_eq!(body.last(), Some(&b'\n'));
        assert_eq!(decode(&body, 1), Ok(STAMP));
    }

    #[test]
    fn damage_and_foreign_bodies_are_told_apart() {
        let mut body = encode(&STAMP, 600);
        body[500] ^= 1;
        assert!(matches!(decode(&body, 600), Err(Bad::Corrupt(_))));
        let body = encode(&STAMP, 600);
        assert!(matches!(decode(&body[..599], 600), Err(Bad::Corrupt(_))));
        assert_eq!(decode(b"hello world\n", 600), Err(Bad::Foreign));
        assert_eq!(decode(b"", 600), Err(Bad::Foreign));
    }
}
