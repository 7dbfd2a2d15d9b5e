//! Mailbox polling end to end on the embedded backend, against the test dovecot:
//!
//! 1. messages/s ingested from a 1,000-message mailbox over IMAP (implicit TLS), target ≥ 200/s;
//! 2. the same over POP3 (implicit TLS);
//! 3. IDLE: from a message saved into the mailbox to its journal entry and routing request
//!    (what `mailroom serve` does), target under 2 s.
//!
//! Each poll runs the whole path: TLS, sign-in, UID search, `UID FETCH BODY.PEEK[]` in batches,
//! ingest (raw stored, parsed, screened, threaded, journaled, queued) on a fresh SQLite data
//! directory, `UID STORE \Seen` (IMAP) or `DELE` + `QUIT` (POP3), cursor saves.
//!
//! Start the servers first, then run with their settings in the environment:
//!
//! ```sh
//! bash infra/identity.sh start && bash infra/dovecot.sh start
//! eval "$(bash infra/dovecot.sh env)" && eval "$(bash infra/identity.sh env)"
//! cargo bench -p mailroom-shared --bench poll
//! ```
//!
//! The messages are the first 1,000 of the SpamAssassin corpus (`infra/setup.sh`) when it is
//! there, else generated ones.

use std::os::unix::fs::{MetadataExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mailroom::adapters::embedded::EmbeddedBackend;
use mailroom::adapters::mime::strip_mbox_separator;
use mailroom::app::embedded_mailboxes;
use mailroom::config::AppConfig;
use mailroom::domain::mailbox::{
    AfterFetch, IncomingMailbox, MailHost, MailProtocol, MailboxAuth, MailboxUser, SecretRef,
};
use mailroom::ports::IngestStore;
use mailroom::usecases::poll_mailbox::{PollOutcome, run_idle_loop};

const MESSAGES: usize = 1_000;
const IDLE_SAMPLES: usize = 20;

struct Servers {
    conf: PathBuf,
    users: PathBuf,
    host: String,
    ca: String,
    imaps: u16,
    pop3s: u16,
}

fn servers() -> Option<Servers> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let port = |name: &str| var(name).and_then(|p| p.parse().ok());
    Some(Servers {
        conf: PathBuf::from(var("MAILROOM_TEST_DOVECOT_CONF")?),
        users: PathBuf::from(var("MAILROOM_TEST_DOVECOT_USERS")?),
        host: var("MAILROOM_TEST_MAIL_HOST")?,
        ca: var("MAILROOM_TEST_MAIL_CA")?,
        imaps: port("MAILROOM_TEST_IMAPS_PORT")?,
        pop3s: port("MAILROOM_TEST_POP3S_PORT")?,
    })
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}{}x{:x}", std::process::id(), nanos % 0xffff_ffff_ffff)
}

fn corpus() -> (Vec<Vec<u8>>, &'static str) {
    let dir = std::env::var("MAILROOM_CORPORA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/mailroom/corpora"))
        .join("spamassassin");
    let mut files = Vec::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() { stack.push(p) } else { files.push(p) }
        }
    }
    files.sort();
    if files.len() >= MESSAGES {
        let messages =
            files.iter().take(MESSAGES).map(|f| strip_mbox_separator(&std::fs::read(f).unwrap()).to_vec()).collect();
        return (messages, "the first 1,000 SpamAssassin corpus messages");
    }
    let generated = (0..MESSAGES)
        .map(|n| {
            format!(
                "From: Customer {n} <customer{n}@example.org>\r\nTo: support@example.com\r\nSubject: Order {n}\r\n\
                 Message-ID: <bench.{n}@example.org>\r\nDate: Mon, 2 Mar 2026 10:00:00 +0000\r\n\r\n{}\r\n",
                "Where is my order? ".repeat(100)
            )
            .into_bytes()
        })
        .collect();
    (generated, "1,000 generated messages (no corpus found; run infra/setup.sh)")
}

/// A new user with its own passwd-file, and `messages` delivered into its Maildir.
fn user_with_mail(s: &Servers, messages: &[Vec<u8>]) -> (String, String) {
    let (user, password) = (unique("bench"), unique("pw"));
    std::fs::write(s.users.join(&user), format!("{user}:{{PLAIN}}{password}::::::\n")).unwrap();
    let mail_root = s.conf.parent().unwrap().join("mail");
    let owner = std::fs::metadata(&mail_root).unwrap();
    let dir = mail_root.join(&user);
    for sub in ["", "cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        chown(dir.join(sub), Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    for (i, raw) in messages.iter().enumerate() {
        let name = format!("1700000000.M{i}P{}.bench", std::process::id());
        let tmp = dir.join("tmp").join(&name);
        std::fs::write(&tmp, raw).unwrap();
        chown(&tmp, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::rename(&tmp, dir.join("new").join(&name)).unwrap();
    }
    (user, password)
}

fn config(s: &Servers, protocol: MailProtocol, user: &str, password: &str, after_fetch: AfterFetch) -> AppConfig {
    let mut config = AppConfig::demo();
    config.channels[0].mailbox = Some(IncomingMailbox {
        protocol,
        host: MailHost::parse(&s.host).unwrap(),
        port: Some(if protocol == MailProtocol::Imaps { s.imaps } else { s.pop3s }),
        user: MailboxUser::parse(user).unwrap(),
        auth: MailboxAuth::Normal { password: SecretRef::Inline(password.to_owned().into()) },
        after_fetch,
    });
    config.mailbox.extra_ca_file = Some(s.ca.clone());
    config.mailbox.max_messages_per_run = MESSAGES;
    config.mailbox.max_run_secs = 600;
    config
}

/// Polls a 1,000-message mailbox until it is drained; returns messages/s and the runs taken.
async fn throughput(
    s: &Servers,
    protocol: MailProtocol,
    after_fetch: AfterFetch,
    messages: &[Vec<u8>],
    data: &Path,
) -> (f64, usize) {
    let (user, password) = user_with_mail(s, messages);
    let backend = EmbeddedBackend::open(data).unwrap();
    let app = embedded_mailboxes(&config(s, protocol, &user, &password, after_fetch), &backend).await.unwrap();
    let channel = app.channels.current().await.unwrap().channels().next().unwrap().name.clone();
    let started = Instant::now();
    let mut fetched = 0;
    let mut runs = 0;
    loop {
        let r = app.poller.poll_channel(&channel).await.unwrap();
        assert!(matches!(r.outcome, PollOutcome::Done), "{protocol}: {:?}", r.outcome);
        fetched += r.counts.fetched as usize;
        runs += 1;
        if !r.counts.more_waiting {
            break;
        }
    }
    let took = started.elapsed();
    assert_eq!(fetched, MESSAGES, "{protocol}: every message fetched");
    let journaled = backend.journal_recent(10 * MESSAGES).await.unwrap().len();
    assert!(journaled > 0 && journaled <= MESSAGES, "{protocol}: {journaled} journal entries");
    (MESSAGES as f64 / took.as_secs_f64(), runs)
}

/// From `doveadm save` starting to the message's journal entry, `IDLE_SAMPLES` times.
async fn idle_latency(s: &Servers, data: &Path) -> Vec<Duration> {
    let (user, password) = user_with_mail(s, &[]);
    let backend = EmbeddedBackend::open(data).unwrap();
    let app = embedded_mailboxes(&config(s, MailProtocol::Imaps, &user, &password, AfterFetch::MarkSeen), &backend)
        .await
        .unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run_idle_loop(app.poller.clone(), stop_rx));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut samples = Vec::new();
    for n in 0..IDLE_SAMPLES {
        let raw = format!(
            "From: Customer <idle{n}@example.org>\r\nTo: support@example.com\r\nSubject: Latency {n}\r\n\
             Message-ID: <idle.{n}.{user}@example.org>\r\n\r\nHello {n}\r\n"
        );
        let started = Instant::now();
        let mut child = Command::new("doveadm")
            .arg("-c")
            .arg(&s.conf)
            .args(["save", "-u", &user])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), raw.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
        loop {
            if backend.journal_recent(IDLE_SAMPLES + 1).await.unwrap().len() > n {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "message {n} never arrived");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    samples
}

fn main() {
    let Some(s) = servers() else {
        println!("poll benchmark skipped: the dovecot settings are not in the environment. Run:");
        println!("  bash infra/identity.sh start && bash infra/dovecot.sh start");
        println!("  eval \"$(bash infra/dovecot.sh env)\" && eval \"$(bash infra/identity.sh env)\"");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (messages, source) = corpus();
    let bytes: usize = messages.iter().map(Vec::len).sum();
    println!("mailbox polling, end to end on the embedded backend ({source}, {:.1} MB)", bytes as f64 / 1e6);
    println!();
    runtime.block_on(async {
        for (protocol, after_fetch, target) in
            [(MailProtocol::Imaps, AfterFetch::MarkSeen, Some(200.0)), (MailProtocol::Pop3s, AfterFetch::Delete, None)]
        {
            let dir = tempfile::tempdir().unwrap();
            let (rate, runs) = throughput(&s, protocol, after_fetch, &messages, dir.path()).await;
            let verdict = match target {
                Some(t) if rate >= t => format!("target ≥ {t:.0}/s: met"),
                Some(t) => format!("target ≥ {t:.0}/s: NOT MET"),
                None => String::new(),
            };
            println!(
                "{:<28} {:>8.0} messages/s  ({MESSAGES} messages, {runs} run, {})  {verdict}",
                format!("{protocol} ({})", after_fetch.as_str()),
                rate,
                if after_fetch == AfterFetch::Delete { "deleted" } else { "marked seen" }
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let mut samples = idle_latency(&s, dir.path()).await;
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let max = *samples.last().unwrap();
        println!(
            "{:<28} median {:.0} ms, p95 {:.0} ms, max {:.0} ms over {IDLE_SAMPLES} messages  target < 2000 ms: {}",
            "IDLE arrival to queued",
            ms(samples[samples.len() / 2]),
            ms(samples[samples.len() * 95 / 100]),
            ms(max),
            if max < Duration::from_secs(2) { "met" } else { "NOT MET" }
        );
    });
}
