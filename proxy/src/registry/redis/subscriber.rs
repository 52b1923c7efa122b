//! Change notices: one pub/sub connection per proxy, subscribed to the
//! changes channel. Each notice names an id; the ids that arrive together
//! are re-read in one snapshot and the cached ones brought up to date, in
//! order, by this one task.
//!
//! Subscribing comes before resyncing: a write after the subscription is
//! noticed, one before it is found by the resync's reads. So after every
//! (re)connection nothing missed while disconnected stays missed.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{PubSubSink, PubSubStream};
use ::redis::{Client, Msg};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::script::{timed, OP_TIMEOUT};
use super::Shared;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Also the longest a proxy takes to notice redis is back.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A silent connection is asked for a PONG this often, so one that died
/// without a FIN (a host gone, a partition) is noticed.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// Resync attempts on one fresh subscription.
const RESYNC_TRIES: usize = 4;
/// Notices re-read in one round trip at most.
const MAX_BATCH: usize = 1024;
/// Ids longer than this are no ids (a DNS label is 63).
const MAX_ID: usize = 255;

/// How one connection ended.
enum Ended {
    /// Never subscribed (or could not resync): redis is still away.
    Unreachable(String),
    /// Subscribed, then lost.
    Lost(String),
}

pub(super) async fn run(
    shared: Arc<Shared>,
    client: Client,
    ready: oneshot::Sender<()>,
    stop: CancellationToken,
) {
    let mut ready = Some(ready);
    let mut backoff = MIN_BACKOFF;
    let mut down_since_logged = false;
    loop {
        let ended = tokio::select! {
            _ = stop.cancelled() => return,
            ended = session(&shared, &client, &mut ready) => ended,
        };
        shared.connected.store(false, Ordering::Release);
        match ended {
            Ended::Lost(why) => {
                tracing::warn!(error = %why, "registry: redis change notices lost; answering from the cache until it is back");
                backoff = MIN_BACKOFF;
                down_since_logged = true;
            }
            Ended::Unreachable(why) if !down_since_logged => {
                tracing::warn!(error = %why, "registry: redis unreachable; answering from the cache until it is back");
                down_since_logged = true;
            }
            Ended::Unreachable(why) => {
                tracing::debug!(error = %why, retry_in = ?backoff, "registry: redis still unreachable");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One pub/sub connection, from connecting to losing it.
async fn session(
    shared: &Shared,
    client: &Client,
    ready: &mut Option<oneshot::Sender<()>>,
) -> Ended {
    let (mut sink, mut stream) = match subscribe(shared, client).await {
        Ok(pair) => pair,
        Err(why) => return Ended::Unreachable(why),
    };
    // Negative answers read before this point may have missed a notice.
    shared.cache.notice();
    let cached = shared.cache.cached_ids();
    // The data connection may still be reconnecting: a few quick tries
    // before the backoff.
    let mut tries = 0;
    while let Err(e) = shared.refresh(&cached).await {
        tries += 1;
        if tries == RESYNC_TRIES {
            return Ended::Unreachable(format!("resync: {e}"));
        }
        tokio::time::sleep(MIN_BACKOFF).await;
    }
    shared.connected.store(true, Ordering::Release);
    match ready.take() {
        Some(first) => {
            let _ = first.send(());
            tracing::debug!("registry: subscribed to redis change notices");
        }
        None => {
            tracing::info!(
                resynced = cached.len(),
                "registry: redis change notices back; cache resynced"
            );
        }
    }
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Ended::Lost("connection closed".into());
                };
                let mut ids = BTreeSet::new();
                add(&mut ids, &msg);
                while ids.len() < MAX_BATCH {
                    match stream.next().now_or_never() {
                        Some(Some(msg)) => add(&mut ids, &msg),
                        Some(None) => return Ended::Lost("connection closed".into()),
                        None => break,
                    }
                }
                shared.cache.notice();
                let ids: Vec<String> = ids.into_iter().collect();
                if let Err(e) = shared.refresh(&ids).await {
                    return Ended::Lost(format!("reading changed entries: {e}"));
                }
            }
            _ = ping.tick() => {
                if let Err(e) = timed(sink.ping::<::redis::Value>()).await {
                    return Ended::Lost(format!("ping: {e}"));
                }
            }
        }
    }
}

async fn subscribe(shared: &Shared, client: &Client) -> Result<(PubSubSink, PubSubStream), String> {
    let pubsub = tokio::time::timeout(OP_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| format!("no connection within {OP_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let (mut sink, stream) = pubsub.split();
    timed(sink.subscribe(&shared.keys.channel))
        .await
        .map_err(|e| e.to_string())?;
    Ok((sink, stream))
}

fn add(ids: &mut BTreeSet<String>, msg: &Msg) {
    match msg.get_payload::<String>() {
        Ok(id) if !id.is_empty() && id.len() <= MAX_ID => {
            ids.insert(id);
        }
        _ => tracing::debug!(
            channel = msg.get_channel_name(),
            "registry: ignoring a malformed change notice"
        ),
    }
}
