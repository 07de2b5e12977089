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

/// What a case must answer: exactly this status, with a JSON error body
/// `{"error": CODE, ...}` of exactly this code (`docs/ARCHITECTURE.md`,
/// "Public HTTP API").
#[derive(Debug, Clone, Copy)]
struct Expect(u16, &'static str);

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

    let long_volume = "1".repeat(5000);
    let body_too_big = vec![7u8; MAX_BLOB_BYTES + 1];
    let mut cases = vec![
        get("not an id", "/blobs/hello", Expect(400, "bad_id")),
        get("no comma", "/blobs/3", Expect(400, "bad_id")),
        get("no key", "/blobs/3,", Expect(400, "bad_id")),
        get("no volume", "/blobs/,01637037d6", Expect(400, "bad_id")),
        get(
            "negative volume",
            "/blobs/-1,01637037d6",
            Expect(400, "bad_id"),
        ),
        get("non-hex key", "/blobs/3,zz637037d6", Expect(400, "bad_id")),
        get("cookie only", "/blobs/3,637037d6", Expect(400, "bad_id")),
        get("short cookie", "/blobs/3,0163703", Expect(400, "bad_id")),
        get(
            "volume over 32 bits",
            "/blobs/99999999999,01637037d6",
            Expect(400, "bad_id"),
        ),
        get(
            "key over 64 bits",
            "/blobs/3,0102030405060708090a637037d6",
            Expect(400, "bad_id"),
        ),
        get(
            "overlong id",
            &format!("/blobs/{long_volume},01637037d6"),
            Expect(400, "bad_id"),
        ),
        get(
            "dot-dot path",
            "/blobs/../admin/volumes",
            Expect(400, "bad_id"),
        ),
        get("dot-dot id", "/blobs/..", Expect(400, "bad_id")),
        get(
            "encoded traversal",
            "/blobs/..%2F..%2Fetc%2Fpasswd",
            Expect(400, "bad_id"),
        ),
        get(
            "encoded dots",
            "/blobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            Expect(400, "bad_id"),
        ),
        get(
            "traversal before id",
            &format!("/blobs/..%2f{known}"),
            Expect(400, "bad_id"),
        ),
        get(
            "NUL in id",
            &format!("/blobs/{known}%00"),
            Expect(400, "bad_id"),
        ),
        get(
            "unknown volume",
            "/blobs/4000000000,01637037d6",
            Expect(404, "not_found"),
        ),
        get(
            "wrong cookie",
            &format!("/blobs/{wrong_cookie}"),
            Expect(404, "not_found"),
        ),
        request(
            "delete malformed",
            "DELETE",
            "/blobs/garbage",
            &[],
            b"",
            Expect(400, "bad_id"),
        ),
        request(
            "delete unknown volume",
            "DELETE",
            "/blobs/4000000000,01637037d6",
            &[],
            b"",
            Expect(404, "not_found"),
        ),
        request(
            "delete wrong cookie",
            "DELETE",
            &format!("/blobs/{wrong_cookie}"),
            &[],
            b"",
            Expect(404, "not_found"),
        ),
        request(
            "body over the limit",
            "POST",
            "/blobs",
            &[("content-length", body_too_big.len().to_string())],
            &body_too_big,
            Expect(413, "payload_too_large"),
        ),
        request(
            "declared length over the limit",
            "POST",
            "/blobs",
            &[("content-length", (10u64 << 30).to_string())],
            b"tiny",
            Expect(413, "payload_too_large"),
        ),
        request(
            "chunked body over the limit",
            "POST",
            "/blobs",
            &[("transfer-encoding", "chunked".to_owned())],
            &chunked(&body_too_big),
            Expect(413, "payload_too_large"),
        ),
        request(
            "range past the end",
            "GET",
            &format!("/blobs/{known}"),
            &[("range", "bytes=5000-6000".into())],
            b"",
            Expect(416, "range_not_satisfiable"),
        ),
        request(
            "empty suffix range",
            "GET",
            &format!("/blobs/{known}"),
            &[("range", "bytes=-0".into())],
            b"",
            Expect(416, "range_not_satisfiable"),
        ),
        request(
            "reversed range",
            "GET",
            &format!("/blobs/{known}"),
            &[("range", "bytes=500-100".into())],
            b"",
            Expect(416, "range_not_satisfiable"),
        ),
        request(
            "garbage range",
            "GET",
            &format!("/blobs/{known}"),
            &[("range", "bytes=abc".into())],
            b"",
            Expect(416, "range_not_satisfiable"),
        ),
        // (`Range: pages=1-2`, an unknown unit, is ignored as RFC 9110 §14.2 says: 200.)
        request(
            "POST to an id",
            "POST",
            &format!("/blobs/{known}"),
            &[("content-length", "1".into())],
            b"x",
            Expect(405, "method_not_allowed"),
        ),
        request(
            "PUT to the collection",
            "PUT",
            "/blobs",
            &[("content-length", "1".into())],
            b"x",
            Expect(405, "method_not_allowed"),
        ),
    ];
    let mut lying = request(
        "Content-Length longer than the body",
        "POST",
        "/blobs",
        &[("content-length", "1000".into())],
        b"only ten b",
        Expect(400, "bad_request"),
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
        let Expect(want_status, want_code) = case.expect;
        let code = error_code(&text);
        if status != Some(want_status) || code.as_deref() != Some(want_code) {
            failures.push(format!(
                "{}: expected {want_status} {want_code}, got {status:?} {code:?}: {}",
                case.name,
                first_line(&text)
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

/// The `error` code of a raw answer's JSON body, if it has one.
fn error_code(answer: &str) -> Option<String> {
    let (_, body) = answer.split_once("\r\n\r\n")?;
    let value: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    value["error"].as_str().map(str::to_owned)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// The headers of an answer that could tell a wrong cookie from a missing
/// BLOB, and its body.
async fn answer_of(
    response: reqwest::Response,
) -> anyhow::Result<(u16, Vec<(String, String)>, Vec<u8>)> {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str() != "date")
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    Ok((status, headers, response.bytes().await?.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cookie_answers_exactly_like_a_missing_blob() -> anyhow::Result<()> {
    let cluster = Cluster::start(&[]).await?;
    let client = http_client();
    let known = upload(&client, &cluster.router, random_body(7, 5000)).await?;
    let (volume, key_cookie) = known.split_once(',').context("id form")?;
    let (key, cookie) = key_cookie.split_at(key_cookie.len() - 8);
    let cookie = u32::from_str_radix(cookie, 16)?;
    let key = u64::from_str_radix(key, 16)?;
    // The id's key is whole bytes of hex: an even number of digits.
    let hex_key = |key: u64| {
        let hex = format!("{key:x}");
        if hex.len() % 2 == 1 {
            format!("0{hex}")
        } else {
            hex
        }
    };
    let wrong_cookie = format!("{volume},{}{:08x}", hex_key(key), cookie ^ 0x0100_0000);
    // A key far above any uploaded one, in the same volume: missing.
    let missing = format!("{volume},{}{cookie:08x}", hex_key(key + 1_000_000));
    for method in [
        reqwest::Method::GET,
        reqwest::Method::HEAD,
        reqwest::Method::DELETE,
    ] {
        let ask = |id: &str| {
            client
                .request(method.clone(), format!("{}/blobs/{id}", cluster.router))
                .send()
        };
        let wrong = answer_of(ask(&wrong_cookie).await?).await?;
        let absent = answer_of(ask(&missing).await?).await?;
        assert_eq!(wrong.0, 404, "{method} of a wrong cookie");
        assert_eq!(
            wrong, absent,
            "{method}: wrong cookie and missing BLOB differ"
        );
    }
    // And the BLOB is still there.
    let (status, _) = common::fetch(&client, &cluster.router, &known).await?;
    assert_eq!(status, 200);
    Ok(())
}
