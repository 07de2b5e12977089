#!/usr/bin/env bash
# Warm tier side by side, same machine, same run: the same BLOB set sealed in
# Hayloft (`hayloft warm seal`) and `ec.encode`d in SeaweedFS, fetched at
# concurrency 16, healthy and degraded, plus bytes on disk.
#
# Per size (64 KiB and 1 MiB by default), on a fresh `hayloft up --spawn`
# (3 stores, 14 f4 storage nodes in 14 racks, a backoff node) and a fresh
# SeaweedFS (1 master, 14 volume servers in 14 racks, replication 000):
#   1. COUNT BLOBs uploaded to each (the load generator, `--upload-only`);
#   2. Hayloft's hot fetch of them (`hayloft-hot`);
#   3. Hayloft: every volume locked in the directory and sealed, in
#      parallel; SeaweedFS: `ec.encode` of every volume (shards spread one
#      per server);
#   4. warm healthy fetch of all of them (`hayloft-warm`, `swfs-ec`; the
#      SeaweedFS URLs spread over its servers 1..10);
#   5. Hayloft, the BLOBs whose data starts in block 0 of their stripe:
#      healthy (`hayloft-b0`), with block 0 of every stripe lost
#      (`hayloft-lost1`), and with blocks 0, 1, 2 and 10 lost
#      (`hayloft-lost4`), each also one request at a time (`-c1`: latency
#      without queueing); the backoff node's peak resident memory;
#   6. four storage nodes killed in each (`f4-11..f4-14`; SeaweedFS servers
#      11..14, four shards of every EC volume): fetch of all BLOBs
#      (`hayloft-down4`, `swfs-down4`).
# Every fetch run is ROUNDS rounds of FETCHES requests; the table shows
# medians and ratios. One BLOB of each system is also fetched with wrk
# (installed with apt where missing), an independent load generator.
#
# Usage: bench/scripts/warm_side_by_side.sh            (from the repository root)
# Environment (all optional):
#   SIZES="64KiB 1MiB" ROUNDS=3 CONCURRENCY=16
#   COUNT_64KiB=3072 COUNT_1MiB=192   (BLOBs stored: 192 MiB each)
#   FETCHES_64KiB=4000 FETCHES_1MiB=800
#   SWFS_VENV=/tmp/swfs-venv SWFS_VERSION=4.48   (installed there if missing)
#   WORK=<temp dir>  HAYLOFT_PORT=18080  SWFS_MASTER_PORT=19333  SWFS_VOLUME_PORT=18180
#   SWFS_IP=<this host's first non-loopback address>: SeaweedFS 4.48 refuses to
#     copy EC shards between volume servers on loopback addresses (a guard
#     against requests to internal endpoints), so `ec.encode` could not spread
#     them; its servers bind this host's own address instead (still local).
#   KEEP_DATA=1      keep both systems' data under $WORK
#   SPAWN=1          0: `hayloft up` without `--spawn`, every node in one
#                    process (its hops in process, see docs/ARCHITECTURE.md,
#                    "Roles in one process"); step 5's memory is then the
#                    whole process's, and step 6 (nodes killed) is skipped
#                    in both systems
# Raw JSON lines go to $WORK/results.jsonl, disk and memory figures to
# $WORK/figures.jsonl; the summary is printed as Markdown.
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZES="${SIZES:-64KiB 1MiB}"
SPAWN="${SPAWN:-1}"
ROUNDS="${ROUNDS:-3}"
CONCURRENCY="${CONCURRENCY:-16}"
SWFS_VENV="${SWFS_VENV:-/tmp/swfs-venv}"
SWFS_VERSION="${SWFS_VERSION:-4.48}"
HAYLOFT_PORT="${HAYLOFT_PORT:-18080}"
SWFS_MASTER_PORT="${SWFS_MASTER_PORT:-19333}"
SWFS_VOLUME_PORT="${SWFS_VOLUME_PORT:-18180}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/hayloft-warm.XXXXXX")}"
RESULTS="$WORK/results.jsonl"
FIGURES="$WORK/figures.jsonl"
IP=127.0.0.1
SWFS_IP="${SWFS_IP:-$(hostname -I | tr ' ' '\n' | grep -E '^[0-9]+\.' | grep -v '^127\.' | head -1)}"
[ -n "$SWFS_IP" ] || { echo "no non-loopback IPv4 address for SeaweedFS (set SWFS_IP)" >&2; exit 1; }
mkdir -p "$WORK"
: >"$RESULTS"
: >"$FIGURES"

# shellcheck source=bench/scripts/lib.sh
. bench/scripts/lib.sh
cleanup() {
  stop_all
  if [ -z "${KEEP_DATA:-}" ]; then rm -rf "$WORK"/hayloft-* "$WORK"/swfs-*; fi
}
on_exit cleanup

build_release
install_weed

count_for() { local v="COUNT_$1"; case "$1" in 64KiB) echo "${!v:-3072}" ;; *) echo "${!v:-192}" ;; esac; }
fetches_for() { local v="FETCHES_$1"; case "$1" in 64KiB) echo "${!v:-4000}" ;; *) echo "${!v:-800}" ;; esac; }

fetch() { # label target urls size [concurrency requests]
  sync
  "$LOADGEN" --target "$2" --url "http://$IP" --fetch-urls "$3" --size "$4" \
    --concurrency "${5:-$CONCURRENCY}" --requests "${6:-$(fetches_for "$4")}" --warmup 200 \
    --label "$1" >>"$RESULTS"
}
# Latency without queueing: one request at a time (as SeaweedFS's degraded
# reads were measured here, `ectool.py`).
fetch1() { # label urls size
  local n=400
  [ "$3" = 64KiB ] || n=150
  fetch "$1" hayloft "$2" "$3" 1 "$n"
}
install_wrk
wrk_check() { # label url size
  wrk_json "$1" "$2" "$CONCURRENCY" 10s "$3" >>"$FIGURES"
}

for size in $SIZES; do
  echo "== $size" >&2
  HL="$WORK/hayloft-$size"
  SW="$WORK/swfs-$size"
  router="http://$IP:$HAYLOFT_PORT"

  # --- Hayloft ---------------------------------------------------------------
  spawn_flag=(--spawn)
  [ "$SPAWN" = 1 ] || spawn_flag=()
  "$HAYLOFT" up "${spawn_flag[@]}" --data "$HL" --listen "$IP:$HAYLOFT_PORT" --volume-size 256MiB \
    >"$WORK/hayloft-$size.log" 2>&1 &
  PIDS+=($!)
  up_pid=$!
  wait_http "$router/health" "hayloft router"
  for _ in $(seq 1 300); do [ -f "$HL/cluster.json" ] && break; sleep 0.2; done

  # --- SeaweedFS: 1 master, 14 volume servers in 14 racks ----------------------
  start_swfs_cell "$SW" 256 "$WORK/swfs-$size"

  # 1. the same BLOB set into both
  count=$(count_for "$size")
  "$LOADGEN" --target hayloft --url "$router" --size "$size" --concurrency "$CONCURRENCY" \
    --requests "$count" --warmup 0 --upload-only --save-urls "$WORK/hl-$size.urls" \
    --label hayloft-upload >>"$RESULTS"
  "$LOADGEN" --target seaweedfs --url "http://$SWFS_IP:$SWFS_MASTER_PORT" --size "$size" \
    --concurrency "$CONCURRENCY" --requests "$count" --warmup 0 --upload-only \
    --save-urls "$WORK/sw-$size.urls" --label swfs-upload >>"$RESULTS"

  # 2. Hayloft's hot fetch of the set
  for _ in $(seq 1 "$ROUNDS"); do fetch hayloft-hot hayloft "$WORK/hl-$size.urls" "$size"; done

  # 3. seal every Hayloft volume; ec.encode every SeaweedFS volume
  vids=$(lock_writable_volumes "$HL" "$router")
  seal_started=$(date +%s.%N)
  seal_pids=()
  for vid in $vids; do
    "$HAYLOFT" warm seal --volume "$vid" --router "$router" >>"$WORK/seal-$size.log" 2>&1 &
    seal_pids+=($!)
  done
  for pid in "${seal_pids[@]}"; do wait "$pid"; done
  seal_seconds=$(python3 -c "import time; print(round(time.time() - $seal_started, 1))")
  swfs_vids=$(swfs_volume_ids)
  ec_started=$(date +%s.%N)
  printf 'lock\nec.encode -volumeIds=%s\nunlock\n' "$swfs_vids" |
    "$WEED" shell -master="$SWFS_IP:$SWFS_MASTER_PORT" >"$WORK/ec-$size.log" 2>&1
  ec_seconds=$(python3 -c "import time; print(round(time.time() - $ec_started, 1))")
  sleep 2
  # SeaweedFS fetches spread over volume servers 1..10 (11..14 are killed later).
  python3 - "$WORK/sw-$size.urls" "$SWFS_VOLUME_PORT" "$SWFS_IP" <<'PY'
import sys
path, base, ip = sys.argv[1], int(sys.argv[2]), sys.argv[3]
urls = [u.strip() for u in open(path) if u.strip()]
out = []
for n, url in enumerate(urls):
    fid = url.rsplit("/", 1)[1]
    out.append(f"http://{ip}:{base + 1 + n % 10}/{fid}")
open(path + ".ec", "w").write("\n".join(out) + "\n")
PY

  # Bytes on disk and the BLOBs whose data starts in block 0.
  hayloft_volumes "$router" >"$WORK/volumes-$size.json"
  python3 - "$HL" "$WORK/volumes-$size.json" "$WORK/hl-$size.urls" "$size" "$WORK/sw-$size.urls" "$SW" "$seal_seconds" "$ec_seconds" >>"$FIGURES" <<'PY'
import json, os, sys, urllib.request
hl, volumes_path, urls_path, size, sw_urls, sw, seal_s, ec_s = sys.argv[1:]
unit = {"KiB": 1024, "MiB": 1 << 20}
blob = int(size[:-3]) * unit[size[-3:]]
lines = lambda path: sum(1 for line in open(path) if line.strip())
logical = blob * lines(urls_path)
swfs_logical = blob * lines(sw_urls)
nodes = json.load(open(os.path.join(hl, "cluster.json")))["nodes"]
addr = {n["id"]: n["address"] for n in nodes}
volumes = {v["id"]: v for v in json.load(open(volumes_path))}
def tree_bytes(root, keep=lambda p: True):
    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if keep(p):
                total += os.path.getsize(p)
    return total
warm_total = sum(tree_bytes(os.path.join(hl, n["id"])) for n in nodes if n["role"] == "f4-storage")
block_data = 0
for n in nodes:
    if n["role"] != "f4-storage":
        continue
    after = None
    while True:
        url = f"http://{n['address']}/blocks" + (f"?after={after}" if after else "")
        page = json.load(urllib.request.urlopen(url))
        block_data += sum(b["len_bytes"] for b in page["blocks"])
        after = page["next_after"]
        if not after:
            break
hot_left = sum(tree_bytes(os.path.join(hl, n["id"]), lambda p: p.endswith(".data") or p.endswith(".index"))
               for n in nodes if n["role"] == "store")
swfs_total = tree_bytes(sw, lambda p: "/master" not in p)
# The BLOBs whose needle starts in data block 0 of its stripe.
subset = []
for url in open(urls_path):
    url = url.strip()
    if not url:
        continue
    blob = url.rsplit("/", 1)[1]
    vid, rest = blob.split(",")
    key = rest[:-8]
    warm = volumes[int(vid)]["warm"]
    holder = addr[warm["journal_holders"][0]]
    entry = json.load(urllib.request.urlopen(f"http://{holder}/volumes/{vid}/{warm['generation']}/keys/{key}"))
    b = warm["geometry"]["block_size_bytes"]
    if (entry["offset"] % (10 * b)) // b == 0:
        subset.append(url)
open(urls_path + ".b0", "w").write("\n".join(subset) + "\n")
print(json.dumps({"size": size, "logical_bytes": logical, "swfs_logical_bytes": swfs_logical,
                  "hayloft_warm_bytes": warm_total,
                  "hayloft_block_data_bytes": block_data, "hayloft_hot_bytes_left": hot_left,
                  "swfs_bytes": swfs_total, "b0_blobs": len(subset), "volumes": len(volumes),
                  "seal_seconds": float(seal_s), "ec_encode_seconds": float(ec_s)}))
PY

  # 4. healthy warm fetch, both; then one BLOB of each with wrk
  for _ in $(seq 1 "$ROUNDS"); do
    fetch hayloft-warm hayloft "$WORK/hl-$size.urls" "$size"
    fetch swfs-ec seaweedfs "$WORK/sw-$size.urls.ec" "$size"
  done
  wrk_check hayloft-warm "$(head -1 "$WORK/hl-$size.urls")" "$size"
  wrk_check swfs-ec "$(head -1 "$WORK/sw-$size.urls.ec")" "$size"

  # 5. Hayloft: block 0 lost, then blocks 0, 1, 2 and 10
  for _ in $(seq 1 "$ROUNDS"); do
    fetch hayloft-b0 hayloft "$WORK/hl-$size.urls.b0" "$size"
    fetch1 hayloft-b0-c1 "$WORK/hl-$size.urls.b0" "$size"
  done
  lose() { for b in "$@"; do for f in "$HL"/f4-*/blocks/*.b$b.block; do mv "$f" "$f.lost"; done; done; }
  restore() { for f in "$HL"/f4-*/blocks/*.lost; do mv "$f" "${f%.lost}"; done; }
  lose 00
  for _ in $(seq 1 "$ROUNDS"); do
    fetch hayloft-lost1 hayloft "$WORK/hl-$size.urls.b0" "$size"
    fetch1 hayloft-lost1-c1 "$WORK/hl-$size.urls.b0" "$size"
  done
  lose 01 02 10
  for _ in $(seq 1 "$ROUNDS"); do
    fetch hayloft-lost4 hayloft "$WORK/hl-$size.urls.b0" "$size"
    fetch1 hayloft-lost4-c1 "$WORK/hl-$size.urls.b0" "$size"
  done
  if [ "$SPAWN" = 1 ]; then
    backoff_pid=$(python3 -c 'import json,sys; print(next(n["pid"] for n in json.load(open(sys.argv[1]))["nodes"] if n["role"]=="backoff"))' "$HL/cluster.json")
  else
    backoff_pid=$up_pid
  fi
  python3 - "$backoff_pid" "$size" "$SPAWN" >>"$FIGURES" <<'PY'
import json, sys
pid, size, spawn = sys.argv[1:]
fields = {}
for line in open(f"/proc/{pid}/status"):
    key, _, value = line.partition(":")
    if key in ("VmHWM", "VmRSS"):
        fields[key] = int(value.split()[0]) * 1024
print(json.dumps({"size": size, "whole_process": spawn != "1",
                  "backoff_peak_rss_bytes": fields.get("VmHWM"),
                  "backoff_rss_bytes": fields.get("VmRSS"),
                  "backoff_cap_bytes": 1 << 30}))
PY
  restore

  # 6. four storage nodes down in each, all BLOBs (nodes of their own only)
  if [ "$SPAWN" != 1 ]; then
    stop_all
    if [ -z "${KEEP_DATA:-}" ]; then rm -rf "$HL" "$SW"; fi
    continue
  fi
  for id in f4-11 f4-12 f4-13 f4-14; do
    pid=$(python3 -c 'import json,sys; print(next(n["pid"] for n in json.load(open(sys.argv[1]))["nodes"] if n["id"]==sys.argv[2]))' "$HL/cluster.json" "$id")
    kill -9 "$pid"
  done
  for i in 11 12 13 14; do kill -9 "${SWFS_VOLUME_PIDS[$((i - 1))]}"; done
  sleep 1
  for _ in $(seq 1 "$ROUNDS"); do
    fetch hayloft-down4 hayloft "$WORK/hl-$size.urls" "$size"
    fetch swfs-down4 seaweedfs "$WORK/sw-$size.urls.ec" "$size"
  done
  stop_all
  if [ -z "${KEEP_DATA:-}" ]; then rm -rf "$HL" "$SW"; fi
done

python3 - "$RESULTS" "$FIGURES" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
figures = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
runs = {}
for r in rows:
    if r["fetch"]["requests"]:
        runs.setdefault((r["label"], r["size_bytes"]), []).append(r["fetch"])
def med(label, size, key):
    values = [f[key] for f in runs.get((label, size), [])]
    return statistics.median(values) if values else float("nan")
def human(n):
    return f"{n // 1048576} MiB" if n >= 1048576 else f"{n // 1024} KiB"
labels = ["hayloft-hot", "hayloft-warm", "swfs-ec", "hayloft-b0", "hayloft-lost1",
          "hayloft-lost4", "hayloft-b0-c1", "hayloft-lost1-c1", "hayloft-lost4-c1",
          "hayloft-down4", "swfs-down4"]
print(f"Medians of {max(len(v) for v in runs.values())} rounds, concurrency fetches: req/s (p50 / p99 ms), errors summed.")
print()
print("| size | " + " | ".join(labels) + " |")
print("|---|" + "---|" * len(labels))
for size in sorted({s for _, s in runs}):
    cells = []
    for label in labels:
        errors = sum(f["errors"] for f in runs.get((label, size), []))
        err = f", {errors} err" if errors else ""
        cells.append(f"{med(label, size, 'requests_per_second'):,.0f} ({med(label, size, 'p50_ms'):.1f} / {med(label, size, 'p99_ms'):.1f}){err}")
    print(f"| {human(size)} | " + " | ".join(cells) + " |")
print()
print("| size | warm / SeaweedFS EC (req/s) | warm p99 / SeaweedFS p99 | warm / hot | lost1 p50, p99 / healthy | lost4 p50, p99 / healthy | same, one at a time: lost1 | lost4 | down4 / SeaweedFS down4 (req/s) |")
print("|---|---|---|---|---|---|---|---|---|")
for size in sorted({s for _, s in runs}):
    r = lambda a, b, k="requests_per_second": med(a, size, k) / med(b, size, k)
    print(f"| {human(size)} | {r('hayloft-warm', 'swfs-ec'):.2f}x | {r('hayloft-warm', 'swfs-ec', 'p99_ms'):.2f} | "
          f"{r('hayloft-warm', 'hayloft-hot'):.2f}x | {r('hayloft-lost1', 'hayloft-b0', 'p50_ms'):.2f}, {r('hayloft-lost1', 'hayloft-b0', 'p99_ms'):.2f} | "
          f"{r('hayloft-lost4', 'hayloft-b0', 'p50_ms'):.2f}, {r('hayloft-lost4', 'hayloft-b0', 'p99_ms'):.2f} | "
          f"{r('hayloft-lost1-c1', 'hayloft-b0-c1', 'p50_ms'):.2f}, {r('hayloft-lost1-c1', 'hayloft-b0-c1', 'p99_ms'):.2f} | "
          f"{r('hayloft-lost4-c1', 'hayloft-b0-c1', 'p50_ms'):.2f}, {r('hayloft-lost4-c1', 'hayloft-b0-c1', 'p99_ms'):.2f} | "
          f"{r('hayloft-down4', 'swfs-down4'):.2f}x |")
print()
for f in figures:
    if "logical_bytes" in f:
        meta = f["hayloft_warm_bytes"] - f["hayloft_block_data_bytes"]
        print(f"- {f['size']}: {f['volumes']} volumes sealed in {f['seal_seconds']} s (SeaweedFS ec.encode {f['ec_encode_seconds']} s); "
              f"Hayloft warm bytes / logical {f['hayloft_warm_bytes'] / f['logical_bytes']:.4f} "
              f"(blocks' data {f['hayloft_block_data_bytes'] / f['logical_bytes']:.4f}, metadata {meta / f['logical_bytes']:.4f}), "
              f"hot bytes left {f['hayloft_hot_bytes_left']}; SeaweedFS bytes / logical {f['swfs_bytes'] / f['swfs_logical_bytes']:.4f}; "
              f"{f['b0_blobs']} BLOBs start in block 0")
    elif "wrk" in f:
        print(f"- {f['size']}: wrk -t2 -c16 -d10s, one BLOB, {f['wrk']}: {f['requests_per_second']:,.0f} req/s "
              f"(p50 {f['p50_ms']:.2f} / p99 {f['p99_ms']:.2f} ms; non-2xx {f['non_2xx']})")
    else:
        whose = "every node's process" if f.get("whole_process") else "backoff node"
        print(f"- {f['size']}: {whose} peak RSS {f['backoff_peak_rss_bytes'] / 1048576:.1f} MiB "
              f"(now {f['backoff_rss_bytes'] / 1048576:.1f} MiB; cap on bytes in flight {f['backoff_cap_bytes'] / 1048576:.0f} MiB)")
PY
echo "raw results: $RESULTS $FIGURES" >&2
