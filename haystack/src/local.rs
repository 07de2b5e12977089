//! Calls between roles that share one process, without a socket.
//!
//! `hayloft up` runs the router, the store nodes, the f4 storage nodes and
//! the backoff node in one process. Over loopback TCP, a 1 MiB fetch through
//! the router crosses the kernel twice more than a fetch straight from a
//! store (the store's send and the router's receive) and pays a second HTTP
//! exchange; on a small machine that relay was most of the router's cost
//! (`docs/BENCHMARKS.md`, "Where a 1 MiB fetch's CPU goes"). Once a process
//! [`enable`]s it, every service it serves with [`crate::http::serve`] is
//! entered here under the address it listens on, and the lean clients
//! ([`crate::client::LeanClient`]) hand a request for that address straight
//! to the service's router: the same handlers, checks, limits and deadlines
//! as over HTTP, and the body's chunks passed on as they are, never copied.
//! Other processes reach the same services over TCP as before.
//!
//! A service leaves the table when its shutdown begins, so a call after that
//! goes to the socket and fails like any call to a stopped node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, Response, header};
use parking_lot::RwLock;
use tower::ServiceExt;

static ENABLED: AtomicBool = AtomicBool::new(false);

fn services() -> &'static RwLock<HashMap<String, Router>> {
    static SERVICES: OnceLock<RwLock<HashMap<String, Router>>> = OnceLock::new();
    SERVICES.get_or_init(RwLock::default)
}

/// From now on, services this process serves are called in process by this
/// process's clients. For a process that hosts several roles.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// The service listening on `authority` (`host:port`, as the clients address
/// it) in this process, if calls to it stay in process.
pub fn service(authority: &str) -> Option<Router> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    services().read().get(authority).cloned()
}

/// `request` answered by `service`, its body sized by a `Content-Length`
/// where it has none, as hyper sends it over HTTP (handlers read the
/// header).
pub async fn call<B>(service: Router, request: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut request = request.map(Body::new);
    let bodiless = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::DELETE
    );
    if !request.headers().contains_key(header::CONTENT_LENGTH)
        && let Some(len) = hyper::body::Body::size_hint(request.body()).exact()
        && (len > 0 || !bodiless)
    {
        request
            .headers_mut()
            .insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    }
    let Ok(response) = service.oneshot(request).await;
    response
}

/// A service's entry in the table; removing it ends in-process calls to it.
#[derive(Debug)]
pub(crate) struct Entry {
    address: String,
}

/// Enters `app` under `address`, if this process calls its services in
/// process.
pub(crate) fn enter(address: SocketAddr, app: &Router) -> Option<Entry> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    let address = address.to_string();
    services().write().insert(address.clone(), app.clone());
    Some(Entry { address })
}

impl Drop for Entry {
    fn drop(&mut self) {
        services().write().remove(&self.address);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::routing::get;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};

    use super::*;
    use crate::client::{StoreClient, lean_http_client};

    #[tokio::test]
    async fn a_node_this_process_serves_is_called_without_a_socket_until_it_leaves() {
        // Nothing listens on the address: only an in-process call answers.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap();
        drop(closed);
        let app = Router::new()
            .route(
                "/health",
                get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .route(
                "/echo",
                axum::routing::post(|body: Bytes| async move { body }),
            );
        enable();
        let entry = enter(address, &app).expect("enabled");

        let lean = lean_http_client::<http_body_util::Full<Bytes>>(Duration::from_secs(1), 1);
        let request = Request::post(format!("http://{address}/echo"))
            .body(http_body_util::Full::new(Bytes::from_static(
                b"twelve bytes",
            )))
            .unwrap();
        let response = lean.request(request).await.expect("answered in process");
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "12");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"twelve bytes");
        let store = StoreClient::new(&format!("http://{address}")).unwrap();
        store.health().await.expect("answered in process");

        drop(entry);
        let request = Request::get(format!("http://{address}/health"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let lean = lean_http_client::<Empty<Bytes>>(Duration::from_secs(1), 1);
        assert!(lean.request(request).await.is_err(), "gone with its entry");
        assert!(store.health().await.unwrap_err().is_transport());
    }
}
