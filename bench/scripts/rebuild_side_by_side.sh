#!/usr/bin/env bash
# Rebuilding four lost blocks of a warm volume, side by side, same machine,
# same run. Per round, on fresh systems:
#   1. Hayloft (`hayloft up --spawn`, VOLUME_SIZE volumes, no rebuild
#      throttle, the coordinator's own passes an hour apart): COUNT BLOBs of
#      SIZE uploaded one at a time so that volume 1 fills and locks, then
#      migrated to the warm tier; the files of blocks 0, 5, 10 and 13 of its
#      first stripe deleted from their nodes (four replaced disks); then
#      `POST /admin/repair` (one coordinator pass: inventories, one rebuild
#      of the four blocks from ten others, each written to its node, synced
#      and recorded), timed end to end.
#   2. SeaweedFS 4.48 (1 master, 14 volume servers in 14 racks): as many
#      BLOBs of SIZE posted into one volume, `ec.encode`d (one shard per
#      server); the servers holding shards 0, 5, 10 and 13 stopped, those
#      shard files deleted, the servers started again (four replaced disks);
#      once the master sees the volume with ten shards, `ec.rebuild -apply`,
#      timed end to end.
# Page cache dropped before each timed rebuild (when run as root).
#
# Usage: bench/scripts/rebuild_side_by_side.sh            (from the repository root)
# Environment (all optional):
#   ROUNDS=3 SIZE=64KiB COUNT=16500 VOLUME_SIZE=1GiB (COUNT BLOBs just over one volume)
#   SWFS_VENV=/tmp/swfs-venv SWFS_VERSION=4.48   (installed there if missing)
#   WORK=<temp dir>  HAYLOFT_PORT=18080  SWFS_MASTER_PORT=19333  SWFS_VOLUME_PORT=18180
#   SWFS_IP=<this host's first non-loopback address> (see warm_side_by_side.sh)
#   SCRATCH_GIB (see migrate_side_by_side.sh)
# Raw JSON lines go to $WORK/rebuild.jsonl; the summary is printed as Markdown.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS="${ROUNDS:-3}"
SIZE="${SIZE:-64KiB}"
COUNT="${COUNT:-16500}"
VOLUME_SIZE="${VOLUME_SIZE:-1GiB}"
SIZE_BYTES=$(python3 -c 'import re, sys; n, u = re.fullmatch(r"(\d+)(KiB|MiB|)", sys.argv[1]).groups(); print(int(n) * {"KiB": 1024, "MiB": 1 << 20, "": 1}[u])' "$SIZE")
VOLUME_MB=$(python3 -c 'import re, sys; n, u = re.fullmatch(r"(\d+)(MiB|GiB)", sys.argv[1]).groups(); print(int(n) * {"MiB": 1, "GiB": 1024}[u])' "$VOLUME_SIZE")
SWFS_VENV="${SWFS_VENV:-/tmp/swfs-venv}"
SWFS_VERSION="${SWFS_VERSION:-4.48}"
HAYLOFT_PORT="${HAYLOFT_PORT:-18080}"
SWFS_MASTER_PORT="${SWFS_MASTER_PORT:-19333}"
SWFS_VOLUME_PORT="${SWFS_VOLUME_PORT:-18180}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/hayloft-rebuild.XXXXXX")}"
OUT="$WORK/rebuild.jsonl"
IP=127.0.0.1
SWFS_IP="${SWFS_IP:-$(hostname -I | tr ' ' '\n' | grep -E '^[0-9]+\.' | grep -v '^127\.' | head -1)}"
[ -n "$SWFS_IP" ] || { echo "no non-loopback IPv4 address for SeaweedFS (set SWFS_IP)" >&2; exit 1; }
LOST_BLOCKS="0 5 10 13"
mkdir -p "$WORK"
: >"$OUT"

# shellcheck source=bench/scripts/lib.sh
. bench/scripts/lib.sh
DATA="$WORK"
cleanup() {
  stop_all
  rm -rf "$DATA"/hayloft-* "$DATA"/swfs-*
  unmount_scratch
}
on_exit cleanup
choose_data_dir

build_release
install_weed

now() { date +%s.%N; }
since() { python3 -c "import sys; print(round($(now) - $1, 3))"; }
drop_cache() { sync; [ "$(id -u)" = 0 ] && echo 3 >/proc/sys/vm/drop_caches || true; }

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round" >&2
  HL="$DATA/hayloft-$round"
  SW="$DATA/swfs-$round"
  router="http://$IP:$HAYLOFT_PORT"

  # --- Hayloft ---------------------------------------------------------------
  "$HAYLOFT" up --spawn --data "$HL" --listen "$IP:$HAYLOFT_PORT" --volume-size "$VOLUME_SIZE" \
    --warm-after 1d --migration-rate 0 --rebuild-rate 0 --rebuild-after 1d \
    --coordinate-interval 1h --scrub-rate 0 >"$WORK/hayloft-$round.log" 2>&1 &
  PIDS+=($!)
  wait_http "$router/health" "hayloft router"
  "$LOADGEN" --target hayloft --url "$router" --size "$SIZE" --concurrency 1 \
    --requests "$COUNT" --warmup 0 --upload-only --label hayloft-upload >/dev/null
  state=""
  for _ in $(seq 1 100); do
    state=$(hayloft_volumes "$router" |
      python3 -c 'import json,sys; print(next((v["state"] for v in json.load(sys.stdin) if v["id"] == 1), ""))')
    [ "$state" = locked ] && break
    sleep 0.2
  done
  [ "$state" = locked ] || { echo "volume 1 did not lock (COUNT too small?)" >&2; exit 1; }
  curl -fsS -X POST "$router/admin/volumes/1/migrate" >"$WORK/job-$round.json"
  # The block files of the lost blocks, and the volume's size.
  read -r volume_bytes block_bytes lost_files < <(hayloft_volumes "$router" |
    python3 -c 'import json, sys
hl, lost = sys.argv[1], [int(b) for b in sys.argv[2].split()]
v = next(v for v in json.load(sys.stdin) if v["id"] == 1)
w = v["warm"]
name = "{}/{}/blocks/volume-0000000001.g{:016x}.s000000.b{:02}.block"
paths = [name.format(hl, w["stripes"][0][b], w["generation"], b) for b in lost]
print(w["geometry"]["volume_len_bytes"], w["geometry"]["block_size_bytes"], ",".join(paths))' "$HL" "$LOST_BLOCKS")
  IFS=, read -r -a files <<<"$lost_files"
  rm -f "${files[@]}"
  drop_cache
  started=$(now)
  curl -fsS -X POST "$router/admin/repair" >"$WORK/repair-$round.json"
  repair_seconds=$(since "$started")
  for file in "${files[@]}"; do [ -s "$file" ] || { echo "$file was not rebuilt" >&2; exit 1; }; done
  python3 - "$WORK/repair-$round.json" "$round" "$volume_bytes" "$block_bytes" "$repair_seconds" >>"$OUT" <<'PY'
import json, sys
path, round_, volume, block, seconds = sys.argv[1:]
report = json.load(open(path))
rebuilds = report["rebuilds"]
assert rebuilds and all(r["error"] is None for r in rebuilds), report
print(json.dumps({"round": int(round_), "hayloft_volume_bytes": int(volume),
                  "hayloft_block_bytes": int(block),
                  "hayloft_blocks_rebuilt": sum(len(r["blocks"]) for r in rebuilds),
                  "hayloft_written_bytes": sum(r["written_bytes"] for r in rebuilds),
                  "hayloft_rebuild_seconds": max(r["seconds"] for r in rebuilds),
                  "hayloft_repair_seconds": float(seconds)}))
PY
  stop_all
  rm -rf "$HL"

  # --- SeaweedFS -------------------------------------------------------------
  start_swfs_cell "$SW" "$VOLUME_MB" "$WORK/swfs-$round"
  needles=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["jobs"][0]["needles"])' "$WORK/job-$round.json")
  swfs_fill_volume "$SIZE_BYTES" "$needles"
  want=$((needles * SIZE_BYTES))
  largest=""
  for _ in $(seq 1 150); do
    largest=$(swfs_volume_sizes | sed -n 1p)
    [ -n "$largest" ] && [ "${largest#* }" -ge "$want" ] && break
    sleep 0.2
  done
  [ -n "$largest" ] && [ "${largest#* }" -ge "$want" ] ||
    { echo "SeaweedFS lists no volume of $want bytes (largest: ${largest:-none})" >&2; exit 1; }
  vid=${largest% *}
  printf 'lock\nec.encode -volumeId=%s\nunlock\n' "$vid" |
    "$WEED" shell -master="$SWFS_IP:$SWFS_MASTER_PORT" >"$WORK/ec-$round.log" 2>&1
  # Four replaced disks: the servers of shards 0, 5, 10 and 13 stopped,
  # those shards deleted, the servers started again.
  shard_bytes=0
  for shard in $LOST_BLOCKS; do
    name="$vid.ec$(printf %02d "$shard")"
    file=$(find "$SW" \( -name "$name" -o -name "*_$name" \) | head -1)
    [ -n "$file" ] || { echo "no shard $shard of volume $vid" >&2; exit 1; }
    shard_bytes=$(stat -c %s "$file")
    server=$(basename "$(dirname "$file")")
    server=${server#vol}
    kill -TERM "${SWFS_VOLUME_PIDS[server - 1]}"
    wait "${SWFS_VOLUME_PIDS[server - 1]}" 2>/dev/null || true
    rm -f "$file"
    start_swfs_volume "$SW" "$server" "$WORK/swfs-$round"
    wait_http "http://$SWFS_IP:$((SWFS_VOLUME_PORT + server))/status" "seaweedfs volume $server"
  done
  # Until the master knows the volume has ten shards left.
  shards=0
  for _ in $(seq 1 150); do
    shards=$(printf 'volume.list\n' | "$WEED" shell -master="$SWFS_IP:$SWFS_MASTER_PORT" 2>/dev/null |
      python3 -c 'import re, sys
vid = sys.argv[1]
found = set()
for line in sys.stdin:
    m = re.search(r"ec volume id:" + vid + r"\b.*?shards:\[([0-9 ]*)\]", line)
    if m:
        found.update(m.group(1).split())
print(len(found))' "$vid")
    [ "$shards" = 10 ] && break
    sleep 0.2
  done
  [ "$shards" = 10 ] || { echo "SeaweedFS volume $vid shows $shards shards, not 10" >&2; exit 1; }
  drop_cache
  started=$(now)
  printf 'lock\nec.rebuild -collection= -apply\nunlock\n' |
    "$WEED" shell -master="$SWFS_IP:$SWFS_MASTER_PORT" >"$WORK/ec-rebuild-$round.log" 2>&1
  rebuild_seconds=$(since "$started")
  error=$(grep -m1 -i '^error\|failed' "$WORK/ec-rebuild-$round.log" || true)
  python3 -c 'import json, sys
print(json.dumps({"round": int(sys.argv[1]), "swfs_volume_bytes": int(sys.argv[2]),
                  "swfs_shard_bytes": int(sys.argv[3]), "swfs_rebuild_seconds": float(sys.argv[4]),
                  "swfs_error": sys.argv[5] or None}))' \
    "$round" "${largest#* }" "$shard_bytes" "$rebuild_seconds" "$error" >>"$OUT"
  stop_all
  rm -rf "$SW"
done

python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
hl = [r for r in rows if "hayloft_repair_seconds" in r]
sw = [r for r in rows if "swfs_rebuild_seconds" in r and not r["swfs_error"]]
errors = [r["swfs_error"] for r in rows if r.get("swfs_error")]
med = lambda rs, f: statistics.median(f(r) for r in rs)
mb = 1e6
print(f"Medians of {len(hl)} rounds; four lost blocks of a {med(hl, lambda r: r['hayloft_volume_bytes']) / 2**20:,.0f} MiB warm volume.")
print()
print("| what | seconds | MB/s rebuilt |")
print("|---|---|---|")
repair = med(hl, lambda r: r["hayloft_repair_seconds"])
rebuild = med(hl, lambda r: r["hayloft_rebuild_seconds"])
written = med(hl, lambda r: r["hayloft_written_bytes"])
print(f"| Hayloft `POST /admin/repair` end to end ({hl[0]['hayloft_blocks_rebuilt']} blocks of {med(hl, lambda r: r['hayloft_block_bytes']) / 2**20:,.1f} MiB) | {repair:.2f} | {written / mb / repair:,.0f} |")
print(f"| Hayloft the rebuild alone (rebuilder) | {rebuild:.2f} | {written / mb / rebuild:,.0f} |")
if sw:
    swr = med(sw, lambda r: r["swfs_rebuild_seconds"])
    shard = med(sw, lambda r: r["swfs_shard_bytes"])
    print(f"| SeaweedFS `ec.rebuild -apply` end to end (4 shards of {shard / 2**20:,.1f} MiB) | {swr:.2f} | {4 * shard / mb / swr:,.0f} |")
    print()
    print(f"- Hayloft end to end / SeaweedFS end to end, in time: {swr / repair:.2f}x faster")
for error in sorted(set(errors)):
    print(f"- SeaweedFS ec.rebuild failed in {errors.count(error)} round(s): {error}")
PY
echo "raw results: $OUT" >&2
