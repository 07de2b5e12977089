//! Test harness: a real `hayloft up` (the built binary) on a free loopback
//! port in a temp directory, killed with its whole process group on drop.
//! Every wait is bounded.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

pub mod volumes;

/// How long a cluster may take to come up (debug builds on a busy 2-core box).
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(120);

/// A running `hayloft up`, torn down on drop.
pub struct Cluster {
    child: Child,
    pgid: libc::pid_t,
    /// The router's base URL (`http://127.0.0.1:PORT`).
    pub router: String,
    /// The router's socket address.
    pub router_address: SocketAddr,
    /// The data directory (`--data`).
    pub data_dir: PathBuf,
    extra_args: Vec<String>,
    spawn: bool,
    // Dropped last, after every process is gone.
    tempdir: tempfile::TempDir,
}

/// Path of the binary under test.
pub fn hayloft_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hayloft")
}

/// A free loopback port, below the ephemeral range as the nodes' own
/// (a router restarted on it must get it back): bind it, note it, release it.
pub fn free_loopback_address() -> SocketAddr {
    let listener = haystack::http::free_port_candidates(64)
        .into_iter()
        .find_map(|port| TcpListener::bind(("127.0.0.1", port)).ok())
        .unwrap_or_else(|| TcpListener::bind("127.0.0.1:0").expect("binding a free port"));
    listener.local_addr().expect("local address")
}

impl Cluster {
    /// `hayloft up` in one process, with extra flags (`--volume-size 8MiB`, ...).
    pub async fn start(extra_args: &[&str]) -> anyhow::Result<Cluster> {
        Cluster::launch(extra_args, false, None).await
    }

    /// [`Cluster::start`] with the data (and the log) in a fresh directory
    /// under `parent` (e.g. a small tmpfs).
    pub async fn start_in(parent: &Path, extra_args: &[&str]) -> anyhow::Result<Cluster> {
        Cluster::launch(extra_args, false, Some(parent)).await
    }

    /// `hayloft up --spawn`: every node its own process; `cluster.json` written.
    pub async fn start_spawned(extra_args: &[&str]) -> anyhow::Result<Cluster> {
        Cluster::launch(extra_args, true, None).await
    }

    async fn launch(
        extra_args: &[&str],
        spawn: bool,
        parent: Option<&Path>,
    ) -> anyhow::Result<Cluster> {
        // The free port may be taken between probing and binding it (tests run
        // in parallel): a start that fails early is retried on a fresh port.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Cluster::launch_once(extra_args, spawn, parent).await {
                Err(error) if attempt < 3 && format!("{error:#}").contains("exited early") => {
                    eprintln!("hayloft up failed to start, retrying: {error:#}");
                }
                result => return result,
            }
        }
    }

    async fn launch_once(
        extra_args: &[&str],
        spawn: bool,
        parent: Option<&Path>,
    ) -> anyhow::Result<Cluster> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("hayloft-e2e-");
        let tempdir = match parent {
            Some(parent) => builder.tempdir_in(parent)?,
            None => builder.tempdir()?,
        };
        let data_dir = tempdir.path().join("data");
        let extra_args: Vec<String> = extra_args.iter().map(|arg| (*arg).to_owned()).collect();
        let router_address = free_loopback_address();
        let child = spawn_up(
            &data_dir,
            router_address,
            &extra_args,
            spawn,
            tempdir.path(),
        )?;
        let pgid = child.id() as libc::pid_t;
        let mut cluster = Cluster {
            child,
            pgid,
            router: format!("http://{router_address}"),
            router_address,
            data_dir,
            extra_args,
            spawn,
            tempdir,
        };
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Waits until the router answers `/health` and `cluster.json` exists.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let client = http_client();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "hayloft up exited early ({status}); log:\n{}",
                    self.log_tail()
                );
            }
            let healthy = match client.get(format!("{}/health", self.router)).send().await {
                Ok(response) => response.status().is_success(),
                Err(_) => false,
            };
            if healthy && self.data_dir.join("cluster.json").exists() {
                return Ok(());
            }
            if started.elapsed() > STARTUP_DEADLINE {
                bail!(
                    "hayloft up not ready after {STARTUP_DEADLINE:?}; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the cluster with `signal` (SIGINT or SIGTERM: a clean shutdown)
    /// and waits for it to exit successfully.
    pub async fn stop(&mut self, how: libc::c_int) -> anyhow::Result<()> {
        signal(self.child.id() as libc::pid_t, how);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("hayloft up exited with {status}; log:\n{}", self.log_tail());
                }
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("hayloft up ignored signal {how} for 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts `hayloft up` again on the same data directory and router port.
    /// A start whose router finds its port taken (one of the new nodes can
    /// draw it while it is free: the router starts last) is retried, as
    /// [`Cluster::launch`] retries.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.stop_every_process()?;
            self.child = spawn_up(
                &self.data_dir,
                self.router_address,
                &self.extra_args,
                self.spawn,
                self.tempdir.path(),
            )?;
            self.pgid = self.child.id() as libc::pid_t;
            match self.wait_ready().await {
                Err(error) if attempt < 3 && format!("{error:#}").contains("exited early") => {
                    eprintln!("hayloft up failed to restart, retrying: {error:#}");
                }
                result => return result,
            }
        }
    }

    /// `kill -9` of the whole cluster, returning once every process of it
    /// is dead; `cluster.json` removed. Spawned nodes are not this
    /// process's children: each is waited for until dead, or a new one
    /// finds its port or files still held.
    fn stop_every_process(&mut self) -> anyhow::Result<()> {
        let pgid = i64::from(self.pgid);
        let mut spawned: Vec<i64> = match self.nodes() {
            Ok(nodes) => nodes.iter().filter_map(|n| n["pid"].as_i64()).collect(),
            Err(_) => Vec::new(),
        };
        // Only processes of this cluster's group: a node killed earlier may
        // have had its pid reused.
        spawned.retain(|pid| process_group(*pid) == Some(pgid));
        kill_group(self.pgid);
        let _ = self.child.wait();
        for pid in spawned {
            wait_dead(pid, &format!("pid {pid}"))?;
        }
        let _ = std::fs::remove_file(self.data_dir.join("cluster.json"));
        Ok(())
    }

    /// Pid of the `hayloft up` process itself.
    pub fn supervisor_pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// The nodes recorded in `DIR/cluster.json`.
    pub fn nodes(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(self.data_dir.join("cluster.json"))?;
        let value: serde_json::Value = serde_json::from_str(&text)?;
        value["nodes"]
            .as_array()
            .cloned()
            .context("cluster.json has no nodes")
    }

    /// The `cluster.json` entry of node `id` (`store-1`, `router`, `directory`).
    pub fn node(&self, id: &str) -> anyhow::Result<serde_json::Value> {
        self.nodes()?
            .into_iter()
            .find(|node| node["id"] == id)
            .with_context(|| format!("no node {id} in cluster.json"))
    }

    /// `kill -9` one spawned node; returns once it is dead ([`wait_dead`]),
    /// so that a restart can bind its address again.
    pub fn kill_node(&self, id: &str) -> anyhow::Result<()> {
        let pid = self.node(id)?["pid"].as_i64().context("pid")?;
        signal(pid as libc::pid_t, libc::SIGKILL);
        wait_dead(pid, id)
    }

    /// Restarts a spawned node the documented way
    /// (`hayloft serve --role ROLE --config DIR/NODE.toml`), in the cluster's
    /// process group so it dies with the cluster; waits for its ready line.
    pub fn restart_node(&self, id: &str) -> anyhow::Result<Child> {
        self.restart_node_with(id, &[])
    }

    /// [`Cluster::restart_node`] with `env` set for the new process (e.g. a
    /// pause point, `haystack::failpoint`).
    pub fn restart_node_with(&self, id: &str, env: &[(&str, &str)]) -> anyhow::Result<Child> {
        let node = self.node(id)?;
        let role = node["role"].as_str().context("role")?;
        let config = node["config"]
            .as_str()
            .context("config (only with --spawn)")?;
        let (child, ready) = self.serve(id, role, Path::new(config), env)?;
        // Record the new pid (and address), so a later kill hits this process.
        let path = self.data_dir.join("cluster.json");
        let mut cluster: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        for entry in cluster["nodes"].as_array_mut().context("nodes")? {
            if entry["id"] == id {
                entry["pid"] = ready["pid"].clone();
                entry["address"] = ready["address"].clone();
            }
        }
        std::fs::write(&path, serde_json::to_string_pretty(&cluster)?)?;
        Ok(child)
    }

    /// `hayloft serve --role ROLE --config CONFIG` in the cluster's process
    /// group (stopped with it), logging to its log; the process and its
    /// ready line, once printed.
    fn serve(
        &self,
        id: &str,
        role: &str,
        config: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<(Child, serde_json::Value)> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tempdir.path().join("up.log"))?;
        let mut child = Command::new(hayloft_bin())
            .arg("serve")
            .args(["--role", role, "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(self.pgid)
            .spawn()?;
        let mut stdout = child.stdout.take().context("stdout")?;
        // Read the ready line on a thread, bounded by a deadline.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while stdout.read(&mut byte).map(|n| n == 1).unwrap_or(false) {
                if byte[0] == b'\n' {
                    break;
                }
                line.push(byte[0]);
            }
            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
            // Keep draining so the node never blocks on a full pipe.
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
        let line = rx
            .recv_timeout(STARTUP_DEADLINE)
            .with_context(|| format!("{id} not ready; log:\n{}", self.log_tail()))?;
        let ready: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{id}: ready line {line:?}; log:\n{}", self.log_tail()))?;
        anyhow::ensure!(ready["ready"] == true, "bad ready line {line:?}");
        Ok((child, ready))
    }

    /// A second router, `id`, with the first one's config but its own id
    /// and a free loopback address; the process and its URL.
    pub fn start_router(&self, id: &str) -> anyhow::Result<(Child, String)> {
        self.start_router_with(id, |_| {})
    }

    /// [`Cluster::start_router`] with `edit` applied to its config file.
    pub fn start_router_with(
        &self,
        id: &str,
        edit: impl FnOnce(&mut toml::Table),
    ) -> anyhow::Result<(Child, String)> {
        let first = self.node("router")?;
        let path = first["config"]
            .as_str()
            .context("config (only with --spawn)")?;
        let mut config: toml::Table = toml::from_str(&std::fs::read_to_string(path)?)?;
        let address = free_loopback_address().to_string();
        let router = config
            .get_mut("router")
            .and_then(|r| r.as_table_mut())
            .context("[router]")?;
        router.insert("id".into(), id.into());
        router.insert("listen".into(), address.clone().into());
        edit(&mut config);
        let path = self.data_dir.join(format!("{id}.toml"));
        std::fs::write(&path, toml::to_string(&config)?)?;
        let (child, _) = self.serve(id, "router", &path, &[])?;
        Ok((child, format!("http://{address}")))
    }

    /// The cluster's whole log (stderr of every node) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tempdir.path().join("up.log")).unwrap_or_default()
    }

    /// The last lines of the cluster's log (stderr of every node).
    pub fn log_tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        // The first errors too: a backtrace can fill the tail.
        let errors: Vec<&str> = lines
            .iter()
            .filter(|line| line.contains("Error") || line.contains("ERROR"))
            .take(10)
            .copied()
            .collect();
        format!(
            "first errors:\n{}\nlast lines:\n{}",
            errors.join("\n"),
            lines[lines.len().saturating_sub(60)..].join("\n")
        )
    }

    /// Copies the cluster's whole log and `cluster.json` out of the temporary
    /// directory (which goes with the cluster) into a fresh directory under
    /// the cargo target's tmp directory, named after `what`; returns it.
    pub fn keep_log(&self, what: &str) -> anyhow::Result<PathBuf> {
        let kept = tempfile::Builder::new()
            .prefix(&format!("{what}-"))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?
            .keep();
        std::fs::copy(self.tempdir.path().join("up.log"), kept.join("up.log"))?;
        let _ = std::fs::copy(
            self.data_dir.join("cluster.json"),
            kept.join("cluster.json"),
        );
        Ok(kept)
    }

    /// Base URL of a node from `cluster.json`.
    pub fn node_url(&self, id: &str) -> anyhow::Result<String> {
        let node = self.node(id)?;
        Ok(format!(
            "http://{}",
            node["address"].as_str().context("address")?
        ))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        kill_group(self.pgid);
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- hayloft log tail ---\n{}", self.log_tail());
        }
    }
}

fn spawn_up(
    data_dir: &Path,
    router_address: SocketAddr,
    extra_args: &[String],
    spawn: bool,
    log_dir: &Path,
) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("up.log"))?;
    let mut command = Command::new(hayloft_bin());
    command
        .arg("up")
        .arg("--data")
        .arg(data_dir)
        .arg("--listen")
        .arg(router_address.to_string())
        .args(extra_args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Its own process group, so drop can kill it and every child at once.
        .process_group(0);
    if spawn {
        command.arg("--spawn");
    }
    Ok(command.spawn()?)
}

/// Waits (at most 10 s) until every thread of process `pid` (`what`) is
/// dead: gone, or a zombie. The main thread alone is not enough: it can be
/// a zombie while other threads still hold the process's files (its
/// listener, its database lock).
fn wait_dead(pid: i64, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let thread_dead = |stat: &Path| match std::fs::read_to_string(stat) {
        Ok(stat) => matches!(fields_after_name(&stat).first(), Some(&("Z" | "X"))),
        Err(_) => true,
    };
    loop {
        let dead = match std::fs::read_dir(format!("/proc/{pid}/task")) {
            Ok(threads) => threads
                .filter_map(Result::ok)
                .all(|thread| thread_dead(&thread.path().join("stat"))),
            Err(_) => true,
        };
        if dead {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what} (pid {pid}) outlived kill -9"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The fields of a `/proc/.../stat` line after the command name in
/// parentheses (state, parent, group, ...); none if it has no such name.
fn fields_after_name(stat: &str) -> Vec<&str> {
    stat.rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// The process group of process `pid`, if it exists.
fn process_group(pid: i64) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    fields_after_name(&stat).get(2)?.parse().ok()
}

fn kill_group(pgid: libc::pid_t) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Sends `signal` to one process.
pub fn signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// An HTTP client with bounded timeouts.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64)
        .build()
        .expect("building HTTP client")
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// `POST /blobs`; on `201` returns the id.
pub async fn upload(
    client: &reqwest::Client,
    router: &str,
    body: Vec<u8>,
) -> anyhow::Result<String> {
    let response = client
        .post(format!("{router}/blobs"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    anyhow::ensure!(status.as_u16() == 201, "upload answered {status}: {text}");
    let answer: serde_json::Value = serde_json::from_str(&text)?;
    Ok(answer["id"]
        .as_str()
        .context("upload answer has no id")?
        .to_owned())
}

/// `GET url`: its JSON answer, on a 2xx.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
) -> anyhow::Result<T> {
    Ok(client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// `POST url` with no body: its JSON answer, on a 2xx.
pub async fn post_json(client: &reqwest::Client, url: &str) -> anyhow::Result<serde_json::Value> {
    Ok(client
        .post(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// `GET /blobs/ID`: status and body.
pub async fn fetch(
    client: &reqwest::Client,
    router: &str,
    id: &str,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let response = client.get(format!("{router}/blobs/{id}")).send().await?;
    let status = response.status().as_u16();
    if let Some(length) = response.content_length() {
        let body = response.bytes().await?.to_vec();
        anyhow::ensure!(
            body.len() as u64 == length,
            "{id}: body of {} bytes under Content-Length {length}",
            body.len()
        );
        return Ok((status, body));
    }
    Ok((status, response.bytes().await?.to_vec()))
}

/// Fetches `id` and checks it is exactly the BLOB whose SHA-256 is `digest`.
pub async fn check_blob(
    client: &reqwest::Client,
    router: &str,
    id: &str,
    size: usize,
    digest: &[u8; 32],
) -> anyhow::Result<()> {
    let (status, body) = fetch(client, router, id).await?;
    anyhow::ensure!(status == 200, "GET {id} answered {status}");
    anyhow::ensure!(
        body.len() == size,
        "GET {id}: {} bytes, expected {size}",
        body.len()
    );
    anyhow::ensure!(
        &sha256(&body) == digest,
        "GET {id}: bytes differ from the upload"
    );
    Ok(())
}

/// `size` pseudo-random bytes (fast: a xorshift stream seeded by `seed`).
pub fn random_body(seed: u64, size: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut body = Vec::with_capacity(size + 8);
    while body.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        body.extend_from_slice(&state.to_le_bytes());
    }
    body.truncate(size);
    body
}

/// Sends raw bytes over a fresh connection and returns the status code of the
/// answer (`None` if the server closed without one) and the raw answer.
/// Used where an HTTP client would normalise the request (`../`, lying
/// `Content-Length`).
pub fn raw_request(
    address: SocketAddr,
    request: &[u8],
    close_write: bool,
) -> (Option<u16>, String) {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(5)) else {
        return (None, String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    if stream.write_all(request).is_err() {
        return (None, String::new());
    }
    if close_write {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() > 64 * 1024 || header_and_body_complete(&answer) {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    (status, text)
}

fn header_and_body_complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let length = text[..end]
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    text.len() >= end + 4 + length
}

/// Every store node's `GET /volumes`, as `(node, [(volume_id, needle_count,
/// live_bytes, deleted_bytes)])`, sorted: a fingerprint of everything stored.
/// Replicas that hold nothing (no live and no deleted bytes) are left out:
/// a volume the router opened for an upload that never completed stores
/// nothing. A store that does not answer, or an answer without one of
/// those fields, is an error, never a row that could match by accident.
pub async fn store_fingerprint(cluster: &Cluster) -> anyhow::Result<Vec<(String, Vec<[u64; 4]>)>> {
    let client = http_client();
    let mut fingerprint = Vec::new();
    for node in cluster.nodes()? {
        if node["role"] != "store" {
            continue;
        }
        let id = node["id"].as_str().context("id")?.to_owned();
        let url = format!(
            "http://{}/volumes",
            node["address"].as_str().context("address")?
        );
        let volumes = volumes::every_volume(&client, &url)
            .await
            .with_context(|| format!("{id}: GET /volumes"))?;
        let mut rows = Vec::new();
        for volume in &volumes {
            let field = |name: &str| {
                volume[name]
                    .as_u64()
                    .with_context(|| format!("{id}: volume without {name}: {volume}"))
            };
            let row = [
                field("volume_id")?,
                field("needle_count")?,
                field("live_bytes")?,
                field("deleted_bytes")?,
            ];
            if row[2] > 0 || row[3] > 0 {
                rows.push(row);
            }
        }
        rows.sort_unstable();
        fingerprint.push((id, rows));
    }
    anyhow::ensure!(!fingerprint.is_empty(), "cluster.json names no store");
    fingerprint.sort();
    Ok(fingerprint)
}

/// Polls `check` every 200 ms until it returns `Ok(true)` or `deadline` passes.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    let mut last = String::new();
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => last.clear(),
            Err(error) => last = format!("{error:#}"),
        }
        if started.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what} {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The directory's answer to `GET path` (a JSON array: `/nodes`, ...).
pub async fn directory_json(
    cluster: &Cluster,
    path: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let url = format!("{}{path}", cluster.node_url("directory")?);
    let value: serde_json::Value = http_client().get(url).send().await?.json().await?;
    value
        .as_array()
        .cloned()
        .context("directory answered a non-array")
}

/// Waits (at most a minute) until the directory counts node `id` `state`
/// (`up` or `down`).
pub async fn wait_node_state(cluster: &Cluster, id: &str, state: &str) -> anyhow::Result<()> {
    wait_until(
        &format!("{id} {state}"),
        Duration::from_secs(60),
        || async {
            let nodes = directory_json(cluster, "/nodes").await?;
            Ok(nodes.iter().any(|n| n["id"] == id && n["state"] == state))
        },
    )
    .await
}

/// Waits for the log line of a process paused at failpoint `point` (see
/// `haystack::failpoint`); returns its pid.
pub async fn paused_at(cluster: &Cluster, point: &str) -> anyhow::Result<i64> {
    let needle = format!("paused at failpoint {point} (pid ");
    let pid = std::sync::Arc::new(std::sync::Mutex::new(None));
    wait_until(
        &format!("a pause at {point}"),
        Duration::from_secs(90),
        || {
            let (pid, found) = (
                pid.clone(),
                cluster.log().split(&needle).nth(1).map(str::to_owned),
            );
            async move {
                let parsed = found.and_then(|rest| rest.split(')').next()?.parse::<i64>().ok());
                *pid.lock().expect("lock") = parsed;
                Ok(parsed.is_some())
            }
        },
    )
    .await?;
    let pid = pid.lock().expect("lock").context("pid")?;
    Ok(pid)
}
