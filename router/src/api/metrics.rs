//! The router's Prometheus metrics.
//!
//! Each router owns its own [`PrometheusRecorder`] and registers metrics on
//! it directly (through the `metrics::Recorder` trait) instead of installing
//! a global recorder, so several routers in one process (tests, `hayloft
//! up`) never fight over the global slot and each `/metrics` shows its own.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `hayloft_requests_total` | counter | `route`, `tier`, `status` |
//! | `hayloft_request_duration_seconds` | histogram | `route`, `tier`, `status` |
//! | `hayloft_bytes_in_total` | counter | |
//! | `hayloft_bytes_out_total` | counter | |
//! | `hayloft_volumes` | gauge | `state` |
//! | `hayloft_replica_failures_total` | counter | `op` (`append`, `read`, `delete`) |
//! | `hayloft_upload_retries_total` | counter | |
//! | `hayloft_damaged_needles_total` | counter | |
//! | `hayloft_migration_jobs` | gauge | `step` |
//! | `hayloft_migration_errors_total` | counter | |
//! | `hayloft_migration_held_back` | gauge | (1 while the last pass held back: too few racks) |
//! | `hayloft_migrated_bytes` | gauge | (live data of the warm volumes when sealed) |
//! | `hayloft_migration_saved_bytes` | gauge | (their hot replicas' bytes minus their blocks' and their geo companions') |
//! | `hayloft_geo_waiting_volumes` | gauge | (warm volumes keeping a full copy in a second datacenter until they have a buddy) |
//! | `hayloft_geo_waiting_bytes` | gauge | (what those copies hold on disk) |
//! | `hayloft_blocks_missing` | gauge | (warm blocks to rebuild, as the last coordinator pass found) |
//! | `hayloft_stripes_missing_blocks` | gauge | `missing` (`1` to `4`, `more`: blocks to rebuild or unavailable) |
//! | `hayloft_rebuild_queue` | gauge | (stripes the last pass planned to rebuild) |
//! | `hayloft_rebuilt_bytes_total` | counter | (block bytes rebuilders wrote) |
//! | `hayloft_rebuild_errors_total` | counter | |
//! | `hayloft_placement_violations` | gauge | (stripes with two blocks or more in one rack) |
//! | `hayloft_lost_storage_nodes` | gauge | (silent for `rebuild_after_ms` or longer) |
//! | `hayloft_scrub_bytes_total` | counter | (bytes a scrub read back and checked) |
//! | `hayloft_checksum_mismatches_total` | counter | `tier` (`hot`: needle copies, `warm`: blocks; found by a scrub) |
//! | `hayloft_read_batches_total` | counter | `tier` (`hot`: store nodes, `warm`: storage nodes) |
//! | `hayloft_read_batch_reads_total` | counter | `tier` |

use std::collections::HashMap;

use metrics::{
    Counter, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use parking_lot::RwLock;

const REQUESTS: &str = "hayloft_requests_total";
const DURATION: &str = "hayloft_request_duration_seconds";
const BYTES_IN: &str = "hayloft_bytes_in_total";
const BYTES_OUT: &str = "hayloft_bytes_out_total";
const VOLUMES: &str = "hayloft_volumes";
const REPLICA_FAILURES: &str = "hayloft_replica_failures_total";
const UPLOAD_RETRIES: &str = "hayloft_upload_retries_total";
const DAMAGED_NEEDLES: &str = "hayloft_damaged_needles_total";
const MIGRATION_JOBS: &str = "hayloft_migration_jobs";
const MIGRATION_ERRORS: &str = "hayloft_migration_errors_total";
const MIGRATION_HELD_BACK: &str = "hayloft_migration_held_back";
const MIGRATED_BYTES: &str = "hayloft_migrated_bytes";
const SAVED_BYTES: &str = "hayloft_migration_saved_bytes";
const GEO_WAITING: &str = "hayloft_geo_waiting_volumes";
const GEO_WAITING_BYTES: &str = "hayloft_geo_waiting_bytes";
const BLOCKS_MISSING: &str = "hayloft_blocks_missing";
const STRIPES_MISSING: &str = "hayloft_stripes_missing_blocks";
const REBUILD_QUEUE: &str = "hayloft_rebuild_queue";
const REBUILT_BYTES: &str = "hayloft_rebuilt_bytes_total";
const REBUILD_ERRORS: &str = "hayloft_rebuild_errors_total";
const PLACEMENT_VIOLATIONS: &str = "hayloft_placement_violations";
const LOST_NODES: &str = "hayloft_lost_storage_nodes";
const SCRUB_BYTES: &str = "hayloft_scrub_bytes_total";
const CHECKSUM_MISMATCHES: &str = "hayloft_checksum_mismatches_total";
const READ_BATCHES: &str = "hayloft_read_batches_total";
const READ_BATCH_READS: &str = "hayloft_read_batch_reads_total";

/// Histogram buckets of request latency, in seconds (1 ms to 60 s).
const DURATION_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static METADATA: Metadata<'static> = Metadata::new("router::api", Level::INFO, None);

/// The labels of a request's metrics: method, route, tier and status.
type RequestLabels = (&'static str, &'static str, &'static str, u16);

/// Most label sets whose handles are kept (the labels are bounded, so this
/// is only a guard); beyond it the map is cleared.
const MAX_CACHED_LABEL_SETS: usize = 4096;

/// The metrics of one router.
pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The request counter and histogram of each label set, registered
    /// once: registering builds the labels and hashes the key, on every
    /// request otherwise.
    requests: RwLock<HashMap<RequestLabels, (Counter, Histogram)>>,
    bytes_out: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh recorder with the router's metrics described.
    pub(crate) fn new() -> Metrics {
        let builder = match PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DURATION.to_owned()), DURATION_BUCKETS_SECONDS)
        {
            Ok(b) => b,
            // Only fails on an empty bucket list, which the constant is not.
            Err(e) => {
                tracing::error!(error = %e, "histogram buckets refused; using summaries");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let describe = |name: &'static str, unit: Option<Unit>, text: &'static str| {
            recorder.describe_counter(
                KeyName::from_const_str(name),
                unit,
                SharedString::const_str(text),
            );
        };
        describe(
            REQUESTS,
            None,
            "Requests answered, by route, tier and status.",
        );
        describe(
            DURATION,
            Some(Unit::Seconds),
            "Request latency, by route, tier and status.",
        );
        describe(
            BYTES_IN,
            Some(Unit::Bytes),
            "BLOB bytes received from clients.",
        );
        describe(BYTES_OUT, Some(Unit::Bytes), "BLOB bytes sent to clients.");
        describe(
            VOLUMES,
            None,
            "Logical volumes per state, from the directory.",
        );
        describe(
            REPLICA_FAILURES,
            None,
            "Store node replicas that failed a request.",
        );
        describe(UPLOAD_RETRIES, None, "Uploads retried on another volume.");
        describe(
            DAMAGED_NEEDLES,
            None,
            "Reads that found a replica's copy of a needle failing its checks (queued for repair).",
        );
        let bytes_out = recorder.register_counter(&Key::from_static_name(BYTES_OUT), &METADATA);
        Metrics {
            recorder,
            handle,
            requests: RwLock::new(HashMap::new()),
            bytes_out,
        }
    }

    /// Records one answered request; `route` is its method and route
    /// (`("GET", "/blobs/{id}")`, labelled `GET /blobs/{id}`).
    pub(crate) fn record_request(
        &self,
        route: (&'static str, &'static str),
        tier: &'static str,
        status: u16,
        seconds: f64,
    ) {
        let labels = (route.0, route.1, tier, status);
        let cached = self.requests.read().get(&labels).cloned();
        let (counter, histogram) = match cached {
            Some(handles) => handles,
            None => {
                let handles = self.register_request(labels);
                let mut requests = self.requests.write();
                if requests.len() >= MAX_CACHED_LABEL_SETS {
                    requests.clear();
                }
                requests.insert(labels, handles.clone());
                handles
            }
        };
        counter.increment(1);
        histogram.record(seconds);
    }

    fn register_request(&self, labels: RequestLabels) -> (Counter, Histogram) {
        let (method, route, tier, status) = labels;
        let labels = vec![
            Label::new("route", format!("{method} {route}")),
            Label::new("tier", tier),
            Label::new("status", status.to_string()),
        ];
        let counter = self
            .recorder
            .register_counter(&Key::from_parts(REQUESTS, labels.clone()), &METADATA);
        let histogram = self
            .recorder
            .register_histogram(&Key::from_parts(DURATION, labels), &METADATA);
        (counter, histogram)
    }

    /// Counts BLOB bytes received.
    pub(crate) fn add_bytes_in(&self, bytes: u64) {
        self.counter(BYTES_IN).increment(bytes);
    }

    /// Counts BLOB bytes sent.
    pub(crate) fn add_bytes_out(&self, bytes: u64) {
        self.bytes_out.increment(bytes);
    }

    /// Counts a replica failure during `op`.
    pub(crate) fn replica_failure(&self, op: &'static str) {
        self.recorder
            .register_counter(
                &Key::from_parts(REPLICA_FAILURES, vec![Label::new("op", op)]),
                &METADATA,
            )
            .increment(1);
    }

    /// Counts a read that found a damaged copy of a needle.
    pub(crate) fn damaged_needle(&self) {
        self.counter(DAMAGED_NEEDLES).increment(1);
    }

    /// Counts an upload retried on another volume.
    pub(crate) fn upload_retry(&self) {
        self.counter(UPLOAD_RETRIES).increment(1);
    }

    /// Sets the number of volumes in `state`.
    pub(crate) fn set_volumes(&self, state: &str, count: usize) {
        self.set_gauge(VOLUMES, ("state", state), count);
    }

    /// Counts a migration job that failed.
    pub(crate) fn migration_error(&self) {
        self.counter(MIGRATION_ERRORS).increment(1);
    }

    /// Sets whether the last migration pass held back.
    pub(crate) fn set_migration_held_back(&self, held_back: bool) {
        self.recorder
            .register_gauge(&Key::from_static_name(MIGRATION_HELD_BACK), &METADATA)
            .set(if held_back { 1.0 } else { 0.0 });
    }

    /// Sets the bytes the warm volumes' data took when sealed, and what
    /// moving them saved: their hot replicas' bytes minus their blocks'.
    pub(crate) fn set_migrated(&self, migrated_bytes: u64, saved_bytes: u64) {
        for (name, value) in [(MIGRATED_BYTES, migrated_bytes), (SAVED_BYTES, saved_bytes)] {
            self.recorder
                .register_gauge(&Key::from_static_name(name), &METADATA)
                .set(value as f64);
        }
    }

    /// Sets how many warm volumes wait for a buddy, and what their copies
    /// hold.
    pub(crate) fn set_geo_waiting(&self, volumes: usize, bytes: u64) {
        for (name, value) in [(GEO_WAITING, volumes as u64), (GEO_WAITING_BYTES, bytes)] {
            self.recorder
                .register_gauge(&Key::from_static_name(name), &METADATA)
                .set(value as f64);
        }
    }

    /// Sets the number of migration jobs at `step`.
    pub(crate) fn set_migration_jobs(&self, step: &str, count: usize) {
        self.set_gauge(MIGRATION_JOBS, ("step", step), count);
    }

    /// Sets what the last coordinator pass found: blocks to rebuild,
    /// stripes by blocks missing, stripes queued for a rebuild, placement
    /// violations and lost nodes.
    pub(crate) fn set_repair(&self, report: &super::coordinate::RepairReport, queued: usize) {
        let mut by_missing = [0usize; 5];
        for stripe in &report.endangered {
            let missing = stripe.missing.len() + stripe.unavailable.len();
            by_missing[missing.clamp(1, 5) - 1] += 1;
        }
        for (i, count) in by_missing.iter().enumerate() {
            let label = ["1", "2", "3", "4", "more"][i];
            self.set_gauge(STRIPES_MISSING, ("missing", label), *count);
        }
        let blocks: usize = report.endangered.iter().map(|s| s.missing.len()).sum();
        for (name, value) in [
            (BLOCKS_MISSING, blocks),
            (REBUILD_QUEUE, queued),
            (PLACEMENT_VIOLATIONS, report.placement_violations.len()),
            (LOST_NODES, report.lost_nodes.len()),
        ] {
            self.recorder
                .register_gauge(&Key::from_static_name(name), &METADATA)
                .set(value as f64);
        }
    }

    /// Counts block bytes a rebuild wrote.
    pub(crate) fn rebuilt_bytes(&self, bytes: u64) {
        self.counter(REBUILT_BYTES).increment(bytes);
    }

    /// Counts bytes a scrub checked.
    pub(crate) fn scrubbed_bytes(&self, bytes: u64) {
        self.counter(SCRUB_BYTES).increment(bytes);
    }

    /// Counts a copy a scrub found corrupt in `tier`.
    pub(crate) fn checksum_mismatch(&self, tier: &'static str) {
        self.recorder
            .register_counter(
                &Key::from_parts(CHECKSUM_MISMATCHES, vec![Label::new("tier", tier)]),
                &METADATA,
            )
            .increment(1);
    }

    /// Counts a rebuild that failed.
    pub(crate) fn rebuild_error(&self) {
        self.counter(REBUILD_ERRORS).increment(1);
    }

    fn set_gauge(&self, name: &'static str, (label, value): (&'static str, &str), count: usize) {
        self.recorder
            .register_gauge(
                &Key::from_parts(name, vec![Label::new(label, value.to_owned())]),
                &METADATA,
            )
            .set(count as f64);
    }

    /// Sets the read batches sent so far to one tier's nodes and the reads
    /// they carried (counts kept by the batching client).
    pub(crate) fn set_read_batches(&self, tier: &'static str, batches: u64, reads: u64) {
        for (name, value) in [(READ_BATCHES, batches), (READ_BATCH_READS, reads)] {
            self.recorder
                .register_counter(
                    &Key::from_parts(name, vec![Label::new("tier", tier)]),
                    &METADATA,
                )
                .absolute(value);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram samples into their buckets so memory stays bounded
    /// between scrapes.
    pub(crate) fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    fn counter(&self, name: &'static str) -> metrics::Counter {
        self.recorder
            .register_counter(&Key::from_static_name(name), &METADATA)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::new();
        metrics.record_request(("POST", "/blobs"), "hot", 201, 0.003);
        metrics.record_request(("POST", "/blobs"), "hot", 201, 0.004);
        metrics.add_bytes_in(10);
        metrics.set_volumes("writable", 2);
        metrics.replica_failure("append");
        metrics.set_read_batches("warm", 3, 7);
        metrics.set_migration_jobs("encoding", 1);
        let text = metrics.render();
        assert!(
            text.contains(r#"hayloft_read_batch_reads_total{tier="warm"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hayloft_migration_jobs{step="encoding"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"hayloft_requests_total{route="POST /blobs",tier="hot",status="201"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains("hayloft_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("hayloft_bytes_in_total 10"), "{text}");
        assert!(
            text.contains(r#"hayloft_volumes{state="writable"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hayloft_replica_failures_total{op="append"} 1"#),
            "{text}"
        );
    }
}
