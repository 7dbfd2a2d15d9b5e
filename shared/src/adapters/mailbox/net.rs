//! Name resolution and TCP connections, with time-outs, and the stream both protocols run on.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::domain::mailbox::MailHost;
use crate::ports::mailbox::{HostResolver, MailEndpoint, MailboxError};

/// DNS through the system resolver, with a time-out.
pub struct DnsResolver {
    timeout: Duration,
}

impl DnsResolver {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl Default for DnsResolver {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

#[async_trait]
impl HostResolver for DnsResolver {
    async fn resolve(&self, host: &MailHost, port: u16) -> Result<Vec<IpAddr>, MailboxError> {
        if let Some(ip) = host.ip() {
            return Ok(vec![ip]);
        }
        let found = tokio::time::timeout(self.timeout, tokio::net::lookup_host((host.as_str(), port)))
            .await
            .map_err(|_| MailboxError::Timeout { step: "looking up the server name" })?
            .map_err(|e| MailboxError::UnknownHost { host: host.to_string(), source: Some(e) })?;
        let mut ips: Vec<IpAddr> = Vec::new();
        for addr in found {
            if !ips.contains(&addr.ip()) {
                ips.push(addr.ip());
            }
        }
        if ips.is_empty() {
            return Err(MailboxError::UnknownHost { host: host.to_string(), source: None });
        }
        Ok(ips)
    }
}

/// Connects to the first of the endpoint's (already checked) addresses that answers.
pub(crate) async fn connect_tcp(
    endpoint: &MailEndpoint,
    timeout: Duration,
) -> Result<(TcpStream, IpAddr), MailboxError> {
    let mut last = None;
    for ip in &endpoint.addresses {
        let addr = SocketAddr::new(*ip, endpoint.port);
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                // Commands are small and answered one at a time: waiting for a delayed ACK
                // would add tens of milliseconds to each.
                let _ = stream.set_nodelay(true);
                return Ok((stream, *ip));
            }
            Ok(Err(e)) => {
                last = Some(MailboxError::Connect { host: endpoint.host.to_string(), port: endpoint.port, source: e })
            }
            Err(_) => last = Some(MailboxError::Timeout { step: "connecting" }),
        }
    }
    Err(last.unwrap_or_else(|| MailboxError::UnknownHost { host: endpoint.host.to_string(), source: None }))
}

/// A connection before or after TLS.
pub(crate) enum MailStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl MailStream {
    /// The negotiated TLS version, e.g. `TLSv1.3`.
    pub(crate) fn tls_version(&self) -> Option<String> {
        match self {
            Self::Plain(_) => None,
            // rustls names them `TLSv1_3`; people write `TLSv1.3`.
            Self::Tls(s) => s
                .get_ref()
                .1
                .protocol_version()
                .map(|v| v.as_str().map(|s| s.replace('_', ".")).unwrap_or_else(|| format!("{v:?}"))),
        }
    }
}

impl std::fmt::Debug for MailStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain(_) => f.write_str("MailStream::Plain"),
            Self::Tls(_) => f.write_str("MailStream::Tls"),
        }
    }
}

impl AsyncRead for MailStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MailStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
