use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{ensure_secrets_stored, version_conflict};
use crate::domain::ids::ChannelName;
use crate::domain::mailbox::{ChannelHealth, ImapCursor, MailboxKey};
use crate::ports::BackendResult;
use crate::ports::channels::{ChannelStore, StoredChannel};
use crate::ports::mailbox::MailboxStateStore;

#[derive(Default)]
struct State {
    channels: HashMap<ChannelName, StoredChannel>,
    cursors: HashMap<(ChannelName, MailboxKey), ImapCursor>,
    uidls: HashMap<(ChannelName, MailboxKey), HashSet<String>>,
    health: HashMap<ChannelName, ChannelHealth>,
    leases: HashMap<ChannelName, (String, DateTime<Utc>)>,
}

/// Channels and polling state in memory, for tests and the in-memory benchmark.
#[derive(Default)]
pub struct MemoryChannelStore {
    state: Mutex<State>,
}

impl MemoryChannelStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl ChannelStore for MemoryChannelStore {
    async fn list(&self) -> BackendResult<Vec<StoredChannel>> {
        let mut all: Vec<StoredChannel> = self.state().channels.values().cloned().collect();
        all.sort_by(|a, b| (a.position, &a.channel.name).cmp(&(b.position, &b.channel.name)));
        Ok(all)
    }

    async fn get(&self, name: &ChannelName) -> BackendResult<Option<StoredChannel>> {
        Ok(self.state().channels.get(name).cloned())
    }

    async fn put(&self, record: &StoredChannel, expected_version: Option<u64>) -> BackendResult<u64> {
        ensure_secrets_stored(record)?;
        let mut state = self.state();
        let current = state.channels.get(&record.channel.name).map(|r| r.version);
        if current != expected_version {
            return Err(version_conflict(record.channel.name.as_str(), expected_version));
        }
        let version = expected_version.unwrap_or(0) + 1;
        state.channels.insert(record.channel.name.clone(), StoredChannel { version, ..record.clone() });
        Ok(version)
    }
}

#[async_trait]
impl MailboxStateStore for MemoryChannelStore {
    async fn imap_cursor(&self, channel: &ChannelName, mailbox: &MailboxKey) -> BackendResult<Option<ImapCursor>> {
        Ok(self.state().cursors.get(&(channel.clone(), mailbox.clone())).copied())
    }

    async fn save_imap_cursor(
        &self,
        channel: &ChannelName,
        mailbox: &MailboxKey,
        cursor: &ImapCursor,
    ) -> BackendResult<()> {
        self.state().cursors.insert((channel.clone(), mailbox.clone()), *cursor);
        Ok(())
    }

    async fn pop3_taken(&self, channel: &ChannelName, mailbox: &MailboxKey) -> BackendResult<HashSet<String>> {
        Ok(self.state().uidls.get(&(channel.clone(), mailbox.clone())).cloned().unwrap_or_default())
    }

    async fn pop3_add(&self, channel: &ChannelName, mailbox: &MailboxKey, uidl: &str) -> BackendResult<()> {
        self.state().uidls.entry((channel.clone(), mailbox.clone())).or_default().insert(uidl.to_owned());
        Ok(())
    }

    async fn pop3_forget(&self, channel: &ChannelName, mailbox: &MailboxKey, uidls: &[String]) -> BackendResult<()> {
        if let Some(set) = self.state().uidls.get_mut(&(channel.clone(), mailbox.clone())) {
            for u in uidls {
                set.remove(u);
            }
        }
        Ok(())
    }

    async fn health(&self, channel: &ChannelName) -> BackendResult<Option<ChannelHealth>> {
        Ok(self.state().health.get(channel).cloned())
    }

    async fn save_health(&self, channel: &ChannelName, health: &ChannelHealth) -> BackendResult<()> {
        self.state().health.insert(channel.clone(), health.clone());
        Ok(())
    }

    async fn try_lease(
        &self,
        channel: &ChannelName,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> BackendResult<bool> {
        let mut state = self.state();
        match state.leases.get(channel) {
            Some((holder, expires)) if holder != owner && *expires > now => Ok(false),
            _ => {
                state.leases.insert(channel.clone(), (owner.to_owned(), until));
                Ok(true)
            }
        }
    }

    async fn release_lease(&self, channel: &ChannelName, owner: &str) -> BackendResult<()> {
        let mut state = self.state();
        if state.leases.get(channel).is_some_and(|(holder, _)| holder == owner) {
            state.leases.remove(channel);
        }
        Ok(())
    }
}
