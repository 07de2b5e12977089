//! Calls between roles that share one process, without a socket.
//!
//! `hayloft up` runs the router, the store nodes, the f4 storage nodes and
//! the backoff node in one process. Over loopback TCP, a 1 MiB fetch through
//! the router crosses the kernel twice more than a fetch straight from a
//! store (the store's send and the router's receive) and pays a second HTTP
//! exchange; on a small machine that relay was most of the router's cost
//! (`docs/BENCHMARKS.md`, "Where a 1 MiB fetch's CPU goes"). Once a process
//! [`enable`]s it, every service it serves with [`crate::http::serve`] is
//! entered here under the address it listens on, and the read clients
//! ([`crate::client::LeanClient`]) and the store client's appends hand a
//! request for that address straight to the service's router ([`call`]):
//! the same handlers, checks, body limits and deadlines as over HTTP, and
//! the body's chunks passed on as they are, never copied. Other processes
//! reach the same services over TCP as before.
//!
//! What the accept loop gives an HTTP request and an in-process one does
//! not get: a connection slot (`max_connections`; the caller's own limits
//! bound these calls) and the shutdown grace period. A service leaves the
//! table when its shutdown begins, so a call after that goes to the socket
//! and fails like any call to a stopped node. A handler that panics before
//! its answer gives a `500` (over HTTP its connection would end: both are a
//! failed node to the caller).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, Response, header};
use axum::response::IntoResponse;
use futures::FutureExt;
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
    // A handler's panic ends its request only, as it ends a connection's
    // task over HTTP, not the caller's task.
    match std::panic::AssertUnwindSafe(service.oneshot(request))
        .catch_unwind()
        .await
    {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) => crate::http::ApiError::internal("the handler panicked").into_response(),
    }
}

/// Whether calls to `authority` stay in process (see [`service`]).
pub fn serves(authority: &str) -> bool {
    service(authority).is_some()
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

    use axum::routing::{get, post, put};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};

    use super::*;
    use crate::api::AppendResult;
    use crate::client::{StoreClient, lean_http_client};

    async fn panics() -> &'static str {
        panic!("a handler's bug")
    }

    #[tokio::test]
    async fn a_node_this_process_serves_is_called_without_a_socket_until_it_leaves() {
        // Nothing listens on the address: only an in-process call answers.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap();
        drop(closed);
        let app = Router::new()
            .route("/echo", post(|body: Bytes| async move { body }))
            .route("/panics", get(panics))
            .route(
                "/volumes/{volume}/needles/{key}",
                put(|headers: axum::http::HeaderMap, body: Bytes| async move {
                    // What the store's append reads: the declared length.
                    let declared = headers[header::CONTENT_LENGTH].to_str().unwrap().parse();
                    assert_eq!(declared, Ok(body.len() as u64));
                    (
                        axum::http::StatusCode::CREATED,
                        axum::Json(AppendResult {
                            offset: 8,
                            size: body.len() as u64,
                        }),
                    )
                }),
            );
        enable();
        let entry = enter(address, &app).expect("enabled");

        let lean = lean_http_client::<Full<Bytes>>(Duration::from_secs(1), 1);
        let echo = |path: &str| {
            Request::post(format!("http://{address}{path}"))
                .body(Full::new(Bytes::from_static(b"twelve bytes")))
                .unwrap()
        };
        let response = lean.request(echo("/echo")).await.expect("in process");
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "12");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"twelve bytes");
        // A handler's panic stays the node's, as over HTTP: an error answer.
        let lean_get = lean_http_client::<Empty<Bytes>>(Duration::from_secs(1), 1);
        let panics = Request::get(format!("http://{address}/panics"))
            .body(Empty::new())
            .unwrap();
        let response = lean_get.request(panics).await.expect("in process");
        assert_eq!(response.status(), 500);
        let store = StoreClient::new(&format!("http://{address}")).unwrap();
        let appended = store
            .append_needle_bytes(1, 2, 3, "text/plain", Bytes::from_static(b"five!"))
            .await
            .expect("in process");
        assert_eq!(appended, AppendResult { offset: 8, size: 5 });

        drop(entry);
        assert!(
            lean.request(echo("/echo")).await.is_err(),
            "gone with its entry"
        );
        let error = store
            .append_needle_bytes(1, 2, 3, "text/plain", Bytes::from_static(b"five!"))
            .await
            .unwrap_err();
        assert!(error.is_transport(), "{error}");
    }
}
