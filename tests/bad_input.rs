//! A table of bad requests against a real `hayloft up`: each gets a clear
//! 4xx, and nothing stored changes (every store node's volumes are
//! fingerprinted before and after, and a known BLOB still reads back).
//! Requests go over raw TCP so nothing normalises them (`../`, lying
//! `Content-Length`).

mod common;

use anyhow::Context;
use common::{
    Cluster, check_blob, http_client, random_body, raw_request, sha256, store_fingerprint, upload,
};

/// What a case must answer.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Exactly this status.
    Status(u16),
    /// Any 4xx (several codes are defensible, e.g. 400 or 404 for a path
    /// that matches no route).
    ClientError,
}

struct Case {
    name: &'static str,
    request: Vec<u8>,
    /// Half-close the connection after sending (a body that ends early).
    close_write: bool,
    expect: Expect,
}

fn get(name: &'static str, path: &str, expect: Expect) -> Case {
    request(name, "GET", path, &[], b"", expect)
}

fn request(
    name: &'static str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    expect: Expect,
) -> Case {
    let mut text = format!("{method} {path} HTTP/1.1\r\nhost: hayloft\r\nconnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    let mut request = text.into_bytes();
    request.extend_from_slice(body);
    Case {
        name,
        request,
        close_write: false,
        expect,
    }
}

const MAX_BLOB_BYTES: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_clear_4xx_and_change_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start(&["--max-blob-size", "1MiB"]).await?;
    let client = http_client();
    let known_body = random_body(99, 1000);
    let known = upload(&client, &cluster.router, known_body.clone()).await?;
    let (volume, key_cookie) = known.split_once(',').context("id form")?;
    let (key, cookie) = key_cookie.split_at(key_cookie.len() - 8);
    let wrong_cookie = format!("{volume},{key}{:08x}", u32::from_str_radix(cookie, 16)? ^ 1);
    let before = store_fingerprint(&cluster).await?;

    use Expect::{ClientError, Status};
    let long_volume = "1".repeat(5000);
    let body_too_big = vec![7u8; MAX_BLOB_BYTES + 1];
    let mut cases = vec![
        get("not an id", "/blobs/hello", Status(400)),
        get("no comma", "/blobs/3", Status(400)),
        get("no key", "/blobs/3,", Status(400)),
        get("no volume", "/blobs/,01637037d6", Status(400)),
        get("negative volume", "/blobs/-1,01637037d6", Status(400)),
        get("non-hex key", "/blobs/3,zz637037d6", Status(400)),
        get("cookie only", "/blobs/3,637037d6", ClientError),
        get("short cookie", "/blobs/3,0163703", ClientError),
        get(
            "volume over 32 bits",
            "/blobs/99999999999,01637037d6",
            Status(400),
        ),
        get(
            "key over 64 bits",
            "/blobs/3,0102030405060708090a637037d6",
            Status(400),
        ),
        get(
            "overlong id",
            &format!("/blobs/{long_volume},01637037d6"),
            ClientError,
        ),
        get("dot-dot path", "/blobs/../admin/volumes", ClientError),
        get("dot-dot id", "/blobs/..", Status(400)),
        get(
            "encoded traversal",
            "/blobs/..%2F..%2Fetc%2Fpasswd",
            Status(400),
        ),
        get(
            "encoded dots",
            "/blobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            Status(400),
        ),
        get(
            "traversal before id",
            &format!("/blobs/..%2f{known}"),
            Status(400),
        ),
        get("NUL in id", &format!("/blobs/{known}%00"), Status(400)),
        get(
            "unknown volume",
            "/blobs/4000000000,01637037d6",
            Status(404),
        ),
        get(
            "wrong cookie",
            &format!("/blobs/{wrong_cookie}"),
            Status(404),
        ),
        request(
            "delete malformed",
            "DELETE",
            "/blobs/garbage",
            &[],
            b"",
            Status(400),
        ),
        request(
            "delete unknown volume",
            "DELETE",
            "/blobs/4000000000,01637037d6",
            &[],
            b"",
            Status(404),
        ),
        request(
            "delete wrong cookie",
            "DELETE",
            &format!("/blobs/{wrong_cookie}"),
            &[],
            b"",
            Status(404),
        ),
        request(
            "body over the limit",
            "POST",
            "/blobs",
            &[("content-length", body_too_big.len().to_string())],
            &body_too_big,
            Status(413),
        ),
        request(
            "declared length over the limit",
            "POST",
            "/blobs",
            &[("content-length", (10u64 << 30).to_string())],
            b"tiny",
            Status(413),
        ),
        request(
            "chunked body over the limit",
            "POST",
            "/blobs",
            &[("transfer-encoding", "chunked".to_owned())],
            &chunked(&body_too_big),
            Status(413),
        ),
        request(
            "range past the end",
            "GET",
            &format!("/blobs/{known}"),
            &[("range", "bytes=5000-6000".into())],
            b"",
            Status(416),
        ),
        request(
            "empty suffix range",
            "GET",
            &format!("/blobs/{known}"),
            &[("range", "bytes=-0".into())],
            b"",
            Status(416),
        ),
        request(
            "reversed range",
            "GET",
            &format!("/blobs/{known}"),
            &[("range", "bytes=500-100".into())],
            b"",
            ClientError,
        ),
        request(
            "garbage range",
            "GET",
            &format!("/blobs/{known}"),
            &[("range", "bytes=abc".into())],
            b"",
            ClientError,
        ),
        // (`Range: pages=1-2`, an unknown unit, is ignored as RFC 9110 §14.2 says: 200.)
        request(
            "POST to an id",
            "POST",
            &format!("/blobs/{known}"),
            &[("content-length", "1".into())],
            b"x",
            ClientError,
        ),
        request(
            "PUT to the collection",
            "PUT",
            "/blobs",
            &[("content-length", "1".into())],
            b"x",
            ClientError,
        ),
    ];
    let mut lying = request(
        "Content-Length longer than the body",
        "POST",
        "/blobs",
        &[("content-length", "1000".into())],
        b"only ten b",
        Status(400),
    );
    lying.close_write = true;
    cases.push(lying);

    let mut failures = Vec::new();
    for case in &cases {
        let address = cluster.router_address;
        let (request, close_write) = (case.request.clone(), case.close_write);
        // Retry a case whose answer was lost to a connection reset (a server
        // may answer 413 and close before reading the whole body).
        let mut answer = (None, String::new());
        for _ in 0..3 {
            let (request, close_write) = (request.clone(), close_write);
            answer =
                tokio::task::spawn_blocking(move || raw_request(address, &request, close_write))
                    .await?;
            if answer.0.is_some() {
                break;
            }
        }
        let (status, text) = answer;
        let ok = match (case.expect, status) {
            (Expect::Status(want), Some(got)) => want == got,
            (Expect::ClientError, Some(got)) => (400..500).contains(&got),
            (_, None) => false,
        };
        let json_error = text.contains("\"error\"");
        if !ok {
            failures.push(format!(
                "{}: expected {:?}, got {status:?}: {}",
                case.name,
                case.expect,
                first_line(&text)
            ));
        } else if status != Some(404) && status != Some(405) && !json_error {
            // Every answer the router itself gives is a JSON error.
            failures.push(format!(
                "{}: {status:?} without a JSON error: {text}",
                case.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "bad-input cases failed:\n{}",
        failures.join("\n")
    );

    assert_eq!(
        store_fingerprint(&cluster).await?,
        before,
        "a bad request changed stored data"
    );
    check_blob(
        &client,
        &cluster.router,
        &known,
        known_body.len(),
        &sha256(&known_body),
    )
    .await?;
    Ok(())
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}
