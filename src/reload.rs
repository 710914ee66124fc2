//! SIGHUP (`svc -h`, `systemctl reload`): read the configuration again and apply what can be
//! applied to a running broker, the users and `permit` rules; the broker keeps running, master or
//! slave, whatever the file says. Everything else takes effect at the next start, and the log says
//! so. A configuration that does not parse is refused, naming the key, and the old one stays.
//!
//! The signal handler only sets a flag (async-signal-safe); a `reload` thread of its own looks at
//! it every 200 ms until shutdown and does the work.

use hamq::auth::Authenticator;
use hamq::config::Config;
use hamq::shutdown::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

static HUP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_hup(_: libc::c_int) {
    HUP.store(true, Ordering::SeqCst);
}

/// Install the SIGHUP handler (after ctrlc's, which would stop the broker on SIGHUP) and start
/// the thread that reloads `path` on it.
pub fn watch(
    path: String,
    running: Config,
    auth: Arc<Authenticator>,
    shutdown: Arc<Shutdown>,
) -> std::io::Result<()> {
    let handler = on_hup as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    if unsafe { libc::signal(libc::SIGHUP, handler) } == libc::SIG_ERR {
        return Err(std::io::Error::last_os_error());
    }
    std::thread::Builder::new()
        .name("reload".to_string())
        .spawn(move || {
            while !shutdown.is_stopping() {
                shutdown.sleep(Duration::from_millis(200));
                if HUP.swap(false, Ordering::SeqCst) {
                    reload(&path, &running, &auth);
                }
            }
        })?;
    Ok(())
}

fn reload(path: &str, running: &Config, auth: &Authenticator) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return log::error!("SIGHUP: cannot read config {path}: {e}; nothing changed"),
    };
    let fresh = match Config::parse(&text, path, std::env::vars()) {
        Ok(fresh) => fresh,
        Err(e) => return log::error!("SIGHUP: {e}; nothing changed"),
    };
    let (users, permits) = (fresh.users.len(), fresh.permits.len());
    if let Err(e) = auth.reload(fresh.users.clone(), fresh.permits.clone()) {
        return log::error!("SIGHUP: {e}; nothing changed");
    }
    let others_changed = without_auth(&fresh) != without_auth(running);
    log::info!(
        "SIGHUP: reloaded {path}: {users} users, {permits} permit rules{}",
        match others_changed {
            true => "; other keys changed too, and take effect at the next start",
            false => "",
        }
    );
}

/// The configuration as text, users and rules left out.
fn without_auth(config: &Config) -> String {
    let mut rest = config.clone();
    rest.users.clear();
    rest.permits.clear();
    format!("{rest:?}")
}
