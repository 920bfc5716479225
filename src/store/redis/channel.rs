//! The invalidation channel of the Redis store (see the module docs of [`super`]): publishing,
//! subscribing, and the message format: `<hash hex>` (64 lowercase hex digits), optionally
//! followed by ` <origin instance id> <seq>` to ask for a confirmation ([`super::fleet`]), or
//! `ws:<name>`.

use super::*;
use crate::store::fleet::{Ack, Confirm, is_instance_id};

/// The invalidation channel (see the module docs).
impl RedisStore {
    /// Publishes one invalidation message for a keyed hash, bounded by `store.redis.timeout`.
    pub async fn publish_invalidation(&self, hash: &SecretHash) -> Result<(), StoreError> {
        // The reply counts the subscribers that got it; none is not an error (a lone instance
        // not subscribed yet drops the key itself, and the others re-read everything when they
        // subscribe). A message sent twice costs a second invalidation, so it is retried.
        let _receivers: i64 = self
            .retried(
                redis::cmd("PUBLISH")
                    .arg(&self.channel.name)
                    .arg(hash.to_hex()),
            )
            .await?;
        Ok(())
    }

    /// Tells the other instances that stored workspace `name` changed, bounded like
    /// [`RedisStore::publish_invalidation`].
    pub async fn publish_workspace_change(&self, name: &str) -> Result<(), StoreError> {
        let _receivers: i64 = self
            .retried(
                redis::cmd("PUBLISH")
                    .arg(&self.channel.name)
                    .arg(format!("{WORKSPACE_MESSAGE}{name}")),
            )
            .await?;
        Ok(())
    }

    /// Opens a dedicated connection subscribed to the invalidation channel. Connecting and
    /// subscribing are bounded together by `store.redis.timeout`, but never by less than one
    /// second (as the store's own connection attempts).
    pub async fn subscribe_invalidations(&self) -> Result<InvalidationFeed, StoreError> {
        let limit = self.timeout.max(MIN_CONNECT_TIMEOUT);
        let acks = self.ack_channel(self.fleet().id());
        let subscribe = async {
            let mut pubsub = self.subscription_client().await?.get_async_pubsub().await?;
            // Beside the channel, this instance's own confirmations ([`super::fleet`]).
            pubsub.subscribe(&self.channel.name).await?;
            pubsub.subscribe(&acks).await?;
            Ok::<_, RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(limit, subscribe).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => return Err(redis_err(&e)),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "redis did not accept a subscription within {} ms",
                    limit.as_millis()
                )));
            }
        };
        let (sink, messages) = pubsub.split();
        Ok(InvalidationFeed {
            sink,
            messages,
            acks,
            ping_timeout: limit,
        })
    }

    /// Where to subscribe: on a cluster, the master every message is published to (see
    /// [`conn`](super::conn)); otherwise, or if the cluster cannot say, the next node of the
    /// list, so that a subscription lost with its node is made again on another one.
    async fn subscription_client(&self) -> RedisResult<redis::Client> {
        let nodes = &self.channel.nodes;
        let next = self.channel.next_node.fetch_add(1, Ordering::Relaxed) % nodes.len();
        match self.conn.home_node(&self.channel.name).await {
            Ok(Some(home)) => conn::client_for(&nodes[next], home),
            Ok(None) => Ok(nodes[next].clone()),
            Err(e) => {
                tracing::debug!(error = %e, "cluster slots unknown; subscribing on a seed node");
                Ok(nodes[next].clone())
            }
        }
    }

    /// Counters and state of the invalidation channel, shared by the publisher and the
    /// subscriber of this store.
    pub fn invalidation_stats(&self) -> &InvalidationStats {
        &self.channel.stats
    }
}

/// One message of the invalidation channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidationMessage {
    /// Drop this keyed hash, and then, if asked, confirm it to the instance that changed it.
    Key {
        /// The key's keyed hash.
        hash: SecretHash,
        /// Whom to confirm to (`<hash hex> <origin> <seq>`); `None` for the bare hash.
        confirm: Option<Confirm>,
    },
    /// This stored workspace changed (created, changed or deleted): read it again.
    Workspace(String),
    /// Another instance confirms one of this instance's messages (on `Pack:<this id>`).
    Ack(Ack),
    /// Not a message this version can read (e.g. one of a newer format).
    Unreadable,
}

impl InvalidationMessage {
    /// Reads a message's payload (see the module docs for the format).
    pub fn parse(payload: &[u8]) -> InvalidationMessage {
        let Ok(text) = std::str::from_utf8(payload) else {
            return InvalidationMessage::Unreadable;
        };
        if let Some(name) = text.strip_prefix(WORKSPACE_MESSAGE) {
            return if crate::config::is_workspace_name(name) {
                InvalidationMessage::Workspace(name.to_owned())
            } else {
                InvalidationMessage::Unreadable
            };
        }
        let mut parts = text.split(' ');
        let (Some(hex), origin, seq, None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return InvalidationMessage::Unreadable;
        };
        let confirm = match (origin, seq) {
            (None, None) => None,
            (Some(origin), Some(seq))
                if is_instance_id(origin)
                    && !seq.is_empty()
                    && seq.bytes().all(|b| b.is_ascii_digit()) =>
            {
                match seq.parse() {
                    Ok(seq) => Some(Confirm {
                        origin: origin.to_owned(),
                        seq,
                    }),
                    Err(_) => return InvalidationMessage::Unreadable,
                }
            }
            _ => return InvalidationMessage::Unreadable,
        };
        // Only lowercase: `from_hex` takes either case, the format is one of them.
        Some(hex)
            .filter(|hex| !hex.bytes().any(|b| b.is_ascii_uppercase()))
            .and_then(SecretHash::from_hex)
            .map_or(InvalidationMessage::Unreadable, |hash| {
                InvalidationMessage::Key { hash, confirm }
            })
    }
}

/// What a workspace's invalidation message starts with; its name follows.
const WORKSPACE_MESSAGE: &str = "ws:";

/// A connection subscribed to the invalidation channel, from
/// [`RedisStore::subscribe_invalidations`]. Dropping it closes the connection.
pub struct InvalidationFeed {
    sink: PubSubSink,
    messages: PubSubStream,
    /// `Pack:<this id>`.
    acks: String,
    ping_timeout: Duration,
}

impl InvalidationFeed {
    /// The next message, or `None` once the connection is gone (closed by the server, an I/O
    /// error, Redis restarted). Cancel-safe: no message is lost if the call is dropped.
    pub async fn next(&mut self) -> Option<InvalidationMessage> {
        use futures_util::StreamExt as _;
        loop {
            let message = self.messages.next().await?;
            if message.get_channel_name() != self.acks {
                return Some(InvalidationMessage::parse(message.get_payload_bytes()));
            }
            // An unreadable confirmation names no key: it is skipped (its wait runs out).
            if let Some(ack) = super::fleet::parse_ack(message.get_payload_bytes()) {
                return Some(InvalidationMessage::Ack(ack));
            }
        }
    }

    /// A liveness check that runs until the connection stops answering: a `PING` every
    /// `every`, each bounded like the subscription itself. A connection that dies without a
    /// word (a network partition, a host gone) ends no stream, so without this the feed would
    /// wait forever while messages are lost. Resolves to why the connection is deemed dead.
    pub fn heartbeat(&self, every: Duration) -> impl Future<Output = StoreError> + Send + 'static {
        let mut sink = self.sink.clone();
        let timeout = self.ping_timeout;
        async move {
            loop {
                tokio::time::sleep(every).await;
                match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return redis_err(&e),
                    Err(_) => {
                        return StoreError::Unavailable(format!(
                            "redis did not answer PING within {} ms",
                            timeout.as_millis()
                        ));
                    }
                }
            }
        }
    }
}
