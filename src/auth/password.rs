//! Salted, slow password hashes: PBKDF2-HMAC-SHA256 (RustCrypto `pbkdf2` and `sha2`), written
//! as `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>` in the `users` key.
//!
//! Pure functions apart from the salt, which comes from /dev/urandom. Called by `config` (parse),
//! by the `hamq hash` command (new) and by `auth` on a session's reader thread or the status
//! thread (verify). PBKDF2 rather than argon2 or scrypt: after a failover hundreds of clients
//! reconnect at once, one thread each, and PBKDF2 needs no memory per verification.

use sha2::Sha256;
use std::fmt;
use std::io::Read;
use subtle::ConstantTimeEq;

/// The scheme's name, the first field of the string.
const SCHEME: &str = "pbkdf2-sha256";
/// Iterations of new hashes unless `hamq hash --iterations N` says otherwise: one verification
/// takes about 30 ms on one core of an x86 server with SHA extensions (a release build; several
/// times that without them): slow for a guesser, cheap for one CONNECT (and remembered, see
/// `auth`).
pub const ITERATIONS: u32 = 300_000;
/// Fewer iterations than this are refused in the configuration: such a hash is too quick to guess.
pub const MIN_ITERATIONS: u32 = 10_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;

/// One user's stored password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: u32,
    salt: [u8; SALT_LEN],
    hash: [u8; HASH_LEN],
}

/// Never print the hash itself in a `{:?}` (configs end up in logs).
impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordHash({SCHEME}, {} iterations)", self.iterations)
    }
}

/// The string to put in the configuration.
impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}${}${}${}",
            self.iterations,
            hex(&self.salt),
            hex(&self.hash)
        )
    }
}

impl PasswordHash {
    /// Hash `password` with a fresh random salt.
    pub fn new(password: &str, iterations: u32) -> std::io::Result<PasswordHash> {
        Ok(PasswordHash::with_salt(
            password,
            random_bytes()?,
            iterations,
        ))
    }

    /// Hash `password` with the given salt and iteration count.
    pub fn with_salt(password: &str, salt: [u8; SALT_LEN], iterations: u32) -> PasswordHash {
        PasswordHash {
            iterations,
            salt,
            hash: derive(password, &salt, iterations),
        }
    }

    /// A hash no password is known to match that costs `iterations` to check against.
    pub fn decoy(iterations: u32) -> std::io::Result<PasswordHash> {
        Ok(PasswordHash {
            iterations,
            salt: random_bytes()?,
            hash: random_bytes()?,
        })
    }

    /// Whether `password` is the one hashed; the comparison takes the same time wherever the
    /// hashes differ.
    pub fn verify(&self, password: &str) -> bool {
        let candidate = derive(password, &self.salt, self.iterations);
        candidate.ct_eq(&self.hash).into()
    }

    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Parse the configuration's string; the error says what is wrong, never echoing the text
    /// (a plain-text password must not end up in a log).
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let fields: Vec<&str> = text.split('$').collect();
        let [scheme, iterations, salt, hash] = fields[..] else {
            return Err(format!(
                "is not a hash like {SCHEME}$<iterations>$<salt hex>$<hash hex> \
                 (plain-text passwords are refused: make one with `hamq hash`)"
            ));
        };
        if scheme != SCHEME {
            return Err(format!(
                "does not start with {SCHEME}$ (the only scheme known)"
            ));
        }
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| "has an iteration count that is not a number".to_string())?;
        if iterations < MIN_ITERATIONS {
            return Err(format!(
                "has {iterations} iterations; at least {MIN_ITERATIONS} are required"
            ));
        }
        let salt = unhex(salt).ok_or(format!("needs a salt of {SALT_LEN} bytes in hex"))?;
        let hash = unhex(hash).ok_or(format!("needs a hash of {HASH_LEN} bytes in hex"))?;
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }
}

fn derive(password: &str, salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
    out
}

/// `N` bytes from the kernel's random source.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut out = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut out)?;
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly `N` bytes of hex (either case), or None.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_hash_verifies_its_password_only() {
        let hash = PasswordHash::new("s3cret", MIN_ITERATIONS).unwrap();
        assert!(hash.verify("s3cret"));
        assert!(!hash.verify("s3cret "));
        assert!(!hash.verify(""));
        assert_eq!(hash.iterations(), MIN_ITERATIONS);
    }

    #[test]
    fn the_string_round_trips_and_salts_differ() {
        let a = PasswordHash::new("pw", 12_345).unwrap();
        let b = PasswordHash::new("pw", 12_345).unwrap();
        assert_ne!(a.to_string(), b.to_string(), "same salt twice");
        let text = a.to_string();
        assert!(text.starts_with("pbkdf2-sha256$12345$"), "{text}");
        assert_eq!(text.len(), "pbkdf2-sha256$12345$".len() + 32 + 1 + 64);
        let parsed = PasswordHash::parse(&text).unwrap();
        assert_eq!(parsed, a);
        assert!(parsed.verify("pw"));
    }

    #[test]
    fn matches_a_published_pbkdf2_sha256_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256("passwd", "salt", 1), first 32 bytes.
        let out = derive("passwd", b"salt", 1);
        assert_eq!(
            hex(&out),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
    }

    #[test]
    fn bad_strings_are_refused_without_echoing_them() {
        let salt = "00".repeat(SALT_LEN);
        let hash = "ab".repeat(HASH_LEN);
        let cases = [
            ("guest".to_string(), "plain-text passwords are refused"),
            (format!("md5$60000${salt}${hash}"), "the only scheme known"),
            (format!("{SCHEME}$many${salt}${hash}"), "not a number"),
            (format!("{SCHEME}$1000${salt}${hash}"), "at least 10000"),
            (format!("{SCHEME}$60000$00${hash}"), "salt of 16 bytes"),
            (
                format!("{SCHEME}$60000${salt}$zz{}", &hash[2..]),
                "hash of 32",
            ),
            (
                format!("{SCHEME}$60000${salt}${hash}$x"),
                "is not a hash like",
            ),
        ];
        for (text, needle) in cases {
            let err = PasswordHash::parse(&text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(!err.contains(&hash) && !err.contains("guest"), "{err}");
        }
        let ok = format!("{SCHEME}$60000${}${hash}", salt.to_uppercase());
        assert!(PasswordHash::parse(&ok).is_ok());
    }
}
