//! A POP3 client (RFC 1939, 2449, 2595, 5034) on tokio: CAPA, STLS, USER/PASS, AUTH XOAUTH2,
//! STAT, UIDL, RETR, DELE and QUIT. The maintained crates lack STLS or a working tokio feature,
//! and the protocol is small.

use base64::Engine as _;
use secrecy::ExposeSecret;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use async_trait::async_trait;

use super::net::{MailStream, connect_tcp};
use super::tls::TlsSettings;
use super::{Timeouts, server_words, step, xoauth2_response};
use crate::domain::mailbox::TlsMode;
use crate::ports::mailbox::{ConnectionInfo, MailEndpoint, MailboxCredentials, MailboxError, Pop3Session};

/// The longest status or list line we accept (RFC 2449 allows 512 octets).
const MAX_LINE: usize = 8 * 1024;

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

/// A server's one-line answer.
enum Status {
    Ok(String),
    Err(String),
    /// `+ <base64>`: a SASL challenge.
    Challenge(String),
}

pub(crate) struct Pop3Connection {
    stream: BufReader<MailStream>,
    timeouts: Timeouts,
    /// The server takes several commands at once (RFC 2449 PIPELINING).
    pipelining: bool,
}

/// At most this many commands are sent ahead of their answers.
const PIPELINE_DEPTH: usize = 50;

impl Pop3Connection {
    /// Reads one line (without its CRLF). A closed connection is `Closed`.
    async fn line(&mut self, buf: &mut Vec<u8>) -> Result<(), MailboxError> {
        buf.clear();
        let n = (&mut self.stream).take(MAX_LINE as u64 + 2).read_until(b'\n', buf).await.map_err(io_error)?;
        if n == 0 {
            return Err(MailboxError::Closed);
        }
        if !buf.ends_with(b"\n") {
            return Err(MailboxError::Protocol { step: "reading an answer", detail: "a line is too long".into() });
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        Ok(())
    }

    async fn status(&mut self, what: &'static str) -> Result<Status, MailboxError> {
        let mut buf = Vec::new();
        self.line(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(rest) = text.strip_prefix("+OK") {
            Ok(Status::Ok(rest.trim().to_owned()))
        } else if let Some(rest) = text.strip_prefix("-ERR") {
            Ok(Status::Err(rest.trim().to_owned()))
        } else if let Some(rest) = text.strip_prefix('+') {
            Ok(Status::Challenge(rest.trim().to_owned()))
        } else {
            Err(MailboxError::Protocol { step: what, detail: "it is not a POP3 server".into() })
        }
    }

    async fn send(&mut self, line: &str) -> Result<(), MailboxError> {
        self.send_all(&[line.to_owned()]).await
    }

    /// Sends lines in one write (one TLS record, one segment where it fits).
    async fn send_all(&mut self, lines: &[String]) -> Result<(), MailboxError> {
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 2).sum());
        for line in lines {
            buf.extend_from_slice(line.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        let s = self.stream.get_mut();
        s.write_all(&buf).await.map_err(io_error)?;
        s.flush().await.map_err(io_error)
    }

    /// How many commands go out before their answers are read: several when the server
    /// allows pipelining, else one.
    fn depth(&self) -> usize {
        if self.pipelining { PIPELINE_DEPTH } else { 1 }
    }

    /// The answer to one `RETR`: the message, or an error naming it.
    async fn read_message(&mut self, number: u32) -> Result<Vec<u8>, MailboxError> {
        match self.status("downloading messages").await? {
            Status::Ok(_) => {}
            _ => {
                return Err(MailboxError::Protocol {
                    step: "downloading messages",
                    detail: format!("message {number} could not be read"),
                });
            }
        }
        let mut raw = Vec::new();
        self.multiline(&mut raw, true).await?;
        Ok(raw)
    }

    /// Sends a command and expects `+OK`, returning its text.
    async fn command(&mut self, line: &str, what: &'static str) -> Result<String, MailboxError> {
        let timeout = self.timeouts.command;
        step(timeout, what, async {
            self.send(line).await?;
            match self.status(what).await? {
                Status::Ok(text) => Ok(text),
                Status::Err(_) | Status::Challenge(_) => {
                    Err(MailboxError::Protocol { step: what, detail: "the server refused the command".into() })
                }
            }
        })
        .await
    }

    /// Reads a multi-line body up to the `.` line, removing the dot-stuffing. With `keep_ends`
    /// the line ends are kept as sent (a message); otherwise lines are returned one by one.
    async fn multiline(&mut self, out: &mut Vec<u8>, keep_ends: bool) -> Result<Vec<String>, MailboxError> {
        let mut lines = Vec::new();
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            // Message lines can be long (no limit is enforced by real servers), so no cap here
            // beyond the message itself.
            let n = self.stream.read_until(b'\n', &mut buf).await.map_err(io_error)?;
            if n == 0 {
                return Err(MailboxError::Closed);
            }
            let content = buf.strip_suffix(b"\r\n").or_else(|| buf.strip_suffix(b"\n")).unwrap_or(&buf);
            if content == b"." {
                return Ok(lines);
            }
            let unstuffed = if buf.starts_with(b"..") { &buf[1..] } else { &buf[..] };
            if keep_ends {
                out.extend_from_slice(unstuffed);
            } else {
                let line =
                    unstuffed.strip_suffix(b"\r\n").or_else(|| unstuffed.strip_suffix(b"\n")).unwrap_or(unstuffed);
                lines.push(String::from_utf8_lossy(line).into_owned());
            }
        }
    }

    async fn capabilities(&mut self) -> Result<Vec<String>, MailboxError> {
        let timeout = self.timeouts.command;
        step(timeout, "reading capabilities", async {
            self.send("CAPA").await?;
            match self.status("reading capabilities").await? {
                Status::Ok(_) => self.multiline(&mut Vec::new(), false).await,
                // RFC 1939 servers without CAPA: assume the basics.
                _ => Ok(Vec::new()),
            }
        })
        .await
    }

    async fn sign_in(&mut self, credentials: &MailboxCredentials, capabilities: &[String]) -> Result<(), MailboxError> {
        let timeout = self.timeouts.command;
        match credentials {
            MailboxCredentials::Password { user, password } => {
                step(timeout, "signing in", async {
                    self.send(&format!("USER {}", user.as_str())).await?;
                    if let Status::Err(text) | Status::Challenge(text) = self.status("signing in").await? {
                        return Err(MailboxError::AuthFailed { detail: server_words(&text) });
                    }
                    self.send(&format!("PASS {}", password.expose_secret())).await?;
                    match self.status("signing in").await? {
                        Status::Ok(_) => Ok(()),
                        Status::Err(text) | Status::Challenge(text) => {
                            Err(MailboxError::AuthFailed { detail: server_words(&text) })
                        }
                    }
                })
                .await
            }
            MailboxCredentials::OAuth2 { user, token } => {
                let sasl = capabilities.iter().any(|c| {
                    let mut words = c.split_whitespace();
                    words.next().is_some_and(|w| w.eq_ignore_ascii_case("SASL"))
                        && words.any(|m| m.eq_ignore_ascii_case("XOAUTH2"))
                });
                if !capabilities.is_empty() && !sasl {
                    return Err(MailboxError::Unsupported("XOAUTH2 sign-in"));
                }
                let response =
                    base64::engine::general_purpose::STANDARD.encode(xoauth2_response(user.as_str(), token.expose()));
                step(timeout, "signing in", async {
                    // The token is far longer than a POP3 command line may be (RFC 5034 4.),
                    // so it goes as the answer to an empty challenge, not as an initial response.
                    self.send("AUTH XOAUTH2").await?;
                    match self.status("signing in").await? {
                        Status::Challenge(_) => {}
                        Status::Ok(_) => return Ok(()),
                        Status::Err(text) => return Err(MailboxError::AuthFailed { detail: server_words(&text) }),
                    }
                    self.send(&response).await?;
                    match self.status("signing in").await? {
                        Status::Ok(_) => Ok(()),
                        Status::Err(text) => Err(MailboxError::AuthFailed { detail: server_words(&text) }),
                        Status::Challenge(_) => {
                            // The server's error report (JSON, base64): answer with an empty
                            // line, then it sends its -ERR.
                            self.send("").await?;
                            match self.status("signing in").await? {
                                Status::Err(text) => Err(MailboxError::AuthFailed { detail: server_words(&text) }),
                                _ => Err(MailboxError::AuthFailed { detail: "the token was refused".into() }),
                            }
                        }
                    }
                })
                .await
            }
        }
    }
}

pub(crate) async fn connect(
    endpoint: &MailEndpoint,
    credentials: &MailboxCredentials,
    tls: &TlsSettings,
    timeouts: Timeouts,
) -> Result<(Pop3Connection, ConnectionInfo), MailboxError> {
    let (tcp, address) = connect_tcp(endpoint, timeouts.connect).await?;
    let stream = match endpoint.protocol.tls() {
        TlsMode::Implicit => tls.wrap(&endpoint.host, tcp, timeouts.connect).await?,
        TlsMode::None | TlsMode::StartTls => MailStream::Plain(tcp),
    };
    let mut conn = Pop3Connection { stream: BufReader::new(stream), timeouts, pipelining: false };
    step(timeouts.command, "reading the greeting", async {
        match conn.status("reading the greeting").await? {
            Status::Ok(_) => Ok(()),
            _ => Err(MailboxError::Protocol { step: "reading the greeting", detail: "the server is not ready".into() }),
        }
    })
    .await?;
    let mut capabilities = conn.capabilities().await?;

    if endpoint.protocol.tls() == TlsMode::StartTls {
        if !capabilities.iter().any(|c| c.eq_ignore_ascii_case("STLS")) {
            return Err(MailboxError::NoStartTls("STLS"));
        }
        conn.command("STLS", "starting TLS").await?;
        // Nothing may be buffered past the +OK: the TLS handshake starts on the next byte.
        if !conn.stream.buffer().is_empty() {
            return Err(MailboxError::Protocol {
                step: "starting TLS",
                detail: "data arrived before the handshake".into(),
            });
        }
        let MailStream::Plain(tcp) = conn.stream.into_inner() else { unreachable!("STLS runs on a plain connection") };
        conn = Pop3Connection {
            stream: BufReader::new(tls.wrap(&endpoint.host, tcp, timeouts.connect).await?),
            timeouts,
            pipelining: false,
        };
        // Capabilities may differ once the connection is secure (RFC 2595 4.).
        capabilities = conn.capabilities().await?;
    }
    let info = ConnectionInfo { tls: conn.stream.get_ref().tls_version(), address };
    conn.sign_in(credentials, &capabilities).await?;
    // Capabilities may change after signing in (RFC 2449 6.); PIPELINING is what we need.
    conn.pipelining = conn.capabilities().await?.iter().any(|c| c.eq_ignore_ascii_case("PIPELINING"));
    Ok((conn, info))
}

#[async_trait]
impl Pop3Session for Pop3Connection {
    async fn stat(&mut self) -> Result<(u32, u64), MailboxError> {
        let text = self.command("STAT", "counting messages").await?;
        let mut words = text.split_whitespace();
        let count = words.next().and_then(|w| w.parse().ok());
        let size = words.next().and_then(|w| w.parse().ok());
        match (count, size) {
            (Some(c), Some(s)) => Ok((c, s)),
            _ => Err(MailboxError::Protocol { step: "counting messages", detail: "STAT gave no count".into() }),
        }
    }

    async fn uidl(&mut self) -> Result<Vec<(u32, String)>, MailboxError> {
        let timeout = self.timeouts.command;
        step(timeout, "listing message ids", async {
            self.send("UIDL").await?;
            match self.status("listing message ids").await? {
                Status::Ok(_) => {}
                _ => return Err(MailboxError::Unsupported("UIDL (unique message ids)")),
            }
            let lines = self.multiline(&mut Vec::new(), false).await?;
            lines
                .iter()
                .map(|l| {
                    let mut words = l.split_whitespace();
                    let n = words.next().and_then(|w| w.parse::<u32>().ok());
                    let uidl = words.next().filter(|u| u.len() <= 70 && u.bytes().all(|b| (0x21..=0x7e).contains(&b)));
                    match (n, uidl) {
                        (Some(n), Some(u)) => Ok((n, u.to_owned())),
                        _ => Err(MailboxError::Protocol {
                            step: "listing message ids",
                            detail: "a UIDL line is malformed".into(),
                        }),
                    }
                })
                .collect()
        })
        .await
    }

    async fn list(&mut self) -> Result<Vec<(u32, u64)>, MailboxError> {
        let timeout = self.timeouts.command;
        step(timeout, "listing message sizes", async {
            self.send("LIST").await?;
            match self.status("listing message sizes").await? {
                Status::Ok(_) => {}
                _ => {
                    return Err(MailboxError::Protocol {
                        step: "listing message sizes",
                        detail: "the server refused LIST".into(),
                    });
                }
            }
            let lines = self.multiline(&mut Vec::new(), false).await?;
            lines
                .iter()
                .map(|l| {
                    let mut words = l.split_whitespace();
                    match (words.next().and_then(|w| w.parse().ok()), words.next().and_then(|w| w.parse().ok())) {
                        (Some(n), Some(size)) => Ok((n, size)),
                        _ => Err(MailboxError::Protocol {
                            step: "listing message sizes",
                            detail: "a LIST line is malformed".into(),
                        }),
                    }
                })
                .collect()
        })
        .await
    }

    async fn retr(&mut self, numbers: &[u32]) -> Result<Vec<Vec<u8>>, MailboxError> {
        let timeout = self.timeouts.command;
        let mut out = Vec::with_capacity(numbers.len());
        for chunk in numbers.chunks(self.depth()) {
            let commands: Vec<String> = chunk.iter().map(|n| format!("RETR {n}")).collect();
            step(timeout, "downloading messages", self.send_all(&commands)).await?;
            for n in chunk {
                // Each message has the command time-out: a large one on a slow link is not cut
                // short, a silent server still is.
                out.push(step(timeout, "downloading messages", self.read_message(*n)).await?);
            }
        }
        Ok(out)
    }

    async fn dele(&mut self, numbers: &[u32]) -> Result<(), MailboxError> {
        let timeout = self.timeouts.command;
        for chunk in numbers.chunks(self.depth()) {
            let commands: Vec<String> = chunk.iter().map(|n| format!("DELE {n}")).collect();
            step(timeout, "deleting messages", self.send_all(&commands)).await?;
            for n in chunk {
                match step(timeout, "deleting messages", self.status("deleting messages")).await? {
                    Status::Ok(_) => {}
                    _ => {
                        return Err(MailboxError::Protocol {
                            step: "deleting messages",
                            detail: format!("message {n} could not be deleted"),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    async fn quit(&mut self) -> Result<(), MailboxError> {
        self.command("QUIT", "ending the session").await?;
        let _ = self.stream.get_mut().shutdown().await;
        Ok(())
    }
}
