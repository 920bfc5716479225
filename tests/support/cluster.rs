//! A real Redis Cluster per test: `masters` nodes holding the 16,384 slots in equal ranges and,
//! optionally, one replica per master, each a [`RedisServer`] of its own (free loopback ports
//! for clients and for the cluster bus, no persistence), joined with `CLUSTER ADDSLOTSRANGE`,
//! `CLUSTER MEET` and `CLUSTER REPLICATE` through `redis-cli`, and ready once every node reports
//! `cluster_state:ok`. Nodes can be killed one by one (a master with a replica fails over
//! within about two node timeouts) or frozen all together; every node is killed on drop.

use std::process::Command;
use std::time::{Duration, Instant};

use super::redis::{RedisServer, free_port};

/// `cluster-node-timeout`: how long a silent node takes to be declared failed, and so most of
/// how long a failover takes. Short, so that failover tests stay short.
const NODE_TIMEOUT_MS: u64 = 1000;
/// How long the cluster has to form, or to finish a failover.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
const SLOTS: u32 = 16_384;

/// A running cluster this test started.
pub(crate) struct RedisCluster {
    /// Masters first (`0..masters`), then replicas: replica `masters + i` follows master `i`.
    nodes: Vec<RedisServer>,
    masters: usize,
}

impl RedisCluster {
    /// Starts `masters` masters, each with `replicas` replicas (0 or more), and waits until the
    /// cluster serves every slot and every replica follows its master.
    pub(crate) fn start(masters: usize, replicas: usize) -> RedisCluster {
        assert!(masters >= 1, "a cluster needs a master");
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                RedisServer::start_configured(false, |_| {
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        &NODE_TIMEOUT_MS.to_string(),
                        // A replica may take over however long it was cut off: the tests kill
                        // masters on purpose and want the failover.
                        "--cluster-replica-validity-factor",
                        "0",
                        "--cluster-port",
                        &free_port().to_string(),
                    ]
                    .map(String::from)
                    .to_vec()
                })
            })
            .collect();
        let cluster = RedisCluster { nodes, masters };
        for i in 0..masters {
            let (first, last) = slot_range(i, masters);
            cluster.cli_ok(
                i,
                &[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &first.to_string(),
                    &last.to_string(),
                ],
            );
        }
        let (first_port, first_bus) = (cluster.nodes[0].port(), cluster.bus_port(0));
        for i in 1..cluster.nodes.len() {
            cluster.cli_ok(
                i,
                &[
                    "CLUSTER",
                    "MEET",
                    "127.0.0.1",
                    &first_port.to_string(),
                    &first_bus.to_string(),
                ],
            );
        }
        cluster.wait("every node to know every other", |c| {
            (0..c.nodes.len()).all(|i| {
                let nodes = c.cli(i, &["CLUSTER", "NODES"]);
                nodes.lines().count() == c.nodes.len()
                    && !nodes.contains("handshake")
                    && !nodes.contains("noaddr")
            })
        });
        for replica in masters..cluster.nodes.len() {
            let master_id = cluster.cli(replica % masters, &["CLUSTER", "MYID"]);
            cluster.cli_ok(replica, &["CLUSTER", "REPLICATE", master_id.trim()]);
        }
        cluster.wait("the cluster to serve every slot", |c| {
            (0..c.nodes.len()).all(|i| c.cli(i, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                && (c.masters..c.nodes.len()).all(|r| {
                    c.cli(r, &["INFO", "replication"])
                        .contains("master_link_status:up")
                })
        });
        cluster
    }

    /// `redis://127.0.0.1:<port>/` of every running node: the seed list for
    /// `store.redis.cluster`.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(RedisServer::url)
            .collect()
    }

    /// The node at `i` (masters first, then replicas), to stop, freeze or restart.
    pub(crate) fn node(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// Index of the running master that serves `key`'s slot.
    pub(crate) fn master_of(&self, key: &str) -> usize {
        let any = self.any_running();
        let slot: u32 = self
            .cli(any, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number");
        let nodes = self.cli(any, &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let mut ends = range.split('-');
                let first = ends.next().and_then(|s| s.parse::<u32>().ok());
                let last = ends.next().and_then(|s| s.parse::<u32>().ok()).or(first);
                matches!((first, last), (Some(a), Some(b)) if a <= slot && slot <= b)
            });
            if serves {
                let port = node_port(fields[1]);
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port() == port)
                    .expect("the master is one of ours");
            }
        }
        panic!("no master serves slot {slot}:\n{nodes}");
    }

    /// Kills master `i` and waits until its replica has taken over its slots and the cluster
    /// serves every slot again: a failover, as after a host dies. Its replica has every write
    /// first (`WAIT`): replication is asynchronous, and a write the replica never got would be
    /// lost with the master, which is Redis's behaviour, not what these tests are about.
    pub(crate) fn kill_master_and_fail_over(&mut self, i: usize) {
        assert!(i < self.masters, "node {i} is not a master");
        assert!(self.nodes.len() > self.masters, "a failover needs replicas");
        let acked = self.cli(i, &["WAIT", "1", "5000"]);
        assert_eq!(acked.trim(), "1", "the replica of master {i} caught up");
        self.nodes[i].stop();
        let replicas: Vec<usize> = (self.masters..self.nodes.len())
            .filter(|r| r % self.masters == i)
            .collect();
        self.wait("a replica to take over from the killed master", |c| {
            replicas
                .iter()
                .any(|&r| c.cli(r, &["ROLE"]).lines().next() == Some("master"))
                && (0..c.nodes.len())
                    .filter(|&n| c.nodes[n].is_running())
                    .all(|n| c.cli(n, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
    }

    /// Starts moving the slot of `key` from its master to master `to`, as a resharding does:
    /// the slot is marked migrating and importing and every key in it is moved, but the slot
    /// still belongs to the old master, which answers `ASK` for the moved keys until
    /// [`RedisCluster::finish_slot_move`] hands it over (after which it answers `MOVED`).
    pub(crate) fn begin_slot_move(&self, key: &str, to: usize) -> SlotMove {
        let from = self.master_of(key);
        assert_ne!(from, to, "the slot is on master {to} already");
        let slot = self
            .cli(from, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .to_owned();
        let from_id = self.cli(from, &["CLUSTER", "MYID"]).trim().to_owned();
        let to_id = self.cli(to, &["CLUSTER", "MYID"]).trim().to_owned();
        self.cli_ok(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        self.cli_ok(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        let keys = self.cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if !keys.is_empty() {
            let port = self.nodes[to].port().to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            let reply = self.cli(from, &args);
            assert_eq!(reply.trim(), "OK", "MIGRATE of slot {slot}");
        }
        SlotMove { slot, to_id }
    }

    /// Hands the slot over to its new master on every master: from here the old one answers
    /// `MOVED`.
    pub(crate) fn finish_slot_move(&self, moving: &SlotMove) {
        for i in (0..self.masters).filter(|&i| self.nodes[i].is_running()) {
            self.cli_ok(
                i,
                &["CLUSTER", "SETSLOT", &moving.slot, "NODE", &moving.to_id],
            );
        }
        self.wait("the moved slot to be known everywhere", |c| {
            (0..c.masters)
                .filter(|&i| c.nodes[i].is_running())
                .all(|i| c.cli(i, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
    }

    /// Clients of node `i` in subscriber mode (`CLIENT LIST TYPE pubsub`).
    pub(crate) fn pubsub_clients(&self, i: usize) -> usize {
        self.cli(i, &["CLIENT", "LIST", "TYPE", "pubsub"])
            .lines()
            .filter(|l| l.starts_with("id="))
            .count()
    }

    /// `PUBLISH` commands node `i` has run (`INFO commandstats`); messages that reached it over
    /// the cluster bus are not counted.
    pub(crate) fn publishes(&self, i: usize) -> u64 {
        let stats = self.cli(i, &["INFO", "commandstats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_publish:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Every key matching the glob `pattern`, from every running master.
    pub(crate) fn keys_matching(&self, pattern: &str) -> Vec<String> {
        (0..self.masters)
            .filter(|&i| self.nodes[i].is_running())
            .flat_map(|i| {
                self.cli(i, &["--scan", "--pattern", pattern])
                    .lines()
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Freezes every node (SIGSTOP): the whole cluster stops answering.
    pub(crate) fn freeze(&mut self) {
        for node in self.nodes.iter_mut().filter(|n| n.is_running()) {
            node.freeze();
        }
    }

    /// Lets every frozen node go on.
    pub(crate) fn thaw(&mut self) {
        for node in self.nodes.iter_mut().filter(|n| n.is_running()) {
            node.thaw();
        }
    }

    /// Kills every node (data is lost).
    pub(crate) fn stop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }

    fn any_running(&self) -> usize {
        self.nodes
            .iter()
            .position(RedisServer::is_running)
            .expect("a running node")
    }

    fn bus_port(&self, i: usize) -> u16 {
        let info = self.cli(i, &["CONFIG", "GET", "cluster-port"]);
        info.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .expect("CONFIG GET cluster-port answers the port")
    }

    fn wait(&self, what: &str, done: impl Fn(&RedisCluster) -> bool) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while !done(self) {
            if Instant::now() > deadline {
                let logs: Vec<String> = self.nodes.iter().map(RedisServer::log).collect();
                panic!(
                    "timed out waiting for {what}; node logs:\n{}",
                    logs.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `redis-cli` against node `i` and returns what it printed.
    fn cli(&self, i: usize, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.nodes[i].port().to_string()])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); it comes with redis-server"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cli_ok(&self, i: usize, args: &[&str]) {
        let reply = self.cli(i, args);
        assert_eq!(reply.trim(), "OK", "redis-cli {args:?} on node {i}");
    }
}

/// Slots of master `i` of `masters`: equal ranges covering all of them.
fn slot_range(i: usize, masters: usize) -> (u32, u32) {
    let n = u32::try_from(masters).expect("a few masters");
    let i = u32::try_from(i).expect("a few masters");
    (i * SLOTS / n, (i + 1) * SLOTS / n - 1)
}

/// The client port of a `CLUSTER NODES` address, `127.0.0.1:7000@17000`.
fn node_port(address: &str) -> u16 {
    address
        .split('@')
        .next()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("CLUSTER NODES gives host:port@bus")
}

/// A slot on its way from one master to another (see [`RedisCluster::begin_slot_move`]).
pub(crate) struct SlotMove {
    slot: String,
    to_id: String,
}
