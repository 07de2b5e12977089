//! Range reads through a real `hayloft up`, checked against a reference
//! slicer (RFC 9110 §14 single byte ranges) by proptest.

mod common;

use anyhow::Context;
use common::{Cluster, http_client, random_body, upload};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// One `Range: bytes=...` form.
#[derive(Debug, Clone, Copy)]
enum RangeSpec {
    /// `bytes=FIRST-LAST`
    Bounded(u64, u64),
    /// `bytes=FIRST-`
    From(u64),
    /// `bytes=-LENGTH`
    Suffix(u64),
}

impl RangeSpec {
    fn header(self) -> String {
        match self {
            RangeSpec::Bounded(first, last) => format!("bytes={first}-{last}"),
            RangeSpec::From(first) => format!("bytes={first}-"),
            RangeSpec::Suffix(length) => format!("bytes=-{length}"),
        }
    }

    /// The reference slicer: the inclusive byte range served, or `None` when
    /// the range is unsatisfiable (`416`).
    fn slice(self, len: u64) -> Option<(u64, u64)> {
        match self {
            RangeSpec::Bounded(first, last) => (first < len).then(|| (first, last.min(len - 1))),
            RangeSpec::From(first) => (first < len).then(|| (first, len - 1)),
            RangeSpec::Suffix(length) => {
                (length > 0 && len > 0).then(|| (len - length.min(len), len - 1))
            }
        }
    }
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![0..16u64, 0..70_000u64, 0..1_100_000u64]
}

fn range_spec() -> impl Strategy<Value = RangeSpec> {
    prop_oneof![
        (offset(), offset()).prop_map(|(first, extra)| RangeSpec::Bounded(first, first + extra)),
        offset().prop_map(RangeSpec::From),
        offset().prop_map(RangeSpec::Suffix),
    ]
}

#[test]
fn range_reads_match_a_reference_slicer() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cluster = runtime.block_on(Cluster::start(&[]))?;
    let client = http_client();
    let sizes = [1usize, 2, 17, 4096, 65_537, 1_000_003];
    let blobs: Vec<(String, Vec<u8>)> = runtime.block_on(async {
        let mut blobs = Vec::new();
        for (n, size) in sizes.into_iter().enumerate() {
            let body = random_body(n as u64 + 7, size);
            let id = upload(&client, &cluster.router, body.clone()).await?;
            blobs.push((id, body));
        }
        anyhow::Ok(blobs)
    })?;

    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&(0..blobs.len(), range_spec()), |(index, spec)| {
        let (id, body) = &blobs[index];
        let len = body.len() as u64;
        let url = format!("{}/blobs/{id}", cluster.router);
        let (status, content_range, bytes) = runtime
            .block_on(async {
                let response = client
                    .get(&url)
                    .header("range", spec.header())
                    .send()
                    .await?;
                let status = response.status().as_u16();
                let content_range = response
                    .headers()
                    .get("content-range")
                    .map(|value| value.to_str().unwrap_or("").to_owned());
                anyhow::Ok((status, content_range, response.bytes().await?.to_vec()))
            })
            .map_err(|error| TestCaseError::fail(format!("{error:#}")))?;
        match spec.slice(len) {
            None => {
                prop_assert_eq!(status, 416, "{} on {} bytes", spec.header(), len);
            }
            Some((first, last)) if first == 0 && last == len - 1 && status == 200 => {
                // A range covering the whole BLOB may be answered as a plain 200.
                prop_assert!(bytes == *body);
            }
            Some((first, last)) => {
                prop_assert_eq!(status, 206, "{} on {} bytes", spec.header(), len);
                let expected_range = format!("bytes {first}-{last}/{len}");
                prop_assert_eq!(content_range.as_deref(), Some(expected_range.as_str()));
                let expected = &body[first as usize..=last as usize];
                prop_assert!(
                    bytes == expected,
                    "{} on {} bytes: wrong bytes",
                    spec.header(),
                    len
                );
            }
        }
        Ok(())
    });
    result
        .map_err(|error| anyhow::anyhow!("{error}"))
        .context("range property")?;

    // Without a Range header: the whole BLOB, 200.
    runtime.block_on(async {
        let (id, body) = &blobs[3];
        let response = client
            .get(format!("{}/blobs/{id}", cluster.router))
            .send()
            .await?;
        anyhow::ensure!(response.status() == 200);
        anyhow::ensure!(response.bytes().await?.as_ref() == body.as_slice());
        anyhow::Ok(())
    })?;
    Ok(())
}
