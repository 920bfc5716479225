//! The connection under the Redis store: a [`ConnectionManager`] to one server
//! (`store.redis.url`), or a [`ClusterConnection`] to a Redis Cluster (`store.redis.cluster`),
//! behind one type so that every command, script and pipeline of the store and of the global
//! rate limiter is written once.
//!
//! # Cluster
//!
//! The client follows the cluster's topology itself: it learns the slot map from the seed
//! nodes, follows `MOVED` and `ASK` redirections (refreshing the map after a `MOVED`), and after
//! a failover finds the promoted replica. Its retries are kept few and quick
//! ([`CLUSTER_RETRIES`], waits of a few milliseconds), because every call of the store is
//! bounded by `store.redis.timeout` above it anyway: a slot whose master is down fails within
//! the timeout, as a standalone server would, and the store's circuit breaker takes it from
//! there. One difference: the cluster client sends a request again after its connection drops
//! under it, where the standalone path resends only requests that may run twice (see the
//! module docs of [`super`]); a usage or quota increment caught by a dropped connection may so
//! count twice on a cluster (never zero times).
//!
//! Pub/sub on a cluster is broadcast over the cluster bus, and a message that crosses the bus
//! waits there at times for tens of milliseconds (measured: p99 31 ms between two nodes of one
//! host, against 0.1 ms on one node), which every revocation would pay while it waits for the
//! fleet's confirmations. So every `PUBLISH` goes to one node, the master of the *home slot*
//! (the slot of the invalidation channel's name), and the subscribers connect to that same node
//! ([`RedisConn::home_node`]): a message reaches them without crossing the bus. When the home
//! slot moves (a failover, a resharding), the subscribers lose their node, subscribe again on
//! the new one, and meanwhile distrust their caches, as after any lost subscription; a
//! subscriber still on an old node keeps receiving through the bus, only slower.
//!
//! A pipeline on a cluster must stay on one slot. The store's pipelines group work of several
//! keys (the usage flush, listing reads, the two audit logs), so here a pipeline is split by
//! slot, the groups are sent concurrently, and the replies are put back in the pipeline's order:
//! to the caller it is still one round trip's worth of waiting. Every key of the layout has a
//! hash tag, so a group is whatever shares a tag.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Arg, Cmd, ConnectionAddr, Pipeline, RedisFuture, RedisResult, Value};

/// Retries of one request by the cluster client (redirections, a node reconnecting, a slot
/// moving during a failover), all within the store's timeout.
const CLUSTER_RETRIES: u32 = 4;
/// Shortest and longest wait before such a retry, in ms: short, so that a `TRYAGAIN` during a
/// slot migration or a failover costs milliseconds, not the client's default of over a second.
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (2, 25);

/// A connection to a standalone server or to a cluster; cheap to clone (both are handles to one
/// multiplexed connection, or one per node).
#[derive(Clone)]
pub enum RedisConn {
    /// `store.redis.url`: one server.
    Server(ConnectionManager),
    /// `store.redis.cluster`: a connection per node, routed by slot, and the home slot of
    /// pub/sub (see the module docs).
    Cluster(ClusterConnection, Slot),
}

impl RedisConn {
    /// A cluster connection from the seed nodes, made in the background: the gateway starts
    /// while the cluster is down, and calls fail (within the store's timeout) until it is up.
    /// `home` names the home slot of pub/sub: the invalidation channel.
    pub fn cluster(
        seeds: &[String],
        connect_timeout: Duration,
        home: &str,
    ) -> RedisResult<(RedisConn, Vec<redis::Client>)> {
        let client = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(CLUSTER_RETRY_WAIT_MS.0)
            .max_retry_wait(CLUSTER_RETRY_WAIT_MS.1)
            .connection_timeout(connect_timeout)
            .build()?;
        let conn = client.get_pending_async_connection_with_config(
            redis::cluster::ClusterConfig::new().set_connection_timeout(connect_timeout),
        );
        // Pub/sub is not sharded: a subscription on any node hears what is published on any
        // other, so the invalidation channel uses plain clients of the seed nodes.
        let nodes = seeds
            .iter()
            .map(|url| redis::Client::open(url.as_str()))
            .collect::<RedisResult<_>>()?;
        Ok((RedisConn::Cluster(conn, Slot::for_key(home)), nodes))
    }

    /// On a cluster, the address of the master that serves the home slot now (from
    /// `CLUSTER SLOTS`), for the subscriber to connect to; `None` on a standalone server, or
    /// when the cluster does not say.
    /// `home` is the name the home slot was made from (the invalidation channel).
    pub async fn home_node(&self, home: &str) -> RedisResult<Option<(String, u16)>> {
        let RedisConn::Cluster(conn, _) = self else {
            return Ok(None);
        };
        let mut conn = conn.clone();
        let any = || RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let slot: Value = conn
            .route_command(
                redis::cmd("CLUSTER").arg("KEYSLOT").arg(home).clone(),
                any(),
            )
            .await?;
        let Value::Int(slot) = slot else {
            return Ok(None);
        };
        let slots: Value = conn
            .route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), any())
            .await?;
        Ok(u64::try_from(slot)
            .ok()
            .and_then(|slot| master_of(&slots, slot)))
    }
}

/// The master serving `slot` in a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id…],
/// replicas…], …]`.
fn master_of(slots: &Value, slot: u64) -> Option<(String, u16)> {
    let Value::Array(ranges) = slots else {
        return None;
    };
    ranges.iter().find_map(|range| {
        let Value::Array(fields) = range else {
            return None;
        };
        let int = |v: &Value| match v {
            Value::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        };
        let (start, end) = (int(fields.first()?)?, int(fields.get(1)?)?);
        if !(start..=end).contains(&slot) {
            return None;
        }
        let Value::Array(master) = fields.get(2)? else {
            return None;
        };
        let host = match master.first()? {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
            Value::SimpleString(s) => s.clone(),
            _ => return None,
        };
        let port = u16::try_from(int(master.get(1)?)?).ok()?;
        // An empty or `?` host means the node does not know its own address.
        (!host.is_empty() && host != "?").then_some((host, port))
    })
}

/// A client for `node`, with everything else (credentials, TLS, protocol) as `seed` has it.
pub(super) fn client_for(seed: &redis::Client, node: (String, u16)) -> RedisResult<redis::Client> {
    let info = seed.get_connection_info().clone();
    let (host, port) = node;
    let addr = match info.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    redis::Client::open(info.set_addr(addr))
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Server(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(conn, home) => {
                if is_publish(cmd) {
                    let route = Route::with_slot(*home, SlotAddr::Master);
                    Box::pin(conn.route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    ))
                } else {
                    conn.req_packed_command(cmd)
                }
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(conn, _) => {
                // A transaction cannot be split; the store sends none, so it goes as it is (and
                // is refused by the cluster if it spans slots).
                if pipeline.is_transaction() {
                    conn.req_packed_commands(pipeline, offset, count)
                } else {
                    Box::pin(by_slot(conn, pipeline))
                }
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Server(conn) => conn.get_db(),
            RedisConn::Cluster(..) => 0,
        }
    }
}

/// Whether `cmd` is a `PUBLISH`, which goes to the home slot's master.
fn is_publish(cmd: &Cmd) -> bool {
    matches!(cmd.args_iter().next(), Some(Arg::Simple(name)) if name.eq_ignore_ascii_case(b"PUBLISH"))
}

/// Sends a pipeline's commands grouped by slot, each group as a pipeline of its own to the
/// master of that slot, concurrently; replies come back in the pipeline's order.
async fn by_slot(conn: &ClusterConnection, pipeline: &Pipeline) -> RedisResult<Vec<Value>> {
    let mut groups: Vec<(Option<Slot>, Pipeline, Vec<usize>)> = Vec::new();
    let mut group_of: HashMap<Option<Slot>, usize> = HashMap::new();
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        let slot = key_of(cmd).map(Slot::for_key);
        let g = *group_of.entry(slot).or_insert_with(|| {
            groups.push((slot, redis::pipe(), Vec::new()));
            groups.len() - 1
        });
        groups[g].1.add_command(cmd.clone());
        groups[g].2.push(i);
    }
    if let [(slot, _, _)] = groups.as_slice() {
        // One slot: the pipeline as it is.
        let route = routing(*slot);
        return conn
            .clone()
            .route_pipeline(pipeline.clone(), 0, pipeline.len(), route)
            .await;
    }
    let sends = groups.iter().map(|(slot, group, _)| {
        let mut conn = conn.clone();
        let group = group.clone();
        let route = routing(*slot);
        async move {
            let n = group.len();
            conn.route_pipeline(group, 0, n, route).await
        }
    });
    let replies = try_join_all(sends).await?;
    let mut ordered = vec![Value::Nil; pipeline.len()];
    for ((_, _, positions), values) in groups.iter().zip(replies) {
        for (&i, value) in positions.iter().zip(values) {
            ordered[i] = value;
        }
    }
    Ok(ordered)
}

fn routing(slot: Option<Slot>) -> SingleNodeRoutingInfo {
    match slot {
        Some(slot) => SingleNodeRoutingInfo::SpecificNode(Route::with_slot(slot, SlotAddr::Master)),
        None => SingleNodeRoutingInfo::RandomPrimary,
    }
}

/// The key a command of the store's pipelines is routed by: the first key of a script
/// (`EVAL`/`EVALSHA script numkeys key…`), otherwise the first argument (`HGETALL key`,
/// `HMGET key field…`). Commands without one go to any master.
fn key_of(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|a| match a {
        Arg::Simple(bytes) => bytes,
        // A cursor (`SCAN`-like commands) is never a key.
        _ => &[][..],
    });
    let name = args.next()?;
    if name.eq_ignore_ascii_case(b"EVAL") || name.eq_ignore_ascii_case(b"EVALSHA") {
        let _script = args.next()?;
        let keys: usize = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
        return if keys == 0 { None } else { args.next() };
    }
    args.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_home_slot_master_is_read_from_cluster_slots() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let slots = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("10.0.0.2", 7001),
                node("10.0.0.3", 7002),
            ]),
        ]);
        assert_eq!(master_of(&slots, 0), Some(("10.0.0.1".into(), 7000)));
        assert_eq!(master_of(&slots, 9000), Some(("10.0.0.2".into(), 7001)));
        assert_eq!(master_of(&Value::Array(vec![]), 1), None);
        let unknown = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            node("?", 7000),
        ])]);
        assert_eq!(master_of(&unknown, 1), None);
    }

    #[test]
    fn scripts_route_by_their_first_key_and_commands_by_their_first_argument() {
        let mut eval = redis::cmd("EVAL");
        eval.arg("return 1")
            .arg(2)
            .arg("k{a}1")
            .arg("k{a}2")
            .arg("x");
        assert_eq!(key_of(&eval), Some(&b"k{a}1"[..]));
        let mut keyless = redis::cmd("eval");
        keyless.arg("return 1").arg(0).arg("x");
        assert_eq!(key_of(&keyless), None);
        let mut hmget = redis::cmd("HMGET");
        hmget.arg("P{ws:acme}:keys").arg("id1");
        assert_eq!(key_of(&hmget), Some(&b"P{ws:acme}:keys"[..]));
        assert_eq!(key_of(&redis::cmd("PING")), None);
        assert!(is_publish(redis::cmd("publish").arg("c").arg("m")));
        assert!(!is_publish(&hmget));
        // Keys sharing a hash tag share a slot, so they land in one group.
        assert_eq!(
            Slot::for_key("P{ws:acme}:keys"),
            Slot::for_key("P{ws:acme}:active")
        );
    }
}
