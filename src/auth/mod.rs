//! Who may connect and what they may do: the configured users' password hashes (`password`),
//! the `permit` rules (`permit`), and a cache of verified logins.
//!
//! One `Authenticator` per broker process, shared (`Arc`) by every session's reader thread
//! (CONNECT, SEND, SUBSCRIBE) and the status thread (admin endpoints); it calls nothing else.
//! A password verification is deliberately slow (tens of ms of one core, see `password`), and
//! after a failover every client reconnects at once, so successful verifications are remembered
//! for the life of the process and concurrent attempts with the same credentials wait for one
//! verification instead of each running their own. `reload` (SIGHUP) swaps users and rules
//! and forgets every remembered login, so a changed or removed password stops working at once.

pub mod password;
pub mod permit;

use password::PasswordHash;
use permit::{Operation, Permit};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

/// The outcome of checking CONNECT's (or HTTP Basic) credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Login {
    /// No users are configured: everyone is let in, whatever login they give.
    Anonymous,
    /// The configured user with this login gave its password.
    User(String),
    /// Unknown login, wrong password, or none given while users are configured.
    Refused,
}

impl Login {
    /// The user's login; None for anonymous or refused.
    pub fn user(&self) -> Option<&str> {
        match self {
            Login::User(login) => Some(login),
            _ => None,
        }
    }
}

/// A digest of (process key, login, password): what the cache holds instead of passwords.
type Key = [u8; 32];

/// The configured users and rules, swapped whole by `reload`.
struct Rules {
    users: HashMap<String, PasswordHash>,
    permits: Vec<Permit>,
    /// Verified against for an unknown login, so that it costs as much as a wrong password.
    decoy: PasswordHash,
}

impl Rules {
    fn new(users: Vec<(String, PasswordHash)>, permits: Vec<Permit>) -> std::io::Result<Rules> {
        let iterations = users
            .iter()
            .map(|(_, hash)| hash.iterations())
            .max()
            .unwrap_or(password::ITERATIONS);
        Ok(Rules {
            users: users.into_iter().collect(),
            permits,
            decoy: PasswordHash::decoy(iterations)?,
        })
    }
}

pub struct Authenticator {
    rules: RwLock<Arc<Rules>>,
    /// Random per process: a cache entry says nothing outside this process.
    process_key: [u8; 32],
    /// Credentials that verified; at most one entry per user, as only right passwords enter.
    verified: Mutex<HashSet<Key>>,
    /// Credentials being verified now: a later attempt with the same ones waits on this gate
    /// and then finds them in `verified`. Removed by the last thread holding the gate.
    verifying: Mutex<HashMap<Key, Arc<Mutex<()>>>>,
    /// How many PBKDF2 verifications ran (for tests and diagnostics of the cache).
    verifications: AtomicU64,
}

impl Authenticator {
    /// Fails only when the kernel's random source cannot be read.
    pub fn new(
        users: Vec<(String, PasswordHash)>,
        permits: Vec<Permit>,
    ) -> std::io::Result<Authenticator> {
        Ok(Authenticator {
            rules: RwLock::new(Arc::new(Rules::new(users, permits)?)),
            process_key: password::random_bytes()?,
            verified: Mutex::new(HashSet::new()),
            verifying: Mutex::new(HashMap::new()),
            verifications: AtomicU64::new(0),
        })
    }

    /// Replace the users and rules (a reloaded configuration). Logins remembered under the old
    /// ones are forgotten; connections already logged in stay (as after any password change,
    /// until they reconnect). Fails only when the kernel's random source cannot be read.
    pub fn reload(
        &self,
        users: Vec<(String, PasswordHash)>,
        permits: Vec<Permit>,
    ) -> std::io::Result<()> {
        let rules = Arc::new(Rules::new(users, permits)?);
        *self.rules.write().unwrap_or_else(PoisonError::into_inner) = rules;
        lock(&self.verified).clear();
        Ok(())
    }

    fn rules(&self) -> Arc<Rules> {
        self.rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether logins are checked at all (some user is configured).
    pub fn enabled(&self) -> bool {
        !self.rules().users.is_empty()
    }

    /// The outcome of `login` when it is known without a password hash: no users configured
    /// (anonymous), or these credentials verified before. None: only `login` can tell. (The
    /// status listener lets one password check run at a time, and a known admin need not wait
    /// behind guessers for it.)
    pub fn known_login(&self, login: Option<&str>, password: Option<&str>) -> Option<Login> {
        if !self.enabled() {
            return Some(Login::Anonymous);
        }
        let (login, password) = (login.unwrap_or(""), password.unwrap_or(""));
        let verified = self.is_verified(&self.key(login, password));
        verified.then(|| Login::User(login.to_string()))
    }

    /// Check a login and password. Blocks this thread for one verification at most (plus the
    /// wait for a concurrent one with the same credentials).
    pub fn login(&self, login: Option<&str>, password: Option<&str>) -> Login {
        if let Some(known) = self.known_login(login, password) {
            return known;
        }
        let (login, password) = (login.unwrap_or(""), password.unwrap_or(""));
        let key = self.key(login, password);
        let gate = lock(&self.verifying).entry(key).or_default().clone();
        let passed = {
            let _turn = lock(&gate);
            self.is_verified(&key) || self.verify(&key, login, password)
        };
        let mut verifying = lock(&self.verifying);
        // Two holders (the map and this thread): no one else waits on the gate. Others
        // clone it only while holding the map's lock, so the count cannot change here.
        if Arc::strong_count(&gate) == 2 {
            verifying.remove(&key);
        }
        if !passed {
            return Login::Refused;
        }
        Login::User(login.to_string())
    }

    /// Whether `user` (None: anonymous) may do `operation` on `destination`. With no users
    /// or no `permit` rules configured, everything is allowed; otherwise what no rule allows
    /// is denied.
    pub fn allows(&self, user: Option<&str>, operation: Operation, destination: &str) -> bool {
        let rules = self.rules();
        if rules.users.is_empty() || rules.permits.is_empty() {
            return true;
        }
        let Some(user) = user else {
            return false;
        };
        rules
            .permits
            .iter()
            .any(|rule| rule.allows(user, operation, destination))
    }

    /// PBKDF2 verifications run so far.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    fn verify(&self, key: &Key, login: &str, password: &str) -> bool {
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let rules = self.rules();
        let passed = match rules.users.get(login) {
            Some(hash) => hash.verify(password),
            None => {
                rules.decoy.verify(password);
                false
            }
        };
        if passed {
            lock(&self.verified).insert(*key);
        }
        passed
    }

    fn is_verified(&self, key: &Key) -> bool {
        lock(&self.verified).contains(key)
    }

    fn key(&self, login: &str, password: &str) -> Key {
        Sha256::new()
            .chain_update(self.process_key)
            .chain_update((login.len() as u64).to_le_bytes())
            .chain_update(login)
            .chain_update(password)
            .finalize()
            .into()
    }
}

/// These maps stay consistent whatever a panicking holder did (inserts and removes are single
/// calls), so a poisoned lock is used as it is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashed(password: &str) -> PasswordHash {
        PasswordHash::new(password, password::MIN_ITERATIONS).unwrap()
    }

    fn users() -> Vec<(String, PasswordHash)> {
        ["app", "ops"]
            .iter()
            .map(|u| (u.to_string(), hashed(&format!("{u}-pw"))))
            .collect()
    }

    #[test]
    fn no_users_means_anonymous_and_everything_allowed() {
        let auth = Authenticator::new(Vec::new(), Vec::new()).unwrap();
        assert_eq!(auth.login(Some("x"), Some("y")), Login::Anonymous);
        assert_eq!(auth.login(None, None), Login::Anonymous);
        assert!(auth.allows(None, Operation::Admin, "/queue/a"));
        assert_eq!(auth.verifications(), 0);
    }

    #[test]
    fn only_right_passwords_of_known_users_log_in() {
        let auth = Authenticator::new(users(), Vec::new()).unwrap();
        assert_eq!(
            auth.login(Some("app"), Some("app-pw")),
            Login::User("app".to_string())
        );
        for (login, password) in [
            (Some("app"), Some("ops-pw")),
            (Some("nobody"), Some("app-pw")),
            (Some("app"), None),
            (None, None),
            (Some("appa"), Some("pp-pw")),
        ] {
            assert_eq!(auth.login(login, password), Login::Refused, "{login:?}");
        }
        assert!(auth.allows(Some("app"), Operation::Admin, "/topic/x"));
    }

    #[test]
    fn a_verified_login_is_remembered_and_concurrent_ones_verify_once() {
        let auth = Arc::new(Authenticator::new(users(), Vec::new()).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let auth = auth.clone();
                std::thread::spawn(move || auth.login(Some("ops"), Some("ops-pw")))
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap(), Login::User("ops".to_string()));
        }
        assert_eq!(auth.verifications(), 1);
        assert_eq!(
            auth.known_login(Some("ops"), Some("ops-pw")),
            Some(Login::User("ops".to_string()))
        );
        assert_eq!(auth.known_login(Some("ops"), Some("wrong")), None);
        assert_eq!(
            auth.known_login(Some("app"), Some("app-pw")),
            None,
            "not verified yet"
        );
        assert_eq!(auth.verifications(), 1, "known_login hashes no password");
        assert_eq!(auth.login(Some("ops"), Some("wrong")), Login::Refused);
        assert_eq!(auth.login(Some("ops"), Some("wrong")), Login::Refused);
        assert_eq!(auth.verifications(), 3, "failures are not remembered");
        assert!(lock(&auth.verifying).is_empty());
    }

    #[test]
    fn a_reload_replaces_users_and_forgets_remembered_logins() {
        let auth = Authenticator::new(users(), Vec::new()).unwrap();
        assert_eq!(
            auth.login(Some("app"), Some("app-pw")),
            Login::User("app".into())
        );
        let changed = vec![("app".to_string(), hashed("new-pw"))];
        let permits = vec![Permit::parse("app read /queue/>").unwrap()];
        auth.reload(changed, permits).unwrap();
        assert_eq!(auth.login(Some("app"), Some("app-pw")), Login::Refused);
        assert_eq!(auth.login(Some("ops"), Some("ops-pw")), Login::Refused);
        assert_eq!(
            auth.login(Some("app"), Some("new-pw")),
            Login::User("app".into())
        );
        assert!(!auth.allows(Some("app"), Operation::Write, "/queue/a"));
    }

    #[test]
    fn permit_rules_deny_what_they_do_not_allow() {
        let permits = ["app write /queue/orders.>", "* read /topic/*.prices"]
            .iter()
            .map(|p| Permit::parse(p).unwrap())
            .collect();
        let auth = Authenticator::new(users(), permits).unwrap();
        assert!(auth.allows(Some("app"), Operation::Write, "/queue/orders.eu"));
        assert!(!auth.allows(Some("ops"), Operation::Write, "/queue/orders.eu"));
        assert!(!auth.allows(Some("app"), Operation::Read, "/queue/orders.eu"));
        assert!(auth.allows(Some("ops"), Operation::Read, "/topic/eu.prices"));
        assert!(!auth.allows(None, Operation::Read, "/topic/eu.prices"));
    }
}
