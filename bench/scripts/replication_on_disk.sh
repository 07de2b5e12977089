#!/usr/bin/env bash
# Effective replication factor measured on disk, per tier: the bytes of
# every file on every node over the logical bytes of the live BLOBs each
# tier holds (bench/src/bin/on_disk.rs). One `hayloft up` (one process,
# this machine's disk): COUNT BLOBs of SIZE uploaded (several VOLUME_SIZE
# volumes fill and lock, the last stays writable); measured ("hot": three
# replicas); then every locked volume migrated to the warm tier (one
# RS(10,4) cell of 14 storage nodes; the hot replicas retired) and measured
# again ("warm"). With DATACENTERS=2 or 3 (`hayloft up --datacenters N`,
# one cell each), migration passes then run until the geo layer is done
# (every volume copied to a second datacenter; with three, buddies paired
# and their XOR written in the third, the copies dropped), and the warm
# tier is measured once more ("geo": copies and XOR volumes included).
#
# Usage: bench/scripts/replication_on_disk.sh            (from the repository root)
# Environment (all optional):
#   SIZE=64KiB COUNT=20000 VOLUME_SIZE=64MiB (the router writes 16 volumes at once:
#   20,000 BLOBs of 64 KiB fill and lock them all)  HAYLOFT_PORT=18080  WORK=<temp dir>
#   DATACENTERS=1
# Prints the JSON lines and a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZE="${SIZE:-64KiB}"
COUNT="${COUNT:-20000}"
VOLUME_SIZE="${VOLUME_SIZE:-64MiB}"
DATACENTERS="${DATACENTERS:-1}"
HAYLOFT_PORT="${HAYLOFT_PORT:-18080}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/hayloft-on-disk.XXXXXX")}"
IP=127.0.0.1
router="http://$IP:$HAYLOFT_PORT"
mkdir -p "$WORK"

# shellcheck source=bench/scripts/lib.sh
. bench/scripts/lib.sh
cleanup() {
  stop_all
  rm -rf "$WORK/data"
}
on_exit cleanup

build_release
cargo build --release --quiet -p bench --bin on-disk
ON_DISK=target/release/on-disk

"$HAYLOFT" up --data "$WORK/data" --listen "$IP:$HAYLOFT_PORT" --volume-size "$VOLUME_SIZE" \
  --max-blob-size "$SIZE" --warm-after 1d --migration-rate 0 --scrub-rate 0 \
  --datacenters "$DATACENTERS" --migrate-interval 1h \
  >"$WORK/hayloft.log" 2>&1 &
PIDS+=($!)
wait_http "$router/health" "hayloft router"
"$LOADGEN" --target hayloft --url "$router" --size "$SIZE" --concurrency 16 \
  --requests "$COUNT" --warmup 0 --upload-only --save-urls "$WORK/urls" --label upload >/dev/null
# The stores' sizes reach the directory with their heartbeats: wait for
# every full volume to lock.
sleep 3
sync
"$ON_DISK" --data "$WORK/data" --urls "$WORK/urls" --size "$SIZE" --label before >"$WORK/before.txt"

locked=$(hayloft_volumes "$router" |
  python3 -c 'import json,sys; print(" ".join(str(v["id"]) for v in json.load(sys.stdin) if v["state"] == "locked"))')
[ -n "$locked" ] || { echo "no volume locked (COUNT too small?)" >&2; exit 1; }
for vid in $locked; do
  curl -fsS -X POST "$router/admin/volumes/$vid/migrate" |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; assert j["error"] is None, j'
done
sync
"$ON_DISK" --data "$WORK/data" --urls "$WORK/urls" --size "$SIZE" --label after >"$WORK/after.txt"

: >"$WORK/geo.txt"
if [ "$DATACENTERS" -gt 1 ]; then
  # Passes until one finds nothing to do in the geo layer.
  : >"$WORK/passes.jsonl"
  for pass in $(seq 1 100); do
    curl -fsS -X POST "$router/admin/migrate" >"$WORK/pass.json"
    cat "$WORK/pass.json" >>"$WORK/passes.jsonl"
    echo >>"$WORK/passes.jsonl"
    python3 - "$WORK/pass.json" <<'PY' && break
import json, sys
p = json.load(open(sys.argv[1]))
failed = [j for j in p["jobs"] if j["error"]]
assert not failed, failed
g = p["geo"]
assert not g["problems"], g["problems"]
busy = p["jobs"] or g["copies_created"] or g["xors_created"] or g["copies_dropped"]
print(f"geo pass: {len(p['jobs'])} jobs, {g['waiting_for_buddy']} waiting for a buddy", file=sys.stderr)
sys.exit(1 if busy else 0)
PY
    [ "$pass" -lt 100 ] || { echo "the geo layer never settled" >&2; exit 1; }
  done
  waiting=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["geo"]["waiting_for_buddy"])' "$WORK/pass.json")
  # How fast companions were built: each one's data over its job's wall
  # time (encode from the primaries' blocks, write, read every block back,
  # read every needle through it).
  hayloft_volumes "$router" >"$WORK/volumes.json"
  builds=$(python3 - "$WORK/passes.jsonl" "$WORK/volumes.json" <<'PY'
import json, statistics, sys
lengths = {v["id"]: (len(v["geo"]["of"]), v["warm"]["geometry"]["volume_len_bytes"])
           for v in json.load(open(sys.argv[2])) if v.get("geo", {}).get("of")}
seen = {}
for line in open(sys.argv[1]):
    if line.strip():
        for job in json.loads(line)["jobs"]:
            if not job["error"] and job["seconds"] > 0:
                seen[job["volume"]] = job["seconds"]
rates = {1: [], 2: []}
for vid, seconds in seen.items():
    if vid in lengths:
        kind, length = lengths[vid]
        rates[kind].append(length / seconds / 1e6)
# Copies dropped since are gone from the volume list: their rate is lost.
out = []
for kind, name in ((1, "copies still listed"), (2, "XOR volumes")):
    if rates[kind]:
        out.append(f"{name}: {len(rates[kind])} built, median {statistics.median(rates[kind]):.1f} MB/s "
                   f"of companion data (min {min(rates[kind]):.1f}, max {max(rates[kind]):.1f})")
print("; ".join(out) or "no companion build timed")
PY
)
  sync
  "$ON_DISK" --data "$WORK/data" --urls "$WORK/urls" --size "$SIZE" --label geo >"$WORK/geo.txt"
fi

grep -h '^{' "$WORK/before.txt" "$WORK/after.txt" "$WORK/geo.txt" || true
echo
echo "Volumes locked and migrated: $locked ($COUNT BLOBs of $SIZE, volumes of $VOLUME_SIZE, $DATACENTERS datacenter(s))"
[ "$DATACENTERS" -gt 1 ] && echo "Primaries still waiting for a buddy (a copy each): $waiting" &&
  echo "Companion builds: $builds"
echo
echo "| when, tier | volumes | logical live bytes | on disk | effective replication | data and parity only | metadata share |"
echo "|---|---|---|---|---|---|---|"
grep -h '^|' "$WORK/before.txt" "$WORK/after.txt" "$WORK/geo.txt"
