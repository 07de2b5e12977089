#!/usr/bin/env bash
# Warm against hot, Hayloft alone: the quick check of the warm tier's
# "warm fetch >= 0.7x hot fetch" target, without SeaweedFS (the full
# comparison is warm_side_by_side.sh).
#
# On a fresh `hayloft up --spawn` (`hayloft up`, every node in one process,
# with SPAWN=0): COUNT BLOBs of SIZE uploaded; ROUNDS
# rounds of FETCHES hot fetches at concurrency 16; every volume locked and
# sealed; ROUNDS rounds of the same fetches warm. Prints medians and the
# warm / hot ratio of requests per second. Rounds of the two tiers are not
# interleaved (the hot replicas are gone once sealed): run it several times
# on a noisy machine.
#
# Usage: bench/scripts/warm_vs_hot.sh            (from the repository root)
# Environment (all optional):
#   SIZE=64KiB COUNT=1536 FETCHES=3000 ROUNDS=3 CONCURRENCY=16
#   WORK=<temp dir>  HAYLOFT_PORT=18080
#   WORKERS=<n>      worker threads of every node (TOKIO_WORKER_THREADS of
#                    `hayloft up --spawn`; default: its own choice)
#   SPAWN=1          0: `hayloft up` without `--spawn`
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZE="${SIZE:-64KiB}"
COUNT="${COUNT:-1536}"
FETCHES="${FETCHES:-3000}"
ROUNDS="${ROUNDS:-3}"
CONCURRENCY="${CONCURRENCY:-16}"
HAYLOFT_PORT="${HAYLOFT_PORT:-18080}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/hayloft-warm-vs-hot.XXXXXX")}"
IP=127.0.0.1
router="http://$IP:$HAYLOFT_PORT"
mkdir -p "$WORK"

# shellcheck source=bench/scripts/lib.sh
. bench/scripts/lib.sh
on_exit 'stop_all; rm -rf "$WORK/hayloft"'
build_release

rm -rf "$WORK/hayloft"
spawn=--spawn
[ "${SPAWN:-1}" = 0 ] && spawn=
${WORKERS:+env TOKIO_WORKER_THREADS="$WORKERS"} "$HAYLOFT" up $spawn --data "$WORK/hayloft" --listen "$IP:$HAYLOFT_PORT" --volume-size 256MiB \
  >"$WORK/hayloft.log" 2>&1 &
PIDS+=($!)
wait_http "$router/health" "hayloft router"
for _ in $(seq 1 300); do [ -f "$WORK/hayloft/cluster.json" ] && break; sleep 0.2; done
[ -f "$WORK/hayloft/cluster.json" ] || { echo "no cluster.json from hayloft up" >&2; exit 1; }

"$LOADGEN" --target hayloft --url "$router" --size "$SIZE" --concurrency "$CONCURRENCY" \
  --requests "$COUNT" --warmup 0 --upload-only --save-urls "$WORK/urls" --label upload >"$WORK/upload.json"
python3 - "$WORK/upload.json" <<'PY'
import json, sys
errors = json.load(open(sys.argv[1]))["upload"]["errors"]
if errors:
    sys.exit(f"{errors} uploads failed")
PY
fetch() { # label
  sync
  "$LOADGEN" --target hayloft --url "http://$IP" --fetch-urls "$WORK/urls" --size "$SIZE" \
    --concurrency "$CONCURRENCY" --requests "$FETCHES" --warmup 200 --label "$1" >>"$WORK/results.jsonl"
}
: >"$WORK/results.jsonl"
for _ in $(seq 1 "$ROUNDS"); do fetch hot; done

vids=$(lock_writable_volumes "$WORK/hayloft" "$router")
for vid in $vids; do
  "$HAYLOFT" warm seal --volume "$vid" --router "$router" >>"$WORK/seal.log" 2>&1 ||
    { echo "sealing volume $vid failed:" >&2; tail -5 "$WORK/seal.log" >&2; exit 1; }
done
for _ in $(seq 1 "$ROUNDS"); do fetch warm; done

python3 - "$WORK/results.jsonl" "$SIZE" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    if line.strip():
        report = json.loads(line)
        runs.setdefault(report["label"], []).append(report["fetch"])
med = lambda label, key: statistics.median(f[key] for f in runs[label])
print(f"{sys.argv[2]}, medians of {len(runs['hot'])} rounds: req/s (p50 / p99 ms)")
for label in ("hot", "warm"):
    errors = sum(f["errors"] for f in runs[label])
    print(f"- {label}: {med(label, 'requests_per_second'):,.0f} ({med(label, 'p50_ms'):.2f} / {med(label, 'p99_ms'):.2f}), {errors} errors")
print(f"- warm / hot: {med('warm', 'requests_per_second') / med('hot', 'requests_per_second'):.2f}x")
PY
echo "raw results: $WORK/results.jsonl" >&2
