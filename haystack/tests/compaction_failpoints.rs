//! Compaction crash safety with failpoints (`--features failpoints`): a crash (panic) or an
//! error at every compaction step leaves a volume that reopens whole. Alone in its test
//! binary because failpoints are process-global.
#![cfg(feature = "failpoints")]

use haystack::{Volume, VolumeOptions};

mod common;

use common::{Model, check, fill};

const STEPS: [&str; 5] = [
    "compact-after-copy",
    "compact-before-rename",
    "compact-after-index-rename",
    "compact-after-data-rename",
    "compact-after-dir-sync",
];

fn setup(dir: &std::path::Path) -> (Volume, Model) {
    let v = Volume::create(dir, 1, VolumeOptions::default()).expect("create");
    let mut model = Model::new();
    fill(&v, 1, 100, &mut model);
    for k in (1..100).step_by(4) {
        v.delete_needle(k, k as u32 ^ 0xabcd).expect("delete");
        model.remove(&k);
    }
    (v, model)
}

fn after_recovery(dir: &std::path::Path, model: &mut Model) {
    let v = Volume::open(dir, 1, VolumeOptions::default()).expect("reopen");
    check(&v, model, 100);
    assert!(!dir.join("volume-0000000001.data.compact").exists());
    assert!(!dir.join("volume-0000000001.index.compact").exists());
    let next = v.status().last_key.expect("keys") + 1;
    fill(&v, next, next + 5, model);
    v.delete_needle(2, 2 ^ 0xabcd).expect("delete");
    model.remove(&2);
    v.compact().expect("compaction works after recovery");
    drop(v);
    let v = Volume::open(dir, 1, VolumeOptions::default()).expect("reopen");
    check(&v, model, next + 5);
}

/// Every failpoint step, as a crash (panic, then reopen) and as an error (the volume
/// recovers in process, or turns read-only past the first rename, and reopens whole).
#[test]
fn compaction_recovers_from_a_failure_at_every_step() {
    let scenario = fail::FailScenario::setup();
    for step in STEPS {
        // Crash: the process dies at this step; reopen from disk.
        let dir = tempfile::tempdir().expect("tempdir");
        let (v, mut model) = setup(dir.path());
        fail::cfg(step, "panic").expect("cfg");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| v.compact()));
        fail::remove(step);
        assert!(r.is_err(), "{step}: expected the failpoint to fire");
        drop(v);
        after_recovery(dir.path(), &mut model);

        // Error: compaction returns an error at this step.
        let dir = tempfile::tempdir().expect("tempdir");
        let (v, mut model) = setup(dir.path());
        fail::cfg(step, "return").expect("cfg");
        let r = v.compact();
        fail::remove(step);
        assert!(r.is_err(), "{step}");
        check(&v, &model, 100);
        let renamed = !matches!(step, "compact-after-copy" | "compact-before-rename");
        if renamed {
            assert!(
                v.status().read_only,
                "{step}: volume must stop taking writes"
            );
        } else {
            fill(&v, 100, 101, &mut model);
        }
        drop(v);
        after_recovery(dir.path(), &mut model);
    }
    scenario.teardown();
}
