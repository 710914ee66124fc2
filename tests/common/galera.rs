//! A real MariaDB Galera cluster on this machine: N `mariadbd` nodes with the `galera-4`
//! provider, each with its own datadir, SQL port, group (`gmcast.listen_addr`), IST and SST
//! ports, optionally inside a network namespace.
//!
//! Node 0 is initialised and bootstraps the cluster; the others join it by a real state
//! transfer (rsync). A node that is killed is declared gone by the others after 2 s
//! (`evs.suspect_timeout`, 5 s by default). An rsync donor blocks its node's commits while it
//! copies, so the last node (which no test gives a broker) is every joiner's preferred donor.
//! rsync's daemon drops to `nobody` when started by root, so as root the nodes
//! run as the `mysql` user, owning their directories. Nodes keep MariaDB's own defaults
//! (`latin1`, and MySQL 5.7's 4 MiB packets, as the standalone harness). `Drop` SIGKILLs every
//! node by PID and removes the directories.

use super::process::{self, kill_and_wait, tail_file};
use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder};
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const DIR_PREFIX: &str = "hamq-galera-";
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Run by the bootstrapping node at every start (throwaway test servers only).
const USERS: &str = "CREATE USER IF NOT EXISTS 'hamq'@'%' IDENTIFIED BY 'hamq';
GRANT ALL ON *.* TO 'hamq'@'%';
CREATE USER IF NOT EXISTS 'root'@'%';
GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;
";

/// Where one node listens, and how it is started.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// The address of its SQL, group, IST and SST ports.
    pub ip: Ipv4Addr,
    /// A command that runs `mariadbd` in place (e.g. `ip netns exec NS`); empty = directly.
    pub wrapper: Vec<String>,
}

impl NodeSpec {
    pub fn local() -> NodeSpec {
        NodeSpec {
            ip: Ipv4Addr::LOCALHOST,
            wrapper: Vec::new(),
        }
    }
}

struct Node {
    spec: NodeSpec,
    child: Option<Child>,
    port: u16,
    group_port: u16,
    ist_port: u16,
    sst_port: u16,
    dir: PathBuf,
}

/// A running cluster. Drop kills every node and removes its directory.
pub struct Galera {
    nodes: Vec<Node>,
    dir: PathBuf,
    mariadbd: PathBuf,
    /// `--user=mysql` when run by root (see the module doc).
    run_as: Option<String>,
}

impl Galera {
    /// Three nodes on 127.0.0.1, all synced.
    pub fn start3() -> Galera {
        Self::start(&[NodeSpec::local(), NodeSpec::local(), NodeSpec::local()])
    }

    /// One node per spec, all synced in one cluster, with the user `hamq`/`hamq` (from any
    /// host) and `root` without a password from any host (throwaway test servers only).
    pub fn start(specs: &[NodeSpec]) -> Galera {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        static SWEEP: std::sync::OnceLock<()> = std::sync::OnceLock::new();
        SWEEP.get_or_init(|| process::sweep_stale(&std::env::temp_dir(), DIR_PREFIX));
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        let is_root = unsafe { libc::geteuid() == 0 };
        let mut cluster = Galera {
            nodes: Vec::new(),
            dir: dir.clone(),
            mariadbd: super::mariadb::find_binary("mariadbd"),
            run_as: is_root.then(|| "mysql".to_string()),
        };
        for (i, spec) in specs.iter().enumerate() {
            let node_dir = dir.join(format!("n{i}"));
            for sub in ["data", "tmp"] {
                fs::create_dir_all(node_dir.join(sub)).expect("create a node directory");
            }
            cluster.nodes.push(Node {
                spec: spec.clone(),
                child: None,
                port: process::free_port(),
                group_port: process::free_port(),
                ist_port: process::free_port(),
                sst_port: process::free_port(),
                dir: node_dir,
            });
        }
        fs::write(dir.join("init.sql"), USERS).expect("write init.sql");
        cluster.install_first();
        cluster.chown();
        cluster.launch(0, true);
        cluster.wait_synced(0);
        for i in 1..cluster.nodes.len() {
            cluster.launch(i, false);
        }
        for i in 1..cluster.nodes.len() {
            cluster.wait_synced(i);
        }
        cluster
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `ip:port` of node `i`'s SQL port.
    pub fn address(&self, i: usize) -> String {
        format!("{}:{}", self.nodes[i].spec.ip, self.nodes[i].port)
    }

    /// `mysql://hamq:hamq@IP:PORT/db` on node `i`.
    pub fn url(&self, i: usize, db: &str) -> String {
        format!("mysql://hamq:hamq@{}/{db}", self.address(i))
    }

    /// A fresh database (made on node 0, replicated to all): its name.
    pub fn create_database(&self) -> String {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "g_{}_{}",
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::process::id()
        );
        self.root(0)
            .query_drop(format!("CREATE DATABASE `{name}`"))
            .expect("CREATE DATABASE");
        name
    }

    /// A root connection to node `i`.
    pub fn root(&self, i: usize) -> Conn {
        self.try_root(i).unwrap_or_else(|e| {
            panic!(
                "root connection to Galera node {i} ({}): {e}\n{}",
                self.address(i),
                tail_file(&self.log(i), 30)
            )
        })
    }

    fn try_root(&self, i: usize) -> mysql::Result<Conn> {
        let node = &self.nodes[i];
        let opts = OptsBuilder::new()
            .ip_or_hostname(Some(node.spec.ip.to_string()))
            .tcp_port(node.port)
            .user(Some("root"))
            .prefer_socket(false)
            .tcp_connect_timeout(Some(Duration::from_secs(2)))
            .read_timeout(Some(Duration::from_secs(10)));
        Conn::new(opts)
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.nodes[i]
            .child
            .as_ref()
            .map(Child::id)
            .expect("node runs")
    }

    /// SIGKILL node `i` by PID; its datadir stays for [`Galera::rejoin`].
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            kill_and_wait(&mut child);
        }
    }

    /// Start node `i` again (after a kill or stop) and wait until it is synced.
    pub fn rejoin(&mut self, i: usize) {
        self.kill9(i);
        self.launch(i, false);
        self.wait_synced(i);
    }

    /// Cut node `i` off the group (`gmcast.isolate`): it leaves the primary component, the
    /// others go on without it. `false` lets it back in.
    pub fn isolate(&self, i: usize, isolated: bool) {
        let value = u8::from(isolated);
        self.root(i)
            .query_drop(format!(
                "SET GLOBAL wsrep_provider_options = 'gmcast.isolate = {value}'"
            ))
            .expect("set gmcast.isolate");
    }

    /// `wsrep_cluster_status` of node `i` (`Primary`, `non-Primary`), or the error.
    pub fn status(&self, i: usize) -> Result<String, String> {
        let mut conn = self.try_root(i).map_err(|e| e.to_string())?;
        let row: Option<(String, String)> = conn
            .query_first("SHOW GLOBAL STATUS LIKE 'wsrep_cluster_status'")
            .map_err(|e| e.to_string())?;
        Ok(row.map(|(_, v)| v).unwrap_or_default())
    }

    /// Stop every node cleanly (node 0 last, so it may bootstrap), then start the cluster
    /// again from node 0; waits until all are synced.
    pub fn restart_all(&mut self) {
        for i in (0..self.nodes.len()).rev() {
            if let Some(mut child) = self.nodes[i].child.take() {
                process::signal(child.id(), libc::SIGTERM);
                process::wait_or_kill(&mut child, Duration::from_secs(60), "a Galera node");
            }
        }
        self.launch(0, true);
        self.wait_synced(0);
        for i in 1..self.nodes.len() {
            self.launch(i, false);
        }
        for i in 1..self.nodes.len() {
            self.wait_synced(i);
        }
    }

    pub fn log(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("mariadbd.log")
    }

    fn install_first(&self) {
        let node = &self.nodes[0];
        let log = File::create(node.dir.join("install.log")).expect("install.log");
        let mut cmd = Command::new(super::mariadb::find_binary("mariadb-install-db"));
        cmd.arg("--no-defaults")
            .arg("--auth-root-authentication-method=normal")
            .arg(format!("--datadir={}", node.dir.join("data").display()))
            .args(["--skip-test-db", "--skip-name-resolve"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        if let Some(user) = &self.run_as {
            cmd.arg(format!("--user={user}"));
        }
        let status = process::spawn(cmd)
            .and_then(|mut c| c.wait())
            .expect("run mariadb-install-db");
        assert!(
            status.success(),
            "mariadb-install-db: {}",
            tail_file(&node.dir.join("install.log"), 30)
        );
    }

    /// As root, hand the directories to the user the nodes run as.
    fn chown(&self) {
        if let Some(user) = &self.run_as {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:{user}"))
                .arg(&self.dir)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown -R {user} {}", self.dir.display());
        }
    }

    fn group_address(&self) -> String {
        let members: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}:{}", n.spec.ip, n.group_port))
            .collect();
        format!("gcomm://{}", members.join(","))
    }

    fn launch(&mut self, i: usize, bootstrap: bool) {
        let cluster = match bootstrap {
            true => "gcomm://".to_string(),
            false => self.group_address(),
        };
        let node = &self.nodes[i];
        let ip = node.spec.ip;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("mariadbd.log"))
            .expect("open the node's log");
        let mut cmd = match node.spec.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.mariadbd);
                cmd
            }
            None => Command::new(&self.mariadbd),
        };
        let provider = format!(
            "gmcast.listen_addr=tcp://{ip}:{};ist.recv_addr={ip}:{};gcache.size=64M;\
             evs.keepalive_period=PT0.5S;evs.suspect_timeout=PT2S;evs.inactive_timeout=PT4S;\
             evs.install_timeout=PT4S",
            node.group_port, node.ist_port
        );
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", node.dir.join("data").display()))
            .arg(format!("--tmpdir={}", node.dir.join("tmp").display()))
            .arg(format!("--port={}", node.port))
            .arg(format!("--bind-address={ip}"))
            .arg(format!("--socket={}", node.dir.join("sock").display()))
            .arg(format!("--pid-file={}", node.dir.join("pid").display()))
            .args(["--skip-name-resolve", "--max-connections=300"])
            .args([
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=48M",
            ])
            .arg("--max-allowed-packet=4M")
            .args([
                "--wsrep-on=ON",
                "--binlog-format=ROW",
                "--innodb-autoinc-lock-mode=2",
            ])
            .arg("--wsrep-provider=/usr/lib/galera/libgalera_smm.so")
            .arg(format!("--wsrep-cluster-address={cluster}"))
            .arg("--wsrep-cluster-name=hamq-test")
            .arg(format!("--wsrep-node-name=node{i}"))
            .arg(format!("--wsrep-node-address={ip}:{}", node.group_port))
            .arg(format!("--wsrep-node-incoming-address={ip}:{}", node.port))
            .arg(format!(
                "--wsrep-sst-receive-address={ip}:{}",
                node.sst_port
            ))
            .arg(format!("--wsrep-provider-options={provider}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        if bootstrap {
            // Users from any host: brokers and the test may reach a node from a namespace.
            cmd.arg("--wsrep-new-cluster").arg(format!(
                "--init-file={}",
                self.dir.join("init.sql").display()
            ));
        }
        // rsync's donor blocks its node's commits while it copies (FTWRL): let the last node,
        // which the tests give no broker, serve every state transfer it can.
        let last = self.nodes.len() - 1;
        if !bootstrap && i != last {
            cmd.arg(format!("--wsrep-sst-donor=node{last},"));
        }
        if let Some(user) = &self.run_as {
            cmd.arg(format!("--user={user}"));
        }
        let child = process::spawn(cmd).expect("spawn mariadbd");
        self.nodes[i].child = Some(child);
    }

    /// Until node `i` answers as a synced, ready member (90 s).
    pub fn wait_synced(&mut self, i: usize) {
        let synced = process::poll(READY_TIMEOUT, Duration::from_millis(200), || {
            if let Some(Ok(Some(status))) = self.nodes[i].child.as_mut().map(Child::try_wait) {
                return Some(Err(status));
            }
            let mut conn = self.try_root(i).ok()?;
            let rows: Vec<(String, String)> = conn
                .query(
                    "SHOW GLOBAL STATUS WHERE Variable_name IN \
                     ('wsrep_local_state_comment', 'wsrep_ready')",
                )
                .ok()?;
            let ok = rows.iter().any(|(n, v)| n == "wsrep_ready" && v == "ON")
                && rows.iter().any(|(_, v)| v == "Synced");
            ok.then_some(Ok(()))
        });
        match synced {
            Some(Ok(())) => {}
            Some(Err(status)) => panic!(
                "Galera node {i} exited ({status}):\n{}",
                tail_file(&self.log(i), 40)
            ),
            None => panic!(
                "Galera node {i} not synced after {READY_TIMEOUT:?}:\n{}",
                tail_file(&self.log(i), 40)
            ),
        }
    }
}

impl Drop for Galera {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.nodes.len() {
                eprintln!(
                    "Galera node {i} ({}), last log lines:\n{}",
                    self.address(i),
                    tail_file(&self.log(i), 20)
                );
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                kill_and_wait(&mut child);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
