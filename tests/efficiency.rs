//! `hayloft bench efficiency --smoke`: the storage-efficiency benchmark
//! runs end to end against the cluster it starts (real processes, real
//! files, real HTTP), and its report is consistent: the tiers' effective
//! replication where the designs put it, every BLOB accounted for and every
//! live one read back byte for byte, reads served by the hot, warm and
//! degraded paths, and the plots drawn.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// Far above the smoke run's minute, for a debug build on a busy machine.
const DEADLINE: Duration = Duration::from_secs(600);

#[test]
fn smoke_report_is_consistent() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let mut child = Command::new(common::hayloft_bin())
        .args(["bench", "efficiency", "--smoke", "--out"])
        .arg(out.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()?;
    let pgid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    // Its exit, from a thread that waits for it, bounded by the deadline.
    let (exited, exit) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = exited.send(child.wait());
    });
    let status = match exit.recv_timeout(DEADLINE) {
        Ok(status) => status?,
        Err(_) => {
            common::signal(-pgid, libc::SIGKILL);
            let _ = waiter.join();
            anyhow::bail!("the smoke run took over {DEADLINE:?}");
        }
    };
    let printed = reader.join().unwrap_or_default();
    anyhow::ensure!(
        status.success(),
        "bench efficiency failed ({status}):\n{printed}"
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json"))?)?;
    let problems = report["problems"].as_array().context("problems")?;
    assert!(problems.is_empty(), "{problems:?}");

    // Every sample: hot at three replicas, the single cell's warm tier at
    // RS(10,4), less deleted BLOBs' space, once each holds anything.
    let timeline = report["timeline"].as_array().context("timeline")?;
    assert_eq!(timeline.len(), 70, "one sample a simulated day");
    let mut warm_samples = 0;
    for sample in timeline {
        let disk = &sample["disk"];
        for (tier, range) in [("hot", 2.95..=3.10), ("warm", 1.38..=1.45)] {
            if disk[tier]["logical_bytes"].as_u64() > Some(0) {
                let factor = disk[tier]["effective_replication"]
                    .as_f64()
                    .context("factor")?;
                assert!(
                    range.contains(&factor),
                    "day {}: {tier} effective replication {factor}",
                    sample["day"]
                );
                warm_samples += usize::from(tier == "warm");
            }
        }
        let kinds: u64 = [
            "data",
            "framing",
            "dead",
            "parity",
            "checksums",
            "index",
            "journal",
            "geo",
        ]
        .iter()
        .map(|kind| {
            disk["hot"][kind].as_u64().unwrap_or(0) + disk["warm"][kind].as_u64().unwrap_or(0)
        })
        .sum();
        let total = disk["hot"]["total"].as_u64().unwrap_or(0)
            + disk["warm"]["total"].as_u64().unwrap_or(0);
        assert_eq!(
            kinds, total,
            "day {}: the kinds add up to the files",
            sample["day"]
        );
    }
    assert!(
        warm_samples >= 10,
        "volumes went warm early enough: {warm_samples} samples"
    );

    // Every BLOB accounted for; every live one read back identical.
    let last = timeline.last().context("last sample")?;
    let v = &report["verification"];
    assert_eq!(v["accounted"], true, "{v}");
    assert_eq!(
        v["live"].as_u64().unwrap() + v["deleted"].as_u64().unwrap(),
        v["uploaded"].as_u64().unwrap()
    );
    assert_eq!(v["live_identical"], v["live"]);
    assert_eq!(v["deleted_gone"], v["deleted"]);
    assert_eq!(v["uploaded"], last["uploaded"]);
    assert_eq!(v["live"], last["live"]);
    let deleted = v["deleted"].as_u64().unwrap() as f64 / v["uploaded"].as_u64().unwrap() as f64;
    assert!((0.1..0.35).contains(&deleted), "deleted share {deleted}");
    let live_bytes = last["live_bytes"].as_u64().unwrap();
    let logical = last["disk"]["hot"]["logical_bytes"].as_u64().unwrap()
        + last["disk"]["warm"]["logical_bytes"].as_u64().unwrap();
    assert_eq!(logical, live_bytes, "the tiers hold every live byte");

    // The paths: hot and warm reads in the run, degraded ones in the probe.
    let migration = &report["migration"];
    assert!(migration["volumes"].as_u64() >= Some(3), "{migration}");
    assert_eq!(migration["failed"], 0, "{migration}");
    for path in ["hot", "warm"] {
        assert!(
            report["reads_by_path"][path]["count"].as_u64() > Some(0),
            "no {path} reads: {}",
            report["reads_by_path"]
        );
    }
    let probe = &report["probes"][0];
    assert_eq!(probe["name"], "degraded", "{probe}");
    assert_eq!(probe["failed"], 0, "{probe}");
    for path in ["warm", "degraded"] {
        assert!(
            probe["by_path"][path]["count"].as_u64() > Some(0),
            "{probe}"
        );
    }
    assert!(
        report["deletes_by_tier"]["warm"].as_u64() > Some(0),
        "{}",
        report["deletes_by_tier"]
    );
    let young = &report["reads_by_age"][0]["latency"]["count"];
    let old = &report["reads_by_age"][3]["latency"]["count"];
    assert!(
        young.as_u64() > old.as_u64(),
        "reads fall with age: {young} then {old}"
    );

    for name in [
        "effective-replication",
        "bytes-by-kind",
        "latency-cdf",
        "reads-by-age",
    ] {
        let png = std::fs::read(out.path().join(format!("{name}.png")))?;
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}.png");
        let svg = std::fs::read_to_string(out.path().join(format!("{name}.svg")))?;
        assert!(svg.contains("<svg") && svg.contains("</svg>"), "{name}.svg");
    }
    let markdown = std::fs::read_to_string(out.path().join("report.md"))?;
    assert!(markdown.contains("| warm |") && markdown.contains("latency-cdf.svg"));
    assert!(printed.contains("report:"), "{printed}");
    Ok(())
}
