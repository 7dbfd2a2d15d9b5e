//! IMAP with async-imap: implicit TLS or STARTTLS (done by hand before signing in), `LOGIN` or
//! `AUTHENTICATE XOAUTH2`, `SELECT INBOX`, UID searches, `UID FETCH BODY.PEEK[]` (which leaves
//! `\Seen` alone until ingest has the message), `UID STORE`, `UID EXPUNGE` and IDLE.

use std::time::Duration;

use async_imap::imap_proto::{Response, Status};
use async_imap::{Authenticator, Client, Session};
use async_trait::async_trait;
use futures_util::StreamExt;
use secrecy::ExposeSecret;

use super::net::{MailStream, connect_tcp};
use super::tls::TlsSettings;
use super::{Timeouts, server_words, step, uid_set, xoauth2_response};
use crate::domain::mailbox::TlsMode;
use crate::ports::mailbox::{
    ConnectionInfo, FetchedMessage, IdleOutcome, ImapInbox, ImapSession, MailEndpoint, MailboxCredentials, MailboxError,
};

/// At most this many UIDs per command line, so a long set never exceeds a server's line limit.
const UIDS_PER_COMMAND: usize = 500;

fn imap_error(step: &'static str, e: async_imap::error::Error) -> MailboxError {
    use async_imap::error::Error;
    match e {
        Error::Io(source) => io_error(source),
        Error::ConnectionLost => MailboxError::Closed,
        Error::No(_) | Error::Bad(_) => {
            MailboxError::Protocol { step, detail: "the server refused the command".into() }
        }
        _ => MailboxError::Protocol { step, detail: "the answer could not be read".into() },
    }
}

fn io_error(source: std::io::Error) -> MailboxError {
    use std::io::ErrorKind;
    match source.kind() {
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::BrokenPipe
        | ErrorKind::ConnectionAborted => MailboxError::Closed,
        _ => MailboxError::Io { source },
    }
}

/// The server's text of a `NO`/`BAD`, which async-imap hands over as
/// `code: Some(..), info: Some("text")`.
fn server_text(raw: &str) -> String {
    let info = raw.split_once("info: Some(\"").and_then(|(_, rest)| rest.rsplit_once("\")")).map(|(text, _)| text);
    server_words(&info.unwrap_or(raw).replace("\\\"", "\""))
}

fn auth_error(e: async_imap::error::Error) -> MailboxError {
    use async_imap::error::Error;
    match e {
        Error::No(text) | Error::Bad(text) => MailboxError::AuthFailed { detail: server_text(&text) },
        Error::Validate(_) => {
            MailboxError::AuthFailed { detail: "the user id or password has characters IMAP cannot send".into() }
        }
        other => imap_error("signing in", other),
    }
}

/// Reads the greeting: `* OK` (or `* PREAUTH`, which we do not expect but can live with).
async fn greeting(client: &mut Client<MailStream>) -> Result<(), MailboxError> {
    let response = client.read_response().await.map_err(io_error)?.ok_or(MailboxError::Closed)?;
    match response.parsed() {
        Response::Data { status: Status::Ok | Status::PreAuth, .. } => Ok(()),
        Response::Data { status: Status::Bye, .. } => Err(MailboxError::Closed),
        _ => Err(MailboxError::Protocol { step: "reading the greeting", detail: "it is not an IMAP server".into() }),
    }
}

struct XOAuth2 {
    response: String,
    sent: bool,
}

impl Authenticator for &mut XOAuth2 {
    type Response = String;

    /// The first challenge is empty: answer with the token. A second one is the server's error
    /// report for a refused token, which must be answered with an empty line before the server
    /// sends its `NO`.
    fn process(&mut self, _challenge: &[u8]) -> Self::Response {
        if self.sent {
            String::new()
        } else {
            self.sent = true;
            std::mem::take(&mut self.response)
        }
    }
}

pub(crate) async fn connect(
    endpoint: &MailEndpoint,
    credentials: &MailboxCredentials,
    tls: &TlsSettings,
    timeouts: Timeouts,
) -> Result<(ImapConnection, ConnectionInfo), MailboxError> {
    let (tcp, address) = connect_tcp(endpoint, timeouts.connect).await?;
    let stream = match endpoint.protocol.tls() {
        TlsMode::Implicit => tls.wrap(&endpoint.host, tcp, timeouts.connect).await?,
        TlsMode::None | TlsMode::StartTls => MailStream::Plain(tcp),
    };
    let mut client = Client::new(stream);
    step(timeouts.command, "reading the greeting", greeting(&mut client)).await?;

    if endpoint.protocol.tls() == TlsMode::StartTls {
        step(timeouts.command, "starting TLS", async {
            client.run_command_and_check_ok("STARTTLS", None).await.map_err(|e| match e {
                async_imap::error::Error::No(_) | async_imap::error::Error::Bad(_) => {
                    MailboxError::NoStartTls("STARTTLS")
                }
                other => imap_error("starting TLS", other),
            })
        })
        .await?;
        let MailStream::Plain(tcp) = client.into_inner() else { unreachable!("STARTTLS runs on a plain connection") };
        client = Client::new(tls.wrap(&endpoint.host, tcp, timeouts.connect).await?);
    }
    let info = ConnectionInfo { tls: client.get_ref().tls_version(), address };

    let session = step(timeouts.command, "signing in", async {
        match credentials {
            MailboxCredentials::Password { user, password } => {
                client.login(user.as_str(), password.expose_secret()).await.map_err(|(e, _)| auth_error(e))
            }
            MailboxCredentials::OAuth2 { user, token } => {
                let mut auth = XOAuth2 { response: xoauth2_response(user.as_str(), token.expose()), sent: false };
                client.authenticate("XOAUTH2", &mut auth).await.map_err(|(e, _)| auth_error(e))
            }
        }
    })
    .await?;
    let mut connection = ImapConnection { session: Some(session), timeouts, idle: false, uidplus: false };
    let capabilities = step(timeouts.command, "reading capabilities", async {
        connection.session()?.capabilities().await.map_err(|e| imap_error("reading capabilities", e))
    })
    .await?;
    connection.idle = capabilities.has_str("IDLE");
    connection.uidplus = capabilities.has_str("UIDPLUS");
    Ok((connection, info))
}

pub(crate) struct ImapConnection {
    /// Taken out while IDLE holds it.
    session: Option<Session<MailStream>>,
    timeouts: Timeouts,
    idle: bool,
    uidplus: bool,
}

impl ImapConnection {
    fn session(&mut self) -> Result<&mut Session<MailStream>, MailboxError> {
        self.session.as_mut().ok_or(MailboxError::Closed)
    }

    async fn search(&mut self, query: String) -> Result<Vec<u32>, MailboxError> {
        let timeout = self.timeouts.command;
        let session = self.session()?;
        let found = step(timeout, "searching the mailbox", async {
            session.uid_search(&query).await.map_err(|e| imap_error("searching the mailbox", e))
        })
        .await?;
        let mut uids: Vec<u32> = found.into_iter().collect();
        uids.sort_unstable();
        Ok(uids)
    }

    async fn store(&mut self, uids: &[u32], flags: &str) -> Result<(), MailboxError> {
        let timeout = self.timeouts.command;
        for chunk in uids.chunks(UIDS_PER_COMMAND) {
            let set = uid_set(chunk);
            let session = self.session()?;
            step(timeout, "setting flags", async {
                let mut responses = session.uid_store(&set, flags).await.map_err(|e| imap_error("setting flags", e))?;
                while let Some(r) = responses.next().await {
                    r.map_err(|e| imap_error("setting flags", e))?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}

/// Waits until `stop` holds `true` (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

#[async_trait]
impl ImapSession for ImapConnection {
    async fn select_inbox(&mut self) -> Result<ImapInbox, MailboxError> {
        let timeout = self.timeouts.command;
        let session = self.session()?;
        let mailbox = step(timeout, "opening the INBOX", async {
            session.select("INBOX").await.map_err(|e| match e {
                async_imap::error::Error::No(text) | async_imap::error::Error::Bad(text) => {
                    MailboxError::NoInbox { detail: server_text(&text) }
                }
                other => imap_error("opening the INBOX", other),
            })
        })
        .await?;
        let uid_validity = mailbox.uid_validity.ok_or(MailboxError::Unsupported("UIDVALIDITY (unique message ids)"))?;
        Ok(ImapInbox { uid_validity, uid_next: mailbox.uid_next.unwrap_or(0), exists: mailbox.exists })
    }

    async fn uids_after(&mut self, after: u32) -> Result<Vec<u32>, MailboxError> {
        // `n:*` always matches the highest UID, even one below n: filter.
        let mut uids = self.search(format!("UID {}:*", after.saturating_add(1))).await?;
        uids.retain(|u| *u > after);
        Ok(uids)
    }

    async fn seen_between(&mut self, from: u32, through: u32) -> Result<Vec<u32>, MailboxError> {
        if from > through {
            return Ok(Vec::new());
        }
        let mut uids = self.search(format!("UID {from}:{through} SEEN")).await?;
        uids.retain(|u| (from..=through).contains(u));
        Ok(uids)
    }

    async fn deleted_through(&mut self, through: u32) -> Result<Vec<u32>, MailboxError> {
        if through == 0 {
            return Ok(Vec::new());
        }
        let mut uids = self.search(format!("UID 1:{through} DELETED")).await?;
        uids.retain(|u| *u <= through);
        Ok(uids)
    }

    async fn sizes(&mut self, uids: &[u32]) -> Result<Vec<(u32, u64)>, MailboxError> {
        let timeout = self.timeouts.command;
        let mut out = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(UIDS_PER_COMMAND) {
            let set = uid_set(chunk);
            let session = self.session()?;
            step(timeout, "reading message sizes", async {
                let mut fetches = session
                    .uid_fetch(&set, "(UID RFC822.SIZE)")
                    .await
                    .map_err(|e| imap_error("reading message sizes", e))?;
                while let Some(f) = fetches.next().await {
                    let f = f.map_err(|e| imap_error("reading message sizes", e))?;
                    if let (Some(uid), Some(size)) = (f.uid, f.size) {
                        out.push((uid, u64::from(size)));
                    }
                }
                Ok(())
            })
            .await?;
        }
        out.sort_unstable();
        Ok(out)
    }

    async fn fetch(&mut self, uids: &[u32]) -> Result<Vec<FetchedMessage>, MailboxError> {
        let timeout = self.timeouts.command;
        let set = uid_set(uids);
        let session = self.session()?;
        let mut fetches = step(timeout, "downloading messages", async {
            session.uid_fetch(&set, "(UID BODY.PEEK[])").await.map_err(|e| imap_error("downloading messages", e))
        })
        .await?;
        let mut out = Vec::with_capacity(uids.len());
        // Each message has the command time-out: a large one on a slow link is not cut short,
        // a silent server still is.
        loop {
            let next = tokio::time::timeout(timeout, fetches.next())
                .await
                .map_err(|_| MailboxError::Timeout { step: "downloading messages" })?;
            let Some(f) = next else { break };
            let f = f.map_err(|e| imap_error("downloading messages", e))?;
            // Unsolicited FETCH responses (flag changes by another client) carry no body.
            if let (Some(uid), Some(body)) = (f.uid, f.body()) {
                out.push(FetchedMessage { uid, raw: body.to_vec() });
            }
        }
        out.sort_by_key(|m| m.uid);
        Ok(out)
    }

    async fn mark_seen(&mut self, uids: &[u32]) -> Result<(), MailboxError> {
        self.store(uids, "+FLAGS.SILENT (\\Seen)").await
    }

    async fn delete(&mut self, uids: &[u32]) -> Result<(), MailboxError> {
        self.store(uids, "+FLAGS.SILENT (\\Seen \\Deleted)").await?;
        let timeout = self.timeouts.command;
        let uidplus = self.uidplus;
        for chunk in uids.chunks(UIDS_PER_COMMAND) {
            let set = uid_set(chunk);
            let session = self.session()?;
            step(timeout, "expunging deleted messages", async {
                if uidplus {
                    let responses =
                        session.uid_expunge(&set).await.map_err(|e| imap_error("expunging deleted messages", e))?;
                    let mut responses = std::pin::pin!(responses);
                    while let Some(r) = responses.next().await {
                        r.map_err(|e| imap_error("expunging deleted messages", e))?;
                    }
                } else {
                    // Without UIDPLUS only a plain EXPUNGE exists, which also removes whatever
                    // else is flagged \Deleted: what any mail client would do next anyway.
                    let responses = session.expunge().await.map_err(|e| imap_error("expunging deleted messages", e))?;
                    let mut responses = std::pin::pin!(responses);
                    while let Some(r) = responses.next().await {
                        r.map_err(|e| imap_error("expunging deleted messages", e))?;
                    }
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    fn supports_idle(&self) -> bool {
        self.idle
    }

    async fn idle(
        &mut self,
        timeout: Duration,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<IdleOutcome, MailboxError> {
        if !self.idle {
            return Err(MailboxError::Unsupported("IDLE"));
        }
        let command = self.timeouts.command;
        let session = self.session.take().ok_or(MailboxError::Closed)?;
        let mut handle = session.idle();
        step(command, "starting IDLE", async { handle.init().await.map_err(|e| imap_error("starting IDLE", e)) })
            .await?;
        let outcome = {
            let (wait, _interrupt) = handle.wait_with_timeout(timeout);
            tokio::select! {
                r = wait => match r.map_err(|e| imap_error("waiting in IDLE", e))? {
                    async_imap::extensions::idle::IdleResponse::NewData(_) => IdleOutcome::Changed,
                    async_imap::extensions::idle::IdleResponse::Timeout => IdleOutcome::TimedOut,
                    async_imap::extensions::idle::IdleResponse::ManualInterrupt => IdleOutcome::Stopped,
                },
                _ = stopped(stop) => IdleOutcome::Stopped,
            }
        };
        let session =
            step(command, "ending IDLE", async { handle.done().await.map_err(|e| imap_error("ending IDLE", e)) })
                .await?;
        self.session = Some(session);
        Ok(outcome)
    }

    async fn logout(&mut self) {
        if let Some(mut session) = self.session.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), session.logout()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_text_is_taken_from_async_imaps_wrapping() {
        assert_eq!(
            super::server_text(r#"code: None, info: Some("[AUTHENTICATIONFAILED] Authentication failed.")"#),
            "[AUTHENTICATIONFAILED] Authentication failed."
        );
        assert_eq!(super::server_text("plain words"), "plain words");
    }
}
