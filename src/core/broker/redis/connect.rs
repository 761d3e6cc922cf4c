//! Reaching Redis: the endpoint and TLS settings, and the connections the
//! bus and the emitter open (publisher with its scripts loaded, subscriber,
//! store, cluster client), with the reconnection backoff.

use crate::core::broker::store::{scripts, ScriptCall};
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, RedisResult};
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A `redis://` or `rediss://` URL.
    Standalone(String),
    /// Seed node URLs; `sharded` uses SSUBSCRIBE/SPUBLISH.
    Cluster { nodes: Vec<String>, sharded: bool },
}

/// TLS beyond what a `rediss://` URL says: a private CA, a client
/// certificate (mTLS), or no verification at all.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// PEM root certificate(s) to trust instead of the system store.
    pub ca: Option<Vec<u8>>,
    /// PEM client certificate and key.
    pub cert: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    /// Skip certificate verification (`rejectUnauthorized: false`).
    pub insecure: bool,
}

impl TlsSettings {
    fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.ca.is_none() && self.cert.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: match (&self.cert, &self.key) {
                (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                    client_cert: c.clone(),
                    client_key: k.clone(),
                }),
                _ => None,
            },
            root_cert: self.ca.clone(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub endpoint: Endpoint,
    pub tls: Option<TlsSettings>,
    /// How long `configure()` waits for the first connection.
    pub connect_timeout: Duration,
    /// Publications kept while Redis is unreachable.
    pub publish_buffer: usize,
    /// How the address is named in messages (no password).
    pub display: String,
    /// The runtime the connections and their tasks run on; `None`: the
    /// caller's. One of its own keeps a publication from waiting behind
    /// the sockets' work when that runtime has one thread (`js-thread`).
    pub runtime: Option<tokio::runtime::Handle>,
    /// With `runtime`: a lone message that arrives while nothing waits to
    /// cross to the caller's runtime is fanned out where it arrived, and
    /// only the wake-ups of the members it was queued for cross
    /// (`relay::Relay`). Set with direct writes, which leave most members
    /// nothing to wake for.
    pub fan_out_on_arrival: bool,
}

pub(in crate::core::broker) const BACKOFF_MIN: Duration = Duration::from_millis(25);
pub(in crate::core::broker) const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// What the publisher sends, in queue order.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Publish(String, String),
    Script(ScriptCall),
}

/// The two connection flavours behind one small surface.
#[derive(Clone)]
pub(in crate::core::broker) enum Publisher {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection, bool),
}

impl Publisher {
    pub(in crate::core::broker) async fn publish_batch(
        &mut self,
        batch: &[Outgoing],
    ) -> RedisResult<()> {
        match self {
            Publisher::Standalone(c) => {
                let mut p = redis::pipe();
                for item in batch {
                    match item {
                        Outgoing::Publish(ch, msg) => {
                            p.publish(ch, msg).ignore();
                        }
                        Outgoing::Script(call) => {
                            p.add_command(call.evalsha()).ignore();
                        }
                    }
                }
                p.query_async::<()>(c).await
            }
            Publisher::Cluster(c, sharded) => {
                let cmd_name = if *sharded { "SPUBLISH" } else { "PUBLISH" };
                for item in batch {
                    match item {
                        Outgoing::Publish(ch, msg) => {
                            redis::cmd(cmd_name)
                                .arg(ch)
                                .arg(msg)
                                .query_async::<()>(c)
                                .await?
                        }
                        Outgoing::Script(call) => {
                            call.invocation().invoke_async::<redis::Value>(c).await?;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// Loads the scripts a pipeline may call by SHA1: a restarted server
/// knows none, and a pipeline cannot load one half way.
pub(in crate::core::broker) async fn load_scripts(
    c: &mut MultiplexedConnection,
) -> RedisResult<()> {
    for script in scripts().all() {
        script.prepare_invoke().load_async(c).await?;
    }
    Ok(())
}

pub(in crate::core::broker) fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1 << attempt.min(5))
        .min(BACKOFF_MAX);
    // Jitter so a fleet does not reconnect in lockstep.
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
    base.mul_f64(0.75 + f64::from(jitter) / 4000.0)
}

/// A client for a standalone server, with the TLS settings applied.
pub(in crate::core::broker) fn standalone_client(
    url: &str,
    tls: Option<&TlsSettings>,
) -> RedisResult<redis::Client> {
    let Some(tls) = tls else {
        return redis::Client::open(url);
    };
    let url = if tls.insecure && !url.contains('#') {
        format!("{url}#insecure")
    } else {
        url.to_string()
    };
    match tls.certificates() {
        Some(certs) => redis::Client::build_with_tls(url.as_str(), certs),
        None => redis::Client::open(url.as_str()),
    }
}

pub(in crate::core::broker) async fn standalone_publisher(
    url: &str,
    tls: Option<&TlsSettings>,
    timeout: Duration,
) -> RedisResult<MultiplexedConnection> {
    let client = standalone_client(url, tls)?;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(Duration::from_secs(5)));
    let mut c = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    load_scripts(&mut c).await?;
    Ok(c)
}

pub(in crate::core::broker) async fn standalone_store(
    url: &str,
    tls: Option<&TlsSettings>,
    timeout: Duration,
) -> RedisResult<ConnectionManager> {
    let client = standalone_client(url, tls)?;
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(crate::core::broker::store::REQUEST_TIMEOUT))
        .set_max_delay(BACKOFF_MAX);
    ConnectionManager::new_with_config(client, cfg).await
}

pub(in crate::core::broker) async fn standalone_subscriber(
    url: &str,
    tls: Option<&TlsSettings>,
    timeout: Duration,
) -> RedisResult<redis::aio::PubSub> {
    let client = standalone_client(url, tls)?;
    match tokio::time::timeout(timeout, client.get_async_pubsub()).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connection timed out",
        ))),
    }
}

pub(in crate::core::broker) fn cluster_builder(
    nodes: &[String],
    tls: Option<&TlsSettings>,
) -> ClusterClientBuilder {
    let mut b = ClusterClientBuilder::new(nodes.to_vec());
    if let Some(tls) = tls {
        if let Some(certs) = tls.certificates() {
            b = b.certs(certs);
        }
        if tls.insecure {
            b = b.tls(redis::TlsMode::Insecure);
        }
    }
    b
}

/// Opens a publisher connection (scripts loaded), bounded by
/// `connect_timeout`: the servers' publisher and the emitter's both.
pub(in crate::core::broker) async fn open_publisher(
    cfg: &RedisConfig,
    cluster: Option<&redis::cluster::ClusterClient>,
) -> RedisResult<Publisher> {
    let open = async {
        match (&cfg.endpoint, cluster) {
            (Endpoint::Standalone(url), _) => {
                standalone_publisher(url, cfg.tls.as_ref(), cfg.connect_timeout)
                    .await
                    .map(Publisher::Standalone)
            }
            (Endpoint::Cluster { sharded, .. }, Some(client)) => client
                .get_async_connection()
                .await
                .map(|c| Publisher::Cluster(c, *sharded)),
            (Endpoint::Cluster { .. }, None) => Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "no cluster client",
            ))),
        }
    };
    match tokio::time::timeout(cfg.connect_timeout, open).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connection timed out",
        ))),
    }
}
