//! The delivery worker: a tokio task that claims due deliveries from the
//! outbox under a lease, makes one attempt each, and records the outcome.
//! A crash between sending and recording leaves the lease to expire; the
//! next claim sends again with the same notification id, which the
//! receiver uses as its idempotency key. It never touches a task: a slow or
//! failing receiver delays nothing but its own deliveries.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::config::ConfigCell;
use crate::outbox::{Finished, Outbox};
use crate::sinks::{Delivery, Sender};

/// The time source, in Unix milliseconds (injected so tests can move it).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    })
}

/// How a delivery worker runs.
#[derive(Clone)]
pub struct WorkerConfig {
    pub id: String,
    pub lease_ms: i64,
    pub batch: i64,
    /// The longest idle wait between looks at the outbox.
    pub poll_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: format!("delivery-{}", uuid::Uuid::now_v7()),
            lease_ms: 30_000,
            batch: 32,
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// A running worker; `shutdown` stops it after the current batch.
pub struct DeliveryWorker {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
    /// Poke to make the worker look at the outbox now (after an enqueue).
    pub wake: Arc<Notify>,
}

impl DeliveryWorker {
    pub fn spawn(
        outbox: Arc<Outbox>,
        config: Arc<ConfigCell>,
        worker: WorkerConfig,
        clock: Clock,
    ) -> DeliveryWorker {
        let (stop, mut stopped) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let wake2 = wake.clone();
        let sender = Sender::new();
        let handle = tokio::spawn(async move {
            loop {
                if *stopped.borrow() {
                    return;
                }
                let now = clock();
                let claimed = match outbox
                    .claim(&worker.id, now, worker.lease_ms, worker.batch)
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "delivery worker: claim failed; retrying");
                        Vec::new()
                    }
                };
                let busy = !claimed.is_empty();
                let sinks = config.get();
                let mut attempts = tokio::task::JoinSet::new();
                for c in claimed {
                    let (sender, sinks, clock, id) = (
                        sender.clone(),
                        sinks.clone(),
                        clock.clone(),
                        worker.id.clone(),
                    );
                    attempts.spawn(async move {
                        let d = Delivery { notification_id: c.id.clone(), sink: c.sink, to: c.address, recipient: c.recipient, message: c.message };
                        let outcome = sender.deliver(&sinks.sinks, &d, clock() / 1000).await;
                        if let Err(e) = &outcome {
                            tracing::warn!(notification = %c.id, attempt = c.attempt, error = %e, "delivery failed");
                        }
                        Finished { id: c.id, worker: id, attempt: c.attempt, now_ms: clock(), outcome }
                    });
                }
                // The batch's outcomes are recorded together, in one transaction.
                let mut done = Vec::new();
                while let Some(r) = attempts.join_next().await {
                    if let Ok(f) = r {
                        done.push(f);
                    }
                }
                if !done.is_empty()
                    && let Err(e) = outbox.finish_many(&done).await
                {
                    tracing::warn!(error = %e, count = done.len(), "delivery worker: cannot record the outcomes; the leases will expire and they are sent again");
                }
                if busy {
                    continue;
                }
                tokio::select! {
                    _ = wake2.notified() => {}
                    _ = tokio::time::sleep(worker.poll_interval) => {}
                    _ = stopped.changed() => {}
                }
            }
        });
        DeliveryWorker { stop, handle, wake }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}
