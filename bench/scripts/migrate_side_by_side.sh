#!/usr/bin/env bash
# Migration side by side, same machine, same run. Per round, on fresh
# systems:
#   1. Hayloft (`hayloft up --spawn`, 1 GiB volumes, `--migration-rate 0`):
#      COUNT BLOBs of SIZE uploaded one at a time, so that one volume fills
#      and locks; a raw copy of that volume's data file on the same disk
#      (`cp`, then `sync` of the copy); then the volume migrated
#      (`POST /admin/volumes/1/migrate`: plan, stream-encode to 14 storage
#      nodes, every block and needle verified, deletes carried over, flip,
#      every router's cached entry refreshed, the hot replicas retired).
#      Stage times come from the cluster's log; the peak resident memory
#      (VmHWM) of every Hayloft process is recorded, and the CPU time the
#      job took: the machine's (busy and waiting for IO, from /proc/stat)
#      and the sealing storage node's.
#   2. SeaweedFS 4.48 (1 master with a 1 GiB volume size limit, 14 volume
#      servers in 14 racks): as many BLOBs of SIZE as Hayloft's volume held
#      posted into one volume, then `ec.encode` of that volume (shards
#      spread one per server), timed end to end and for its server-side
#      encode (`generateEcShards`), with the machine's CPU time as above.
# The summary gives medians over the rounds and the ratios the migration
# issue sets targets on.
#
# Usage: bench/scripts/migrate_side_by_side.sh            (from the repository root)
# Environment (all optional):
#   ROUNDS=3 SIZE=64KiB COUNT=16500 (just over one 1 GiB volume of 64 KiB BLOBs)
#   MIGRATION_RATE=0 (Hayloft's --migration-rate; 0: no limit)
#   SWFS_VENV=/tmp/swfs-venv SWFS_VERSION=4.48   (installed there if missing)
#   WORK=<temp dir>  HAYLOFT_PORT=18080  SWFS_MASTER_PORT=19333  SWFS_VOLUME_PORT=18180
#   SWFS_IP=<this host's first non-loopback address> (see warm_side_by_side.sh)
#   SCRATCH_GIB=<size of a scratch ext4 file system, on the same disk, that
#     both systems' data and the raw copy go to; 0: none>. Default 12 when the
#     disk under WORK is 88% used or more (SeaweedFS places no EC shard on a
#     disk 90% used; see lib.sh mount_scratch), else 0.
# Raw JSON lines go to $WORK/migrate.jsonl; the summary is printed as Markdown.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS="${ROUNDS:-3}"
SIZE="${SIZE:-64KiB}"
COUNT="${COUNT:-16500}"
MIGRATION_RATE="${MIGRATION_RATE:-0}"
SIZE_BYTES=$(python3 -c 'import re, sys; n, u = re.fullmatch(r"(\d+)(KiB|MiB|)", sys.argv[1]).groups(); print(int(n) * {"KiB": 1024, "MiB": 1 << 20, "": 1}[u])' "$SIZE")
SWFS_VENV="${SWFS_VENV:-/tmp/swfs-venv}"
SWFS_VERSION="${SWFS_VERSION:-4.48}"
HAYLOFT_PORT="${HAYLOFT_PORT:-18080}"
SWFS_MASTER_PORT="${SWFS_MASTER_PORT:-19333}"
SWFS_VOLUME_PORT="${SWFS_VOLUME_PORT:-18180}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/hayloft-migrate.XXXXXX")}"
OUT="$WORK/migrate.jsonl"
IP=127.0.0.1
SWFS_IP="${SWFS_IP:-$(hostname -I | tr ' ' '\n' | grep -E '^[0-9]+\.' | grep -v '^127\.' | head -1)}"
[ -n "$SWFS_IP" ] || { echo "no non-loopback IPv4 address for SeaweedFS (set SWFS_IP)" >&2; exit 1; }
mkdir -p "$WORK"
: >"$OUT"

# shellcheck source=bench/scripts/lib.sh
. bench/scripts/lib.sh
DATA="$WORK"
cleanup() {
  stop_all
  rm -rf "$DATA"/hayloft-* "$DATA"/swfs-* "$DATA"/raw-copy
  unmount_scratch
}
on_exit cleanup
choose_data_dir

build_release
install_weed

now() { date +%s.%N; }
since() { python3 -c "import sys; print(round($(now) - $1, 3))"; }
TICKS=$(getconf CLK_TCK)
# The machine's CPU seconds so far: busy, then waiting for IO.
machine_cpu() { awk -v t="$TICKS" '/^cpu /{printf "%.2f %.2f\n", ($2+$3+$4+$7+$8+$9)/t, $6/t}' /proc/stat; }
# User and system CPU seconds of process $1 so far.
process_cpu() { awk -v t="$TICKS" '{printf "%.2f\n", ($14+$15)/t}' "/proc/$1/stat"; }

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round" >&2
  HL="$DATA/hayloft-$round"
  SW="$DATA/swfs-$round"
  router="http://$IP:$HAYLOFT_PORT"

  # --- Hayloft ---------------------------------------------------------------
  "$HAYLOFT" up --spawn --data "$HL" --listen "$IP:$HAYLOFT_PORT" --volume-size 1GiB \
    --warm-after 1d --migration-rate "$MIGRATION_RATE" >"$WORK/hayloft-$round.log" 2>&1 &
  PIDS+=($!)
  wait_http "$router/health" "hayloft router"
  for _ in $(seq 1 300); do [ -f "$HL/cluster.json" ] && break; sleep 0.2; done
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
  data="$HL/store-1/volume-0000000001.data"
  volume_bytes=$(stat -c %s "$data")
  sync
  started=$(now)
  cp "$data" "$DATA/raw-copy"
  sync "$DATA/raw-copy"
  copy_seconds=$(since "$started")
  rm -f "$DATA/raw-copy"
  sync
  # The sealing node: `seal::seal` picks volume N's as the storage node at
  # N modulo their count, by id.
  sealer=$(python3 -c 'import json, sys
cell = sorted((n for n in json.load(open(sys.argv[1]))["nodes"] if n["role"] == "f4-storage"), key=lambda n: n["id"])
print(cell[1 % len(cell)]["pid"])' "$HL/cluster.json")
  cpu_before="$(machine_cpu) $(process_cpu "$sealer")"
  started=$(now)
  curl -fsS -X POST "$router/admin/volumes/1/migrate" >"$WORK/job-$round.json"
  migrate_seconds=$(since "$started")
  cpu_after="$(machine_cpu) $(process_cpu "$sealer")"
  python3 - "$HL" "$WORK/hayloft-$round.log" "$WORK/job-$round.json" "$volume_bytes" \
    "$copy_seconds" "$migrate_seconds" "$round" "$cpu_before" "$cpu_after" >>"$OUT" <<'PY'
import datetime, json, os, re, sys
hl, log, job_path, volume_bytes, copy_s, migrate_s, round_, cpu0, cpu1 = sys.argv[1:]
busy, iowait, sealer = (round(b - a, 2) for a, b in zip(map(float, cpu0.split()), map(float, cpu1.split())))
job = json.load(open(job_path))["jobs"][0]
assert job["step"] == "warm", job
strip = re.compile(r"\x1b\[[0-9;]*m")
stamps = {}
for line in open(log, errors="replace"):
    line = strip.sub("", line).rstrip() + " "
    for event in ("sealing", "seal planned", "seal distributed",
                  "hot deletes carried into the journal", "volume is warm", "migrated"):
        if f" {event} " in line and "volume=1 " in line and event not in stamps:
            stamps[event] = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
def between(a, b):
    return round(stamps[b] - stamps[a], 3)
nodes = json.load(open(os.path.join(hl, "cluster.json")))["nodes"]
peaks = {}
for n in nodes:
    try:
        for line in open(f"/proc/{n['pid']}/status"):
            if line.startswith("VmHWM:"):
                peaks[n["id"]] = int(line.split()[1]) * 1024
    except OSError:
        pass
print(json.dumps({
    "round": int(round_), "hayloft_volume_bytes": int(volume_bytes),
    "needles": job["needles"], "copy_seconds": float(copy_s), "migrate_seconds": float(migrate_s),
    "plan_seconds": between("sealing", "seal planned"),
    "encode_seconds": between("seal planned", "seal distributed"),
    "verify_carry_seconds": between("seal distributed", "hot deletes carried into the journal"),
    "to_flip_seconds": between("sealing", "volume is warm"),
    "drain_retire_seconds": between("volume is warm", "migrated"),
    "cpu_busy_seconds": busy, "cpu_iowait_seconds": iowait, "sealer_cpu_seconds": sealer,
    "peak_rss_bytes": peaks,
}))
PY
  stop_all
  rm -rf "$HL"

  # --- SeaweedFS -------------------------------------------------------------
  # As many BLOBs as Hayloft's volume held, posted straight into one
  # volume (the first one assigned; fids made up from that volume's id)
  # one at a time, so that one volume holds them all as Hayloft's did:
  # through `/dir/assign`, SeaweedFS spreads uploads over several volumes.
  start_swfs_cell "$SW" 1024 "$WORK/swfs-$round"
  needles=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["jobs"][0]["needles"])' "$WORK/job-$round.json")
  swfs_fill_volume "$SIZE_BYTES" "$needles"
  # The master learns volume sizes from heartbeats: wait until it lists
  # the volume with every BLOB (their data at least).
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
  sync
  cpu_before=$(machine_cpu)
  started=$(now)
  # Every line of `weed shell` stamped as it comes: the server-side encode
  # is the time from `generateEcShards` to the first `mount`.
  printf 'lock\nec.encode -volumeId=%s\nunlock\n' "$vid" |
    "$WEED" shell -master="$SWFS_IP:$SWFS_MASTER_PORT" 2>&1 |
    python3 -uc 'import sys, time
for line in sys.stdin: print(f"{time.time():.3f} {line}", end="")' >"$WORK/ec-$round.log" || true
  ec_seconds=$(since "$started")
  cpu_after=$(machine_cpu)
  python3 - "$WORK/ec-$round.log" "$round" "$vid" "${largest#* }" "$ec_seconds" \
    "$cpu_before" "$cpu_after" >>"$OUT" <<'PY'
import json, sys
log, round_, vid, size, ec_s, cpu0, cpu1 = sys.argv[1:]
busy, iowait = (round(b - a, 2) for a, b in zip(map(float, cpu0.split()), map(float, cpu1.split())))
stamps, error = {}, None
for line in open(log, errors="replace"):
    stamp, _, text = line.partition(" ")
    for word in ("generateEcShards", "mount"):
        if text.startswith(word) and word not in stamps:
            stamps[word] = float(stamp)
    # A failed command shows in `weed shell`'s output, not its status.
    if text.startswith("error") and error is None:
        error = text.strip()
generate = stamps.get("mount", 0) - stamps["generateEcShards"] if len(stamps) == 2 else None
print(json.dumps({"round": int(round_), "swfs_volume": int(vid), "swfs_volume_bytes": int(size),
                  "ec_encode_seconds": float(ec_s),
                  "ec_generate_seconds": round(generate, 3) if generate else None,
                  "cpu_busy_seconds": busy, "cpu_iowait_seconds": iowait,
                  "ec_encode_error": error}))
PY
  stop_all
  rm -rf "$SW"
done

python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
hl = [r for r in rows if "migrate_seconds" in r]
sw = [r for r in rows if "ec_encode_seconds" in r and not r["ec_encode_error"]]
sw_errors = [r["ec_encode_error"] for r in rows if r.get("ec_encode_error")]
med = lambda rs, f: statistics.median(f(r) for r in rs)
mb = 1e6
volume = med(hl, lambda r: r["hayloft_volume_bytes"])
rate = lambda seconds: volume / mb / seconds
copy = med(hl, lambda r: r["copy_seconds"])
encode = med(hl, lambda r: r["encode_seconds"])
to_flip = med(hl, lambda r: r["to_flip_seconds"])
total = med(hl, lambda r: r["migrate_seconds"])

print(f"Medians of {len(hl)} rounds; a {volume / 2**20:,.0f} MiB volume of {hl[0]['needles']:,} BLOBs.")
print()
print("| what | seconds | MB/s of volume |")
print("|---|---|---|")
print(f"| raw copy of the data file (cp + sync) | {copy:.2f} | {rate(copy):,.0f} |")
print(f"| Hayloft plan (the source's index) | {med(hl, lambda r: r['plan_seconds']):.2f} | |")
print(f"| Hayloft encoding stage (stream, check, encode, 14 nodes, fsync) | {encode:.2f} | {rate(encode):,.0f} |")
print(f"| Hayloft verify (every block, every needle) + deletes carried | {med(hl, lambda r: r['verify_carry_seconds']):.2f} | |")
print(f"| Hayloft start to flip | {to_flip:.2f} | {rate(to_flip):,.0f} |")
print(f"| Hayloft whole job (routers refreshed, the hot replicas retired) | {total:.2f} | {rate(total):,.0f} |")
if sw:
    ec = med(sw, lambda r: r["ec_encode_seconds"])
    generate = med(sw, lambda r: r["ec_generate_seconds"])
    sw_bytes = med(sw, lambda r: r["swfs_volume_bytes"])
    print(f"| SeaweedFS server-side encode (generateEcShards) of a {sw_bytes / 2**20:,.0f} MiB volume | {generate:.2f} | {sw_bytes / mb / generate:,.0f} |")
    print(f"| SeaweedFS ec.encode end to end (encode, spread the shards, delete the volume) | {ec:.2f} | {sw_bytes / mb / ec:,.0f} |")
print()
print(f"- start to flip / raw copy rate: {copy / to_flip:.2f}x; encoding stage / raw copy rate: {copy / encode:.2f}x")
if sw:
    print(f"- Hayloft start to flip rate / SeaweedFS ec.encode rate: {(volume / to_flip) / (sw_bytes / ec):.2f}x "
          f"(whole job: {(volume / total) / (sw_bytes / ec):.2f}x)")
    print(f"- encoding stage rate / SeaweedFS server-side encode rate: {(volume / encode) / (sw_bytes / generate):.2f}x")
busy = lambda rs: med(rs, lambda r: r["cpu_busy_seconds"])
iowait = lambda rs: med(rs, lambda r: r["cpu_iowait_seconds"])
print(f"- CPU over the job, the machine busy / waiting for IO: Hayloft {busy(hl):.2f} / {iowait(hl):.2f} s "
      f"(the sealing node {med(hl, lambda r: r['sealer_cpu_seconds']):.2f} s)"
      + (f"; SeaweedFS ec.encode {busy(sw):.2f} / {iowait(sw):.2f} s" if sw else ""))
for error in sorted(set(sw_errors)):
    print(f"- SeaweedFS ec.encode failed in {sw_errors.count(error)} round(s): {error}")
peaks = {}
for r in hl:
    for node, peak in r["peak_rss_bytes"].items():
        peaks[node] = max(peaks.get(node, 0), peak)
top = sorted(peaks.items(), key=lambda kv: -kv[1])[:4]
print("- peak resident memory (largest): " + ", ".join(f"{n} {p / 2**20:.0f} MiB" for n, p in top))
PY
echo "raw results: $OUT" >&2
