//! The channels as ingest and the pollers see them: a snapshot ([`ChannelSet`]) read from the
//! channel store and refreshed every little while, so a change an admin makes takes effect
//! within the refresh interval without a restart. The fixed form serves tools and tests that
//! work from the config file alone.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::config::ChannelSet;
use crate::domain::channel::Channel;
use crate::domain::script::EmailScript;
use crate::ports::BackendResult;
use crate::ports::channels::ChannelStore;

/// How long a failed refresh keeps serving the previous snapshot before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// A cheap-to-clone handle on the current channels.
#[derive(Clone)]
pub struct ChannelDirectory {
    inner: Arc<Inner>,
}

enum Inner {
    Fixed(Arc<ChannelSet>),
    Stored(Stored),
}

struct Stored {
    store: Arc<dyn ChannelStore>,
    refresh_every: Duration,
    /// The snapshot and when it should be refreshed.
    cached: Mutex<Option<(Instant, Arc<ChannelSet>)>>,
    /// One refresh at a time; the others wait for its result.
    refreshing: tokio::sync::Mutex<()>,
}

impl ChannelDirectory {
    /// Always the same channels (the config file's).
    pub fn fixed(channels: Arc<ChannelSet>) -> Self {
        Self { inner: Arc::new(Inner::Fixed(channels)) }
    }

    /// Channels from the store, re-read at most every `refresh_every`.
    pub fn stored(store: Arc<dyn ChannelStore>, refresh_every: Duration) -> Self {
        Self {
            inner: Arc::new(Inner::Stored(Stored {
                store,
                refresh_every,
                cached: Mutex::new(None),
                refreshing: tokio::sync::Mutex::new(()),
            })),
        }
    }

    /// The current snapshot. If the store cannot be read, the previous snapshot is kept (mail
    /// keeps flowing through a store hiccup); only the very first read can fail.
    pub async fn current(&self) -> BackendResult<Arc<ChannelSet>> {
        let stored = match &*self.inner {
            Inner::Fixed(set) => return Ok(set.clone()),
            Inner::Stored(stored) => stored,
        };
        if let Some(set) = stored.fresh() {
            return Ok(set);
        }
        let _one_at_a_time = stored.refreshing.lock().await;
        if let Some(set) = stored.fresh() {
            return Ok(set);
        }
        match stored.load().await {
            Ok(set) => {
                stored.keep(set.clone(), stored.refresh_every);
                Ok(set)
            }
            Err(e) => {
                let previous = stored.cached.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, s)| s.clone());
                match previous {
                    Some(set) => {
                        warn!(error = %e, "cannot refresh the channels; using the previous ones");
                        stored.keep(set.clone(), RETRY_AFTER_FAILURE);
                        Ok(set)
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// Drops the snapshot, so the next read sees a change made in this process at once.
    pub fn invalidate(&self) {
        if let Inner::Stored(stored) = &*self.inner {
            *stored.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

impl Stored {
    fn fresh(&self) -> Option<Arc<ChannelSet>> {
        let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        cached.as_ref().filter(|(due, _)| Instant::now() < *due).map(|(_, set)| set.clone())
    }

    fn keep(&self, set: Arc<ChannelSet>, for_how_long: Duration) {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now() + for_how_long, set));
    }

    async fn load(&self) -> BackendResult<Arc<ChannelSet>> {
        let records = self.store.list().await?;
        let channels: Vec<Channel> = records
            .into_iter()
            .filter_map(|r| match EmailScript::compile(&r.channel.script) {
                Ok(_) => Some(r.channel),
                Err(e) => {
                    // The admin use case checks scripts before storing them; a channel that
                    // still fails here must not stop the mail of every other channel.
                    warn!(channel_id = %r.channel.name, error = %e, "channel left out: its email script does not compile");
                    None
                }
            })
            .collect();
        ChannelSet::from_channels(channels)
            .map_err(|e| crate::ports::BackendError::permanent("build the channel directory", e))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::config::AppConfig;
    use crate::domain::ids::ChannelName;
    use crate::ports::BackendError;
    use crate::ports::channels::StoredChannel;

    struct CountingStore {
        channels: Mutex<Vec<StoredChannel>>,
        reads: AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl ChannelStore for CountingStore {
        async fn list(&self) -> BackendResult<Vec<StoredChannel>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(BackendError::transient("list channels", "down"));
            }
            Ok(self.channels.lock().unwrap().clone())
        }
        async fn get(&self, _: &ChannelName) -> BackendResult<Option<StoredChannel>> {
            unreachable!()
        }
        async fn put(&self, _: &StoredChannel, _: Option<u64>) -> BackendResult<u64> {
            unreachable!()
        }
    }

    fn record(c: Channel) -> StoredChannel {
        StoredChannel { channel: c, version: 1, position: 0, seed: None, updated_at: chrono::Utc::now() }
    }

    #[tokio::test]
    async fn snapshots_are_cached_refreshed_and_survive_a_failing_store() {
        let demo = AppConfig::demo().channels[0].clone();
        let store = Arc::new(CountingStore {
            channels: Mutex::new(vec![record(demo.clone())]),
            reads: AtomicUsize::new(0),
            fail: Default::default(),
        });
        let dir = ChannelDirectory::stored(store.clone(), Duration::from_secs(3600));
        assert!(dir.current().await.unwrap().by_name(&demo.name).is_some());
        dir.current().await.unwrap();
        assert_eq!(store.reads.load(Ordering::SeqCst), 1, "the second read is cached");

        let mut disabled = demo.clone();
        disabled.enabled = false;
        *store.channels.lock().unwrap() = vec![record(disabled)];
        dir.invalidate();
        assert!(!dir.current().await.unwrap().by_name(&demo.name).unwrap().0.enabled, "a change shows after refresh");

        store.fail.store(true, Ordering::SeqCst);
        dir.invalidate();
        let kept = ChannelDirectory::stored(store.clone(), Duration::ZERO);
        assert!(kept.current().await.is_err(), "nothing to fall back on");
        // With a snapshot in hand, a failing store keeps the previous one.
        store.fail.store(false, Ordering::SeqCst);
        let dir = ChannelDirectory::stored(store.clone(), Duration::ZERO);
        dir.current().await.unwrap();
        store.fail.store(true, Ordering::SeqCst);
        assert!(dir.current().await.unwrap().by_name(&demo.name).is_some());
    }
}
