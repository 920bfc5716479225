//! The admin listener: liveness and readiness probes (the admin API, dashboard and metrics
//! will live here too). Never reachable through the proxy listener.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::error::error_response;
use crate::store::{KeyStore, Store};

/// The admin listener's handler.
#[derive(Clone)]
pub struct Admin {
    store: Arc<Store>,
}

impl Admin {
    /// A handler over the running store.
    pub fn new(store: Arc<Store>) -> Self {
        Admin { store }
    }

    /// Serves one admin request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/healthz") => {
                json(StatusCode::OK, r#"{"status":"ok"}"#)
            }
            (&Method::GET | &Method::HEAD, "/readyz") => match self.store.ping().await {
                Ok(()) => json(StatusCode::OK, r#"{"status":"ready","store":"ok"}"#),
                Err(e) => {
                    tracing::warn!(error = %e, "readiness: store unreachable");
                    json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        r#"{"status":"degraded","store":"unavailable"}"#,
                    )
                }
            },
            _ => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "No such admin endpoint.",
                "",
            ),
        }
    }
}

fn json(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
