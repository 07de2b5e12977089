#!/usr/bin/env bash
# The foreground cost of a migration, same machine, same run: hot and warm
# fetch latency while a 1 GiB volume migrates at the configured rate,
# against the same fetches with no migration.
#
# Per round, on a fresh `hayloft up --spawn` (3 stores, 14 f4 storage nodes
# in 14 racks; 1 GiB volumes; `--migration-rate MIGRATION_RATE`):
#   1. 2 x COUNT + 2000 BLOBs of SIZE uploaded one at a time: volumes 1
#      and 2 fill and lock, volume 3 holds the rest and stays writable
#      (hot);
#   2. volume 1 migrated (untimed): its BLOBs are warm;
#   3. baseline: two load generators at once, FETCHES fetches each at
#      CONCURRENCY, one of volume 1's BLOBs (warm), one of volume 3's (hot),
#      and beside them wrk on one hot BLOB for 3 s at concurrency 1 (an
#      independent load generator; installed with apt where missing);
#   4. the same three while volume 2 migrates (`POST
#      /admin/volumes/2/migrate`, started just before them). The round
#      records whether volume 2 was still hot when both had finished, i.e.
#      whether every fetch ran beside the migration.
# The summary gives the medians over the rounds of p50 and p99 and their
# ratios (during / baseline).
#
# Usage: bench/scripts/migrate_foreground.sh            (from the repository root)
# Environment (all optional):
#   ROUNDS=3 SIZE=64KiB COUNT=16500 FETCHES=3000 CONCURRENCY=4
#   MIGRATION_RATE=256MiB (Hayloft's default --migration-rate)
#   WORK=<temp dir>  HAYLOFT_PORT=18080
#   SCRATCH_GIB: as in migrate_side_by_side.sh (default 12 when the disk
#     under WORK is 88% used or more, else 0)
# Raw JSON lines go to $WORK/foreground.jsonl; the summary is printed as
# Markdown.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS="${ROUNDS:-3}"
SIZE="${SIZE:-64KiB}"
COUNT="${COUNT:-16500}"
FETCHES="${FETCHES:-3000}"
CONCURRENCY="${CONCURRENCY:-4}"
MIGRATION_RATE="${MIGRATION_RATE:-256MiB}"
HAYLOFT_PORT="${HAYLOFT_PORT:-18080}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/hayloft-foreground.XXXXXX")}"
OUT="$WORK/foreground.jsonl"
IP=127.0.0.1
mkdir -p "$WORK"
: >"$OUT"

# shellcheck source=bench/scripts/lib.sh
. bench/scripts/lib.sh
DATA="$WORK"
cleanup() {
  stop_all
  rm -rf "$DATA"/hayloft-*
  unmount_scratch
}
on_exit cleanup
choose_data_dir

build_release
install_wrk

# The state of volume VID in the directory.
volume_state() { # router vid
  curl -fsS "$1/admin/volumes" |
    python3 -c 'import json, sys; print(next((v["state"] for v in json.load(sys.stdin) if v["id"] == int(sys.argv[1])), ""))' "$2"
}

# Fetches of the warm and the hot set at once, and wrk on one hot BLOB
# beside them (an independent check, 3 s at concurrency 1); one JSON file
# each.
fetch_both() { # router label
  "$LOADGEN" --target hayloft --url "$1" --size "$SIZE" --concurrency "$CONCURRENCY" \
    --requests "$FETCHES" --warmup 0 --fetch-urls "$WORK/warm.urls" --label "warm-$2" >"$WORK/warm-$2.json" &
  local warm=$!
  wrk_json "wrk-hot-$2" "$(head -1 "$WORK/hot.urls")" 1 3s "$SIZE" >"$WORK/wrk-$2.json" &
  local wrk=$!
  "$LOADGEN" --target hayloft --url "$1" --size "$SIZE" --concurrency "$CONCURRENCY" \
    --requests "$FETCHES" --warmup 0 --fetch-urls "$WORK/hot.urls" --label "hot-$2" >"$WORK/hot-$2.json"
  wait "$warm" "$wrk"
}

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round" >&2
  HL="$DATA/hayloft-$round"
  router="http://$IP:$HAYLOFT_PORT"
  "$HAYLOFT" up --spawn --data "$HL" --listen "$IP:$HAYLOFT_PORT" --volume-size 1GiB \
    --warm-after 1d --migration-rate "$MIGRATION_RATE" >"$WORK/hayloft-$round.log" 2>&1 &
  PIDS+=($!)
  wait_http "$router/health" "hayloft router"
  # One at a time: the router then fills one volume after the other.
  "$LOADGEN" --target hayloft --url "$router" --size "$SIZE" --concurrency 1 \
    --requests $((2 * COUNT + 2000)) --warmup 0 --upload-only --save-urls "$WORK/all.urls" \
    --label upload >/dev/null
  for vid in 1 2; do
    for _ in $(seq 1 100); do
      [ "$(volume_state "$router" "$vid")" = locked ] && break
      sleep 0.2
    done
    [ "$(volume_state "$router" "$vid")" = locked ] || { echo "volume $vid did not lock" >&2; exit 1; }
  done
  grep '/blobs/1,' "$WORK/all.urls" >"$WORK/warm.urls"
  grep '/blobs/3,' "$WORK/all.urls" >"$WORK/hot.urls"
  curl -fsS -X POST "$router/admin/volumes/1/migrate" >/dev/null
  [ "$(volume_state "$router" 1)" = warm ] || { echo "volume 1 did not turn warm" >&2; exit 1; }
  sync

  fetch_both "$router" baseline
  curl -fsS -X POST "$router/admin/volumes/2/migrate" >"$WORK/job-$round.json" &
  migration=$!
  # The job starts (the directory records it) before the fetches do.
  for _ in $(seq 1 100); do
    curl -fsS "$router/admin/migrations" | grep -q '"volume":2' && break
    sleep 0.05
  done
  fetch_both "$router" during
  still_hot=$([ "$(volume_state "$router" 2)" != warm ] && echo true || echo false)
  wait "$migration"
  python3 - "$WORK" "$round" "$still_hot" >>"$OUT" <<'PY'
import json, sys
work, round_, still_hot = sys.argv[1:]
row = {"round": int(round_), "migration_outlasted_the_fetches": still_hot == "true"}
for tier in ("warm", "hot"):
    for phase in ("baseline", "during"):
        fetch = json.load(open(f"{work}/{tier}-{phase}.json"))["fetch"]
        row[f"{tier}_{phase}"] = {k: fetch[k] for k in ("requests", "errors", "requests_per_second", "p50_ms", "p99_ms")}
for phase in ("baseline", "during"):
    text = open(f"{work}/wrk-{phase}.json").read().strip()
    if text:
        row[f"wrk_hot_{phase}"] = json.loads(text)
print(json.dumps(row))
PY
  stop_all
  rm -rf "$HL"
done

python3 - "$OUT" "$SIZE" "$CONCURRENCY" "$MIGRATION_RATE" <<'PY'
import json, statistics, sys
path, size, concurrency, rate = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
med = lambda key, field: statistics.median(r[key][field] for r in rows)
print(f"Medians of {len(rows)} rounds; {size} BLOBs, concurrency {concurrency} per tier, "
      f"migration rate {rate}; the migration outlasted the fetches in "
      f"{sum(r['migration_outlasted_the_fetches'] for r in rows)} of {len(rows)} rounds.")
print()
print("| fetches | no migration p50 / p99 ms | during a migration p50 / p99 ms | p99 ratio | errors |")
print("|---|---|---|---|---|")
for tier in ("hot", "warm"):
    b50, b99 = med(f"{tier}_baseline", "p50_ms"), med(f"{tier}_baseline", "p99_ms")
    d50, d99 = med(f"{tier}_during", "p50_ms"), med(f"{tier}_during", "p99_ms")
    errors = sum(r[f"{tier}_{p}"]["errors"] for r in rows for p in ("baseline", "during"))
    print(f"| {tier} | {b50:.2f} / {b99:.2f} | {d50:.2f} / {d99:.2f} | {d99 / b99:.2f}x | {errors} |")
if all("wrk_hot_baseline" in r for r in rows):
    b50, b99 = med("wrk_hot_baseline", "p50_ms"), med("wrk_hot_baseline", "p99_ms")
    d50, d99 = med("wrk_hot_during", "p50_ms"), med("wrk_hot_during", "p99_ms")
    errors = sum(r[f"wrk_hot_{p}"]["non_2xx"] for r in rows for p in ("baseline", "during"))
    print(f"| wrk, one hot BLOB, c=1 | {b50:.2f} / {b99:.2f} | {d50:.2f} / {d99:.2f} | {d99 / b99:.2f}x | {errors} |")
PY
echo "raw results: $OUT" >&2
