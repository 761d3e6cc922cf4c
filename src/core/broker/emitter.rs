//! The publisher behind `WebSocketEmitter`: publications (and history
//! appends) without a server, each answered once Redis accepted it or
//! with an error naming the address.
//!
//! Requests are queued when they are made and one writer task sends them,
//! many per pipeline, in the order they were made: a burst of `toRoom`
//! calls that are not awaited one by one goes out at the speed of Redis,
//! not one round trip per call, and in order.

use super::redis::{cluster_builder, open_publisher, Endpoint, Outgoing, Publisher, RedisConfig};
use parking_lot::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Requests sent in one pipeline at most.
const BATCH: usize = 256;

type Answer = oneshot::Sender<Result<(), String>>;

pub struct RedisEmitter {
    queue: Mutex<Option<mpsc::UnboundedSender<(Outgoing, Answer)>>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Opens connections to the configured Redis.
struct Link {
    cfg: RedisConfig,
    cluster_client: Option<redis::cluster::ClusterClient>,
}

impl Link {
    fn error(&self, why: &str) -> String {
        format!("Redis at {} unavailable: {why}", self.cfg.display)
    }

    async fn open(&self) -> Result<Publisher, String> {
        open_publisher(&self.cfg, self.cluster_client.as_ref())
            .await
            .map_err(|e| self.error(&e.to_string()))
    }
}

impl RedisEmitter {
    /// Connects (bounded by `connect_timeout`) and starts the writer.
    pub async fn connect(cfg: RedisConfig) -> Result<RedisEmitter, String> {
        let mut link = Link {
            cfg,
            cluster_client: None,
        };
        if let Endpoint::Cluster { nodes, .. } = &link.cfg.endpoint {
            link.cluster_client = Some(
                cluster_builder(nodes, link.cfg.tls.as_ref())
                    .connection_timeout(link.cfg.connect_timeout)
                    .response_timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|err| link.error(&err.to_string()))?,
            );
        }
        let conn = link.open().await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = crate::core::task::spawn(write(link, conn, rx));
        Ok(RedisEmitter {
            queue: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Queues a publication or script call now (so calls keep the order
    /// they were made in) and resolves when Redis took it.
    pub fn send(&self, item: Outgoing) -> impl std::future::Future<Output = Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        let queued = match self.queue.lock().as_ref() {
            Some(q) => q.send((item, tx)).is_ok(),
            None => false,
        };
        async move {
            if !queued {
                return Err("WebSocketEmitter is shut down".to_string());
            }
            rx.await
                .unwrap_or_else(|_| Err("WebSocketEmitter is shut down".to_string()))
        }
    }

    /// Sends what is queued, then disconnects.
    pub async fn close(&self) {
        self.queue.lock().take();
        let writer = self.writer.lock().take();
        if let Some(w) = writer {
            let _ = tokio::time::timeout(Duration::from_secs(5), w).await;
        }
    }
}

/// Sends queued requests in pipelines, in order. A pipeline that fails is
/// sent again once on a new connection before its requests fail (a
/// request that had reached Redis before the failure can then arrive
/// twice, as with the servers' publisher).
async fn write(link: Link, first: Publisher, mut rx: mpsc::UnboundedReceiver<(Outgoing, Answer)>) {
    let mut conn = Some(first);
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let (items, answers): (Vec<Outgoing>, Vec<Answer>) = batch.drain(..).unzip();
        let mut result = Err(String::new());
        for _attempt in 0..2 {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match link.open().await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        result = Err(e);
                        continue;
                    }
                },
            };
            match c.publish_batch(&items).await {
                Ok(()) => {
                    result = Ok(());
                    break;
                }
                Err(e) => {
                    conn = None;
                    result = Err(link.error(&e.to_string()));
                }
            }
        }
        for a in answers {
            let _ = a.send(result.clone());
        }
    }
}
