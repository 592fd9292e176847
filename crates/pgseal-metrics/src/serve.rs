//! `GET /metrics` over HTTP, for Prometheus to scrape.

use crate::{CONTENT_TYPE, MetricsError};

/// A metrics endpoint listening on an address.
pub struct Server {
    inner: tiny_http::Server,
}

impl Server {
    /// The address it listens on (the port chosen when `0` was asked for).
    pub fn addr(&self) -> String {
        self.inner.server_addr().to_string()
    }

    /// Answers requests until the process ends: `GET /metrics` with what `metrics`
    /// renders at that moment (a failure answers 500 with its message), anything else
    /// 404.
    pub fn run(&self, metrics: impl Fn() -> Result<String, String>) {
        for request in self.inner.incoming_requests() {
            let response = if request.url() == "/metrics" {
                match metrics() {
                    Ok(body) => tiny_http::Response::from_string(body).with_header(
                        tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE)
                            .expect("a valid header"),
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics scrape failed");
                        tiny_http::Response::from_string(e).with_status_code(500)
                    }
                }
            } else {
                tiny_http::Response::from_string("pgseal serves /metrics\n").with_status_code(404)
            };
            if let Err(e) = request.respond(response) {
                tracing::debug!(error = %e, "a scraper left before its answer");
            }
        }
    }
}

/// Listens on `addr` (`HOST:PORT`).
pub fn serve(addr: &str) -> Result<Server, MetricsError> {
    tiny_http::Server::http(addr)
        .map(|inner| Server { inner })
        .map_err(|source| MetricsError::Listen {
            addr: addr.to_string(),
            source,
        })
}
