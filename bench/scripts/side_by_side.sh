#!/usr/bin/env bash
# Side-by-side load test, same machine, same run: `hayloft up` (release build)
# against SeaweedFS, upload and fetch at 1 KiB, 64 KiB and 1 MiB, concurrency 16.
#
# SeaweedFS is started here (not with ../shared/peers/seaweedfs/up.sh, which
# puts every volume server in one rack): one master and three volume servers
# in racks rack1..rack3 of dc1, default replication 020 (two more copies on
# two other racks = three replicas in three racks, as Hayloft keeps). It is
# measured twice: at equal durability (every upload `?fsync=true`) and with
# its default (no fsync). Its upload is assign + multipart POST, as its users
# do it. Hayloft's fetches are measured through the router and, in a run of
# their own (`hayloft-direct`, fetches only, of the BLOBs of the run before),
# as a smart client reads (`loadgen --direct`: straight from a store node).
# After each size, wrk fetches one BLOB of each
# for WRK_SECONDS: through Hayloft's router, from its store node directly,
# and from SeaweedFS's volume server (an independent check of the load
# generator; wrk is installed with apt where missing).
#
# Usage: bench/scripts/side_by_side.sh            (from the repository root)
# Environment (all optional):
#   ROUNDS=3 CONCURRENCY=16 SIZES="1KiB 64KiB 1MiB"
#   REQUESTS=<n> (per run; default 10000 for 1 KiB, 5000 for 64 KiB, 1000 for 1 MiB)
#   FETCH_PASSES=5  (fetches per uploaded BLOB: fetch phases long enough to time)
#   WRK_SECONDS=5   (0: no wrk check)
#   SWFS_VENV=/tmp/swfs-venv SWFS_VERSION=4.48   (installed there if missing)
#   WORK=<temp dir>  HAYLOFT_PORT=18080  SWFS_MASTER_PORT=19333  SWFS_VOLUME_PORT=18180
#   KEEP_DATA=1      keep both systems' data under $WORK (a full run writes ~20 GiB;
#                    by default it is deleted on exit, logs and results are kept)
# Prints a Markdown table of medians over the rounds (each round runs every
# target at every size, interleaved); raw JSON lines go to $WORK/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."

REQUESTS="${REQUESTS:-}"
FETCH_PASSES="${FETCH_PASSES:-5}"
WRK_SECONDS="${WRK_SECONDS:-5}"
ROUNDS="${ROUNDS:-3}"
CONCURRENCY="${CONCURRENCY:-16}"
SIZES="${SIZES:-1KiB 64KiB 1MiB}"
SWFS_VENV="${SWFS_VENV:-/tmp/swfs-venv}"
SWFS_VERSION="${SWFS_VERSION:-4.48}"
HAYLOFT_PORT="${HAYLOFT_PORT:-18080}"
SWFS_MASTER_PORT="${SWFS_MASTER_PORT:-19333}"
SWFS_VOLUME_PORT="${SWFS_VOLUME_PORT:-18180}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/hayloft-side-by-side.XXXXXX")}"
RESULTS="$WORK/results.jsonl"
IP=127.0.0.1
mkdir -p "$WORK"
: >"$RESULTS"

# shellcheck source=bench/scripts/lib.sh
. bench/scripts/lib.sh
cleanup() {
  stop_all
  # A full run writes ~20 GiB; keep only logs and results unless asked.
  if [ -z "${KEEP_DATA:-}" ]; then rm -rf "$WORK/hayloft" "$WORK/swfs"; fi
}
on_exit cleanup

build_release
install_wrk

# --- Hayloft ---------------------------------------------------------------
"$HAYLOFT" up --data "$WORK/hayloft" --listen "$IP:$HAYLOFT_PORT" >"$WORK/hayloft.log" 2>&1 &
PIDS+=($!)
HAYLOFT_CPU=(--cpu-pid $!)
wait_http "http://$IP:$HAYLOFT_PORT/health" "hayloft router"

# --- SeaweedFS: 1 master, 3 volume servers in 3 racks, replication 020 -----
install_weed
mkdir -p "$WORK/swfs/master"
"$WEED" master -ip="$IP" -ip.bind="$IP" -port="$SWFS_MASTER_PORT" \
  -mdir="$WORK/swfs/master" -peers=none -volumeSizeLimitMB=1024 \
  -defaultReplication=020 -telemetry=false >"$WORK/swfs-master.log" 2>&1 &
PIDS+=($!)
SWFS_CPU=(--cpu-pid $!)
wait_http "http://$IP:$SWFS_MASTER_PORT/cluster/status" "seaweedfs master"
for i in 1 2 3; do
  mkdir -p "$WORK/swfs/vol$i"
  "$WEED" volume -ip="$IP" -ip.bind="$IP" -port=$((SWFS_VOLUME_PORT + i)) \
    -dir="$WORK/swfs/vol$i" -max=100 -master="$IP:$SWFS_MASTER_PORT" \
    -index=memory -rack="rack$i" -dataCenter=dc1 -preStopSeconds=0 \
    >"$WORK/swfs-volume$i.log" 2>&1 &
  PIDS+=($!)
  SWFS_CPU+=(--cpu-pid $!)
done
wait_swfs_servers "$IP" 3

# --- Runs --------------------------------------------------------------------
requests_for() { # size
  if [ -n "$REQUESTS" ]; then echo "$REQUESTS"; return; fi
  case "$1" in
    1KiB) echo 10000 ;;
    64KiB) echo 5000 ;;
    *) echo 1000 ;;
  esac
}
run() { # label target url size extra...
  local label=$1 target=$2 url=$3 size=$4
  shift 4
  echo "  $label $size ..." >&2
  # SeaweedFS's default run leaves its uploads unflushed, and the kernel's
  # writeback of them would load whichever run comes next (always
  # Hayloft's): every run starts with nothing left to flush.
  sync
  local requests saved=()
  requests=$(requests_for "$size")
  # A fetch-only run (`--fetch-urls`) makes the whole fetch phase itself.
  case " $* " in
    *" --fetch-urls "*) requests=$((requests * FETCH_PASSES)) ;;
    *) saved=(--save-urls "$WORK/urls-$label-$size") ;;
  esac
  "$LOADGEN" --target "$target" --url "$url" --size "$size" \
    --concurrency "$CONCURRENCY" --requests "$requests" \
    --fetch-passes "$FETCH_PASSES" --label "$label" "${saved[@]}" "$@" \
    >>"$RESULTS"
}
# The direct URL of a Hayloft BLOB URL (`.../blobs/ID`), from the router's
# volume lookup, as `router::direct` picks it.
direct_url() { # router blob-url
  python3 - "$1" "$2" <<'PY'
import json, sys, urllib.request
router, url = sys.argv[1], sys.argv[2]
vid, rest = url.rsplit("/", 1)[1].split(",")
key, cookie = int(rest[:-8], 16), rest[-8:]
places = json.load(urllib.request.urlopen(f"{router}/volumes/{vid}/locations"))["locations"]
if not places:
    sys.exit(f"volume {vid} has no location to read from directly")
node = places[key % len(places)]["url"]
print(f"{node}/direct/volumes/{vid}/needles/{key:x}?cookie={cookie}")
PY
}
wrk_round() { # size
  [ "$WRK_SECONDS" -gt 0 ] || return 0
  local size=$1 hl sw
  hl=$(head -1 "$WORK/urls-hayloft-$size")
  sw=$(head -1 "$WORK/urls-seaweedfs-fsync-$size")
  wrk_json hayloft "$hl" "$CONCURRENCY" "${WRK_SECONDS}s" "$size" >>"$RESULTS"
  local direct
  if direct=$(direct_url "http://$IP:$HAYLOFT_PORT" "$hl"); then
    wrk_json hayloft-direct "$direct" "$CONCURRENCY" "${WRK_SECONDS}s" "$size" >>"$RESULTS"
  fi
  wrk_json seaweedfs "$sw" "$CONCURRENCY" "${WRK_SECONDS}s" "$size" >>"$RESULTS"
}
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  for size in $SIZES; do
    run hayloft hayloft "http://$IP:$HAYLOFT_PORT" "$size" "${HAYLOFT_CPU[@]}"
    run hayloft-direct hayloft "http://$IP:$HAYLOFT_PORT" "$size" --direct \
      --fetch-urls "$WORK/urls-hayloft-$size" "${HAYLOFT_CPU[@]}"
    run seaweedfs-fsync seaweedfs "http://$IP:$SWFS_MASTER_PORT" "$size" --fsync "${SWFS_CPU[@]}"
    run seaweedfs-default seaweedfs "http://$IP:$SWFS_MASTER_PORT" "$size" "${SWFS_CPU[@]}"
    wrk_round "$size"
  done
done

python3 - "$RESULTS" "$CONCURRENCY" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
wrk = [r for r in rows if "wrk" in r]
rows = [r for r in rows if "wrk" not in r]
runs = {}
for r in rows:
    runs.setdefault((r["label"], r["size_bytes"]), []).append(r)
sizes = sorted({r["size_bytes"] for r in rows})
def human(n):
    return f"{n // 1048576} MiB" if n >= 1048576 else f"{n // 1024} KiB"
def med(label, size, op, key):
    values = [r[op][key] for r in runs.get((label, size), [])]
    return statistics.median(values) if values else None
def server_cpu(label, size, op):
    # CPU microseconds per request of the servers' processes (the load
    # generator's own, the first entry, left out).
    values = [sum(r[op].get("cpu_us_per_request", [0])[1:]) for r in runs.get((label, size), [])]
    return statistics.median(values) if values else None
print("Medians of", max(len(v) for v in runs.values()), "rounds; req/s (p50 / p99 ms; server CPU µs per request).")
print()
print("| size | op | Hayloft | SeaweedFS, fsync | SeaweedFS, default | Hayloft / SeaweedFS fsync | Hayloft / SeaweedFS default |")
print("|---|---|---|---|---|---|---|")
for size in sizes:
    for op in ("upload", "fetch"):
        def cell(label):
            rps = med(label, size, op, "requests_per_second")
            if rps is None: return "-"
            errors = sum(r[op]["errors"] for r in runs[(label, size)])
            err = f", {errors} errors" if errors else ""
            return f"{rps:,.0f} ({med(label, size, op, 'p50_ms'):.1f} / {med(label, size, op, 'p99_ms'):.1f}; {server_cpu(label, size, op):.0f} µs){err}"
        def ratio(other):
            a = med("hayloft", size, op, "requests_per_second")
            b = med(other, size, op, "requests_per_second")
            return f"{a / b:.2f}x" if a and b else "-"
        print(f"| {human(size)} | {op} | {cell('hayloft')} | {cell('seaweedfs-fsync')} | {cell('seaweedfs-default')} | {ratio('seaweedfs-fsync')} | {ratio('seaweedfs-default')} |")
        if op == "fetch" and (("hayloft-direct", size) in runs):
            direct = med("hayloft-direct", size, "fetch", "requests_per_second")
            answered = sum(r["fetch"].get("direct_answers", 0) for r in runs[("hayloft-direct", size)])
            total = sum(r["fetch"]["requests"] for r in runs[("hayloft-direct", size)])
            def over(other):
                b = med(other, size, "fetch", "requests_per_second")
                return f"{direct / b:.2f}x" if direct and b else "-"
            print(f"| {human(size)} | fetch, `--direct` ({answered:,} of {total:,} from a node) | {cell('hayloft-direct')} | | | {over('seaweedfs-fsync')} | {over('seaweedfs-default')} |")
if wrk:
    print()
    print("wrk -t2 -c%d, one BLOB each, medians over rounds; req/s (p50 / p99 ms):" % int(sys.argv[2]))
    print()
    print("| size | Hayloft, router | Hayloft, direct | SeaweedFS | router / SeaweedFS | direct / SeaweedFS |")
    print("|---|---|---|---|---|---|")
    def parse(text):
        n, unit = int(text[:-3]), text[-3:]
        return n * (1048576 if unit == "MiB" else 1024)
    for size in sorted({parse(r["size"]) for r in wrk}):
        def w(label, key="requests_per_second"):
            values = [r[key] for r in wrk if r["wrk"] == label and parse(r["size"]) == size]
            return statistics.median(values) if values else None
        def cell(label):
            rps = w(label)
            if rps is None:
                return "-"
            # wrk counts error answers as requests: say so.
            bad = sum(r["non_2xx"] for r in wrk if r["wrk"] == label and parse(r["size"]) == size)
            err = f", {bad:,} non-2xx" if bad else ""
            return f"{rps:,.0f} ({w(label, 'p50_ms'):.2f} / {w(label, 'p99_ms'):.2f}){err}"
        def ratio(label):
            a, b = w(label), w("seaweedfs")
            return f"{a / b:.2f}x" if a and b else "-"
        print(f"| {human(size)} | {cell('hayloft')} | {cell('hayloft-direct')} | {cell('seaweedfs')} | {ratio('hayloft')} | {ratio('hayloft-direct')} |")
PY
echo "raw results: $RESULTS" >&2
