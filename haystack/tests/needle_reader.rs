//! The hot read hop: [`NeedleReader`] (`GET`/`HEAD` of a needle on hyper's
//! pooled client) against a real store node on a loopback port, and the
//! node's `HEAD` answers.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use haystack::api::{CRC32_HEADER, ERROR_HEADER};
use haystack::client::{ClientError, NeedleReader, ReadKind, StoreAddress, StoreClient};
use haystack::service::{self, StoreNodeConfig, StoreNodeState};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TEST_DEADLINE: Duration = Duration::from_secs(60);
const COOKIE: u32 = 0x0102_0a0b;

/// Starts a node with volume 1 holding needle 1 (`small`, `text/plain`)
/// and needle 2 (`large`); returns its URL and the token that stops it.
async fn node_with_needles(small: &Bytes, large: &Bytes) -> (String, CancellationToken) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = StoreNodeConfig::new(dir.path());
    config.max_needle_bytes = 1 << 20;
    let state = StoreNodeState::open(config.clone(), Default::default())
        .await
        .expect("open");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        let _dir = dir;
        service::serve(listener, service::router(state), &config, token).await
    });
    let client = StoreClient::new(&url).expect("client");
    client.health().await.expect("healthy");
    client.create_volume(1).await.expect("create");
    client
        .append_needle_bytes(1, 1, COOKIE, "text/plain", small.clone())
        .await
        .expect("append small");
    client
        .append_needle_bytes(1, 2, COOKIE, "application/x-big", large.clone())
        .await
        .expect("append large");
    (url, cancel)
}

fn reader() -> NeedleReader {
    NeedleReader::new(Duration::from_secs(2), Duration::from_secs(5), 4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_head_answer_like_the_store_client() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let small = Bytes::from_static(b"hello, needle");
        let large: Bytes = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (url, cancel) = node_with_needles(&small, &large).await;
        let address = StoreAddress::parse(&url).expect("address");
        let reader = reader();

        for _ in 0..3 {
            let head = reader
                .read(&address, ReadKind::Get, 1, 1, COOKIE)
                .await
                .expect("get");
            assert_eq!(head.content_type, "text/plain");
            assert_eq!(head.content_length, Some(small.len() as u64));
            assert_eq!(head.crc32, crc32fast::hash(&small));
            assert_eq!(head.into_bytes().await.expect("body"), small);
        }
        let head = reader
            .read(&address, ReadKind::Get, 1, 1, COOKIE)
            .await
            .expect("get");
        assert_eq!(head.into_bytes_verified().await.expect("verified"), small);

        let head = reader
            .read(&address, ReadKind::Get, 1, 2, COOKIE)
            .await
            .expect("get large");
        assert_eq!(head.crc32, crc32fast::hash(&large));
        let mut stream = head.into_stream();
        let mut received = Vec::new();
        while let Some(chunk) = stream.next().await {
            received.extend_from_slice(&chunk.expect("chunk"));
        }
        assert_eq!(received, large);

        let head = reader
            .read(&address, ReadKind::Head, 1, 2, COOKIE)
            .await
            .expect("head");
        assert_eq!(head.content_type, "application/x-big");
        assert_eq!(head.content_length, Some(large.len() as u64));
        assert_eq!(head.crc32, crc32fast::hash(&large));

        for kind in [ReadKind::Get, ReadKind::Head] {
            for (volume, key, cookie) in [(1, 1, COOKIE ^ 1), (1, 9, COOKIE)] {
                let e = reader
                    .read(&address, kind, volume, key, cookie)
                    .await
                    .expect_err("absent");
                assert!(matches!(e, ClientError::NotFound), "{kind:?}: {e}");
            }
            let e = reader
                .read(&address, kind, 7, 1, COOKIE)
                .await
                .expect_err("unknown volume");
            assert!(matches!(e, ClientError::UnknownVolume(_)), "{kind:?}: {e}");
        }

        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let nobody =
            StoreAddress::parse(&closed.local_addr().expect("addr").to_string()).expect("address");
        drop(closed);
        let e = reader
            .read(&nobody, ReadKind::Get, 1, 1, COOKIE)
            .await
            .expect_err("nobody listening");
        assert!(e.is_transport() && e.is_replica_failure(), "{e}");
        cancel.cancel();
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_on_the_store_answers_headers_only_and_checks_the_cookie() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let small = Bytes::from_static(b"hello, needle");
        let large = Bytes::from_static(b"x");
        let (url, cancel) = node_with_needles(&small, &large).await;
        let http = reqwest::Client::new();
        let needle = |cookie: &str| format!("{url}/volumes/1/needles/1?cookie={cookie}");

        let ok = http.head(needle("01020a0b")).send().await.expect("head");
        assert_eq!(ok.status(), 200);
        let headers = ok.headers().clone();
        assert_eq!(headers["content-length"], small.len().to_string().as_str());
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(
            headers[CRC32_HEADER],
            crc32fast::hash(&small).to_string().as_str()
        );
        assert!(ok.bytes().await.expect("body").is_empty());
        let get = http.get(needle("01020a0b")).send().await.expect("get");
        assert_eq!(get.headers()[CRC32_HEADER], headers[CRC32_HEADER]);

        // A wrong cookie answers exactly like a missing needle, code in a header.
        let wrong = http.head(needle("01020a0c")).send().await.expect("head");
        let missing = http
            .head(format!("{url}/volumes/1/needles/9?cookie=01020a0b"))
            .send()
            .await
            .expect("head");
        for answer in [&wrong, &missing] {
            assert_eq!(answer.status(), 404);
            assert_eq!(answer.headers()[ERROR_HEADER], "not_found");
        }
        assert_eq!(
            wrong.headers()["content-length"],
            missing.headers()["content-length"]
        );

        // Queries other than the canonical one are parsed as before.
        let encoded = http.get(needle("%30%31020a0b")).send().await.expect("get");
        assert_eq!(encoded.status(), 200);
        for bad in ["01020A0B", "01020a0b&x=1", "1020a0b"] {
            let answer = http.head(needle(bad)).send().await.expect("head");
            assert_eq!(answer.status(), 400, "{bad}");
            assert_eq!(answer.headers()[ERROR_HEADER], "bad_request", "{bad}");
        }
        cancel.cancel();
    })
    .await
    .expect("test finished in time");
}

/// A node whose answer's body does not match its `X-Hayloft-Crc32` (damaged
/// on the way): the verified receive refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_fails_its_checksum_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(TEST_DEADLINE, async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = StoreAddress::parse(&listener.local_addr().expect("addr").to_string())
            .expect("address");
        let announced = crc32fast::hash(b"hello");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = vec![0u8; 4096];
            let _ = socket.read(&mut request).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\
                 {CRC32_HEADER}: {announced}\r\n\r\nhellO"
            );
            socket.write_all(answer.as_bytes()).await.expect("answer");
        });
        let head = reader()
            .read(&address, ReadKind::Get, 1, 1, COOKIE)
            .await
            .expect("headers");
        let e = head.into_bytes_verified().await.expect_err("damaged body");
        assert!(
            matches!(e, ClientError::ChecksumMismatch { expected, .. } if expected == announced),
            "{e}"
        );
    })
    .await
    .expect("test finished in time");
}
