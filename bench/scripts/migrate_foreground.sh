#!/usr/bin/env bash
# The foreground cost of a migration (ACTION=migrate, the default) or of a
# rebuild (ACTION=rebuild), same machine, same run: hot and warm fetch
# latency while a 1 GiB volume migrates at the configured rate, or while
# four lost blocks of a warm 1 GiB volume are rebuilt at the default
# rebuild rate, against the same fetches with neither.
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
#   With ACTION=rebuild, volume 2 is migrated too before the baseline, and
#   step 4 deletes the files of blocks 0, 5, 10 and 13 of its first stripe
#   and runs a coordinator pass (`POST /admin/repair`, which rebuilds them
#   at `--rebuild-rate REBUILD_RATE`) beside the fetches; the round records
#   whether the pass outlasted them.
# The summary gives the medians over the rounds of p50 and p99 and their
# ratios (during / baseline).
#
# Usage: bench/scripts/migrate_foreground.sh            (from the repository root)
# Environment (all optional):
#   ROUNDS=3 SIZE=64KiB COUNT=16500 FETCHES=3000 CONCURRENCY=4
#   MIGRATION_RATE=256MiB (Hayloft's default --migration-rate)
#   ACTION=migrate|rebuild  REBUILD_RATE=64MiB (Hayloft's default --rebuild-rate)
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
ACTION="${ACTION:-migrate}"
REBUILD_RATE="${REBUILD_RATE:-64MiB}"
case "$ACTION" in migrate | rebuild) ;; *) echo "ACTION must be migrate or rebuild" >&2; exit 2 ;; esac
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
  hayloft_volumes "$1" |
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
    --warm-after 1d --migration-rate "$MIGRATION_RATE" --rebuild-rate "$REBUILD_RATE" \
    --rebuild-after 1d --coordinate-interval 1h --scrub-rate 0 >"$WORK/hayloft-$round.log" 2>&1 &
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
  warm_volumes=1
  [ "$ACTION" = rebuild ] && warm_volumes="1 2"
  for vid in $warm_volumes; do
    curl -fsS -X POST "$router/admin/volumes/$vid/migrate" >/dev/null
    [ "$(volume_state "$router" "$vid")" = warm ] || { echo "volume $vid did not turn warm" >&2; exit 1; }
  done
  sync

  fetch_both "$router" baseline
  if [ "$ACTION" = migrate ]; then
    curl -fsS -X POST "$router/admin/volumes/2/migrate" >"$WORK/job-$round.json" &
    background=$!
    # The job starts (the directory records it) before the fetches do.
    for _ in $(seq 1 100); do
      curl -fsS "$router/admin/migrations" | grep -q '"volume":2' && break
      sleep 0.05
    done
  else
    hayloft_volumes "$router" | python3 -c 'import json, os, sys
hl = sys.argv[1]
w = next(v for v in json.load(sys.stdin) if v["id"] == 2)["warm"]
for b in (0, 5, 10, 13):
    os.remove("{}/{}/blocks/volume-0000000002.g{:016x}.s000000.b{:02}.block".format(
        hl, w["stripes"][0][b], w["generation"], b))' "$HL"
    curl -fsS -X POST "$router/admin/repair" >"$WORK/repair-$round.json" &
    background=$!
  fi
  fetch_both "$router" during
  if [ "$ACTION" = migrate ]; then
    still_hot=$([ "$(volume_state "$router" 2)" != warm ] && echo true || echo false)
  else
    still_hot=$(kill -0 "$background" 2>/dev/null && echo true || echo false)
  fi
  wait "$background"
  python3 - "$WORK" "$round" "$still_hot" >>"$OUT" <<'PY'
import json, sys
work, round_, still_hot = sys.argv[1:]
row = {"round": int(round_), "outlasted_the_fetches": still_hot == "true"}
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

python3 - "$OUT" "$SIZE" "$CONCURRENCY" "$ACTION" "$MIGRATION_RATE" "$REBUILD_RATE" <<'PY'
import json, statistics, sys
path, size, concurrency, action, migration_rate, rebuild_rate = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
med = lambda key, field: statistics.median(r[key][field] for r in rows)
what = "a migration" if action == "migrate" else "a rebuild"
rate = migration_rate if action == "migrate" else rebuild_rate
print(f"Medians of {len(rows)} rounds; {size} BLOBs, concurrency {concurrency} per tier, "
      f"{action} rate {rate}; {what} outlasted the fetches in "
      f"{sum(r['outlasted_the_fetches'] for r in rows)} of {len(rows)} rounds.")
print()
print(f"| fetches | without p50 / p99 ms | during {what} p50 / p99 ms | p99 ratio | errors |")
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
