#!/usr/bin/env bash
# Geo-degraded reads beside healthy warm reads, Hayloft alone, same run.
#
# On a fresh `hayloft up --spawn --datacenters 3`: COUNT BLOBs of SIZE
# uploaded; every volume locked and sealed; migration passes until the geo
# layer is done (buddies paired, their XOR in the third datacenter). Then
# the BLOBs of one paired volume are fetched ROUNDS times from its healthy
# cell ("warm"); every storage, backoff and rebuilder process of its
# datacenter is killed (kill -9) and, once the directory marks them down,
# the same fetches run ROUNDS times again, each served from the buddy's
# cell XOR the XOR volume's ("geo"). Prints medians of p50 and p99 and the
# ratios. Each kind is checked by an independent client as well: `wrk`
# (installed from Debian where missing) fetching one of the volume's BLOBs
# for 10 s.
#
# Usage: bench/scripts/geo_degraded.sh            (from the repository root)
# Environment (all optional):
#   SIZE=64KiB COUNT=3000 FETCHES=3000 ROUNDS=3 CONCURRENCY=16
#   VOLUME_SIZE=32MiB WORK=<temp dir> HAYLOFT_PORT=18080
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZE="${SIZE:-64KiB}"
COUNT="${COUNT:-3000}"
FETCHES="${FETCHES:-3000}"
ROUNDS="${ROUNDS:-3}"
CONCURRENCY="${CONCURRENCY:-16}"
VOLUME_SIZE="${VOLUME_SIZE:-32MiB}"
HAYLOFT_PORT="${HAYLOFT_PORT:-18080}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/hayloft-geo-degraded.XXXXXX")}"
IP=127.0.0.1
router="http://$IP:$HAYLOFT_PORT"
mkdir -p "$WORK"

# shellcheck source=bench/scripts/lib.sh
. bench/scripts/lib.sh
on_exit 'stop_all; rm -rf "$WORK/hayloft"'
build_release
install_wrk

rm -rf "$WORK/hayloft"
"$HAYLOFT" up --spawn --data "$WORK/hayloft" --listen "$IP:$HAYLOFT_PORT" --datacenters 3 \
  --volume-size "$VOLUME_SIZE" --max-blob-size "$SIZE" --warm-after 1d --migrate-interval 1h \
  --coordinate-interval 1h --scrub-rate 0 --migration-rate 0 >"$WORK/hayloft.log" 2>&1 &
PIDS+=($!)
wait_http "$router/health" "hayloft router"
for _ in $(seq 1 300); do [ -f "$WORK/hayloft/cluster.json" ] && break; sleep 0.2; done
[ -f "$WORK/hayloft/cluster.json" ] || { echo "no cluster.json from hayloft up" >&2; exit 1; }

"$LOADGEN" --target hayloft --url "$router" --size "$SIZE" --concurrency "$CONCURRENCY" \
  --requests "$COUNT" --warmup 0 --upload-only --save-urls "$WORK/urls" --label upload >"$WORK/upload.json"
directory="http://$(python3 -c 'import json,sys; print(next(n["address"] for n in json.load(open(sys.argv[1]))["nodes"] if n["role"]=="directory"))' "$WORK/hayloft/cluster.json")"
vids=$(hayloft_volumes "$router" | python3 -c 'import json,sys; print(" ".join(str(v["id"]) for v in json.load(sys.stdin) if v["state"] in ("writable", "locked")))')
for vid in $vids; do
  curl -fsS -o /dev/null -X POST -H 'content-type: application/json' \
    -d '{"state":"locked","reason":"benchmark"}' "$directory/volumes/$vid/state" || true
  "$HAYLOFT" warm seal --volume "$vid" --router "$router" >>"$WORK/seal.log" 2>&1 ||
    { echo "sealing volume $vid failed:" >&2; tail -5 "$WORK/seal.log" >&2; exit 1; }
done
for pass in $(seq 1 100); do
  curl -fsS -X POST "$router/admin/migrate" >"$WORK/pass.json"
  python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); g=p["geo"]; sys.exit(1 if p["jobs"] or g["copies_created"] or g["xors_created"] or g["copies_dropped"] else 0)' "$WORK/pass.json" && break
  [ "$pass" -lt 100 ] || { echo "the geo layer never settled" >&2; exit 1; }
done

# A paired volume, its datacenter, and its BLOBs' URLs.
read -r vid home < <(hayloft_volumes "$router" | python3 -c '
import json, sys
for v in json.load(sys.stdin):
    if v.get("geo", {}).get("buddy") is not None and v["warm"]:
        print(v["id"], v["warm"]["datacenter"]); break
else:
    sys.exit("no paired volume")')
grep "/blobs/$vid," "$WORK/urls" >"$WORK/volume-urls"
echo "volume $vid in $home: $(wc -l <"$WORK/volume-urls") BLOBs" >&2

fetch() { # label
  "$LOADGEN" --target hayloft --url "http://$IP" --fetch-urls "$WORK/volume-urls" --size "$SIZE" \
    --concurrency "$CONCURRENCY" --requests "$FETCHES" --warmup 200 --label "$1" >>"$WORK/results.jsonl"
}
wrk_check() { # label
  wrk_json "$1" "$(head -1 "$WORK/volume-urls")" "$CONCURRENCY" 10s "$SIZE" >>"$WORK/wrk.jsonl"
}
: >"$WORK/results.jsonl"
: >"$WORK/wrk.jsonl"
for _ in $(seq 1 "$ROUNDS"); do fetch warm; done
wrk_check warm

pids=$(python3 -c '
import json, sys
nodes = json.load(open(sys.argv[1]))["nodes"]
print(" ".join(str(n["pid"]) for n in nodes
               if n["datacenter"] == sys.argv[2] and n["role"] in ("f4-storage", "backoff", "rebuilder")))' \
  "$WORK/hayloft/cluster.json" "$home")
# shellcheck disable=SC2086  # a list of pids
kill -9 $pids
for _ in $(seq 1 300); do
  down=$(curl -fsS "$router/admin/nodes" | python3 -c '
import json, sys
nodes = [n for n in json.load(sys.stdin) if n["datacenter"] == sys.argv[1] and n["role"] == "f4-storage"]
print(all(n["state"] == "down" for n in nodes))' "$home")
  [ "$down" = True ] && break
  sleep 0.2
done
for _ in $(seq 1 "$ROUNDS"); do fetch geo; done
wrk_check geo

python3 - "$WORK/results.jsonl" "$SIZE" "$WORK" <<'PY'
import json, os, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    if line.strip():
        report = json.loads(line)
        runs.setdefault(report["label"], []).append(report["fetch"])
med = lambda label, key: statistics.median(f[key] for f in runs[label])
print(f"{sys.argv[2]}, medians of {len(runs['warm'])} rounds: req/s, p50 / p99 ms")
for label in ("warm", "geo"):
    errors = sum(f["errors"] for f in runs[label])
    rounds = ", ".join(f"{f['p50_ms']:.2f}/{f['p99_ms']:.2f}" for f in runs[label])
    print(f"- {label}: {med(label, 'requests_per_second'):,.0f} req/s, p50 {med(label, 'p50_ms'):.2f} ms, "
          f"p99 {med(label, 'p99_ms'):.2f} ms, {errors} errors (rounds p50/p99: {rounds})")
for key in ("p50_ms", "p99_ms"):
    print(f"- geo / warm {key[:3]}: {med('geo', key) / med('warm', key):.2f}x")
wrk = {}
path = os.path.join(sys.argv[3], "wrk.jsonl")
if os.path.exists(path):
    for line in open(path):
        if line.strip():
            report = json.loads(line)
            wrk[report["wrk"]] = report
for label, report in wrk.items():
    print(f"- wrk {label} (one BLOB, 10 s): {report['requests_per_second']:,.0f} req/s, "
          f"p50 {report['p50_ms']:.2f} ms, p99 {report['p99_ms']:.2f} ms, {report['non_2xx']} non-2xx")
if len(wrk) == 2:
    print(f"- wrk geo / warm: p50 {wrk['geo']['p50_ms'] / wrk['warm']['p50_ms']:.2f}x, "
          f"p99 {wrk['geo']['p99_ms'] / wrk['warm']['p99_ms']:.2f}x")
PY
echo "raw results: $WORK/results.jsonl" >&2
