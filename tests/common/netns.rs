//! Network faults with Linux network namespaces (needs root and `ip` from iproute2): a private
//! namespace joined to the host by veth pairs, each a /30 in 10.231.0.0/16, and a cut of one
//! pair by taking its host end down ([`NetNs::cut`]).
//!
//! Nothing may leave the machine: each pair's subnet also gets a host route
//! `blackhole SUBNET metric 4231`, which takes over while the host end is down (its connected
//! route is gone then; without it, traffic for the namespace would follow the default route).
//! A subnet is only chosen where no address or route of the host overlaps it, under a lock file
//! shared by all test processes. [`NetNs`]'s `Drop` deletes the namespace, the veths and the
//! routes, also when the test panics; those of test processes that died are swept when the next
//! one is created (names carry the PID, like the harness's datadirs).

use super::process::pid_exists;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Namespace names: `hamq-test-<pid>_<n>`.
const NS_PREFIX: &str = "hamq-test-";
/// Interface names: `hqt<pid>_<n>h<k>` on the host, `hqt<pid>_<n>n<k>` in the namespace.
const IF_PREFIX: &str = "hqt";
/// The metric that marks this harness's blackhole routes.
const METRIC: &str = "4231";
/// 10.231.0.0/16, cut into /30s.
const NET: [u8; 2] = [10, 231];

/// A network namespace joined to the host by veth pairs. Drop deletes it all.
pub struct NetNs {
    name: String,
    veths: Vec<Veth>,
    /// Blackhole routes added (subnets), to delete after the veths.
    routes: Vec<String>,
}

/// One veth pair: `host_ip` on `host_if` in the host, `ns_ip` on `ns_if` in the namespace.
#[derive(Clone, Debug)]
pub struct Veth {
    pub host_if: String,
    pub ns_if: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
    /// `10.231.X.Y/30`.
    pub subnet: String,
}

/// A cut link ([`NetNs::cut`]); restored by [`Cut::restore`] or when dropped, so that a failing
/// test tears its processes down over a working link.
pub struct Cut<'a> {
    ns: &'a NetNs,
    veth: usize,
    restored: bool,
}

impl NetNs {
    /// A fresh namespace (loopback up) with `veths` veth pairs to the host, both ends up.
    /// `Err` says why when the kernel or our privileges do not allow network namespaces (the
    /// caller skips its test); any other failure panics.
    pub fn create(veths: usize) -> Result<NetNs, String> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let name = format!("{NS_PREFIX}{id}");
        ip(&["netns", "add", &name])?;
        // The guard exists before anything else is created, so a failure below cleans up.
        let mut ns = NetNs {
            name,
            veths: Vec::new(),
            routes: Vec::new(),
        };
        let _lock = Lock::take();
        sweep_stale();
        ns.ip_in(&["link", "set", "lo", "up"]);
        let mut used = used_prefixes();
        for k in 0..veths {
            let host_if = format!("{IF_PREFIX}{id}h{k}");
            let ns_if = format!("{IF_PREFIX}{id}n{k}");
            assert!(host_if.len() <= 15, "interface name {host_if} is too long");
            let (subnet, host_ip, ns_ip) = ns.claim_subnet(&mut used);
            let created = ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &ns.name,
            ]);
            if let Err(e) = created {
                let unavailable = ["not permitted", "not supported", "Unknown device type"];
                if unavailable.iter().any(|u| e.contains(u)) {
                    return Err(e);
                }
                panic!("{e}");
            }
            ns.veths.push(Veth {
                host_if: host_if.clone(),
                ns_if: ns_if.clone(),
                host_ip,
                ns_ip,
                subnet,
            });
            must(ip(&[
                "addr",
                "add",
                &format!("{host_ip}/30"),
                "dev",
                &host_if,
            ]));
            ns.ip_in(&["addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if]);
            must(ip(&["link", "set", &host_if, "up"]));
            ns.ip_in(&["link", "set", &ns_if, "up"]);
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn veth(&self, k: usize) -> &Veth {
        &self.veths[k]
    }

    /// The command prefix that runs a program inside the namespace (`ip netns exec NAME`, which
    /// execs the program in place: its PID is the program's).
    pub fn exec_prefix(&self) -> Vec<String> {
        vec![
            ip_binary().display().to_string(),
            "netns".to_string(),
            "exec".to_string(),
            self.name.clone(),
        ]
    }

    /// Cuts veth pair `k`: its host end goes down, so neither side reaches the other (packets
    /// from the namespace are dropped silently; the host's own get an error from the blackhole
    /// route at once).
    pub fn cut(&self, k: usize) -> Cut<'_> {
        must(ip(&["link", "set", &self.veths[k].host_if, "down"]));
        Cut {
            ns: self,
            veth: k,
            restored: false,
        }
    }

    /// `ip -n NAME ARGS`, panicking on failure.
    fn ip_in(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        must(ip(&all));
    }

    /// A free /30 (recorded in `used`), claimed with its blackhole route.
    fn claim_subnet(&mut self, used: &mut Vec<(u32, u32)>) -> (String, Ipv4Addr, Ipv4Addr) {
        let base = u32::from(Ipv4Addr::new(NET[0], NET[1], 0, 0));
        let count = 1u32 << 14;
        // Start somewhere that depends on the PID, so concurrent runs rarely probe the same.
        let start = std::process::id().wrapping_mul(2654435761) % count;
        for i in 0..count {
            let network = base + ((start + i) % count) * 4;
            if used.iter().any(|&p| overlaps(p, (network, 30))) {
                continue;
            }
            used.push((network, 30));
            let subnet = format!("{}/30", Ipv4Addr::from(network));
            // Fails if the route exists (a process that does not honour the lock): next one.
            if ip(&["route", "add", "blackhole", &subnet, "metric", METRIC]).is_err() {
                continue;
            }
            self.routes.push(subnet.clone());
            return (
                subnet,
                Ipv4Addr::from(network + 1),
                Ipv4Addr::from(network + 2),
            );
        }
        panic!(
            "no /30 in {}.{}.0.0/16 is free of this host's addresses and routes",
            NET[0], NET[1]
        );
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace destroys its ends of the veths, and with them the pairs; the
        // explicit deletes cover a namespace kept alive by a process still inside.
        let _ = ip(&["netns", "del", &self.name]);
        for veth in &self.veths {
            let _ = ip(&["link", "del", &veth.host_if]);
        }
        // Only now: while a veth exists its subnet must never fall back to the default route.
        // Once it is gone, so is the host's address in the subnet, and a host socket still
        // bound to it (a FIN retried after a cut) has no route at all: the kernel routes no
        // packet from a source address that is not local.
        for subnet in &self.routes {
            let _ = ip(&["route", "del", "blackhole", subnet, "metric", METRIC]);
        }
    }
}

impl Cut<'_> {
    /// Brings the host end up again.
    pub fn restore(mut self) {
        self.up();
    }

    fn up(&mut self) {
        if !self.restored {
            self.restored = true;
            must(ip(&[
                "link",
                "set",
                &self.ns.veths[self.veth].host_if,
                "up",
            ]));
        }
    }
}

impl Drop for Cut<'_> {
    fn drop(&mut self) {
        if !self.restored {
            self.restored = true;
            let _ = ip(&["link", "set", &self.ns.veths[self.veth].host_if, "up"]);
        }
    }
}

/// Exclusive use of the subnet space and the sweep among all test processes (flock).
struct Lock(File);

impl Lock {
    fn take() -> Lock {
        let path = std::env::temp_dir().join("hamq-netns.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        // SAFETY: flock on a descriptor we own; released when the file is closed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {}", path.display());
        Lock(file)
    }
}

/// Deletes the namespaces, veths and blackhole routes left by test processes that are gone.
fn sweep_stale() {
    let dead = |name: &str, prefix: &str| {
        let Some(rest) = name.strip_prefix(prefix) else {
            return false;
        };
        let pid = rest.split('_').next().and_then(|p| p.parse::<u32>().ok());
        pid.is_some_and(|pid| pid != std::process::id() && !pid_exists(pid))
    };
    for line in ip(&["netns", "list"]).unwrap_or_default().lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if dead(name, NS_PREFIX) {
            eprintln!("netns: deleting stale namespace {name}");
            let _ = ip(&["netns", "del", name]);
        }
    }
    for line in ip(&["-o", "link", "show"]).unwrap_or_default().lines() {
        // `7: hqt123_0h0@if6: <BROADCAST,...`
        let name = line.split(": ").nth(1).unwrap_or_default();
        let name = name.split('@').next().unwrap_or_default();
        if dead(name, IF_PREFIX) {
            eprintln!("netns: deleting stale veth {name}");
            let _ = ip(&["link", "del", name]);
        }
    }
    // A blackhole route of ours whose subnet no address is in any more: its veth is gone.
    let addresses = addresses();
    let routes = ip(&["-4", "route", "show", "type", "blackhole"]).unwrap_or_default();
    for line in routes.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let ours = words.windows(2).any(|w| w == ["metric", METRIC]);
        let Some(prefix) = words.get(1).and_then(|w| parse_prefix(w)) else {
            continue;
        };
        if ours && !addresses.iter().any(|&a| overlaps(prefix, a)) {
            let subnet = words[1];
            eprintln!("netns: deleting stale route blackhole {subnet} metric {METRIC}");
            let _ = ip(&["route", "del", "blackhole", subnet, "metric", METRIC]);
        }
    }
}

/// Every IPv4 address of the host (as /32).
fn addresses() -> Vec<(u32, u32)> {
    let out = must(ip(&["-o", "-4", "addr", "show"]));
    out.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let i = words.iter().position(|&w| w == "inet")?;
            let (addr, _) = parse_prefix(words.get(i + 1)?)?;
            Some((addr, 32))
        })
        .collect()
}

/// Every network the host has an address in or a route to, in any table (but the default
/// route): a /30 overlapping none of them can take nobody's traffic.
fn used_prefixes() -> Vec<(u32, u32)> {
    const TYPES: [&str; 10] = [
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "blackhole",
        "unreachable",
        "prohibit",
        "throw",
        "nat",
        "anycast",
    ];
    let mut used = Vec::new();
    for line in must(ip(&["-o", "-4", "addr", "show"])).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|&w| w == "inet") {
            used.extend(words.get(i + 1).and_then(|w| parse_prefix(w)));
        }
    }
    for line in must(ip(&["-4", "route", "show", "table", "all"])).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let dst = match words.first() {
            Some(w) if TYPES.contains(w) => words.get(1),
            first => first,
        };
        used.extend(
            dst.and_then(|w| parse_prefix(w))
                .filter(|&(_, len)| len > 0),
        );
    }
    used
}

/// `a.b.c.d` or `a.b.c.d/len` as (network, len).
fn parse_prefix(text: &str) -> Option<(u32, u32)> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, l.parse().ok()?),
        None => (text, 32),
    };
    let addr = u32::from(addr.parse::<Ipv4Addr>().ok()?);
    if len > 32 {
        return None;
    }
    Some((addr & mask(len), len))
}

fn mask(len: u32) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len)
    }
}

fn overlaps((a, alen): (u32, u32), (b, blen): (u32, u32)) -> bool {
    let m = mask(alen.min(blen));
    a & m == b & m
}

/// Runs `ip ARGS`: its stdout, or `Err` with the command and its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new(ip_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", ip_binary().display()));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(result: Result<String, String>) -> String {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// `ip` in PATH or the usual sbin/bin directories; panics saying how to install it.
fn ip_binary() -> &'static PathBuf {
    static IP: OnceLock<PathBuf> = OnceLock::new();
    IP.get_or_init(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
            .map(|dir| dir.join("ip"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("`ip` not found: apt-get install iproute2"))
    })
}
