//! `./run`'s first step on a machine without MariaDB: `scripts/local-mariadb start` must install
//! the server package (which brings the clients) before it looks for any MariaDB program.
//!
//! The script runs from a copy of the checkout's `scripts/` in a temporary folder, with a PATH
//! that has every program of /usr/bin and /bin but MariaDB's (`mariadb*`, `mysql*`), none of the
//! sbin folders (`HAMQ_LOCAL_DB_SBIN=""`), and a stand-in `apt-get` first, which records how it
//! was called and "installs" `mariadb-server` by linking the real MariaDB programs into that
//! PATH. Then: apt-get was called as `update`, then `install -y mariadb-server`, in that order
//! and nothing else; the script started the server and printed its URL; the URL works.
//! Needs root (the script installs only as root), as CI runs.

mod common;

use common::supervise::{Captured, TempDir};
use common::{free_port, TIMEOUT};
use mysql::prelude::Queryable;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A folder of links to every program in `dirs` except MariaDB's.
fn path_without_mariadb(bin: &Path, dirs: &[&str]) {
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mariadb = name.starts_with("mariadb") || name.starts_with("mysql");
            if !mariadb && !bin.join(&name).exists() {
                let _ = symlink(entry.path(), bin.join(&name));
            }
        }
    }
}

const APT_GET: &str = r#"#!/bin/bash
# Stand-in apt-get: records the call; `install ... mariadb-server` links the real programs.
echo "$*" >> "$APT_LOG"
if [ "$1" = install ] && [[ " $* " == *" mariadb-server "* ]]; then
    for p in /usr/bin/mariadb /usr/bin/mariadb-admin /usr/bin/mariadb-install-db \
             /usr/sbin/mariadbd /usr/bin/my_print_defaults /usr/bin/resolveip; do
        [ -e "$p" ] && ln -sf "$p" "$FAKE_BIN/$(basename "$p")"
    done
fi
exit 0
"#;

#[test]
fn local_mariadb_installs_the_server_before_it_looks_for_its_programs() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: scripts/local-mariadb installs packages only as root");
        return;
    }
    let dir = TempDir::new("hamq-fresh-");
    let root = dir.path();
    let bin = root.join("bin");
    fs::create_dir_all(root.join("scripts")).expect("mkdir");
    fs::create_dir_all(&bin).expect("mkdir");
    let script = root.join("scripts/local-mariadb");
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/local-mariadb"),
        &script,
    )
    .expect("copy the script");
    let apt_get = bin.join("apt-get");
    fs::write(&apt_get, APT_GET).expect("write apt-get");
    fs::set_permissions(&apt_get, fs::Permissions::from_mode(0o755)).expect("chmod");
    path_without_mariadb(&bin, &["/usr/local/bin", "/usr/bin", "/bin"]);
    let log = root.join("apt.log");
    let port = free_port();
    let mut cmd = Command::new(&script);
    cmd.arg("start")
        .env("PATH", &bin)
        .env("HAMQ_LOCAL_DB_SBIN", "")
        .env("HAMQ_LOCAL_DB_PORT", port.to_string())
        .env("APT_LOG", &log)
        .env("FAKE_BIN", &bin);
    let mut start = Captured::spawn("local-mariadb start", cmd);
    let status = start
        .wait_exit(TIMEOUT * 12)
        .expect("local-mariadb start hung");
    let stop = || {
        let mut cmd = Command::new(&script);
        cmd.arg("stop")
            .env("PATH", &bin)
            .env("HAMQ_LOCAL_DB_SBIN", "");
        let mut stop = Captured::spawn("local-mariadb stop", cmd);
        stop.wait_exit(Duration::from_secs(60));
    };
    let output = start.output().tail(40);
    if !status.success() {
        stop();
        panic!("local-mariadb start failed ({status}):\n{output}");
    }
    let calls = fs::read_to_string(&log).unwrap_or_default();
    let url = format!("mysql://hamq:hamq@127.0.0.1:{port}/hamq");
    let works = mysql::Conn::new(mysql::Opts::from_url(&url).expect("URL"))
        .and_then(|mut c| c.query_first::<u64, _>("SELECT 1"));
    stop();
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        ["update", "install -y mariadb-server"],
        "apt-get calls; script output:\n{output}"
    );
    assert!(output.contains(&url), "{output}");
    assert_eq!(
        works.ok().flatten(),
        Some(1),
        "the URL it printed does not work"
    );
}
