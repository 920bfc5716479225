//! Opening a connection to one upstream target: TCP, then TLS (rustls, the upstream's roots,
//! SNI and client certificate) for `https://` targets, offering by ALPN the protocols the
//! upstream's `protocol` allows. Both within `connect_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::pool::SendError;
use crate::config::Protocol;

/// A connection to a target, plain or TLS.
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What a connection is for, and so which protocols it offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wanted {
    /// HTTP/1.1 only (the `http1` protocol, `auto` once the target chose it, and `Upgrade`
    /// tunnels, which HTTP/2 cannot carry).
    Http1,
    /// HTTP/2, or under `auto` whichever the target picks.
    Http2,
}

/// Opens connections to one target.
pub(super) struct Connector {
    /// `host:port`.
    address: String,
    timeout: Duration,
    tls: Option<Tls>,
}

struct Tls {
    name: ServerName<'static>,
    /// Offers `http/1.1`.
    http1: TlsConnector,
    /// Offers `h2` (and `http/1.1` after it under `auto`).
    http2: TlsConnector,
}

impl Connector {
    /// A connector to `address`; `tls` (with the name to verify) for `https://` targets.
    pub(super) fn new(
        address: String,
        timeout: Duration,
        tls: Option<(&rustls::ClientConfig, ServerName<'static>)>,
        protocol: Protocol,
    ) -> Self {
        let tls = tls.map(|(config, name)| {
            let with = |alpn: &[&[u8]]| {
                let mut config = config.clone();
                config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
                TlsConnector::from(Arc::new(config))
            };
            Tls {
                name,
                http1: with(&[b"http/1.1"]),
                http2: match protocol {
                    Protocol::Http2 => with(&[b"h2"]),
                    Protocol::Auto | Protocol::Http1 => with(&[b"h2", b"http/1.1"]),
                },
            }
        });
        Connector {
            address,
            timeout,
            tls,
        }
    }

    /// The address connected to, for messages.
    pub(super) fn address(&self) -> &str {
        &self.address
    }

    /// A new connection, and whether the target agreed to HTTP/2 on it (by ALPN over TLS; over
    /// plain TCP it is `wanted == Http2`, h2c by prior knowledge).
    pub(super) async fn connect(&self, wanted: Wanted) -> Result<(Stream, bool), SendError> {
        tokio::time::timeout(self.timeout, self.open(wanted))
            .await
            .unwrap_or(Err(SendError::ConnectTimeout))
    }

    async fn open(&self, wanted: Wanted) -> Result<(Stream, bool), SendError> {
        let tcp = TcpStream::connect(self.address.as_str())
            .await
            .map_err(|e| SendError::Connect(format!("connect to {}: {e}", self.address)))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok((Stream::Plain(tcp), wanted == Wanted::Http2));
        };
        let connector = match wanted {
            Wanted::Http1 => &tls.http1,
            Wanted::Http2 => &tls.http2,
        };
        let stream = connector
            .connect(tls.name.clone(), tcp)
            .await
            // The reason (unknown issuer, name mismatch, expired…) is what an operator needs.
            .map_err(|e| {
                SendError::Connect(format!(
                    "TLS handshake with {}: {}",
                    self.address,
                    crate::error::error_chain(&e)
                ))
            })?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok((Stream::Tls(Box::new(stream)), h2))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
