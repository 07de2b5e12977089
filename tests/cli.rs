//! The command line refuses bad configs and flags up front, with a message
//! that names the problem (no cluster needed).

mod common;

use std::process::Command;

fn hayloft(args: &[&str]) -> (bool, String) {
    let output = Command::new(common::hayloft_bin())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running hayloft");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_configs_and_flags_are_refused_with_a_reason() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "volume_size = 1048576\n")?;
    let (ok, stderr) = hayloft(&["up", "--data", data, "--config", typo.to_str().unwrap()]);
    assert!(
        !ok && stderr.contains("volume_size"),
        "unknown key accepted: {stderr}"
    );

    let (ok, stderr) = hayloft(&["up", "--data", data, "--volume-size", "banana"]);
    assert!(
        !ok && stderr.contains("banana"),
        "bad size accepted: {stderr}"
    );

    let (ok, stderr) = hayloft(&["up", "--data", data, "--heartbeat-interval", "5 fortnights"]);
    assert!(
        !ok && stderr.contains("fortnights"),
        "bad duration accepted: {stderr}"
    );

    let (ok, stderr) = hayloft(&[
        "up",
        "--data",
        data,
        "--volume-size",
        "8MiB",
        "--max-blob-size",
        "16MiB",
    ]);
    assert!(
        !ok && stderr.contains("max_blob_bytes"),
        "a BLOB larger than a volume: {stderr}"
    );

    let store = dir.path().join("store.toml");
    std::fs::write(&store, "[store]\nid = \"store-9\"\n")?;
    let (ok, stderr) = hayloft(&[
        "serve",
        "--role",
        "store",
        "--config",
        store.to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("data_dir"),
        "store without a data_dir: {stderr}"
    );

    let (ok, stderr) = hayloft(&["get", "1,01637037d6", "--router", "http://127.0.0.1:9"]);
    assert!(!ok && !stderr.is_empty(), "get against nothing succeeded");

    Ok(())
}
