//! The test dovecot (`infra/dovecot.sh`) and the token authority (`infra/identity.sh`), and a
//! Mailroom on the embedded backend polling them.
//!
//! Settings come from `MAILROOM_TEST_DOVECOT_CONF`, `MAILROOM_TEST_DOVECOT_USERS`,
//! `MAILROOM_TEST_MAIL_HOST`, `MAILROOM_TEST_MAIL_CA`, `MAILROOM_TEST_IMAP_PORT`,
//! `MAILROOM_TEST_IMAPS_PORT`, `MAILROOM_TEST_POP3_PORT`, `MAILROOM_TEST_POP3S_PORT` and
//! `MAILROOM_TEST_IDENTITY_URL`. Each test adds its own user, so tests run in parallel against
//! one server.

use std::collections::HashSet;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailroom::adapters::embedded::EmbeddedBackend;
use mailroom::app::{EmbeddedMailboxes, embedded_mailboxes};
use mailroom::config::AppConfig;
use mailroom::domain::channel::Channel;
use mailroom::domain::ids::{ChannelName, EmailAddress, QueueName};
use mailroom::domain::journal::{Disposition, JournalEntry};
use mailroom::domain::mailbox::{
    AfterFetch, IncomingMailbox, MailHost, MailProtocol, MailboxAuth, MailboxUser, OAuth2Client, SecretRef,
};
use mailroom::ports::IngestStore;
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The running test servers.
#[derive(Debug, Clone)]
pub struct Dovecot {
    pub conf: PathBuf,
    pub users: PathBuf,
    pub host: String,
    pub ca: PathBuf,
    pub imap_port: u16,
    pub imaps_port: u16,
    pub pop3_port: u16,
    pub pop3s_port: u16,
    /// The token authority, for XOAUTH2.
    pub identity_url: String,
}

/// The servers, or `None` (after printing why) when the variables are not set. Panics instead
/// when `MAILROOM_REQUIRE_SERVERS=1`.
pub fn dovecot() -> Option<Dovecot> {
    let port =
        |var: &str| crate::server_env(var).map(|p| p.parse::<u16>().unwrap_or_else(|_| panic!("{var} is not a port")));
    Some(Dovecot {
        conf: PathBuf::from(crate::server_env("MAILROOM_TEST_DOVECOT_CONF")?),
        users: PathBuf::from(crate::server_env("MAILROOM_TEST_DOVECOT_USERS")?),
        host: crate::server_env("MAILROOM_TEST_MAIL_HOST")?,
        ca: PathBuf::from(crate::server_env("MAILROOM_TEST_MAIL_CA")?),
        imap_port: port("MAILROOM_TEST_IMAP_PORT")?,
        imaps_port: port("MAILROOM_TEST_IMAPS_PORT")?,
        pop3_port: port("MAILROOM_TEST_POP3_PORT")?,
        pop3s_port: port("MAILROOM_TEST_POP3S_PORT")?,
        identity_url: crate::server_env("MAILROOM_TEST_IDENTITY_URL")?,
    })
}

/// A mail user of the test server.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub password: String,
}

/// What dovecot says about a user's INBOX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxStatus {
    pub messages: u32,
    pub unseen: u32,
    pub uid_validity: u32,
}

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("{prefix}{}x{:x}x{}", std::process::id(), nanos % 0xffff_ffff, COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A small distinct customer email.
pub fn message(user: &str, n: usize) -> Vec<u8> {
    format!(
        "From: Customer {n} <customer{n}@example.org>\r\nTo: {user}@example.com\r\nSubject: Order {n} question\r\n\
         Message-ID: <{user}.{n}@example.org>\r\nDate: Mon, 2 Mar 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nHello,\r\n\r\nwhere is my order {n}? It was due last week.\r\n\
         .A line starting with a dot, for POP3's dot-stuffing.\r\n\r\nThanks,\r\nCustomer {n}\r\n"
    )
    .into_bytes()
}

impl Dovecot {
    fn doveadm(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let mut child = Command::new("doveadm")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("doveadm runs");
        if let Some(input) = stdin {
            child.stdin.take().expect("stdin").write_all(input).expect("write to doveadm");
        }
        let out = child.wait_with_output().expect("doveadm finishes");
        assert!(out.status.success(), "doveadm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new user with a password: its own passwd-file, which dovecot reads at the first login.
    pub fn add_user(&self, prefix: &str) -> TestUser {
        let user = TestUser { name: unique(prefix), password: unique("pw") };
        let line = format!("{}:{{PLAIN}}{}::::::\n", user.name, user.password);
        std::fs::write(self.users.join(&user.name), line).expect("add user");
        user
    }

    /// A user for XOAUTH2 only (no password), with an app registered at the authority whose
    /// tokens are valid for this mailbox. Returns the user and the app (secret inline).
    pub async fn add_oauth_user(&self, prefix: &str) -> (TestUser, OAuth2Client) {
        let user = self.add_user(prefix);
        let app = OAuth2Client {
            authority: self.identity_url.clone(),
            tenant: unique("tenant"),
            client_id: unique("app"),
            client_secret: SecretRef::Inline(SecretString::from(unique("secret"))),
        };
        let SecretRef::Inline(secret) = &app.client_secret else { unreachable!() };
        self.identity(
            "clients",
            serde_json::json!({
                "tenant": app.tenant, "client_id": app.client_id,
                "client_secret": secrecy::ExposeSecret::expose_secret(secret), "mailbox": user.name,
            }),
        )
        .await;
        (user, app)
    }

    /// A test control of the token authority (`/_emulator/<action>`).
    pub async fn identity(&self, action: &str, body: serde_json::Value) -> serde_json::Value {
        let response = reqwest::Client::new()
            .post(format!("{}/_emulator/{action}", self.identity_url))
            .json(&body)
            .send()
            .await
            .expect("authority answers");
        assert!(response.status().is_success(), "authority control {action}: {}", response.status());
        response.json().await.expect("json")
    }

    /// Puts messages into the user's INBOX as a delivery would (Maildir `new/`), quickly enough
    /// for thousands; dovecot sees them at the next command.
    pub fn deliver(&self, user: &TestUser, messages: impl IntoIterator<Item = Vec<u8>>) {
        let mail_root = self.conf.parent().expect("server dir").join("mail");
        let owner = std::fs::metadata(&mail_root).expect("mail dir");
        let dir = mail_root.join(&user.name);
        for sub in ["", "cur", "new", "tmp"] {
            let d = dir.join(sub);
            if !d.exists() {
                std::fs::create_dir_all(&d).expect("maildir");
                chown(&d, Some(owner.uid()), Some(owner.gid())).expect("chown maildir");
            }
        }
        for (i, raw) in messages.into_iter().enumerate() {
            let name = format!(
                "{}.M{i}P{}.mailroom-test",
                SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs(),
                unique("q")
            );
            let tmp = dir.join("tmp").join(&name);
            std::fs::write(&tmp, &raw).expect("write message");
            chown(&tmp, Some(owner.uid()), Some(owner.gid())).expect("chown message");
            std::fs::rename(&tmp, dir.join("new").join(&name)).expect("deliver message");
        }
    }

    /// Saves one message through dovecot itself (`doveadm save`), which notifies IDLE at once.
    pub fn save(&self, user: &TestUser, raw: &[u8]) {
        self.doveadm(&["save", "-u", &user.name], Some(raw));
    }

    pub fn status(&self, user: &TestUser) -> InboxStatus {
        let out = self.doveadm(
            &["-f", "flow", "mailbox", "status", "-u", &user.name, "messages unseen uidvalidity", "INBOX"],
            None,
        );
        let field = |name: &str| {
            out.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {out:?}"))
        };
        InboxStatus { messages: field("messages"), unseen: field("unseen"), uid_validity: field("uidvalidity") }
    }

    /// Gives the INBOX a new UIDVALIDITY, as a server rebuild or migration does.
    pub fn reset_uid_validity(&self, user: &TestUser) -> u32 {
        let next = self.status(user).uid_validity.wrapping_add(1000);
        self.doveadm(&["mailbox", "update", "-u", &user.name, "--uid-validity", &next.to_string(), "INBOX"], None);
        next
    }

    /// Disconnects the user's sessions (`doveadm kick`).
    pub fn kick(&self, user: &TestUser) {
        self.doveadm(&["kick", &user.name], None);
    }

    pub fn port(&self, protocol: MailProtocol) -> u16 {
        match protocol {
            MailProtocol::Imap | MailProtocol::ImapStarttls => self.imap_port,
            MailProtocol::Imaps => self.imaps_port,
            MailProtocol::Pop3 | MailProtocol::Pop3Stls => self.pop3_port,
            MailProtocol::Pop3s => self.pop3s_port,
        }
    }

    /// Mailbox settings for a password user.
    pub fn mailbox(&self, protocol: MailProtocol, user: &TestUser, after_fetch: AfterFetch) -> IncomingMailbox {
        IncomingMailbox {
            protocol,
            host: MailHost::parse(&self.host).expect("host"),
            port: Some(self.port(protocol)),
            user: MailboxUser::parse(&user.name).expect("user"),
            auth: MailboxAuth::Normal { password: SecretRef::Inline(SecretString::from(user.password.clone())) },
            after_fetch,
        }
    }

    /// Mailbox settings for an XOAUTH2 user.
    pub fn oauth_mailbox(
        &self,
        protocol: MailProtocol,
        user: &TestUser,
        app: OAuth2Client,
        after_fetch: AfterFetch,
    ) -> IncomingMailbox {
        IncomingMailbox { auth: MailboxAuth::Oauth2(app), ..self.mailbox(protocol, user, after_fetch) }
    }

    /// A configuration with one channel per mailbox (`name` → mailbox), trusting the test CA.
    pub fn config(&self, channels: Vec<(&str, IncomingMailbox)>) -> AppConfig {
        let mut config = AppConfig::demo();
        let template = config.channels[0].clone();
        config.channels = channels
            .into_iter()
            .map(|(name, mailbox)| Channel {
                name: ChannelName::parse(name).expect("name"),
                address: EmailAddress::parse(&format!("{name}@example.com")).expect("address"),
                default_queue: QueueName::parse("support").expect("queue"),
                mailbox: Some(mailbox),
                ..template.clone()
            })
            .collect();
        config.mailbox.extra_ca_file = Some(self.ca.display().to_string());
        // A server that stops answering fails a test in seconds, not minutes.
        config.mailbox.connect_timeout_secs = 5;
        config.mailbox.command_timeout_secs = 10;
        config.validate().expect("valid test configuration");
        config
    }
}

/// Mailroom on a fresh embedded data directory.
pub struct Mailroom {
    pub backend: EmbeddedBackend,
    pub app: EmbeddedMailboxes,
    pub config: AppConfig,
    _dir: tempfile::TempDir,
}

impl Mailroom {
    pub async fn start(config: AppConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = EmbeddedBackend::open(dir.path()).expect("backend");
        let app = embedded_mailboxes(&config, &backend).await.expect("mailboxes");
        Self { backend, app, config, _dir: dir }
    }

    /// Another Mailroom process on the same data directory (after a crash or a restart).
    pub async fn restart(&self) -> EmbeddedMailboxes {
        embedded_mailboxes(&self.config, &self.backend).await.expect("mailboxes")
    }

    pub fn data_dir(&self) -> &Path {
        self._dir.path()
    }

    pub async fn journal(&self) -> Vec<JournalEntry> {
        self.backend.journal_recent(1_000_000).await.expect("journal")
    }

    /// Asserts that `expected` distinct messages were each recorded once, as new interactions,
    /// and returns the journal.
    pub async fn assert_ingested_once(&self, expected: usize) -> Vec<JournalEntry> {
        let journal = self.journal().await;
        let keys: HashSet<_> = journal.iter().map(|e| e.raw_key.clone()).collect();
        assert_eq!(keys.len(), journal.len(), "a raw message was journaled twice");
        let news: Vec<&JournalEntry> = journal.iter().filter(|e| e.disposition == Some(Disposition::New)).collect();
        assert_eq!(news.len(), expected, "new interactions (journal: {} entries)", journal.len());
        let interactions: HashSet<_> = news.iter().filter_map(|e| e.interaction_id.clone()).collect();
        assert_eq!(interactions.len(), expected, "one interaction per message");
        assert_eq!(journal.len(), expected, "nothing but the messages was journaled");
        journal
    }
}

/// A TCP proxy to `target` that cuts its first connection once `cut_after` bytes went from the
/// server to the client (a connection dropped in the middle of a run), and relays later ones
/// in full.
pub struct CuttingProxy {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    pub async fn start(target: u16, cut_after: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let mut first = true;
            while let Ok((client, _)) = listener.accept().await {
                let limit = if first { cut_after } else { usize::MAX };
                first = false;
                tokio::spawn(relay(client, target, limit));
            }
        });
        Self { port, task }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, target: u16, cut_after: usize) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else { return };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut sent = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let take = n.min(cut_after.saturating_sub(sent));
        if client_write.write_all(&buf[..take]).await.is_err() {
            break;
        }
        sent += take;
        if sent >= cut_after {
            break;
        }
    }
    upstream.abort();
    // Dropping both halves closes the client's connection mid-answer.
}

/// Waits until `check` holds, polling every 20 ms, for at most `within`.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
