//! Inbound SMTP listener: accepts mail on loopback the way Amazon SES's receiving endpoint would,
//! for `mailroom serve`.
//!
//! One session per connection, read line by line from a buffered reader, so pipelined commands
//! (RFC 2920) are answered in order. Replies are buffered and written whenever the input buffer is
//! empty, i.e. just before the session would block on a read, so a pipelining client gets its
//! replies in one batch and a lock-step client never waits on us.
//!
//! The message is answered `250` only after [`SmtpDelivery::deliver`] returned `Ok`. At shutdown
//! the listener stops accepting, idle sessions get `421 4.3.2`, and a session in the middle of a
//! transaction may finish it until the drain deadline; it then gets `421 4.3.2` too. A session
//! still busy half a second after the deadline (for example inside `deliver`) is aborted: its
//! client has not been answered `250`, so it keeps the message and retries. `deliver` must
//! therefore keep a message atomically (all or nothing) and tolerate the same message twice.
//!
//! Logs carry session ids, the client IP, sizes and counts only; never addresses, the HELO name,
//! subjects or bodies.

use std::collections::hash_map::RandomState;
use std::future::pending;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tracing::Instrument;

/// Longest command line accepted, CRLF included (RFC 5321 asks for at least 512).
const MAX_COMMAND_LINE: usize = 4096;
/// Negative replies to commands after which the session is closed with `421`.
const MAX_ERRORS: u32 = 10;
/// Longest reverse or forward path, angle brackets included (RFC 5321 4.5.3.1.3).
const MAX_PATH: usize = 256;
/// How long a closing session waits for the client to close its side, so that unread input does
/// not make the kernel reset the connection and destroy the last reply.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// How long after the drain deadline sessions are aborted.
const ABORT_GRACE: Duration = Duration::from_millis(500);
/// Pause after a failed `accept` (for example out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Longest drain that is honoured (keeps the deadline arithmetic from overflowing).
const MAX_DRAIN: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest rejection reason copied into a reply.
const MAX_REASON_CHARS: usize = 200;
/// Longest HELO/EHLO name kept.
const MAX_HELO_CHARS: usize = 255;

/// Settings of the SMTP listener.
#[derive(Debug, Clone)]
pub struct SmtpListenerConfig {
    /// Used in the greeting and the `Received` header.
    pub hostname: String,
    /// Advertised in the EHLO `SIZE` keyword; larger messages are refused with `552 5.3.4`.
    pub max_message_bytes: usize,
    /// Recipients per message; further `RCPT` commands get `452 4.5.3`.
    pub max_recipients: usize,
    /// How long the listener waits for a command, a chunk of message data, or for the client to
    /// read a reply; idle clients are dropped with `421 4.4.2`.
    pub command_timeout: Duration,
    /// Concurrent sessions; further connections are answered `421 4.3.2` and closed.
    pub max_sessions: usize,
}

impl Default for SmtpListenerConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".to_owned(),
            max_message_bytes: 40 * 1024 * 1024,
            max_recipients: 50,
            command_timeout: Duration::from_secs(5 * 60),
            max_sessions: 64,
        }
    }
}

/// The SMTP envelope of one received message.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// `None` for the null reverse-path `MAIL FROM:<>` (bounces).
    pub mail_from: Option<String>,
    /// Accepted recipients, in order, without duplicates.
    pub rcpt_to: Vec<String>,
    pub client_addr: SocketAddr,
    /// The name the client gave in EHLO/HELO (control characters replaced by `?`).
    pub helo: String,
}

/// Why [`SmtpDelivery::deliver`] did not keep a message.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryRejection {
    /// Answered `451 4.3.0`: the client keeps the message and retries.
    #[error("temporary failure: {0}")]
    Temporary(String),
    /// Answered `554 5.6.0`: the client bounces the message.
    #[error("permanent failure: {0}")]
    Permanent(String),
}

/// Where the listener hands received mail.
#[async_trait::async_trait]
pub trait SmtpDelivery: Send + Sync {
    /// Whether this server accepts mail for the recipient (550 5.1.1 otherwise).
    fn accepts_recipient(&self, rcpt: &str) -> bool;
    /// Called once per message after DATA completes. Must durably keep the message before returning Ok:
    /// the listener answers 250 only after this returns Ok.
    async fn deliver(&self, envelope: &Envelope, raw: Vec<u8>) -> Result<(), DeliveryRejection>;
}

/// Serves SMTP on `listener` until `shutdown` flips to true; then stops accepting, lets sessions finish the
/// transaction in progress (bounded by `drain_timeout`), and returns. Nothing that was answered 250 is lost.
///
/// If the sender of `shutdown` is dropped without sending `true`, the listener runs until the
/// future is dropped. Failed `accept`s are logged and retried, never returned.
pub async fn serve(
    listener: TcpListener,
    delivery: Arc<dyn SmtpDelivery>,
    config: SmtpListenerConfig,
    mut shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let local_addr = listener.local_addr()?;
    let permits = Arc::new(Semaphore::new(config.max_sessions.min(Semaphore::MAX_PERMITS)));
    let shared = Arc::new(Shared { delivery, config, next_id: AtomicU64::new(0), id_key: RandomState::new() });
    // `None` while serving; the drain deadline once shutting down.
    let (drain_tx, drain_rx) = watch::channel(None::<Instant>);
    let mut sessions = JoinSet::new();
    let mut session_id = 0_u64;
    tracing::info!(%local_addr, "SMTP listener started");

    loop {
        tokio::select! {
            () = shutdown_requested(&mut shutdown) => break,
            Some(joined) = sessions.join_next(), if !sessions.is_empty() => log_join(joined),
            accepted = listener.accept() => match accepted {
                Ok((stream, client_addr)) => {
                    session_id += 1;
                    // Replies are batched by the session, so Nagle would only add delayed-ACK waits.
                    let _ = stream.set_nodelay(true);
                    let span = tracing::info_span!(
                        "smtp_session",
                        session_id,
                        client_ip = %client_addr.ip()
                    );
                    match Arc::clone(&permits).try_acquire_owned() {
                        Ok(permit) => {
                            let session =
                                Session::new(stream, client_addr, Arc::clone(&shared), drain_rx.clone());
                            sessions.spawn(
                                async move {
                                    let _permit = permit;
                                    session.run().await;
                                }
                                .instrument(span),
                            );
                        }
                        Err(_) => {
                            sessions.spawn(
                                refuse_busy(stream, shared.config.hostname.clone()).instrument(span),
                            );
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting an SMTP connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }

    drop(listener);
    let deadline = Instant::now() + drain_timeout.min(MAX_DRAIN);
    drain_tx.send_replace(Some(deadline));
    tracing::info!(open_sessions = sessions.len(), "SMTP listener stopping; draining sessions");
    let drained = timeout_at(deadline + ABORT_GRACE, async {
        while let Some(joined) = sessions.join_next().await {
            log_join(joined);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            aborted_sessions = sessions.len(),
            "SMTP drain timeout reached; aborting sessions (none was answered 250 for its message)"
        );
        sessions.shutdown().await;
    }
    tracing::info!("SMTP listener stopped");
    Ok(())
}

/// Resolves once `shutdown` holds `true`; never, if its sender is gone without that.
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        pending::<()>().await;
    }
}

fn log_join(joined: Result<(), JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        tracing::error!("SMTP session task panicked");
    }
}

/// Answers a connection beyond `max_sessions`.
async fn refuse_busy(mut stream: TcpStream, hostname: String) {
    tracing::warn!("too many SMTP sessions; refusing a connection");
    let reply = format!("421 4.3.2 {hostname} Too many sessions, try again later\r\n");
    if let Ok(Ok(())) = timeout(CLOSE_LINGER, stream.write_all(reply.as_bytes())).await {
        linger_close(&mut stream).await;
    }
}

/// Sends FIN and reads (and drops) what the client still sends until it closes, for at most
/// [`CLOSE_LINGER`]: closing a socket with unread input resets the connection, and a reset can
/// destroy the last reply before the client has read it.
async fn linger_close(stream: &mut TcpStream) {
    let _ = timeout(CLOSE_LINGER, async {
        stream.shutdown().await?;
        let mut scratch = [0_u8; 4096];
        while stream.read(&mut scratch).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// What every session shares.
struct Shared {
    delivery: Arc<dyn SmtpDelivery>,
    config: SmtpListenerConfig,
    next_id: AtomicU64,
    id_key: RandomState,
}

impl Shared {
    /// A fresh, unpredictable id for one message (as the queue id of an MTA).
    fn message_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let mut hasher = self.id_key.build_hasher();
        hasher.write_u64(n);
        hasher.write_u128(nanos);
        format!("{:016X}", hasher.finish())
    }
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    Quit,
    ClientClosed,
    Timeout,
    Shutdown,
    TooManyErrors,
    Io(std::io::Error),
}

impl End {
    fn label(&self) -> &'static str {
        match self {
            End::Quit => "quit",
            End::ClientClosed => "client closed",
            End::Timeout => "timeout",
            End::Shutdown => "shutdown",
            End::TooManyErrors => "too many errors",
            End::Io(_) => "i/o error",
        }
    }
}

/// The client's EHLO/HELO.
struct Greeting {
    name: String,
    extended: bool,
}

/// A mail transaction: from `MAIL` to the end of `DATA` (or `RSET`).
struct Transaction {
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
    smtputf8: bool,
}

struct Session {
    reader: BufReader<TcpStream>,
    /// Replies not yet written.
    out: Vec<u8>,
    shared: Arc<Shared>,
    drain: watch::Receiver<Option<Instant>>,
    client_addr: SocketAddr,
    greeting: Option<Greeting>,
    transaction: Option<Transaction>,
    errors: u32,
    accepted: u64,
}

impl Session {
    fn new(
        stream: TcpStream,
        client_addr: SocketAddr,
        shared: Arc<Shared>,
        drain: watch::Receiver<Option<Instant>>,
    ) -> Self {
        Self {
            reader: BufReader::new(stream),
            out: Vec::with_capacity(512),
            shared,
            drain,
            client_addr,
            greeting: None,
            transaction: None,
            errors: 0,
            accepted: 0,
        }
    }

    async fn run(mut self) {
        tracing::debug!("SMTP session opened");
        let hostname = self.shared.config.hostname.clone();
        self.reply(220, "", &format!("{hostname} ESMTP Mailroom"));
        let end = self.commands().await;
        let polite = match &end {
            End::Quit => true,
            End::Timeout => {
                self.reply(421, "4.4.2", &format!("{hostname} Error: timeout exceeded"));
                true
            }
            End::Shutdown => {
                self.reply(421, "4.3.2", &format!("{hostname} shutting down"));
                true
            }
            End::TooManyErrors => {
                self.reply(421, "4.7.0", &format!("{hostname} Error: too many errors"));
                true
            }
            End::ClientClosed | End::Io(_) => false,
        };
        if let End::Io(error) = &end {
            tracing::debug!(%error, "SMTP session i/o error");
        }
        if polite && self.flush().await.is_ok() {
            linger_close(self.reader.get_mut()).await;
        }
        tracing::debug!(messages = self.accepted, errors = self.errors, reason = end.label(), "SMTP session closed");
    }

    /// Reads and answers commands until the session ends.
    async fn commands(&mut self) -> End {
        let mut line = Vec::with_capacity(128);
        loop {
            let idle = self.transaction.is_none();
            if idle && self.draining() {
                // Honour a QUIT the client already pipelined; otherwise say goodbye.
                if let Some(end) = self.reader.buffer().iter().position(|&b| b == b'\n')
                    && trim_line_end(&self.reader.buffer()[..end]).trim_ascii().eq_ignore_ascii_case(b"QUIT")
                {
                    self.reader.consume(end + 1);
                    return self.quit();
                }
                return End::Shutdown;
            }
            line.clear();
            let too_long = match self.read_line(&mut line, MAX_COMMAND_LINE, idle).await {
                Ok(too_long) => too_long,
                Err(end) => return end,
            };
            if too_long {
                self.error(500, "5.5.2", "Line too long");
            } else if let Some(end) = self.command(&line).await {
                return end;
            }
            if self.errors >= MAX_ERRORS {
                return End::TooManyErrors;
            }
        }
    }

    async fn command(&mut self, line: &[u8]) -> Option<End> {
        let Ok(text) = std::str::from_utf8(trim_line_end(line)) else {
            self.error(500, "5.5.2", "Invalid characters in command");
            return None;
        };
        let text = text.trim_matches([' ', '\t']);
        let (verb, args) = match text.split_once([' ', '\t']) {
            Some((verb, args)) => (verb, args.trim_start_matches([' ', '\t'])),
            None => (text, ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => self.hello(args, true),
            "HELO" => self.hello(args, false),
            "MAIL" => self.mail(args),
            "RCPT" => self.rcpt(args),
            "DATA" => return self.data(args).await,
            "RSET" if args.is_empty() => {
                self.transaction = None;
                self.reply(250, "2.0.0", "Ok");
            }
            "RSET" => self.error(501, "5.5.4", "Syntax: RSET"),
            "NOOP" => self.reply(250, "2.0.0", "Ok"),
            "QUIT" => return Some(self.quit()),
            "VRFY" if args.is_empty() => self.error(501, "5.5.4", "Syntax: VRFY <address>"),
            "VRFY" => self.reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"),
            "HELP" => self.reply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"),
            "EXPN" | "STARTTLS" | "AUTH" | "BDAT" | "ETRN" | "TURN" => {
                self.error(502, "5.5.1", "Command not implemented");
            }
            _ => self.error(500, "5.5.2", "Command unrecognized"),
        }
        None
    }

    fn quit(&mut self) -> End {
        let reply = format!("{} closing connection", self.shared.config.hostname);
        self.reply(221, "2.0.0", &reply);
        End::Quit
    }

    fn hello(&mut self, args: &str, extended: bool) {
        let Some(name) = args.split_ascii_whitespace().next() else {
            let syntax = if extended { "Syntax: EHLO hostname" } else { "Syntax: HELO hostname" };
            return self.error(501, "5.5.4", syntax);
        };
        let name: String = name.chars().take(MAX_HELO_CHARS).map(|c| if c.is_control() { '?' } else { c }).collect();
        // EHLO/HELO resets any transaction in progress (RFC 5321 4.1.4).
        self.transaction = None;
        self.greeting = Some(Greeting { name, extended });
        let hostname = self.shared.config.hostname.clone();
        if extended {
            let size = format!("SIZE {}", self.shared.config.max_message_bytes);
            self.reply_lines(250, &[&hostname, "PIPELINING", &size, "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]);
        } else {
            self.reply(250, "", &hostname);
        }
    }

    fn mail(&mut self, args: &str) {
        if self.greeting.is_none() {
            return self.error(503, "5.5.1", "Send HELO/EHLO first");
        }
        if self.transaction.is_some() {
            return self.error(503, "5.5.1", "Nested MAIL command");
        }
        let Some(rest) = strip_keyword(args, "FROM") else {
            return self.error(501, "5.5.4", "Syntax: MAIL FROM:<address>");
        };
        let (mail_from, params) = match parse_path(rest) {
            Some((None, params)) => (None, params),
            Some((Some(address), params)) if is_mailbox(&address) => (Some(address), params),
            _ => return self.error(501, "5.1.7", "Bad sender address syntax"),
        };
        let mut smtputf8 = false;
        for param in params.split_ascii_whitespace() {
            let (key, value) = match param.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (param, None),
            };
            match (key.to_ascii_uppercase().as_str(), value) {
                ("SIZE", Some(value)) => match value.parse::<u64>() {
                    Ok(size) if size > self.shared.config.max_message_bytes as u64 => {
                        return self.reply(552, "5.3.4", "Message size exceeds fixed maximum message size");
                    }
                    Ok(_) => {}
                    Err(_) => return self.error(501, "5.5.4", "Bad SIZE parameter"),
                },
                ("BODY", Some(value))
                    if value.eq_ignore_ascii_case("7BIT") || value.eq_ignore_ascii_case("8BITMIME") => {}
                ("SMTPUTF8", None) => smtputf8 = true,
                _ => return self.error(555, "5.5.4", "Unsupported MAIL parameter"),
            }
        }
        self.transaction = Some(Transaction { mail_from, rcpt_to: Vec::new(), smtputf8 });
        self.reply(250, "2.1.0", "Ok");
    }

    fn rcpt(&mut self, args: &str) {
        let Some(recipients) = self.transaction.as_ref().map(|t| t.rcpt_to.len()) else {
            return self.error(503, "5.5.1", "Need MAIL command");
        };
        let Some(rest) = strip_keyword(args, "TO") else {
            return self.error(501, "5.5.4", "Syntax: RCPT TO:<address>");
        };
        let (address, params) = match parse_path(rest) {
            Some((Some(address), params)) if is_mailbox(&address) || address.eq_ignore_ascii_case("postmaster") => {
                (address, params)
            }
            _ => return self.error(501, "5.1.3", "Bad recipient address syntax"),
        };
        if !params.trim().is_empty() {
            return self.error(555, "5.5.4", "Unsupported RCPT parameter");
        }
        if recipients >= self.shared.config.max_recipients {
            return self.reply(452, "4.5.3", "Too many recipients");
        }
        if !self.shared.delivery.accepts_recipient(&address) {
            return self.error(550, "5.1.1", "Mailbox unavailable");
        }
        if let Some(transaction) = self.transaction.as_mut()
            && !transaction.rcpt_to.contains(&address)
        {
            transaction.rcpt_to.push(address);
        }
        self.reply(250, "2.1.5", "Ok");
    }

    async fn data(&mut self, args: &str) -> Option<End> {
        if !args.is_empty() {
            self.error(501, "5.5.4", "Syntax: DATA");
            return None;
        }
        let Some(transaction) = self.transaction.as_ref() else {
            self.error(503, "5.5.1", "Need MAIL command");
            return None;
        };
        if transaction.rcpt_to.is_empty() {
            self.error(503, "5.5.1", "Need RCPT command");
            return None;
        }
        let id = self.shared.message_id();
        let mut message = self.trace_headers(transaction, &id).into_bytes();
        let headers = message.len();
        let max = self.shared.config.max_message_bytes;
        self.reply(354, "", "End data with <CR><LF>.<CR><LF>");

        let mut line = Vec::with_capacity(1024);
        let mut oversize = false;
        loop {
            line.clear();
            // Room for the rest of the message plus a stuffed dot; enough to see a lone ".".
            let limit = if oversize { 3 } else { (max - (message.len() - headers)).saturating_add(1).max(3) };
            let too_long = match self.read_line(&mut line, limit, false).await {
                Ok(too_long) => too_long,
                Err(end) => {
                    tracing::info!(smtp_id = %id, reason = end.label(), "message abandoned during DATA");
                    return Some(end);
                }
            };
            if !too_long && (line == b".\r\n" || line == b".\n") {
                break;
            }
            if oversize {
                continue;
            }
            let payload = line.strip_prefix(b".").unwrap_or(&line);
            if too_long || message.len() - headers + payload.len() > max {
                oversize = true;
                message = Vec::new();
                continue;
            }
            message.extend_from_slice(payload);
        }

        let transaction = self.transaction.take()?;
        if oversize {
            tracing::info!(smtp_id = %id, max_bytes = max, "message refused: too large");
            self.reply(552, "5.3.4", "Message size exceeds fixed maximum message size");
            return None;
        }
        let envelope = Envelope {
            mail_from: transaction.mail_from,
            rcpt_to: transaction.rcpt_to,
            client_addr: self.client_addr,
            helo: self.greeting.as_ref().map(|g| g.name.clone()).unwrap_or_default(),
        };
        let bytes = message.len();
        let recipients = envelope.rcpt_to.len();
        match self.shared.delivery.deliver(&envelope, message).await {
            Ok(()) => {
                self.accepted += 1;
                tracing::info!(smtp_id = %id, bytes, recipients, "message accepted");
                self.reply(250, "2.0.0", &format!("Ok: queued as {id}"));
            }
            Err(DeliveryRejection::Temporary(reason)) => {
                tracing::warn!(smtp_id = %id, bytes, recipients, "message deferred: temporary delivery failure");
                let text = format!("Temporary failure: {}", reply_safe(&reason));
                self.reply(451, "4.3.0", &text);
            }
            Err(DeliveryRejection::Permanent(reason)) => {
                tracing::warn!(smtp_id = %id, bytes, recipients, "message rejected: permanent delivery failure");
                let text = format!("Rejected: {}", reply_safe(&reason));
                self.reply(554, "5.6.0", &text);
            }
        }
        None
    }

    /// `Return-Path` and `Received`, as an MTA prepends them on final delivery.
    fn trace_headers(&self, transaction: &Transaction, id: &str) -> String {
        let (helo, extended) = self.greeting.as_ref().map_or(("unknown", false), |g| (g.name.as_str(), g.extended));
        // RFC 3848 protocol names.
        let protocol = match (transaction.smtputf8, extended) {
            (true, _) => "UTF8SMTP",
            (false, true) => "ESMTP",
            (false, false) => "SMTP",
        };
        format!(
            "Return-Path: <{}>\r\nReceived: from {helo} ({})\r\n\tby {} (Mailroom) with {protocol} id {id};\r\n\t{}\r\n",
            transaction.mail_from.as_deref().unwrap_or(""),
            address_literal(self.client_addr.ip()),
            self.shared.config.hostname,
            chrono::Utc::now().to_rfc2822(),
        )
    }

    fn draining(&self) -> bool {
        self.drain.borrow().is_some()
    }

    /// Reads one line, through its `\n`, into `line`, keeping at most `limit` bytes; the rest of a
    /// longer line is read and dropped. Returns whether the line was too long.
    async fn read_line(&mut self, line: &mut Vec<u8>, limit: usize, idle: bool) -> Result<bool, End> {
        let mut too_long = false;
        loop {
            if self.fill(idle).await? == 0 {
                // End of input; an unfinished line is dropped.
                return Err(End::ClientClosed);
            }
            let buffer = self.reader.buffer();
            let (take, complete) = match buffer.iter().position(|&b| b == b'\n') {
                Some(end) => (end + 1, true),
                None => (buffer.len(), false),
            };
            let room = limit.saturating_sub(line.len());
            if take > room {
                too_long = true;
                line.extend_from_slice(&buffer[..room]);
            } else {
                line.extend_from_slice(&buffer[..take]);
            }
            self.reader.consume(take);
            if complete {
                return Ok(too_long);
            }
        }
    }

    /// Makes input available, writing pending replies first if the read could block. Returns the
    /// number of buffered bytes (0 at end of input). An `idle` session (no transaction) stops as
    /// soon as the listener drains; one in a transaction at the drain deadline.
    async fn fill(&mut self, idle: bool) -> Result<usize, End> {
        if self.reader.buffer().is_empty() {
            self.flush().await?;
        }
        let wait = self.shared.config.command_timeout;
        tokio::select! {
            read = timeout(wait, self.reader.fill_buf()) => match read {
                Ok(Ok(buffer)) => Ok(buffer.len()),
                Ok(Err(error)) => Err(End::Io(error)),
                Err(_) => Err(End::Timeout),
            },
            () = stop_signal(&mut self.drain, idle) => Err(End::Shutdown),
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let wait = self.shared.config.command_timeout;
        match timeout(wait, self.reader.get_mut().write_all(&self.out)).await {
            Ok(Ok(())) => {
                self.out.clear();
                Ok(())
            }
            Ok(Err(error)) => Err(End::Io(error)),
            // A client that does not read its replies is not sent another one.
            Err(_) => {
                Err(End::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "client did not read its replies")))
            }
        }
    }

    /// Queues a reply; `enhanced` is the RFC 3463 code, empty where none belongs (220, 354, HELO).
    fn reply(&mut self, code: u16, enhanced: &str, text: &str) {
        let line =
            if enhanced.is_empty() { format!("{code} {text}\r\n") } else { format!("{code} {enhanced} {text}\r\n") };
        self.out.extend_from_slice(line.as_bytes());
    }

    fn reply_lines(&mut self, code: u16, lines: &[&str]) {
        for (i, text) in lines.iter().enumerate() {
            let separator = if i + 1 == lines.len() { ' ' } else { '-' };
            self.out.extend_from_slice(format!("{code}{separator}{text}\r\n").as_bytes());
        }
    }

    /// Queues a negative reply that counts towards [`MAX_ERRORS`].
    fn error(&mut self, code: u16, enhanced: &str, text: &str) {
        self.errors += 1;
        self.reply(code, enhanced, text);
    }
}

/// Resolves when the session has to stop for shutdown: at once for an idle session, at the drain
/// deadline for one in a transaction. Never, while the listener is serving.
async fn stop_signal(drain: &mut watch::Receiver<Option<Instant>>, idle: bool) {
    // Copy the deadline out at once: the watch guard must not live across an await.
    let deadline = drain.wait_for(Option::is_some).await.map(|deadline| *deadline);
    let Ok(deadline) = deadline else {
        return pending().await;
    };
    if !idle && let Some(deadline) = deadline {
        sleep_until(deadline).await;
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `FROM:<...>` → `<...>`: keyword case-insensitive, spaces tolerated around the colon.
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args[keyword.len()..].trim_start_matches([' ', '\t']);
    Some(rest.strip_prefix(':')?.trim_start_matches([' ', '\t']))
}

/// Splits `<path> params` into the address (`None` for the null path `<>`) and the parameters.
/// A source route (`<@relay:user@host>`) is dropped, as RFC 5321 asks; an address without angle
/// brackets is tolerated. Returns `None` for a malformed path.
fn parse_path(s: &str) -> Option<(Option<String>, &str)> {
    let (inner, params) = if let Some(bracketed) = s.strip_prefix('<') {
        let mut quoted = false;
        let mut escaped = false;
        let mut close = None;
        for (i, c) in bracketed.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '>' if !quoted => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let close = close?;
        let params = &bracketed[close + 1..];
        if !params.is_empty() && !params.starts_with([' ', '\t']) {
            return None;
        }
        (&bracketed[..close], params)
    } else {
        let end = s.find([' ', '\t']).unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        (&s[..end], &s[end..])
    };
    if inner.is_empty() {
        return Some((None, params));
    }
    let address = if inner.starts_with('@') { inner.split_once(':')?.1 } else { inner };
    if address.is_empty() || address.len() > MAX_PATH - 2 {
        return None;
    }
    // No control characters anywhere, no white space outside a quoted local part.
    let mut quoted = false;
    let mut escaped = false;
    for c in address.chars() {
        if c.is_control() {
            return None;
        }
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' if !quoted => return None,
            _ => {}
        }
    }
    if quoted {
        return None;
    }
    Some((Some(address.to_owned()), params))
}

/// `local@domain` with both parts present.
fn is_mailbox(address: &str) -> bool {
    address.rsplit_once('@').is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
}

/// The client's address as RFC 5321 writes it in a `Received` header.
fn address_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{v6}]"),
        },
    }
}

/// A rejection reason made safe for one reply line: printable ASCII, bounded.
fn reply_safe(reason: &str) -> String {
    reason.chars().take(MAX_REASON_CHARS).map(|c| if c == ' ' || c.is_ascii_graphic() { c } else { '?' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::task::JoinHandle;

    /// Bound on every wait in these tests, so a bug fails a test instead of hanging it.
    const WAIT: Duration = Duration::from_secs(10);

    /// Records delivered messages. Recipients `tempfail@…` and `permfail@…` make `deliver` fail;
    /// `nobody@…` is not accepted.
    #[derive(Default)]
    struct Recorder {
        messages: Mutex<Vec<(Envelope, Vec<u8>)>>,
        delay: Duration,
    }

    #[async_trait::async_trait]
    impl SmtpDelivery for Recorder {
        fn accepts_recipient(&self, rcpt: &str) -> bool {
            !rcpt.starts_with("nobody@")
        }

        async fn deliver(&self, envelope: &Envelope, raw: Vec<u8>) -> Result<(), DeliveryRejection> {
            tokio::time::sleep(self.delay).await;
            if envelope.rcpt_to.iter().any(|r| r.starts_with("tempfail@")) {
                return Err(DeliveryRejection::Temporary("store\r\nunavailable".into()));
            }
            if envelope.rcpt_to.iter().any(|r| r.starts_with("permfail@")) {
                return Err(DeliveryRejection::Permanent("content refused".into()));
            }
            self.messages.lock().unwrap().push((envelope.clone(), raw));
            Ok(())
        }
    }

    impl Recorder {
        fn messages(&self) -> Vec<(Envelope, Vec<u8>)> {
            self.messages.lock().unwrap().clone()
        }
    }

    struct Server {
        addr: SocketAddr,
        shutdown: watch::Sender<bool>,
        handle: JoinHandle<std::io::Result<()>>,
        recorder: Arc<Recorder>,
    }

    impl Server {
        async fn start_with(config: SmtpListenerConfig, recorder: Recorder, drain: Duration) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let recorder = Arc::new(recorder);
            let (shutdown, shutdown_rx) = watch::channel(false);
            let delivery: Arc<dyn SmtpDelivery> = recorder.clone();
            let handle = tokio::spawn(serve(listener, delivery, config, shutdown_rx, drain));
            Self { addr, shutdown, handle, recorder }
        }

        async fn start() -> Self {
            Self::start_with(config(), Recorder::default(), Duration::from_secs(5)).await
        }

        async fn stop(self) -> Arc<Recorder> {
            self.shutdown.send_replace(true);
            timeout(WAIT, self.handle).await.expect("serve did not return").unwrap().unwrap();
            self.recorder
        }
    }

    fn config() -> SmtpListenerConfig {
        SmtpListenerConfig {
            hostname: "mx.mailroom.test".into(),
            max_message_bytes: 1024 * 1024,
            ..SmtpListenerConfig::default()
        }
    }

    #[derive(Debug)]
    struct Reply {
        code: u16,
        lines: Vec<String>,
    }

    impl Reply {
        fn assert(&self, code: u16, enhanced: &str) -> &Self {
            assert_eq!(self.code, code, "unexpected reply {:?}", self.lines);
            assert!(self.lines[0][4..].starts_with(enhanced), "expected {enhanced} in {:?}", self.lines);
            self
        }
    }

    struct Client {
        reader: BufReader<OwnedReadHalf>,
        writer: Option<OwnedWriteHalf>,
    }

    impl Client {
        async fn open(addr: SocketAddr) -> (Self, Reply) {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (reader, writer) = stream.into_split();
            let mut client = Self { reader: BufReader::new(reader), writer: Some(writer) };
            let greeting = client.reply().await;
            (client, greeting)
        }

        async fn connect(addr: SocketAddr) -> Self {
            let (client, greeting) = Self::open(addr).await;
            greeting.assert(220, "");
            assert_eq!(greeting.lines[0], "220 mx.mailroom.test ESMTP Mailroom");
            client
        }

        async fn send(&mut self, data: &[u8]) {
            let writer = self.writer.as_mut().expect("writer taken");
            writer.write_all(data).await.unwrap();
        }

        async fn cmd(&mut self, line: &str) -> Reply {
            self.send(format!("{line}\r\n").as_bytes()).await;
            self.reply().await
        }

        async fn reply(&mut self) -> Reply {
            timeout(WAIT, self.try_reply())
                .await
                .expect("no reply in time")
                .expect("connection closed instead of a reply")
        }

        async fn try_reply(&mut self) -> Option<Reply> {
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                if self.reader.read_line(&mut line).await.ok()? == 0 {
                    return None;
                }
                let line = line.trim_end_matches(['\r', '\n']).to_owned();
                let code: u16 = line.get(..3)?.parse().ok()?;
                let more = line.as_bytes().get(3) == Some(&b'-');
                lines.push(line);
                if !more {
                    return Some(Reply { code, lines });
                }
            }
        }

        /// The server closed the connection without sending anything more.
        async fn assert_closed(mut self) {
            let mut rest = Vec::new();
            let read = timeout(WAIT, self.reader.read_to_end(&mut rest)).await.expect("connection not closed");
            assert!(read.is_ok(), "read failed: {read:?}");
            assert!(rest.is_empty(), "unexpected data {:?}", String::from_utf8_lossy(&rest));
        }

        /// QUIT, answered 221, then closed by the server.
        async fn quit(mut self) {
            self.cmd("QUIT").await.assert(221, "2.0.0");
            self.assert_closed().await;
        }

        /// EHLO, MAIL, RCPT (all 250) and DATA (354).
        async fn begin(&mut self, from: &str, to: &[&str]) {
            self.cmd("EHLO client.example").await.assert(250, "");
            self.cmd(&format!("MAIL FROM:{from}")).await.assert(250, "2.1.0");
            for rcpt in to {
                self.cmd(&format!("RCPT TO:<{rcpt}>")).await.assert(250, "2.1.5");
            }
            self.cmd("DATA").await.assert(354, "");
        }
    }

    fn body_of(raw: &[u8]) -> &[u8] {
        // Trace headers end with the date line; the message follows.
        let received = raw.windows(11).position(|w| w == b"\r\nReceived:").unwrap();
        let date_line = raw[received..].windows(3).position(|w| w == b";\r\n").unwrap();
        let after = received + date_line + 3;
        let end = raw[after..].windows(2).position(|w| w == b"\r\n").unwrap();
        &raw[after + end + 2..]
    }

    #[tokio::test]
    async fn full_session() {
        let server = Server::start().await;
        let mut client = Client::connect(server.addr).await;
        let ehlo = client.cmd("EHLO client.example").await;
        ehlo.assert(250, "");
        assert_eq!(
            ehlo.lines,
            [
                "250-mx.mailroom.test",
                "250-PIPELINING",
                "250-SIZE 1048576",
                "250-8BITMIME",
                "250-SMTPUTF8",
                "250 ENHANCEDSTATUSCODES"
            ]
        );
        client.cmd("MAIL FROM:<alice@example.org> BODY=8BITMIME SIZE=100").await.assert(250, "2.1.0");
        client.cmd("RCPT TO:<support@mailroom.test>").await.assert(250, "2.1.5");
        client.cmd("rcpt to: <sales@mailroom.test>").await.assert(250, "2.1.5");
        client.cmd("RCPT TO:<support@mailroom.test>").await.assert(250, "2.1.5");
        client.cmd("DATA").await.assert(354, "");
        let message = b"Subject: hello\r\n\r\nCaf\xc3\xa9 \xe9 8-bit bytes kept\r\n";
        client.send(message).await;
        client.send(b".\r\n").await;
        let queued = client.reply().await;
        queued.assert(250, "2.0.0");
        let id = queued.lines[0].rsplit(' ').next().unwrap().to_owned();
        client.quit().await;

        let messages = server.stop().await.messages();
        assert_eq!(messages.len(), 1);
        let (envelope, raw) = &messages[0];
        assert_eq!(envelope.mail_from.as_deref(), Some("alice@example.org"));
        assert_eq!(envelope.rcpt_to, ["support@mailroom.test", "sales@mailroom.test"]);
        assert_eq!(envelope.helo, "client.example");
        assert!(envelope.client_addr.ip().is_loopback());
        let expected_start = format!(
            "Return-Path: <alice@example.org>\r\nReceived: from client.example ([127.0.0.1])\r\n\tby mx.mailroom.test (Mailroom) with ESMTP id {id};\r\n\t"
        );
        assert!(raw.starts_with(expected_start.as_bytes()), "{}", String::from_utf8_lossy(raw));
        let date_start = expected_start.len();
        let date_end = date_start + raw[date_start..].windows(2).position(|w| w == b"\r\n").unwrap();
        let date = std::str::from_utf8(&raw[date_start..date_end]).unwrap();
        chrono::DateTime::parse_from_rfc2822(date).expect("RFC 5322 date");
        assert_eq!(body_of(raw), message);
    }

    #[tokio::test]
    async fn pipelined_commands_in_one_write() {
        let server = Server::start().await;
        let mut client = Client::connect(server.addr).await;
        client
            .send(
                b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<x@mailroom.test>\r\n\
                  RCPT TO:<nobody@mailroom.test>\r\nDATA\r\nSubject: one\r\n\r\nfirst\r\n.\r\n\
                  MAIL FROM:<b@example.org>\r\nRCPT TO:<y@mailroom.test>\r\nDATA\r\n\
                  Subject: two\r\n\r\nsecond\r\n.\r\nNOOP\r\nQUIT\r\n",
            )
            .await;
        let codes: Vec<u16> = {
            let mut codes = Vec::new();
            for _ in 0..12 {
                codes.push(client.reply().await.code);
            }
            codes
        };
        assert_eq!(codes, [250, 250, 250, 550, 354, 250, 250, 250, 354, 250, 250, 221]);
        client.assert_closed().await;

        // Many commands at once, read while they are still being written: no deadlock.
        let mut client = Client::connect(server.addr).await;
        let mut writer = client.writer.take().unwrap();
        let writing = tokio::spawn(async move {
            let batch = "NOOP\r\n".repeat(5000) + "QUIT\r\n";
            writer.write_all(batch.as_bytes()).await.unwrap();
            writer
        });
        for _ in 0..5000 {
            client.reply().await.assert(250, "2.0.0");
        }
        client.reply().await.assert(221, "2.0.0");
        drop(writing.await.unwrap());

        let messages = server.stop().await.messages();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].0.rcpt_to, ["x@mailroom.test"]);
        assert_eq!(body_of(&messages[0].1), b"Subject: one\r\n\r\nfirst\r\n");
        assert_eq!(messages[1].0.mail_from.as_deref(), Some("b@example.org"));
        assert_eq!(body_of(&messages[1].1), b"Subject: two\r\n\r\nsecond\r\n");
    }

    #[tokio::test]
    async fn dot_unstuffing_and_bare_line_feeds() {
        let server = Server::start().await;
        let mut client = Client::connect(server.addr).await;
        client.begin("<a@example.org>", &["x@mailroom.test"]).await;
        client.send(b"Subject: dots\r\n\r\n..leading dot\r\n...two\r\n..\r\n. space\r\nend.\r\n.\r\n").await;
        client.reply().await.assert(250, "2.0.0");
        // A sloppy client with bare LF line endings.
        client.cmd("MAIL FROM:<a@example.org>").await.assert(250, "2.1.0");
        client.cmd("RCPT TO:<x@mailroom.test>").await.assert(250, "2.1.5");
        client.cmd("DATA").await.assert(354, "");
        client.send(b"Subject: lf\n\n..dot\nline\n.\n").await;
        client.reply().await.assert(250, "2.0.0");
        // An empty message.
        client.cmd("MAIL FROM:<a@example.org>").await.assert(250, "2.1.0");
        client.cmd("RCPT TO:<x@mailroom.test>").await.assert(250, "2.1.5");
        client.cmd("DATA").await.assert(354, "");
        client.send(b".\r\n").await;
        client.reply().await.assert(250, "2.0.0");
        client.quit().await;

        let messages = server.stop().await.messages();
        assert_eq!(messages.len(), 3);
        assert_eq!(body_of(&messages[0].1), b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\n space\r\nend.\r\n");
        assert_eq!(body_of(&messages[1].1), b"Subject: lf\n\n.dot\nline\n");
        assert_eq!(body_of(&messages[2].1), b"");
    }

    #[tokio::test]
    async fn null_reverse_path() {
        let server = Server::start().await;
        let mut client = Client::connect(server.addr).await;
        client.begin("<>", &["x@mailroom.test"]).await;
        client.send(b"Subject: bounce\r\n\r\nreturned\r\n.\r\n").await;
        client.reply().await.assert(250, "2.0.0");
        client.quit().await;

        let messages = server.stop().await.messages();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].0.mail_from, None);
        assert!(messages[0].1.starts_with(b"Return-Path: <>\r\nReceived: from client.example"));
    }

    #[tokio::test]
    async fn rejected_recipient() {
        let server = Server::start().await;
        let mut client = Client::connect(server.addr).await;
        client.cmd("EHLO client.example").await.assert(250, "");
        client.cmd("MAIL FROM:<a@example.org>").await.assert(250, "2.1.0");
        client.cmd("RCPT TO:<nobody@mailroom.test>").await.assert(550, "5.1.1");
        client.cmd("DATA").await.assert(503, "5.5.1");
        client.cmd("RCPT TO:<x@mailroom.test>").await.assert(250, "2.1.5");
        client.cmd("DATA").await.assert(354, "");
        client.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n").await;
        client.reply().await.assert(250, "2.0.0");
        client.quit().await;

        let messages = server.stop().await.messages();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].0.rcpt_to, ["x@mailroom.test"]);
    }

    #[tokio::test]
    async fn too_many_recipients() {
        let config = SmtpListenerConfig { max_recipients: 2, ..config() };
        let server = Server::start_with(config, Recorder::default(), WAIT).await;
        let mut client = Client::connect(server.addr).await;
        client.cmd("HELO client.example").await.assert(250, "");
        client.cmd("MAIL FROM:<a@example.org>").await.assert(250, "2.1.0");
        client.cmd("RCPT TO:<x@mailroom.test>").await.assert(250, "2.1.5");
        client.cmd("RCPT TO:<y@mailroom.test>").await.assert(250, "2.1.5");
        client.cmd("RCPT TO:<z@mailroom.test>").await.assert(452, "4.5.3");
        client.cmd("DATA").await.assert(354, "");
        client.send(b"\r\nbody\r\n.\r\n").await;
        client.reply().await.assert(250, "2.0.0");

        let messages = server.stop().await.messages();
        assert_eq!(messages[0].0.rcpt_to, ["x@mailroom.test", "y@mailroom.test"]);
        // HELO, not EHLO: the Received header says SMTP.
        let raw = String::from_utf8_lossy(&messages[0].1).into_owned();
        assert!(raw.contains("(Mailroom) with SMTP id"), "{raw}");
    }

    #[tokio::test]
    async fn oversized_message_is_refused_and_nothing_delivered() {
        let config = SmtpListenerConfig { max_message_bytes: 1024, ..config() };
        let server = Server::start_with(config, Recorder::default(), WAIT).await;
        let mut client = Client::connect(server.addr).await;
        let ehlo = client.cmd("EHLO client.example").await;
        assert!(ehlo.lines.contains(&"250-SIZE 1024".to_owned()));
        client.cmd("MAIL FROM:<a@example.org> SIZE=1025").await.assert(552, "5.3.4");

        // Declared small, sent large (many lines): read to the end, then refused.
        client.begin("<a@example.org> SIZE=100", &["x@mailroom.test"]).await;
        let line = format!("{}\r\n", "x".repeat(78));
        client.send(line.repeat(100).as_bytes()).await;
        client.send(b".\r\n").await;
        client.reply().await.assert(552, "5.3.4");

        // One huge line without any line break.
        client.cmd("MAIL FROM:<a@example.org>").await.assert(250, "2.1.0");
        client.cmd("RCPT TO:<x@mailroom.test>").await.assert(250, "2.1.5");
        client.cmd("DATA").await.assert(354, "");
        client.send("y".repeat(100_000).as_bytes()).await;
        client.send(b"\r\n.\r\n").await;
        client.reply().await.assert(552, "5.3.4");

        // Exactly at the limit (1024 bytes, CRLFs included) is accepted; one more byte is not.
        let exact = format!("{}\r\n", "z".repeat(1022));
        client.cmd("MAIL FROM:<a@example.org>").await.assert(250, "2.1.0");
        client.cmd("RCPT TO:<x@mailroom.test>").await.assert(250, "2.1.5");
        client.cmd("DATA").await.assert(354, "");
        client.send(format!(".{exact}.\r\n").as_bytes()).await;
        client.reply().await.assert(250, "2.0.0");
        client.cmd("MAIL FROM:<a@example.org>").await.assert(250, "2.1.0");
        client.cmd("RCPT TO:<x@mailroom.test>").await.assert(250, "2.1.5");
        client.cmd("DATA").await.assert(354, "");
        client.send(format!("z{exact}.\r\n").as_bytes()).await;
        client.reply().await.assert(552, "5.3.4");
        client.quit().await;

        let messages = server.stop().await.messages();
        assert_eq!(messages.len(), 1, "only the message at the limit is delivered");
        assert_eq!(body_of(&messages[0].1), exact.as_bytes());
    }

    #[tokio::test]
    async fn delivery_rejections_map_to_451_and_554() {
        let server = Server::start().await;
        let mut client = Client::connect(server.addr).await;
        client.begin("<a@example.org>", &["tempfail@mailroom.test"]).await;
        client.send(b"\r\nbody\r\n.\r\n").await;
        let temporary = client.reply().await;
        temporary.assert(451, "4.3.0");
        assert_eq!(temporary.lines[0], "451 4.3.0 Temporary failure: store??unavailable");
        client.cmd("MAIL FROM:<a@example.org>").await.assert(250, "2.1.0");
        client.cmd("RCPT TO:<permfail@mailroom.test>").await.assert(250, "2.1.5");
        client.cmd("DATA").await.assert(354, "");
        client.send(b"\r\nbody\r\n.\r\n").await;
        client.reply().await.assert(554, "5.6.0");
        client.quit().await;
        assert!(server.stop().await.messages().is_empty());
    }

    #[tokio::test]
    async fn graceful_shutdown_keeps_the_message_in_flight() {
        let recorder = Recorder { delay: Duration::from_millis(200), ..Recorder::default() };
        let server = Server::start_with(config(), recorder, WAIT).await;
        let mut busy = Client::connect(server.addr).await;
        busy.begin("<a@example.org>", &["x@mailroom.test"]).await;
        busy.send(b"Subject: in flight\r\n\r\npart one\r\n").await;
        let mut quitting = Client::connect(server.addr).await;
        quitting.begin("<b@example.org>", &["y@mailroom.test"]).await;
        let mut idle = Client::connect(server.addr).await;
        idle.cmd("EHLO idle.example").await.assert(250, "");

        server.shutdown.send_replace(true);
        // The idle session is dropped at once...
        idle.reply().await.assert(421, "4.3.2");
        idle.assert_closed().await;
        // ...and no new session is accepted.
        assert!(TcpStream::connect(server.addr).await.is_err());
        // Sessions in a transaction finish it and are answered 250 after deliver returned; then
        // they are closed, with 221 for a QUIT already pipelined, with 421 otherwise.
        busy.send(b"part two\r\n.\r\n").await;
        quitting.send(b"\r\nsecond\r\n.\r\nQUIT\r\n").await;
        busy.reply().await.assert(250, "2.0.0");
        busy.reply().await.assert(421, "4.3.2");
        busy.assert_closed().await;
        quitting.reply().await.assert(250, "2.0.0");
        quitting.reply().await.assert(221, "2.0.0");
        quitting.assert_closed().await;

        timeout(WAIT, server.handle).await.unwrap().unwrap().unwrap();
        let messages = server.recorder.messages();
        assert_eq!(messages.len(), 2);
        let bodies: Vec<&[u8]> = messages.iter().map(|(_, raw)| body_of(raw)).collect();
        assert!(bodies.contains(&&b"Subject: in flight\r\n\r\npart one\r\npart two\r\n"[..]));
        assert!(bodies.contains(&&b"\r\nsecond\r\n"[..]));
    }

    #[tokio::test]
    async fn drain_timeout_ends_a_stalled_transaction() {
        let server = Server::start_with(config(), Recorder::default(), Duration::from_millis(300)).await;
        let mut client = Client::connect(server.addr).await;
        client.begin("<a@example.org>", &["x@mailroom.test"]).await;
        client.send(b"Subject: never finished\r\n").await;
        let started = std::time::Instant::now();
        server.shutdown.send_replace(true);
        client.reply().await.assert(421, "4.3.2");
        timeout(WAIT, server.handle).await.unwrap().unwrap().unwrap();
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        assert!(server.recorder.messages().is_empty());
    }

    #[tokio::test]
    async fn line_too_long() {
        let server = Server::start().await;
        let mut client = Client::connect(server.addr).await;
        client.cmd("EHLO client.example").await.assert(250, "");
        let long = format!("NOOP {}", "x".repeat(5000));
        client.cmd(&long).await.assert(500, "5.5.2");
        // Exactly 4096 bytes with CRLF is still fine, and the session goes on.
        let fits = format!("NOOP {}", "x".repeat(MAX_COMMAND_LINE - 7));
        client.cmd(&fits).await.assert(250, "2.0.0");
        client.cmd("MAIL FROM:<a@example.org>").await.assert(250, "2.1.0");
        client.quit().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn commands_out_of_order() {
        let server = Server::start().await;
        let mut client = Client::connect(server.addr).await;
        client.cmd("MAIL FROM:<a@example.org>").await.assert(503, "5.5.1");
        client.cmd("EHLO client.example").await.assert(250, "");
        client.cmd("RCPT TO:<x@mailroom.test>").await.assert(503, "5.5.1");
        client.cmd("DATA").await.assert(503, "5.5.1");
        client.cmd("MAIL FROM:<a@example.org>").await.assert(250, "2.1.0");
        client.cmd("MAIL FROM:<a@example.org>").await.assert(503, "5.5.1");
        client.cmd("DATA").await.assert(503, "5.5.1");
        client.cmd("RSET").await.assert(250, "2.0.0");
        client.cmd("RCPT TO:<x@mailroom.test>").await.assert(503, "5.5.1");
        client.quit().await;
        assert!(server.stop().await.messages().is_empty());
    }

    #[tokio::test]
    async fn syntax_errors_and_minor_commands() {
        let server = Server::start().await;
        let mut client = Client::connect(server.addr).await;
        client.cmd("EHLO").await.assert(501, "5.5.4");
        client.cmd("ehlo client.example").await.assert(250, "");
        client.cmd("FROB").await.assert(500, "5.5.2");
        client.cmd("").await.assert(500, "5.5.2");
        client.cmd("STARTTLS").await.assert(502, "5.5.1");
        client.cmd("MAIL FROM alice").await.assert(501, "5.5.4");
        client.cmd("MAIL FROM:<alice>").await.assert(501, "5.1.7");
        client.cmd("MAIL FROM:<a@example.org").await.assert(501, "5.1.7");
        client.cmd("MAIL FROM:<a@example.org> RET=HDRS").await.assert(555, "5.5.4");
        client.cmd("MAIL FROM:<a@example.org> SIZE=big").await.assert(501, "5.5.4");
        client.quit().await;

        let mut client = Client::connect(server.addr).await;
        client.cmd("EHLO client.example").await.assert(250, "");
        client.cmd("VRFY someone").await.assert(252, "2.5.0");
        client.cmd("HELP").await.assert(214, "2.0.0");
        client.cmd("NOOP").await.assert(250, "2.0.0");
        client.cmd("RSET").await.assert(250, "2.0.0");
        // Source route dropped, bare address tolerated, postmaster without a domain accepted.
        client.cmd("Mail From: <@relay.example:a@example.org> SMTPUTF8").await.assert(250, "2.1.0");
        client.cmd("RCPT TO:x@mailroom.test").await.assert(250, "2.1.5");
        client.cmd("RCPT TO:<Postmaster>").await.assert(250, "2.1.5");
        client.cmd("RCPT TO:<>").await.assert(501, "5.1.3");
        client.cmd("RCPT TO:<y@mailroom.test> NOTIFY=NEVER").await.assert(555, "5.5.4");
        client.cmd("DATA").await.assert(354, "");
        client.send(b"\r\nbody\r\n.\r\n").await;
        client.reply().await.assert(250, "2.0.0");
        client.quit().await;

        let messages = server.stop().await.messages();
        assert_eq!(messages[0].0.mail_from.as_deref(), Some("a@example.org"));
        assert_eq!(messages[0].0.rcpt_to, ["x@mailroom.test", "Postmaster"]);
        let raw = String::from_utf8_lossy(&messages[0].1).into_owned();
        assert!(raw.contains("(Mailroom) with UTF8SMTP id"), "{raw}");
    }

    #[tokio::test]
    async fn too_many_errors_closes_with_421() {
        let server = Server::start().await;
        let mut client = Client::connect(server.addr).await;
        for _ in 0..MAX_ERRORS {
            client.cmd("FROB").await.assert(500, "5.5.2");
        }
        client.reply().await.assert(421, "4.7.0");
        client.assert_closed().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn idle_client_is_dropped_after_the_command_timeout() {
        let config = SmtpListenerConfig { command_timeout: Duration::from_millis(200), ..config() };
        let server = Server::start_with(config, Recorder::default(), WAIT).await;
        let mut client = Client::connect(server.addr).await;
        client.reply().await.assert(421, "4.4.2");
        client.assert_closed().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn sessions_beyond_the_limit_get_421() {
        let config = SmtpListenerConfig { max_sessions: 1, ..config() };
        let server = Server::start_with(config, Recorder::default(), WAIT).await;
        let first = Client::connect(server.addr).await;
        let (second, greeting) = Client::open(server.addr).await;
        greeting.assert(421, "4.3.2");
        second.assert_closed().await;
        first.quit().await;
        // The slot is free again once the first session has ended.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let (client, greeting) = Client::open(server.addr).await;
            if greeting.code == 220 {
                client.quit().await;
                break;
            }
            assert!(std::time::Instant::now() < deadline, "slot never freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn python_smtplib_client() {
        if std::process::Command::new("python3").arg("--version").output().is_err() {
            eprintln!("skipping python_smtplib_client: python3 not found");
            return;
        }
        const SCRIPT: &str = r#"
import smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10) as s:
    code, _ = s.ehlo("python.example")
    assert code == 250, code
    for ext in ("pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes"):
        assert s.has_extn(ext), ext
    assert not s.has_extn("starttls")
    assert int(s.esmtp_features["size"]) == 1048576, s.esmtp_features
    msg = b"Subject: from python\r\n\r\n.leading dot\r\ncaf\xc3\xa9\r\n"
    refused = s.sendmail("py@example.org", ["x@mailroom.test", "nobody@mailroom.test"], msg,
                         mail_options=["BODY=8BITMIME"])
    assert list(refused) == ["nobody@mailroom.test"], refused
    try:
        s.sendmail("py@example.org", ["tempfail@mailroom.test"], b"\r\nbody\r\n")
        raise SystemExit("expected a 451")
    except smtplib.SMTPDataError as e:
        assert e.smtp_code == 451, e
print("ok")
"#;
        let server = Server::start().await;
        let port = server.addr.port().to_string();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("python3").arg("-c").arg(SCRIPT).arg(port).output().unwrap()
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "python3 failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let messages = server.stop().await.messages();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].0.mail_from.as_deref(), Some("py@example.org"));
        assert_eq!(messages[0].0.rcpt_to, ["x@mailroom.test"]);
        assert_eq!(messages[0].0.helo, "python.example");
        assert_eq!(body_of(&messages[0].1), b"Subject: from python\r\n\r\n.leading dot\r\ncaf\xc3\xa9\r\n");
    }

    #[test]
    fn parse_path_cases() {
        let ok = |s: &str| parse_path(s).map(|(a, p)| (a, p.trim().to_owned()));
        assert_eq!(ok("<a@b.example>"), Some((Some("a@b.example".into()), String::new())));
        assert_eq!(ok("<>"), Some((None, String::new())));
        assert_eq!(ok("<> SIZE=10"), Some((None, "SIZE=10".into())));
        assert_eq!(
            ok("<@r1,@r2:a@b.example> BODY=8BITMIME"),
            Some((Some("a@b.example".into()), "BODY=8BITMIME".into()))
        );
        assert_eq!(ok(r#"<"john > doe"@b.example>"#), Some((Some(r#""john > doe"@b.example"#.into()), String::new())));
        assert_eq!(ok("a@b.example SIZE=1"), Some((Some("a@b.example".into()), "SIZE=1".into())));
        assert_eq!(ok("<josé@bücher.example>"), Some((Some("josé@bücher.example".into()), String::new())));
        assert_eq!(ok("<a@b.example>SIZE=1"), None);
        assert_eq!(ok("<a b@c.example>"), None);
        assert_eq!(ok("<a\u{1}@c.example>"), None);
        assert_eq!(ok("<a@b.example"), None);
        assert_eq!(ok(""), None);
        assert_eq!(ok(&format!("<{}@b.example>", "a".repeat(300))), None);
        assert!(is_mailbox("a@b") && !is_mailbox("a@") && !is_mailbox("@b") && !is_mailbox("ab"));
        assert_eq!(strip_keyword("from : <x>", "FROM"), Some("<x>"));
        assert_eq!(strip_keyword("FROMAGE:<x>", "FROM"), None);
        assert_eq!(address_literal("::1".parse().unwrap()), "[IPv6:::1]");
        assert_eq!(address_literal("::ffff:10.0.0.1".parse().unwrap()), "[10.0.0.1]");
    }
}
