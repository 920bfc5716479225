//! A real upstream that speaks HTTP/1.1 and HTTP/2 (h2c by prior knowledge on plain TCP, h2 by
//! ALPN over TLS), with TLS from a throwaway CA ([`Pki`]), optionally asking for a client
//! certificate. Every answer is JSON saying what it saw: protocol version, path, `Host` and
//! `:authority`, SNI, whether a client certificate came, request headers and trailers. A request
//! with `x-want-trailers` gets its answer with a trailer `x-upstream-trailer: yes`.

#![allow(clippy::unwrap_used, reason = "test support fails by panicking")]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A throwaway certificate authority.
pub struct Pki {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names` (DNS names or IP addresses): `(cert PEM, key PEM)`.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// TLS on the upstream's listener.
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// ALPN protocols offered, in order of preference.
    pub alpn: Vec<&'static [u8]>,
    /// A client certificate from this CA is required (mTLS).
    pub client_ca: Option<String>,
}

/// A running upstream; stops (and closes its connections) when dropped.
pub struct ProtoUpstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    connections: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

#[derive(Clone, Default)]
struct Seen {
    sni: Option<String>,
    client_cert: bool,
}

impl ProtoUpstream {
    /// Plain TCP: HTTP/1.1, and h2c for a client that opens with the HTTP/2 preface.
    pub async fn plain() -> ProtoUpstream {
        Self::start(None, None).await
    }

    /// As [`ProtoUpstream::plain`], closing each connection gracefully (HTTP/2: GOAWAY) once it
    /// has taken `requests` requests, as nginx does after `keepalive_requests`.
    pub async fn rotating(requests: usize) -> ProtoUpstream {
        Self::start(None, Some(requests)).await
    }

    /// TLS with `tls`.
    pub async fn tls(tls: ServerTls) -> ProtoUpstream {
        Self::start(Some(tls), None).await
    }

    async fn start(tls: Option<ServerTls>, rotate: Option<usize>) -> ProtoUpstream {
        let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(Arc::new(server_config(t))));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let tracked = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let conn = tokio::spawn(async move {
                    match acceptor {
                        None => serve(tcp, Seen::default(), rotate).await,
                        Some(acceptor) => {
                            // A failed handshake (the test's point, often) just closes.
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let (_, session) = tls.get_ref();
                            let seen = Seen {
                                sni: session.server_name().map(str::to_owned),
                                client_cert: session.peer_certificates().is_some(),
                            };
                            serve(tls, seen, rotate).await
                        }
                    }
                });
                tracked.lock().unwrap().push(conn);
            }
        });
        ProtoUpstream {
            addr,
            task,
            connections,
        }
    }
}

impl Drop for ProtoUpstream {
    fn drop(&mut self) {
        self.task.abort();
        for conn in self.connections.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

fn server_config(tls: ServerTls) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
                .unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let chain = vec![CertificateDer::from_pem_slice(tls.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).unwrap();
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = tls.alpn.iter().map(|p| p.to_vec()).collect();
    config
}

async fn serve<S>(stream: S, seen: Seen, rotate: Option<usize>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let (counter, notify) = (taken.clone(), enough.clone());
    let service = service_fn(move |req| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if rotate == Some(n) {
            notify.notify_one();
        }
        answer(req, seen.clone())
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = enough.notified() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

type Body =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

async fn answer(req: Request<Incoming>, seen: Seen) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let collected = body.collect().await.ok();
    let trailers = collected.as_ref().and_then(|c| c.trailers().cloned());
    let bytes = collected.map(|c| c.to_bytes()).unwrap_or_default();
    let report = serde_json::json!({
        "version": format!("{:?}", parts.version),
        "path": parts.uri.path_and_query().map(|p| p.as_str()),
        "authority": parts.uri.authority().map(|a| a.as_str()),
        "host": parts.headers.get("host").and_then(|v| v.to_str().ok()),
        "sni": seen.sni,
        "client_cert": seen.client_cert,
        "headers": map(&parts.headers),
        "trailers": trailers.as_ref().map(map),
        "body_bytes": bytes.len(),
    });
    let mut frames = vec![Ok(Frame::data(Bytes::from(report.to_string())))];
    if parts.headers.contains_key("x-want-trailers") {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-upstream-trailer", "yes".parse().unwrap());
        frames.push(Ok(Frame::trailers(trailers)));
    }
    let mut response = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(response)
}

fn map(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect()
}
