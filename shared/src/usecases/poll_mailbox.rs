//! Polling channels' mailboxes (IMAP, POP3): fetch, hand each message to ingest, and only once
//! ingest has durably recorded it mark it seen or delete it on the server.
//!
//! What makes it lose nothing and duplicate nothing:
//!
//! - **Order.** For each message: ingest (raw stored first) → acknowledge on the server (IMAP
//!   `\Seen` / `\Deleted` + expunge, POP3 `DELE` committed by `QUIT`) → advance the cursor.
//!   A crash between any two steps leaves the message to be fetched again; ingest recognizes
//!   the same bytes as a repeat and records nothing new.
//! - **Cursors.** IMAP: UIDVALIDITY and the last acknowledged UID; a changed UIDVALIDITY takes
//!   every message again, which ingest's duplicate checks absorb. POP3: the set of UIDLs taken,
//!   pruned to what the server still lists.
//! - **Bounds.** A run takes at most `max_messages` and stops starting new work after
//!   `max_duration` (well inside a Lambda time-out); the next run carries on from the cursor.
//! - **Isolation.** Each mailbox has its own run, lease and health; one failing (a wrong
//!   password, a server down, a refused token) is recorded on that channel and the others go on.
//!   A failed token refresh is recorded at once, not after the cached token runs out.
//!
//! `mailroom serve` runs [`run_idle_loop`]: IMAP mailboxes in IDLE (new mail is queued within
//! about a second), POP3 ones polled every `poll_interval`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::domain::channel::Channel;
use crate::domain::ids::ChannelName;
use crate::domain::journal::Source;
use crate::domain::mailbox::{
    AfterFetch, ChannelHealth, CursorStart, IncomingMailbox, MailboxAuth, MailboxSettings, NetworkPolicy,
    ProtocolFamily, RunCounts, SecretRef,
};
use crate::ports::identity::{AccessTokenSource, TokenError};
use crate::ports::mailbox::{
    ConnectionInfo, HostResolver, ImapSession, MailEndpoint, MailboxConnector, MailboxCredentials, MailboxError,
    MailboxSession, MailboxStateStore, Pop3Session, TokenSources,
};
use crate::ports::secrets::SecretStore;
use crate::ports::{BackendError, Clock};
use crate::usecases::channel_directory::ChannelDirectory;
use crate::usecases::ingest::{InboundEmail, IngestError, IngestService};

// ---------------------------------------------------------------------------------------- access

/// Why a mailbox could not be opened, in words for admins.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("the {0} is not set: enter it in the channel's settings")]
    SecretMissing(&'static str),
    #[error("the {0} could not be read from the secret store")]
    SecretStore(&'static str, #[source] BackendError),
    #[error("the OAuth2 authority is not allowed: {0}")]
    Authority(&'static str),
    #[error("the Microsoft sign-in failed")]
    Token(#[source] TokenError),
    #[error(transparent)]
    Mailbox(#[from] MailboxError),
}

impl AccessError {
    pub fn plain_words(&self) -> String {
        match self {
            Self::Mailbox(e) => e.plain_words(),
            Self::Token(e) => format!("{self}: {e}"),
            Self::SecretStore(_, e) => format!("{self}: {e}"),
            _ => self.to_string(),
        }
    }

    pub fn is_transient(&self) -> bool {
        match self {
            Self::SecretStore(_, e) => e.is_transient(),
            Self::Token(e) => e.is_transient(),
            Self::Mailbox(e) => e.is_transient(),
            Self::SecretMissing(_) | Self::Authority(_) => false,
        }
    }
}

/// What "opening a mailbox" went through, for "test connection".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenTrace {
    /// The addresses the name resolved to (all passed the network policy).
    pub addresses: Vec<IpAddr>,
    pub connection: Option<ConnectionInfo>,
}

/// Opens signed-in sessions for a channel's mailbox: resolves the name and checks every address
/// against the network policy, reads the secret, gets an OAuth2 token (cached per app), and
/// connects only to the checked addresses. Shared by the poller and "test connection".
pub struct MailboxAccess {
    pub secrets: Arc<dyn SecretStore>,
    pub connector: Arc<dyn MailboxConnector>,
    pub resolver: Arc<dyn HostResolver>,
    pub tokens: Arc<dyn TokenSources>,
    pub policy: NetworkPolicy,
    /// Token sources by channel, with a digest of the app settings and secret they were made
    /// for: a changed secret gets a new source, an unchanged one keeps its cached token.
    token_sources: Mutex<HashMap<ChannelName, CachedTokenSource>>,
}

/// A token source and the digest of the app settings and secret it was made for.
type CachedTokenSource = (String, Arc<dyn AccessTokenSource>);

impl MailboxAccess {
    pub fn new(
        secrets: Arc<dyn SecretStore>,
        connector: Arc<dyn MailboxConnector>,
        resolver: Arc<dyn HostResolver>,
        tokens: Arc<dyn TokenSources>,
        policy: NetworkPolicy,
    ) -> Self {
        Self { secrets, connector, resolver, tokens, policy, token_sources: Mutex::new(HashMap::new()) }
    }

    /// The secret the mailbox signs in with: `given` (an admin testing unsaved settings) or the
    /// one the channel refers to.
    async fn secret(
        &self,
        mailbox: &IncomingMailbox,
        given: Option<SecretString>,
    ) -> Result<SecretString, AccessError> {
        let label = match &mailbox.auth {
            MailboxAuth::Normal { .. } => "password",
            MailboxAuth::Oauth2(_) => "client secret",
        };
        if let Some(v) = given {
            return Ok(v);
        }
        match mailbox.auth.secret() {
            SecretRef::Stored(name) => self
                .secrets
                .get(name)
                .await
                .map_err(|e| AccessError::SecretStore(label, e))?
                .ok_or(AccessError::SecretMissing(label)),
            // Config values are moved into the store at start-up; a channel still holding one
            // was built by hand (a test, a tool): use it as is.
            SecretRef::Inline(v) => Ok(v.clone()),
            SecretRef::Env(var) => {
                std::env::var(var).map(SecretString::from).map_err(|_| AccessError::SecretMissing(label))
            }
        }
    }

    fn token_source(
        &self,
        channel: &ChannelName,
        mailbox: &IncomingMailbox,
        secret: &SecretString,
    ) -> Option<Arc<dyn AccessTokenSource>> {
        let MailboxAuth::Oauth2(app) = &mailbox.auth else { return None };
        let digest = hex::encode(Sha256::digest(
            format!("{}\0{}\0{}\0{}", app.authority, app.tenant, app.client_id, secret.expose_secret()).as_bytes(),
        ));
        let mut sources = self.token_sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((d, source)) = sources.get(channel)
            && *d == digest
        {
            return Some(source.clone());
        }
        let source = self.tokens.source(app, secret.clone());
        sources.insert(channel.clone(), (digest, source.clone()));
        Some(source)
    }

    /// Resolves the server's name and checks every address it resolves to.
    pub async fn endpoint(&self, mailbox: &IncomingMailbox) -> Result<MailEndpoint, AccessError> {
        let port = mailbox.port();
        let addresses = self.resolver.resolve(&mailbox.host, port).await?;
        self.policy
            .check_all(&addresses)
            .map_err(|r| MailboxError::Refused { host: mailbox.host.to_string(), reason: r.to_string() })?;
        Ok(MailEndpoint { protocol: mailbox.protocol, host: mailbox.host.clone(), port, addresses })
    }

    /// A signed-in session. With OAuth2, a token the server refuses is dropped and a fresh one
    /// tried once (it may have been revoked or expired early).
    pub async fn open(
        &self,
        channel: &ChannelName,
        mailbox: &IncomingMailbox,
        given_secret: Option<SecretString>,
        trace: &mut OpenTrace,
    ) -> Result<MailboxSession, AccessError> {
        if let MailboxAuth::Oauth2(app) = &mailbox.auth {
            self.policy.check_authority(&app.authority).map_err(AccessError::Authority)?;
        }
        let endpoint = self.endpoint(mailbox).await?;
        trace.addresses = endpoint.addresses.clone();
        let secret = self.secret(mailbox, given_secret).await?;
        let Some(tokens) = self.token_source(channel, mailbox, &secret) else {
            let credentials = MailboxCredentials::Password { user: mailbox.user.clone(), password: secret };
            let (session, info) = self.connector.connect(&endpoint, &credentials).await?;
            trace.connection = Some(info);
            return Ok(session);
        };
        let mut retried = false;
        loop {
            let token = tokens.access_token().await.map_err(AccessError::Token)?;
            let credentials = MailboxCredentials::OAuth2 { user: mailbox.user.clone(), token };
            match self.connector.connect(&endpoint, &credentials).await {
                Ok((session, info)) => {
                    trace.connection = Some(info);
                    return Ok(session);
                }
                Err(MailboxError::AuthFailed { .. }) if !retried => {
                    debug!(channel_id = %channel, "the server refused the cached token; asking for a new one");
                    tokens.invalidate();
                    retried = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------- poller

/// How much one run may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollLimits {
    pub max_messages: usize,
    pub max_duration: Duration,
    /// Mailboxes polled at the same time by [`MailboxPoller::poll_all`].
    pub concurrency: usize,
    /// Messages per `UID FETCH`.
    pub fetch_batch: usize,
    /// Bytes per `UID FETCH` (a single larger message is still fetched alone).
    pub fetch_batch_bytes: u64,
    /// Messages larger than this are left on the server untouched and reported, so one huge
    /// message cannot exhaust a Lambda's memory on every run.
    pub max_download_bytes: u64,
    /// How long a run's lease on a mailbox lasts (longer than a run).
    pub lease: Duration,
    pub poll_interval: Duration,
    pub idle_renew: Duration,
    pub channel_refresh: Duration,
}

impl PollLimits {
    pub fn from_settings(settings: &MailboxSettings) -> Self {
        let max_duration = Duration::from_secs(settings.max_run_secs);
        Self {
            max_messages: settings.max_messages_per_run,
            max_duration,
            concurrency: settings.concurrency,
            fetch_batch: 25,
            fetch_batch_bytes: 8 * 1024 * 1024,
            max_download_bytes: 100 * 1024 * 1024,
            lease: max_duration * 3 + Duration::from_secs(60),
            poll_interval: Duration::from_secs(settings.poll_interval_secs),
            idle_renew: Duration::from_secs(settings.idle_renew_secs),
            channel_refresh: Duration::from_secs(settings.channel_refresh_secs),
        }
    }
}

impl Default for PollLimits {
    fn default() -> Self {
        Self::from_settings(&MailboxSettings::default())
    }
}

/// Why a run failed, in words for admins.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("channel {0} does not exist")]
    UnknownChannel(ChannelName),
    #[error("channel {0} has no mailbox to poll")]
    NoMailbox(ChannelName),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Mailbox(#[from] MailboxError),
    #[error("a message could not be ingested (it stays on the server and is tried again)")]
    Ingest(#[from] IngestError),
    #[error("the mailbox position could not be saved")]
    State(#[from] BackendError),
}

impl PollError {
    pub fn plain_words(&self) -> String {
        match self {
            Self::Access(e) => e.plain_words(),
            Self::Mailbox(e) => e.plain_words(),
            Self::Ingest(e) => {
                format!("{self}: {}", std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_default())
            }
            Self::State(e) => format!("{self}: {e}"),
            _ => self.to_string(),
        }
    }
}

/// What a run of one channel did.
#[derive(Debug)]
pub struct PollReport {
    pub channel: ChannelName,
    pub counts: RunCounts,
    pub outcome: PollOutcome,
}

#[derive(Debug)]
pub enum PollOutcome {
    Done,
    /// Another poller holds the mailbox's lease (or the run's time was used up before it began).
    Skipped(&'static str),
    Failed(PollError),
}

impl PollReport {
    pub fn failed(&self) -> bool {
        matches!(self.outcome, PollOutcome::Failed(_))
    }
}

/// The run's bounds, shared by every mailbox of a `poll_all`.
struct Budget {
    deadline: Instant,
    max_messages: usize,
    stop: Option<watch::Receiver<bool>>,
}

impl Budget {
    fn exhausted(&self, taken: u32) -> bool {
        taken as usize >= self.max_messages
            || Instant::now() >= self.deadline
            || self.stop.as_ref().is_some_and(|s| *s.borrow())
    }
}

/// A run that failed part-way still reports what it did.
struct RunFailure {
    counts: RunCounts,
    error: PollError,
}

/// The poller of every channel's mailbox.
pub struct MailboxPoller {
    pub ingest: IngestService,
    pub channels: ChannelDirectory,
    pub state: Arc<dyn MailboxStateStore>,
    pub access: Arc<MailboxAccess>,
    pub limits: PollLimits,
    pub clock: Arc<dyn Clock>,
    /// Who holds leases taken by this poller (unique per process).
    pub owner: String,
}

impl MailboxPoller {
    pub fn new(
        ingest: IngestService,
        channels: ChannelDirectory,
        state: Arc<dyn MailboxStateStore>,
        access: Arc<MailboxAccess>,
        limits: PollLimits,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let owner = format!("poller-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        Self { ingest, channels, state, access, limits, clock, owner }
    }

    /// Polls every enabled channel that has a mailbox, a few at a time, within the run's time.
    /// A failure is recorded on its channel and reported; it never stops the others.
    pub async fn poll_all(&self) -> Result<Vec<PollReport>, BackendError> {
        let set = self.channels.current().await?;
        let targets: Vec<Channel> = set.channels().filter(|c| c.enabled && c.mailbox.is_some()).cloned().collect();
        let deadline = Instant::now() + self.limits.max_duration;
        let reports = stream::iter(targets)
            .map(|channel| async move {
                if Instant::now() >= deadline {
                    return PollReport {
                        channel: channel.name.clone(),
                        counts: RunCounts::default(),
                        outcome: PollOutcome::Skipped("no time left in this run"),
                    };
                }
                let budget = Budget { deadline, max_messages: self.limits.max_messages, stop: None };
                self.poll_with_lease(&channel, &budget, None).await
            })
            .buffer_unordered(self.limits.concurrency.max(1))
            .collect()
            .await;
        Ok(reports)
    }

    /// Polls one channel now.
    pub async fn poll_channel(&self, name: &ChannelName) -> Result<PollReport, PollError> {
        let channel = self.channel(name).await?;
        let budget = Budget {
            deadline: Instant::now() + self.limits.max_duration,
            max_messages: self.limits.max_messages,
            stop: None,
        };
        Ok(self.poll_with_lease(&channel, &budget, None).await)
    }

    async fn channel(&self, name: &ChannelName) -> Result<Channel, PollError> {
        let set = self.channels.current().await?;
        let (channel, _) = set.by_name(name).ok_or_else(|| PollError::UnknownChannel(name.clone()))?;
        if channel.mailbox.is_none() {
            return Err(PollError::NoMailbox(name.clone()));
        }
        Ok(channel.clone())
    }

    /// One run under the mailbox's lease, with its health recorded and logged. With `session`,
    /// the run uses that open connection (IDLE); otherwise it opens and closes its own.
    async fn poll_with_lease(
        &self,
        channel: &Channel,
        budget: &Budget,
        session: Option<&mut MailboxSession>,
    ) -> PollReport {
        let name = &channel.name;
        let now = self.clock.now();
        let until = now + chrono::Duration::from_std(self.limits.lease).unwrap_or(chrono::Duration::minutes(5));
        match self.state.try_lease(name, &self.owner, now, until).await {
            Ok(true) => {}
            Ok(false) => {
                debug!(channel_id = %name, "another poller is reading this mailbox; skipped");
                return PollReport {
                    channel: name.clone(),
                    counts: RunCounts::default(),
                    outcome: PollOutcome::Skipped("another poller is reading this mailbox"),
                };
            }
            Err(e) => {
                let error = PollError::State(e);
                self.record(name, Err((&error, RunCounts::default()))).await;
                return PollReport {
                    channel: name.clone(),
                    counts: RunCounts::default(),
                    outcome: PollOutcome::Failed(error),
                };
            }
        }
        let result = self.run(channel, budget, session).await;
        if let Err(e) = self.state.release_lease(name, &self.owner).await {
            warn!(channel_id = %name, error = %e, "could not release the polling lease; it expires on its own");
        }
        match result {
            Ok(counts) => {
                self.record(name, Ok(counts)).await;
                PollReport { channel: name.clone(), counts, outcome: PollOutcome::Done }
            }
            Err(RunFailure { counts, error }) => {
                self.record(name, Err((&error, counts))).await;
                PollReport { channel: name.clone(), counts, outcome: PollOutcome::Failed(error) }
            }
        }
    }

    /// Stores and logs the channel's health after a run.
    async fn record(&self, name: &ChannelName, result: Result<RunCounts, (&PollError, RunCounts)>) {
        let mut health = match self.state.health(name).await {
            Ok(h) => h.unwrap_or_default(),
            Err(e) => {
                warn!(channel_id = %name, error = %e, "cannot read channel health");
                ChannelHealth::default()
            }
        };
        let now = self.clock.now();
        match result {
            Ok(counts) => {
                if health.consecutive_failures > 0 {
                    info!(channel_id = %name, after_failures = health.consecutive_failures, "mailbox reachable again");
                }
                health.record_success(now, counts);
                if counts.fetched > 0 || counts.acknowledged > 0 || counts.too_large > 0 {
                    info!(
                        channel_id = %name,
                        fetched = counts.fetched,
                        ingested = counts.ingested,
                        repeats = counts.repeats,
                        acknowledged = counts.acknowledged,
                        more_waiting = counts.more_waiting,
                        too_large = counts.too_large,
                        "mailbox polled"
                    );
                }
            }
            Err((error, counts)) => {
                let words = error.plain_words();
                health.record_failure(now, words.clone(), counts);
                warn!(
                    channel_id = %name,
                    consecutive_failures = health.consecutive_failures,
                    fetched = counts.fetched,
                    ingested = counts.ingested,
                    error = %words,
                    "mailbox poll failed"
                );
            }
        }
        if let Err(e) = self.state.save_health(name, &health).await {
            warn!(channel_id = %name, error = %e, "cannot save channel health");
        }
    }

    async fn run(
        &self,
        channel: &Channel,
        budget: &Budget,
        session: Option<&mut MailboxSession>,
    ) -> Result<RunCounts, RunFailure> {
        let fail = |error: PollError| RunFailure { counts: RunCounts::default(), error };
        let mailbox = channel.mailbox.as_ref().ok_or_else(|| fail(PollError::NoMailbox(channel.name.clone())))?;
        let mut counts = RunCounts::default();
        let result = match session {
            Some(session) => self.run_on(channel, mailbox, session, budget, &mut counts).await,
            None => {
                let mut trace = OpenTrace::default();
                let mut session =
                    self.access.open(&channel.name, mailbox, None, &mut trace).await.map_err(|e| fail(e.into()))?;
                let result = self.run_on(channel, mailbox, &mut session, budget, &mut counts).await;
                // POP3's QUIT is part of the run (it commits deletions); IMAP logs out here.
                if let MailboxSession::Imap(s) = &mut session {
                    s.logout().await;
                }
                result
            }
        };
        result.map(|()| counts).map_err(|error| RunFailure { counts, error })
    }

    async fn run_on(
        &self,
        channel: &Channel,
        mailbox: &IncomingMailbox,
        session: &mut MailboxSession,
        budget: &Budget,
        counts: &mut RunCounts,
    ) -> Result<(), PollError> {
        match session {
            MailboxSession::Imap(s) => self.run_imap(channel, mailbox, s.as_mut(), budget, counts).await,
            MailboxSession::Pop3(s) => self.run_pop3(channel, mailbox, s.as_mut(), budget, counts).await,
        }
    }

    fn inbound(&self, channel: &Channel, mailbox: &IncomingMailbox, raw: Vec<u8>) -> InboundEmail {
        InboundEmail {
            raw,
            source: Source::Mailbox { channel: channel.name.clone(), protocol: mailbox.protocol.as_str().to_owned() },
            envelope_recipients: Vec::new(),
            channel: Some(channel.name.clone()),
        }
    }

    async fn run_imap(
        &self,
        channel: &Channel,
        mailbox: &IncomingMailbox,
        session: &mut dyn ImapSession,
        budget: &Budget,
        counts: &mut RunCounts,
    ) -> Result<(), PollError> {
        let name = &channel.name;
        let key = mailbox.key();
        let inbox = session.select_inbox().await?;
        let stored = self.state.imap_cursor(name, &key).await?;
        let start = CursorStart::decide(stored, inbox.uid_validity, inbox.uid_next, mailbox.after_fetch);
        let mut cursor = start.cursor();
        match start {
            CursorStart::Continue(_) => {}
            CursorStart::FirstContact(c) => {
                info!(channel_id = %name, unseen_only_through = c.unseen_only_through, "first poll of this mailbox");
                self.state.save_imap_cursor(name, &key, &cursor).await?;
            }
            CursorStart::Resync { previous_uid_validity, .. } => {
                warn!(
                    channel_id = %name,
                    previous_uid_validity,
                    uid_validity = inbox.uid_validity,
                    "UIDVALIDITY changed: taking every message again; ingest recognizes those it already has"
                );
                self.state.save_imap_cursor(name, &key, &cursor).await?;
            }
        }

        // A deletion an earlier run flagged but did not expunge (the connection dropped).
        if mailbox.after_fetch == AfterFetch::Delete && cursor.last_uid > 0 {
            let pending = session.deleted_through(cursor.last_uid).await?;
            if !pending.is_empty() {
                session.delete(&pending).await?;
                counts.acknowledged += pending.len() as u32;
            }
        }

        let mut candidates = session.uids_after(cursor.last_uid).await?;
        if cursor.unseen_only_through > cursor.last_uid {
            let seen: HashSet<u32> =
                session.seen_between(cursor.last_uid + 1, cursor.unseen_only_through).await?.into_iter().collect();
            candidates.retain(|u| !seen.contains(u));
        }
        if candidates.is_empty() {
            // Everything up to the first-contact boundary was read by someone already.
            if cursor.unseen_only_through > cursor.last_uid {
                cursor.advance(cursor.unseen_only_through);
                self.state.save_imap_cursor(name, &key, &cursor).await?;
            }
            return Ok(());
        }

        let mut next = 0;
        while next < candidates.len() {
            if budget.exhausted(counts.fetched) {
                counts.more_waiting = true;
                break;
            }
            let room = budget.max_messages.saturating_sub(counts.fetched as usize).max(1);
            let window = &candidates[next..(next + room.min(100)).min(candidates.len())];
            let sizes: HashMap<u32, u64> = session.sizes(window).await?.into_iter().collect();
            let mut batch = Vec::new();
            let mut bytes = 0u64;
            let mut too_large = Vec::new();
            for uid in window {
                match sizes.get(uid) {
                    // Gone since the search (expunged by someone): nothing to take.
                    None => too_large.push((*uid, None)),
                    Some(size) if *size > self.limits.max_download_bytes => too_large.push((*uid, Some(*size))),
                    Some(size) => {
                        if !batch.is_empty()
                            && (batch.len() >= self.limits.fetch_batch || bytes + size > self.limits.fetch_batch_bytes)
                        {
                            break;
                        }
                        batch.push(*uid);
                        bytes += size;
                    }
                }
                if batch.len() >= self.limits.fetch_batch {
                    break;
                }
            }
            for (uid, size) in &too_large {
                if let Some(size) = size {
                    counts.too_large += 1;
                    warn!(channel_id = %name, uid, size, limit = self.limits.max_download_bytes, "message too large to download; left on the server");
                }
            }
            let last_in_step = batch.iter().chain(too_large.iter().map(|(u, _)| u)).max().copied();
            let fetched = if batch.is_empty() { Vec::new() } else { session.fetch(&batch).await? };
            counts.fetched += fetched.len() as u32;
            // UIDs of the batch that did not come back were expunged meanwhile: nothing to take.
            let fetched_uids: Vec<u32> = fetched.iter().map(|m| m.uid).collect();

            let mut done = Vec::with_capacity(fetched.len());
            let mut failure = None;
            for message in fetched {
                if budget.stop.as_ref().is_some_and(|s| *s.borrow()) {
                    break;
                }
                match self.ingest.ingest(self.inbound(channel, mailbox, message.raw)).await {
                    Ok(outcome) => {
                        if outcome.repeat_delivery {
                            counts.repeats += 1;
                        } else {
                            counts.ingested += 1;
                        }
                        done.push(message.uid);
                    }
                    Err(e) => {
                        failure = Some(PollError::Ingest(e));
                        break;
                    }
                }
            }
            if !done.is_empty() {
                match mailbox.after_fetch {
                    AfterFetch::MarkSeen => session.mark_seen(&done).await?,
                    AfterFetch::Delete => session.delete(&done).await?,
                }
                counts.acknowledged += done.len() as u32;
            }
            // Move the cursor up to the first UID not yet taken: everything below it is
            // acknowledged, gone, too large, or (before the first-contact boundary) read.
            let complete = failure.is_none() && done.len() == fetched_uids.len();
            let advanced_to = if complete {
                last_in_step
            } else {
                let first_open = fetched_uids.iter().copied().find(|u| !done.contains(u));
                first_open.map(|u| u - 1)
            };
            if let Some(uid) = advanced_to {
                cursor.advance(uid);
                self.state.save_imap_cursor(name, &key, &cursor).await?;
            }
            if let Some(error) = failure {
                return Err(error);
            }
            if !complete {
                counts.more_waiting = true;
                return Ok(());
            }
            next = candidates.iter().position(|u| *u > cursor.last_uid).unwrap_or(candidates.len());
        }
        if next >= candidates.len() && cursor.unseen_only_through > cursor.last_uid {
            cursor.advance(cursor.unseen_only_through);
            self.state.save_imap_cursor(name, &key, &cursor).await?;
        }
        Ok(())
    }

    async fn run_pop3(
        &self,
        channel: &Channel,
        mailbox: &IncomingMailbox,
        session: &mut dyn Pop3Session,
        budget: &Budget,
        counts: &mut RunCounts,
    ) -> Result<(), PollError> {
        let name = &channel.name;
        let key = mailbox.key();
        let listing = session.uidl().await?;
        let sizes: HashMap<u32, u64> = session.list().await?.into_iter().collect();
        let mut taken = self.state.pop3_taken(name, &key).await?;
        let on_server: HashSet<&str> = listing.iter().map(|(_, u)| u.as_str()).collect();
        let gone: Vec<String> = taken.iter().filter(|u| !on_server.contains(u.as_str())).cloned().collect();
        if !gone.is_empty() {
            self.state.pop3_forget(name, &key, &gone).await?;
            for u in &gone {
                taken.remove(u);
            }
        }
        let delete = mailbox.after_fetch == AfterFetch::Delete;
        let mut deleted = 0u32;
        if delete {
            // Taken by an earlier run whose QUIT never came: its deletions did not happen.
            let pending: Vec<u32> = listing.iter().filter(|(_, u)| taken.contains(u)).map(|(n, _)| *n).collect();
            if !pending.is_empty() {
                session.dele(&pending).await?;
                deleted += pending.len() as u32;
            }
        }

        let mut new: Vec<(u32, &str, u64)> = Vec::new();
        for (number, uidl) in &listing {
            if taken.contains(uidl) {
                continue;
            }
            let size = sizes.get(number).copied().unwrap_or(0);
            if size > self.limits.max_download_bytes {
                counts.too_large += 1;
                warn!(channel_id = %name, size, limit = self.limits.max_download_bytes, "message too large to download; left on the server");
                continue;
            }
            new.push((*number, uidl.as_str(), size));
        }

        let mut failure = None;
        let mut next = 0;
        'batches: while next < new.len() {
            if budget.exhausted(counts.fetched) {
                counts.more_waiting = true;
                break;
            }
            let room = budget.max_messages.saturating_sub(counts.fetched as usize).max(1);
            let mut batch = Vec::new();
            let mut bytes = 0u64;
            for (number, _, size) in &new[next..] {
                if batch.len() >= self.limits.fetch_batch.min(room)
                    || (!batch.is_empty() && bytes + size > self.limits.fetch_batch_bytes)
                {
                    break;
                }
                batch.push(*number);
                bytes += size;
            }
            let raws = match session.retr(&batch).await {
                Ok(raws) => raws,
                Err(e) => {
                    failure = Some(PollError::Mailbox(e));
                    break;
                }
            };
            counts.fetched += raws.len() as u32;
            let mut done = Vec::with_capacity(raws.len());
            for (raw, (number, uidl, _)) in raws.into_iter().zip(&new[next..]) {
                if budget.stop.as_ref().is_some_and(|s| *s.borrow()) {
                    break;
                }
                match self.ingest.ingest(self.inbound(channel, mailbox, raw)).await {
                    Ok(outcome) => {
                        if outcome.repeat_delivery {
                            counts.repeats += 1;
                        } else {
                            counts.ingested += 1;
                        }
                    }
                    Err(e) => {
                        failure = Some(PollError::Ingest(e));
                        break;
                    }
                }
                self.state.pop3_add(name, &key, uidl).await?;
                done.push(*number);
            }
            if delete && !done.is_empty() {
                if let Err(e) = session.dele(&done).await {
                    failure = Some(PollError::Mailbox(e));
                    break 'batches;
                }
                deleted += done.len() as u32;
            }
            if failure.is_some() {
                break;
            }
            if done.len() < batch.len() {
                // Stopped part-way (shutdown): the rest waits for the next run.
                counts.more_waiting = true;
                break;
            }
            next += batch.len();
        }
        if let Some(error) = failure {
            // Commit the deletions of what was taken before the failure, if the line still works.
            if session.quit().await.is_ok() {
                counts.acknowledged += deleted;
            }
            return Err(error);
        }
        session.quit().await?;
        counts.acknowledged += deleted;
        Ok(())
    }

    // ------------------------------------------------------------------------------------ IDLE

    /// Watches one IMAP mailbox: a run, then IDLE until the server announces mail (or the
    /// renewal time passes), then another run on the same connection, until `stop`. Returns
    /// when stopped, or with the error that ended the connection; `worked` tells whether a run
    /// succeeded on it first.
    async fn watch_imap(
        &self,
        channel: &Channel,
        stop: &mut watch::Receiver<bool>,
        worked: &mut bool,
    ) -> Result<(), PollError> {
        let mailbox = channel.mailbox.as_ref().ok_or_else(|| PollError::NoMailbox(channel.name.clone()))?;
        let mut trace = OpenTrace::default();
        let mut session = match self.access.open(&channel.name, mailbox, None, &mut trace).await {
            Ok(s) => s,
            Err(e) => {
                let error = PollError::Access(e);
                self.record(&channel.name, Err((&error, RunCounts::default()))).await;
                return Err(error);
            }
        };
        let result = async {
            loop {
                let budget = Budget {
                    deadline: Instant::now() + self.limits.max_duration,
                    max_messages: self.limits.max_messages,
                    stop: Some(stop.clone()),
                };
                let report = self.poll_with_lease(channel, &budget, Some(&mut session)).await;
                if *stop.borrow() {
                    return Ok(());
                }
                match report.outcome {
                    PollOutcome::Failed(e) => return Err(e),
                    PollOutcome::Done => *worked = true,
                    PollOutcome::Skipped(_) => {}
                }
                // More mail than one run takes: carry on at once.
                if report.counts.more_waiting {
                    continue;
                }
                let MailboxSession::Imap(imap) = &mut session else { return Ok(()) };
                if !imap.supports_idle() {
                    // No IDLE: poll on the interval, on this connection.
                    tokio::select! {
                        _ = tokio::time::sleep(self.limits.poll_interval) => continue,
                        _ = stopped(stop) => return Ok(()),
                    }
                }
                match imap.idle(self.limits.idle_renew, stop).await? {
                    crate::ports::mailbox::IdleOutcome::Stopped => return Ok(()),
                    _ => continue,
                }
            }
        }
        .await;
        session.close().await;
        result
    }

    /// Keeps one channel's mailbox watched until `stop`: IMAP in IDLE, POP3 on the interval.
    /// After a failure (recorded in the channel's health) it waits, doubling up to 5 minutes.
    async fn watch_channel(self: Arc<Self>, channel: Channel, mut stop: watch::Receiver<bool>) {
        const FIRST_BACKOFF: Duration = Duration::from_secs(5);
        const MAX_BACKOFF: Duration = Duration::from_secs(300);
        let mut backoff = FIRST_BACKOFF;
        let Some(family) = channel.mailbox.as_ref().map(|m| m.protocol.family()) else { return };
        info!(channel_id = %channel.name, protocol = ?family, "watching mailbox");
        loop {
            if *stop.borrow() {
                return;
            }
            let wait = match family {
                ProtocolFamily::Imap => {
                    let mut worked = false;
                    match self.watch_imap(&channel, &mut stop, &mut worked).await {
                        Ok(()) => return,
                        // A connection that worked and then dropped (a server restart, an idle
                        // time-out) is re-opened at once; one that keeps failing, ever later.
                        Err(e) if worked => {
                            debug!(channel_id = %channel.name, error = %e.plain_words(), "mailbox connection ended; reconnecting");
                            backoff = FIRST_BACKOFF;
                            Duration::from_millis(200)
                        }
                        Err(_) => {
                            let wait = backoff;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            wait
                        }
                    }
                }
                ProtocolFamily::Pop3 => {
                    let budget = Budget {
                        deadline: Instant::now() + self.limits.max_duration,
                        max_messages: self.limits.max_messages,
                        stop: Some(stop.clone()),
                    };
                    let report = self.poll_with_lease(&channel, &budget, None).await;
                    if report.counts.more_waiting { Duration::ZERO } else { self.limits.poll_interval }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped(&mut stop) => return,
            }
        }
    }
}

/// Waits until `stop` holds `true` (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Watches every enabled channel's mailbox until `shutdown` turns true: IMAP mailboxes in IDLE
/// (new mail is ingested within about a second of arriving), POP3 ones polled every
/// `poll_interval`. Channels added, changed or disabled by an admin are picked up within
/// `channel_refresh`. For `mailroom serve`; the cloud uses [`MailboxPoller::poll_all`] on a
/// schedule instead.
pub async fn run_idle_loop(poller: Arc<MailboxPoller>, mut shutdown: watch::Receiver<bool>) {
    struct Watch {
        mailbox: IncomingMailbox,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }
    let mut watches: HashMap<ChannelName, Watch> = HashMap::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        match poller.channels.current().await {
            Ok(set) => {
                let wanted: HashMap<ChannelName, Channel> = set
                    .channels()
                    .filter(|c| c.enabled && c.mailbox.is_some())
                    .map(|c| (c.name.clone(), c.clone()))
                    .collect();
                // Stop watches whose channel went away, was disabled or points elsewhere now.
                let stale: Vec<ChannelName> = watches
                    .iter()
                    .filter(|(name, w)| wanted.get(*name).and_then(|c| c.mailbox.as_ref()) != Some(&w.mailbox))
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in stale {
                    if let Some(w) = watches.remove(&name) {
                        info!(channel_id = %name, "mailbox settings changed or channel disabled; restarting its watch");
                        let _ = w.stop.send(true);
                        let _ = tokio::time::timeout(Duration::from_secs(10), w.task).await;
                    }
                }
                for (name, channel) in wanted {
                    if watches.contains_key(&name) {
                        continue;
                    }
                    let (stop, stop_rx) = watch::channel(false);
                    let mailbox = channel.mailbox.clone().expect("filtered on mailbox");
                    let task = tokio::spawn(poller.clone().watch_channel(channel, stop_rx));
                    watches.insert(name, Watch { mailbox, stop, task });
                }
            }
            Err(e) => warn!(error = %e, "cannot read the channels; mailbox watches unchanged"),
        }
        tokio::select! {
            _ = tokio::time::sleep(poller.limits.channel_refresh) => {}
            _ = stopped(&mut shutdown) => break,
        }
    }
    for w in watches.values() {
        let _ = w.stop.send(true);
    }
    for (_, w) in watches {
        let _ = tokio::time::timeout(Duration::from_secs(10), w.task).await;
    }
}

#[cfg(test)]
#[path = "poll_mailbox_tests.rs"]
mod tests;
