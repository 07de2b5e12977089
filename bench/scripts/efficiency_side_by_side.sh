#!/usr/bin/env bash
# Storage efficiency side by side, same machine, same run: the same BLOB set
# (sizes from the efficiency benchmark's photo-store mix, `loadgen --mix`:
# upload i is the same BLOB in both) stored in Hayloft and in SeaweedFS 4.48,
# then erasure-coded in both, read healthy and with four of fourteen
# holders gone, and 25% of one warm volume deleted.
#
#   Hayloft: `hayloft up --spawn` (three stores in three racks, a cell of 14
#     storage nodes in 14 racks, a backoff node).
#   SeaweedFS: a master and three volume servers in three racks,
#     replication 020 (three copies); before `ec.encode`, 11 more volume
#     servers in 11 more racks, so that each volume's 14 shards spread one
#     per server (SeaweedFS copies shards only between non-loopback
#     addresses: its servers bind SWFS_IP, still this host).
# Steps:
#   1. COUNT BLOBs uploaded to each at concurrency CONCURRENCY (SeaweedFS
#      with ?fsync=true unless SWFS_FSYNC=0, for equal durability: Hayloft
#      fsyncs every upload before it answers);
#   2. ROUNDS hot fetch rounds of FETCHES requests (every byte checked);
#   3. bytes on disk per live byte;
#   4. every volume erasure-coded, one at a time, each timed: Hayloft locks
#      its volumes and migrates each (`POST /admin/volumes/V/migrate`: encode,
#      verify every block and needle, flip, the routers' cache wait, hot
#      replicas retired); SeaweedFS `ec.encode -volumeId=V`; bytes on disk
#      per live byte again;
#   5. ROUNDS warm fetch rounds;
#   6. 25% of the live bytes of each system's largest warm volume deleted: the
#      bytes its files hold before and after, over its live bytes;
#   7. four holders killed in each (f4-11..14; SeaweedFS servers 11..14:
#      four shards of every volume), ROUNDS fetch rounds of the live BLOBs.
# Prints a Markdown table with medians and Hayloft/SeaweedFS ratios; raw
# JSON lines go to $WORK/results.jsonl.
#
# Usage: bench/scripts/efficiency_side_by_side.sh          (from the repository root)
# Environment (all optional):
#   COUNT=3000 FETCHES=3000 ROUNDS=3 CONCURRENCY=16 SEED=1 VOLUME_SIZE=64MiB
#   MIX=thumb=2KiB-16KiB:55,photo=32KiB-512KiB:42,video=1MiB-8MiB:3
#   SWFS_FSYNC=1  SWFS_VENV=/tmp/swfs-venv SWFS_VERSION=4.48 (installed there if missing)
#   WORK=<temp dir>  HAYLOFT_PORT=18080  SWFS_MASTER_PORT=19333  SWFS_VOLUME_PORT=18180
#   SWFS_IP=<this host's first non-loopback address>  KEEP_DATA=1
set -euo pipefail
cd "$(dirname "$0")/../.."

COUNT="${COUNT:-3000}"
FETCHES="${FETCHES:-3000}"
ROUNDS="${ROUNDS:-3}"
CONCURRENCY="${CONCURRENCY:-16}"
SEED="${SEED:-1}"
VOLUME_SIZE="${VOLUME_SIZE:-64MiB}"
MIX="${MIX:-thumb=2KiB-16KiB:55,photo=32KiB-512KiB:42,video=1MiB-8MiB:3}"
SWFS_FSYNC="${SWFS_FSYNC:-1}"
SWFS_VENV="${SWFS_VENV:-/tmp/swfs-venv}"
SWFS_VERSION="${SWFS_VERSION:-4.48}"
HAYLOFT_PORT="${HAYLOFT_PORT:-18080}"
SWFS_MASTER_PORT="${SWFS_MASTER_PORT:-19333}"
SWFS_VOLUME_PORT="${SWFS_VOLUME_PORT:-18180}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/hayloft-efficiency.XXXXXX")}"
RESULTS="$WORK/results.jsonl"
IP=127.0.0.1
SWFS_IP="${SWFS_IP:-$(hostname -I | tr ' ' '\n' | grep -E '^[0-9]+\.' | grep -v '^127\.' | head -1)}"
[ -n "$SWFS_IP" ] || { echo "no non-loopback IPv4 address for SeaweedFS (set SWFS_IP)" >&2; exit 1; }
mkdir -p "$WORK"
: >"$RESULTS"

# shellcheck source=bench/scripts/lib.sh
. bench/scripts/lib.sh
cleanup() {
  stop_all
  if [ -z "${KEEP_DATA:-}" ]; then rm -rf "$DATA"/hayloft "$DATA"/swfs; fi
  unmount_scratch
}
on_exit cleanup
choose_data_dir
HL="$DATA/hayloft"
SW="$DATA/swfs"
router="http://$IP:$HAYLOFT_PORT"
master="http://$SWFS_IP:$SWFS_MASTER_PORT"

build_release
cargo build --release --quiet -p bench --bin on-disk
ON_DISK=target/release/on-disk
install_weed

fetch() { # label target urls
  sync
  "$LOADGEN" --target "$2" --url "http://$IP" --fetch-urls "$3" --concurrency "$CONCURRENCY" \
    --requests "$FETCHES" --warmup 100 --label "$1" >>"$RESULTS"
}
# Bytes of SeaweedFS's volume files (data, index, EC shards, their index and
# journal), for every volume or only VOLUME's.
swfs_bytes() { # [volume]
  python3 - "$SW" "${1:-}" <<'PY'
import os, re, sys
root, only = sys.argv[1], sys.argv[2]
total = 0
for d, _, files in os.walk(root):
    for f in files:
        m = re.fullmatch(r"(?:.*_)?(\d+)\.(dat|idx|ec\d\d|ecx|ecj|vif)", f)
        if m and (not only or m.group(1) == only):
            total += os.path.getsize(os.path.join(d, f))
print(total)
PY
}
# Live bytes of a URL list (`URL SIZE SEED` lines), or of VOLUME's BLOBs.
list_bytes() { # urls [volume]
  python3 - "$1" "${2:-}" <<'PY'
import sys
path, only = sys.argv[1], sys.argv[2]
total = 0
for line in open(path):
    url, size, _ = line.split()
    if not only or url.rsplit("/", 1)[1].split(",")[0] == only:
        total += int(size)
print(total)
PY
}
# Bytes of Hayloft's tier files (both tiers), as `on-disk` counts them.
hl_bytes() {
  "$ON_DISK" --data "$HL" --urls "$WORK/hl.urls" | python3 -c '
import json, sys
print(sum(json.loads(line)["total_bytes"] for line in sys.stdin if line.startswith("{")))'
}
record() { # json
  echo "$1" >>"$RESULTS"
}

# --- start both --------------------------------------------------------------
"$HAYLOFT" up --spawn --data "$HL" --listen "$IP:$HAYLOFT_PORT" --volume-size "$VOLUME_SIZE" \
  --max-blob-size 8MiB --warm-after 3650d --migrate-interval 1d >"$WORK/hayloft.log" 2>&1 &
PIDS+=($!)
wait_http "$router/health" "hayloft router"
for _ in $(seq 1 300); do [ -f "$HL/cluster.json" ] && break; sleep 0.2; done

limit_mb=$(python3 -c 'import re, sys; n, u = re.fullmatch(r"(\d+)(MiB|GiB)", sys.argv[1]).groups(); print(int(n) * (1024 if u == "GiB" else 1))' "$VOLUME_SIZE")
start_swfs_master "$SW" "$limit_mb" 020 "$WORK/swfs"
SWFS_VOLUME_PIDS=()
for i in 1 2 3; do start_swfs_volume "$SW" "$i" "$WORK/swfs"; done
wait_swfs_servers "$SWFS_IP" 3
wait_swfs_assign "?replication=020"

# --- 1. upload, 2. hot fetch -------------------------------------------------
fsync_flag=()
[ "$SWFS_FSYNC" = 1 ] && fsync_flag=(--fsync)
"$LOADGEN" --target hayloft --url "$router" --mix "$MIX" --seed "$SEED" \
  --concurrency "$CONCURRENCY" --requests "$COUNT" --warmup 0 --upload-only \
  --save-urls "$WORK/hl.urls" --label hayloft-upload >>"$RESULTS"
"$LOADGEN" --target seaweedfs --url "$master" --mix "$MIX" --seed "$SEED" --replication 020 \
  "${fsync_flag[@]}" --concurrency "$CONCURRENCY" --requests "$COUNT" --warmup 0 --upload-only \
  --save-urls "$WORK/sw.urls" --label swfs-upload >>"$RESULTS"
for _ in $(seq 1 "$ROUNDS"); do
  fetch hayloft-hot hayloft "$WORK/hl.urls"
  fetch swfs-hot seaweedfs "$WORK/sw.urls"
done

# --- 3. bytes on disk, replicated ----------------------------------------------
sync
record "{\"disk\": \"hayloft-hot\", \"bytes\": $(hl_bytes), \"logical_bytes\": $(list_bytes "$WORK/hl.urls")}"
record "{\"disk\": \"swfs-hot\", \"bytes\": $(swfs_bytes), \"logical_bytes\": $(list_bytes "$WORK/sw.urls")}"

# --- 4. erasure coding, one volume at a time ---------------------------------
vids=$(lock_writable_volumes "$HL" "$router")
for vid in $vids; do
  started=$(date +%s.%N)
  curl -fsS -X POST "$router/admin/volumes/$vid/migrate" >"$WORK/job.json"
  # From the cluster's log: the time to the flip (from then on the volume
  # is served warm), before the routers' cache wait and the retirement.
  python3 - "$WORK/job.json" "$vid" "$started" "$(list_bytes "$WORK/hl.urls" "$vid")" "$WORK/hayloft.log" >>"$RESULTS" <<'PY'
import datetime, json, re, sys, time
job = json.load(open(sys.argv[1]))["jobs"][0]
assert job["error"] is None, job
vid = sys.argv[2]
strip = re.compile(r"\x1b\[[0-9;]*m")
stamps = {}
for line in open(sys.argv[5], errors="replace"):
    line = strip.sub("", line).rstrip() + " "
    for event in ("sealing", "volume is warm"):
        if f" {event} " in line and f"volume={vid} " in line and event not in stamps:
            stamps[event] = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
print(json.dumps({"encode": "hayloft", "volume": int(vid), "live_bytes": int(sys.argv[4]),
                  "seconds": round(time.time() - float(sys.argv[3]), 3), "job_seconds": job["seconds"],
                  "to_flip_seconds": round(stamps["volume is warm"] - stamps["sealing"], 3)}))
PY
done
for i in $(seq 4 14); do start_swfs_volume "$SW" "$i" "$WORK/swfs"; done
wait_swfs_servers "$SWFS_IP" 14
for vid in $(swfs_volume_ids | tr , ' '); do
  live=$(list_bytes "$WORK/sw.urls" "$vid")
  [ "$live" -gt 0 ] || continue
  started=$(date +%s.%N)
  printf 'lock\nec.encode -volumeId=%s\nunlock\n' "$vid" |
    "$WEED" shell -master="$SWFS_IP:$SWFS_MASTER_PORT" >>"$WORK/ec.log" 2>&1
  record "{\"encode\": \"swfs\", \"volume\": $vid, \"live_bytes\": $live, \"seconds\": $(python3 -c "import time; print(round(time.time() - $started, 3))")}"
done
sleep 2
sync
record "{\"disk\": \"hayloft-warm\", \"bytes\": $(hl_bytes), \"logical_bytes\": $(list_bytes "$WORK/hl.urls")}"
record "{\"disk\": \"swfs-ec\", \"bytes\": $(swfs_bytes), \"logical_bytes\": $(list_bytes "$WORK/sw.urls")}"
# SeaweedFS reads spread over servers 1..10 (11..14 are killed later).
python3 - "$WORK/sw.urls" "$SWFS_VOLUME_PORT" "$SWFS_IP" <<'PY'
import sys
path, base, ip = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = []
for n, line in enumerate(l for l in open(path) if l.strip()):
    url, size, seed = line.split()
    out.append(f"http://{ip}:{base + 1 + n % 10}/{url.rsplit('/', 1)[1]} {size} {seed}")
open(path + ".ec", "w").write("\n".join(out) + "\n")
PY

# --- 5. warm fetch -------------------------------------------------------------
for _ in $(seq 1 "$ROUNDS"); do
  fetch hayloft-warm hayloft "$WORK/hl.urls"
  fetch swfs-ec seaweedfs "$WORK/sw.urls.ec"
done

# --- 6. 25% of the largest warm volume deleted ------------------------------
delete_quarter() { # label urls volume bytes_command...
  local label=$1 urls=$2 vid=$3
  shift 3
  local before after
  sync
  before=$("$@")
  python3 - "$urls" "$vid" <<'PY'
import http.client, sys, urllib.parse
path, vid = sys.argv[1], sys.argv[2]
lines = [l for l in open(path) if l.strip()]
mine = [l for l in lines if l.split()[0].rsplit("/", 1)[1].split(",")[0] == vid]
# A quarter of the volume's live bytes, every fourth BLOB first.
budget = sum(int(l.split()[1]) for l in mine) // 4
gone = set()
for line in mine[::4] + mine:
    size = int(line.split()[1])
    if line not in gone and size <= budget:
        gone.add(line)
        budget -= size
for line in gone:
    url = urllib.parse.urlsplit(line.split()[0])
    connection = http.client.HTTPConnection(url.netloc, timeout=30)
    connection.request("DELETE", url.path)
    answer = connection.getresponse()
    answer.read()
    if answer.status not in (200, 202, 204):
        sys.exit(f"delete {url.geturl()} answered {answer.status}")
    connection.request("GET", url.path)
    answer = connection.getresponse()
    answer.read()
    if answer.status != 404:
        sys.exit(f"deleted {url.geturl()} still answers {answer.status}")
open(path + ".live", "w").write("".join(l for l in lines if l not in gone))
PY
  sleep 1
  sync
  after=$("$@")
  record "{\"deletes\": \"$label\", \"volume\": $vid, \"bytes_before\": $before, \"bytes_after\": $after, \"live_bytes_before\": $(list_bytes "$urls" "$vid"), \"live_bytes_after\": $(list_bytes "$urls.live" "$vid")}"
}
hl_volume_bytes() { # volume
  python3 - "$HL" "$1" <<'PY'
import os, re, sys
root, vid = sys.argv[1], int(sys.argv[2])
total = 0
for d, _, files in os.walk(root):
    for f in files:
        m = re.match(r"volume-(\d{10})\.", f)
        if m and int(m.group(1)) == vid:
            total += os.path.getsize(os.path.join(d, f))
print(total)
PY
}
largest() { # urls
  python3 - "$1" <<'PY'
import collections, sys
sizes = collections.Counter()
for line in open(sys.argv[1]):
    url, size, _ = line.split()
    sizes[url.rsplit("/", 1)[1].split(",")[0]] += int(size)
print(sizes.most_common(1)[0][0])
PY
}
hl_vid=$(largest "$WORK/hl.urls")
sw_vid=$(largest "$WORK/sw.urls")
delete_quarter hayloft "$WORK/hl.urls" "$hl_vid" hl_volume_bytes "$hl_vid"
delete_quarter swfs "$WORK/sw.urls.ec" "$sw_vid" swfs_bytes "$sw_vid"

# --- 7. four holders down ------------------------------------------------------
for id in f4-11 f4-12 f4-13 f4-14; do
  pid=$(python3 -c 'import json,sys; print(next(n["pid"] for n in json.load(open(sys.argv[1]))["nodes"] if n["id"]==sys.argv[2]))' "$HL/cluster.json" "$id")
  kill -9 "$pid"
done
for i in 11 12 13 14; do kill -9 "${SWFS_VOLUME_PIDS[$((i - 1))]}"; done
sleep 1
for _ in $(seq 1 "$ROUNDS"); do
  fetch hayloft-down4 hayloft "$WORK/hl.urls.live"
  fetch swfs-down4 seaweedfs "$WORK/sw.urls.ec.live"
done
stop_all

# --- the table ---------------------------------------------------------------
python3 - "$RESULTS" "$SWFS_FSYNC" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
fsync = sys.argv[2] == "1"
def runs(label):
    return [r for r in rows if r.get("label") == label]
def med(values):
    return statistics.median(values) if values else float("nan")
def phase(label, phase, field):
    return med([r[phase][field] for r in runs(label)])
def errors(label, phase):
    return sum(r[phase]["errors"] for r in runs(label))
out = []
def row(what, hayloft, swfs, unit="", better="higher"):
    ratio = hayloft / swfs if swfs else float("nan")
    out.append(f"| {what} | {hayloft:,.{2 if hayloft < 100 else 0}f}{unit} | {swfs:,.{2 if swfs < 100 else 0}f}{unit} | "
               f"**{ratio:.2f}x** ({better} is better) |")
for side, label in (("upload", "upload"),):
    for metric, name, unit, better in (("requests_per_second", "upload req/s", "", "higher"),
                                        ("p99_ms", "upload p99", " ms", "lower")):
        row(name, phase("hayloft-upload", "upload", metric), phase("swfs-upload", "upload", metric), unit, better)
for tag, hl, sw in (("hot fetch", "hayloft-hot", "swfs-hot"), ("warm fetch, healthy", "hayloft-warm", "swfs-ec"),
                    ("fetch, 4 of 14 holders down", "hayloft-down4", "swfs-down4")):
    row(f"{tag} req/s", phase(hl, "fetch", "requests_per_second"), phase(sw, "fetch", "requests_per_second"))
    row(f"{tag} p50", phase(hl, "fetch", "p50_ms"), phase(sw, "fetch", "p50_ms"), " ms", "lower")
    row(f"{tag} p99", phase(hl, "fetch", "p99_ms"), phase(sw, "fetch", "p99_ms"), " ms", "lower")
disk = {r["disk"]: r["bytes"] / r["logical_bytes"] for r in rows if "disk" in r}
row("bytes on disk per live byte, replicated", disk["hayloft-hot"], disk["swfs-hot"], "", "lower")
row("bytes on disk per live byte, erasure-coded", disk["hayloft-warm"], disk["swfs-ec"], "", "lower")
enc = {side: [r for r in rows if r.get("encode") == side] for side in ("hayloft", "swfs")}
row("erasure-code a volume, end to end, median", med([r["seconds"] for r in enc["hayloft"]]),
    med([r["seconds"] for r in enc["swfs"]]), " s", "lower")
row("erasure-code a volume, until served warm (Hayloft: to the flip), median",
    med([r["to_flip_seconds"] for r in enc["hayloft"]]), med([r["seconds"] for r in enc["swfs"]]), " s", "lower")
row("erasure-code, live MB/s until served warm (median per volume)",
    med([r["live_bytes"] / r["to_flip_seconds"] / 1e6 for r in enc["hayloft"]]),
    med([r["live_bytes"] / r["seconds"] / 1e6 for r in enc["swfs"]]))
dels = {r["deletes"]: r for r in rows if "deletes" in r}
held = {k: (d["bytes_after"] / d["live_bytes_after"]) for k, d in dels.items()}
row("25% of a warm volume deleted: its bytes on disk per live byte", held["hayloft"], held["swfs"], "", "lower")
kept = {k: (d["bytes_before"] - d["bytes_after"]) for k, d in dels.items()}
print(f"SeaweedFS {'with' if fsync else 'without'} ?fsync=true; medians of the rounds. Errors: " +
      ", ".join(f"{l} {errors(l, p)}" for l, p in (("hayloft-down4", "fetch"), ("swfs-down4", "fetch"),
                                                   ("hayloft-upload", "upload"), ("swfs-upload", "upload"))))
print("Deletes reclaimed " + ", ".join(f"{k} {v / 1e6:.2f} MB of {dels[k]['bytes_before'] / 1e6:.1f} MB" for k, v in kept.items()) +
      f"; encoded {len(enc['hayloft'])} Hayloft and {len(enc['swfs'])} SeaweedFS volumes.")
print()
print("| | Hayloft | SeaweedFS 4.48 | Hayloft / SeaweedFS |")
print("|---|---:|---:|---:|")
print("\n".join(out))
PY
