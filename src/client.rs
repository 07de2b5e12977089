//! Client commands (`put`, `get`, `rm`, `status`): plain HTTP against a
//! running router's public API.

#![allow(
    clippy::print_stdout,
    reason = "printing results is these commands' job"
)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use haystack::api::PageCursor;
use indicatif::{ProgressBar, ProgressStyle};
use router::directory::LogicalVolume;
use router::directory::types::VolumePage;
use tokio::io::AsyncWriteExt;

/// A router's base URL and an HTTP client for it.
#[derive(Debug)]
pub struct RouterClient {
    base: String,
    http: reqwest::Client,
}

impl RouterClient {
    /// A client for the router at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> anyhow::Result<RouterClient> {
        let base = base.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building HTTP client")?;
        Ok(RouterClient { base, http })
    }

    /// `POST /blobs` with the file's bytes; prints the id, or the JSON answer.
    pub async fn put(
        &self,
        file: &Path,
        content_type: Option<&str>,
        json: bool,
    ) -> anyhow::Result<()> {
        let body = tokio::fs::read(file)
            .await
            .with_context(|| format!("reading {}", file.display()))?;
        let mut request = self.http.post(format!("{}/blobs", self.base)).body(body);
        if let Some(content_type) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        let response = request.send().await.context("uploading")?;
        let answer: serde_json::Value = checked(response).await?.json().await?;
        if json {
            println!("{answer}");
        } else {
            let id = answer
                .get("id")
                .and_then(|id| id.as_str())
                .context("the router's answer has no id")?;
            println!("{id}");
        }
        Ok(())
    }

    /// `GET /blobs/ID` into `output`, or stdout; with `direct`, from a
    /// store node holding the volume if one serves it
    /// ([`router::direct::DirectReader`]).
    pub async fn get(
        &self,
        id: &str,
        output: Option<&PathBuf>,
        direct: bool,
    ) -> anyhow::Result<()> {
        let response = if direct {
            let blob = router::api::BlobId::parse(id)?;
            let reader = router::direct::DirectReader::new(self.http.clone(), &self.base);
            let (response, answered) = reader.get(&blob).await.context("fetching")?;
            tracing::debug!(?answered, "direct read");
            response
        } else {
            self.http
                .get(format!("{}/blobs/{id}", self.base))
                .send()
                .await
                .context("fetching")?
        };
        let mut response = checked(response).await?;
        match output {
            Some(path) => {
                // Write beside the target and rename, so a failed download
                // never leaves a partial file under the requested name.
                let tmp = path.with_extension("hayloft-partial");
                let mut file = tokio::fs::File::create(&tmp)
                    .await
                    .with_context(|| format!("creating {}", tmp.display()))?;
                while let Some(chunk) = response.chunk().await? {
                    file.write_all(&chunk).await?;
                }
                file.sync_all().await?;
                drop(file);
                tokio::fs::rename(&tmp, path)
                    .await
                    .with_context(|| format!("renaming to {}", path.display()))?;
            }
            None => {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                while let Some(chunk) = response.chunk().await? {
                    stdout.write_all(&chunk)?;
                }
                stdout.flush()?;
            }
        }
        Ok(())
    }

    /// `DELETE /blobs/ID`.
    pub async fn rm(&self, id: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(format!("{}/blobs/{id}", self.base))
            .send()
            .await
            .context("deleting")?;
        checked(response).await?;
        Ok(())
    }

    /// Health, volumes and nodes from the router's admin endpoints.
    pub async fn status(&self, json: bool) -> anyhow::Result<()> {
        let health = self.get_json("/health").await?;
        let volumes = serde_json::to_value(all_volumes(&self.http, &self.base).await?)?;
        let nodes = self.get_json("/admin/nodes").await?;
        if json {
            let all = serde_json::json!({"health": health, "volumes": volumes, "nodes": nodes});
            println!("{all}");
            return Ok(());
        }
        println!("router {}: {}", self.base, health);
        println!("nodes:");
        for node in as_list(&nodes) {
            println!(
                "  {:<10} {:<10} {:<6} {:<8} {:<28} {}",
                field(node, "id"),
                field(node, "role"),
                field(node, "datacenter"),
                field(node, "rack"),
                field(node, "address"),
                field(node, "state"),
            );
        }
        println!("volumes:");
        for volume in as_list(&volumes) {
            let warm = volume.get("warm").filter(|w| !w.is_null());
            match warm {
                Some(warm) => println!(
                    "  {:>6} {:<10} needles {:<10} generation {} stripes {} holders {} \
                     tolerates {} lost racks",
                    field(volume, "id"),
                    field(volume, "state"),
                    field(warm, "needle_count"),
                    field(warm, "generation"),
                    as_list(warm.get("stripes").unwrap_or(&serde_json::Value::Null)).len(),
                    field(warm, "journal_holders"),
                    field(warm, "tolerated_rack_losses"),
                ),
                None => println!(
                    "  {:>6} {:<10} needles {:<10} bytes {:<14} replicas {}",
                    field(volume, "id"),
                    field(volume, "state"),
                    field(volume, "needle_count"),
                    field(volume, "size_bytes"),
                    field(volume, "replicas"),
                ),
            }
        }
        Ok(())
    }

    /// `DELETE /admin/nodes/{id}`: has the directory forget a down node
    /// no volume keeps data on.
    pub async fn remove_node(&self, id: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(format!("{}/admin/nodes/{id}", self.base))
            .send()
            .await
            .context("removing the node")?;
        let removed: serde_json::Value = checked(response).await?.json().await?;
        println!(
            "node {id} removed (it was a {} in rack {})",
            field(&removed, "role"),
            field(&removed, "rack")
        );
        Ok(())
    }

    /// `POST /admin/volumes/{id}/seal`: seals a locked volume into the warm
    /// tier; returns once it is warm (an error otherwise).
    pub async fn warm_seal(&self, volume: u32, json: bool) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/admin/volumes/{volume}/seal", self.base))
            .send()
            .await
            .context("sealing")?;
        let answer: serde_json::Value = checked(response).await?.json().await?;
        if json {
            println!("{answer}");
        } else {
            println!(
                "volume {volume} is warm: {} needles, {} dropped as deleted, {} hot replicas \
                 retired",
                field(&answer, "needles"),
                field(&answer, "dropped"),
                field(&answer, "retired_replicas"),
            );
        }
        Ok(())
    }

    /// `hayloft scrub`: every volume (or `volume`) read back and checked
    /// now, one `POST /admin/scrub?volume=N` each, with a progress bar on a
    /// terminal. Fails if something could not be checked or a needle has
    /// no good copy left.
    pub async fn scrub(&self, volume: Option<u32>, deep: bool, json: bool) -> anyhow::Result<()> {
        let ids: Vec<u64> = match volume {
            Some(volume) => vec![u64::from(volume)],
            None => all_volumes(&self.http, &self.base)
                .await?
                .iter()
                .map(|v| u64::from(v.id))
                .collect(),
        };
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(ids.len() as u64).with_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} volumes {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let mut total = serde_json::json!({
            "volumes": 0, "blocks_checked": 0, "stripes_verified": 0, "needles_checked": 0, "bytes": 0,
            "damaged_blocks": [], "corrupt_needles": [], "unrecoverable": [], "unchecked": [],
        });
        for id in ids {
            if let Some(bar) = &bar {
                bar.set_message(format!("volume {id}"));
            }
            let response = self
                .http
                .post(format!("{}/admin/scrub?volume={id}&deep={deep}", self.base))
                .send()
                .await
                .with_context(|| format!("scrubbing volume {id}"))?;
            let report: serde_json::Value = checked(response).await?.json().await?;
            for (key, value) in total.as_object_mut().into_iter().flatten() {
                match value {
                    serde_json::Value::Array(list) => {
                        list.extend(report[key.as_str()].as_array().cloned().unwrap_or_default());
                    }
                    number => {
                        let sum = number.as_u64().unwrap_or(0)
                            + report[key.as_str()].as_u64().unwrap_or(0);
                        *number = sum.into();
                    }
                }
            }
            if let Some(bar) = &bar {
                bar.inc(1);
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let count = |key: &str| total[key].as_array().map_or(0, Vec::len);
        let trouble = count("unrecoverable") + count("unchecked");
        if json {
            println!("{total}");
        } else {
            for (key, what) in [("damaged_blocks", "block"), ("corrupt_needles", "needle")] {
                for found in total[key].as_array().into_iter().flatten() {
                    println!(
                        "volume {} {what} {} on {}: corrupt, reported for repair",
                        field(found, "volume"),
                        found["what"].as_str().unwrap_or_default(),
                        found["node"].as_str().unwrap_or_default(),
                    );
                }
            }
            for blob in total["unrecoverable"].as_array().into_iter().flatten() {
                println!(
                    "unrecoverable: every replica of {} is corrupt",
                    blob.as_str().unwrap_or_default()
                );
            }
            for what in total["unchecked"].as_array().into_iter().flatten() {
                println!("not checked: {}", what.as_str().unwrap_or_default());
            }
            println!(
                "{} volumes checked whole: {} blocks ({} stripes' parity), {} needle copies, {} bytes; {} corrupt",
                field(&total, "volumes"),
                field(&total, "blocks_checked"),
                field(&total, "stripes_verified"),
                field(&total, "needles_checked"),
                field(&total, "bytes"),
                count("damaged_blocks") + count("corrupt_needles"),
            );
        }
        anyhow::ensure!(
            trouble == 0,
            "{trouble} needles unrecoverable or places not checked"
        );
        Ok(())
    }

    /// `hayloft repair`: one coordinator pass now (`POST /admin/repair`),
    /// or with `status_only` the report alone (`GET /admin/repair`). Fails
    /// if a rebuild failed.
    pub async fn repair(&self, status_only: bool, json: bool) -> anyhow::Result<()> {
        let url = format!("{}/admin/repair", self.base);
        let request = if status_only {
            self.http.get(url)
        } else {
            self.http.post(url)
        };
        let answer: serde_json::Value = checked(request.send().await.context("repairing")?)
            .await?
            .json()
            .await?;
        let rebuilds = answer["rebuilds"].as_array().cloned().unwrap_or_default();
        let failed = rebuilds.iter().any(|r| !r["error"].is_null());
        if json {
            println!("{answer}");
            anyhow::ensure!(!failed, "a rebuild failed");
            return Ok(());
        }
        let names = |key: &str| {
            answer[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        println!("lost storage nodes: {}", names("lost_nodes"));
        println!("down storage nodes: {}", names("down_nodes"));
        for stripe in answer["endangered"].as_array().into_iter().flatten() {
            println!(
                "volume {} stripe {}: {} blocks to rebuild {}, {} unavailable",
                field(stripe, "volume"),
                field(stripe, "stripe"),
                stripe["missing"].as_array().map_or(0, Vec::len),
                stripe["missing"],
                stripe["unavailable"].as_array().map_or(0, Vec::len),
            );
        }
        for rebuild in &rebuilds {
            match rebuild["error"].as_str() {
                None => println!(
                    "volume {} stripe {}: rebuilt {} ({} bytes, {:.1} s)",
                    field(rebuild, "volume"),
                    field(rebuild, "stripe"),
                    rebuild["blocks"],
                    field(rebuild, "written_bytes"),
                    rebuild["seconds"].as_f64().unwrap_or(0.0),
                ),
                Some(error) => println!(
                    "volume {} stripe {}: rebuild failed: {error}",
                    field(rebuild, "volume"),
                    field(rebuild, "stripe"),
                ),
            }
        }
        for job in answer["jobs"].as_array().into_iter().flatten() {
            println!(
                "job: volume {} stripe {}{}: {} by {:?}, attempt {}{}",
                field(job, "volume"),
                field(job, "stripe"),
                if job["balance"] == true {
                    " (move)"
                } else {
                    ""
                },
                job["blocks"],
                job["owner"].as_str().unwrap_or_default(),
                field(job, "attempts"),
                job["last_error"]
                    .as_str()
                    .map(|e| format!(", last failed: {e}"))
                    .unwrap_or_default(),
            );
        }
        println!(
            "{} placement violations, {} journal holders replaced, {} marked stale, {} orphan \
             blocks removed",
            field(&answer, "placement_violation_count"),
            field(&answer, "holders_replaced"),
            field(&answer, "holders_marked_stale"),
            field(&answer, "orphans_removed"),
        );
        for problem in answer["problems"].as_array().into_iter().flatten() {
            println!("problem: {}", problem.as_str().unwrap_or_default());
        }
        for (list, count, what) in [
            ("endangered", "endangered_count", "endangered stripes"),
            ("problems", "problem_count", "problems"),
            ("jobs", "job_count", "rebuild jobs"),
        ] {
            let shown = answer[list].as_array().map_or(0, Vec::len);
            let all = answer[count].as_u64().unwrap_or(0);
            if all > shown as u64 {
                println!("{all} {what} in all, the first {shown} shown");
            }
        }
        anyhow::ensure!(!failed, "a rebuild failed");
        Ok(())
    }

    /// `POST /admin/migrate`: one migration pass now (or `volume` forced);
    /// waits for its jobs and prints what each did. Meanwhile, on a
    /// terminal (and without `json`), a progress bar shows each job's step.
    pub async fn migrate(&self, volume: Option<u32>, json: bool) -> anyhow::Result<()> {
        let mut url = format!("{}/admin/migrate", self.base);
        if let Some(volume) = volume {
            url.push_str(&format!("?volume={volume}"));
        }
        let pass = self.http.post(url).send();
        let progress = (!json && std::io::stderr().is_terminal()).then(|| migration_bar(volume));
        let response = match &progress {
            Some(bar) => {
                tokio::pin!(pass);
                loop {
                    tokio::select! {
                        response = &mut pass => break response,
                        () = tokio::time::sleep(PROGRESS_POLL) => {
                            // The one job, or the first page of them.
                            let path = match volume {
                                Some(v) => format!(
                                    "/admin/migrations?limit=1{}",
                                    v.checked_sub(1).map(|a| format!("&after={a}")).unwrap_or_default()
                                ),
                                None => "/admin/migrations".to_owned(),
                            };
                            if let Ok(page) = self.get_json(&path).await {
                                show_steps(bar, volume, &page["jobs"]);
                            }
                        }
                    }
                }
            }
            None => pass.await,
        };
        if let Some(bar) = progress {
            bar.finish_and_clear();
        }
        let answer: serde_json::Value = checked(response.context("migrating")?)
            .await?
            .json()
            .await?;
        let jobs = answer["jobs"].as_array().cloned().unwrap_or_default();
        let failed = jobs.iter().any(|job| !job["error"].is_null());
        if json {
            println!("{answer}");
            anyhow::ensure!(!failed, "a migration failed");
            return Ok(());
        }
        for job in &jobs {
            match job["error"].as_str() {
                None => println!(
                    "volume {} is warm: {} needles, {} hot replicas retired, {:.1} s",
                    field(job, "volume"),
                    field(job, "needles"),
                    field(job, "retired_replicas"),
                    job["seconds"].as_f64().unwrap_or(0.0),
                ),
                Some(error) => println!("volume {} failed: {error}", field(job, "volume")),
            }
        }
        let elsewhere = answer["claimed_elsewhere"].as_array().map_or(0, Vec::len);
        println!(
            "{} migrated or tried, {} being migrated elsewhere, {} locked but too young",
            jobs.len(),
            elsewhere,
            field(&answer, "too_young"),
        );
        if let Some(why) = answer["held_back"].as_str() {
            println!("no new migration started: {why}");
        }
        let geo = &answer["geo"];
        let count = |key: &str| geo[key].as_array().map_or(0, Vec::len);
        if count("copies_created") + count("xors_created") + count("copies_dropped") > 0
            || geo["waiting_for_buddy"].as_u64().unwrap_or(0) > 0
        {
            println!(
                "geo layer: {} copies and {} XOR volumes made, {} copies dropped; {} volumes \
                 wait for a buddy, their copies holding {} bytes",
                count("copies_created"),
                count("xors_created"),
                count("copies_dropped"),
                field(geo, "waiting_for_buddy"),
                field(geo, "waiting_bytes"),
            );
        }
        for problem in geo["problems"].as_array().into_iter().flatten() {
            println!("geo layer: {}", problem.as_str().unwrap_or_default());
        }
        anyhow::ensure!(!failed, "a migration failed");
        Ok(())
    }

    /// `GET /admin/migrations`, page by page: every migration job with its
    /// step (`--json`: one JSON job per line).
    pub async fn migrations(&self, json: bool) -> anyhow::Result<()> {
        if !json {
            println!(
                "{:>8}  {:<10} {:>8}  {:<12} error",
                "volume", "step", "attempts", "owner"
            );
        }
        let mut cursor = PageCursor::<u64>::default();
        while let Some(after) = cursor.next_page() {
            let path = match after {
                Some(after) => format!("/admin/migrations?after={after}"),
                None => "/admin/migrations".to_owned(),
            };
            let page = self.get_json(&path).await?;
            for job in page["jobs"].as_array().into_iter().flatten() {
                if json {
                    println!("{job}");
                    continue;
                }
                println!(
                    "{:>8}  {:<10} {:>8}  {:<12} {}",
                    field(job, "volume"),
                    job["step"].as_str().unwrap_or("?"),
                    field(job, "attempts"),
                    job["owner"].as_str().unwrap_or(""),
                    job["last_error"].as_str().unwrap_or(""),
                );
            }
            anyhow::ensure!(
                cursor.advance(page["next_after"].as_u64()),
                "the router's migration pages do not advance"
            );
        }
        Ok(())
    }

    async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        Ok(checked(response).await?.json().await?)
    }
}

/// How often `hayloft migrate` polls the jobs for its progress bar.
const PROGRESS_POLL: Duration = Duration::from_millis(500);

/// The steps of a migration job, in order (`warm` last).
const MIGRATION_STEPS: [&str; 7] = [
    "locked",
    "encoding",
    "verifying",
    "flipping",
    "draining",
    "deleting",
    "warm",
];

/// A bar through a forced volume's steps, or a spinner for a whole pass.
fn migration_bar(volume: Option<u32>) -> ProgressBar {
    let bar = match volume {
        Some(_) => ProgressBar::new(MIGRATION_STEPS.len() as u64 - 1).with_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner(),
    };
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message("starting");
    bar
}

/// Shows the jobs under way (only `volume`'s, if forced) on `bar`.
fn show_steps(bar: &ProgressBar, volume: Option<u32>, jobs: &serde_json::Value) {
    let running: Vec<(u64, &str)> = jobs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|job| volume.is_none_or(|v| job["volume"] == v))
        .filter_map(|job| Some((job["volume"].as_u64()?, job["step"].as_str()?)))
        .filter(|(_, step)| volume.is_some() || !matches!(*step, "warm" | "failed"))
        .collect();
    if let (Some(_), Some((_, step))) = (volume, running.first())
        && let Some(at) = MIGRATION_STEPS.iter().position(|s| s == step)
    {
        bar.set_position(at as u64);
    }
    let message: Vec<String> = running
        .iter()
        .map(|(vid, step)| format!("volume {vid}: {step}"))
        .collect();
    bar.set_message(message.join(", "));
}

/// Every volume of the cluster whose router is at `base`:
/// `GET /admin/volumes`, page by page.
pub(crate) async fn all_volumes(
    http: &reqwest::Client,
    base: &str,
) -> anyhow::Result<Vec<LogicalVolume>> {
    haystack::api::every_page(
        |after: Option<u32>| async move {
            let mut request = http.get(format!("{base}/admin/volumes"));
            if let Some(after) = after {
                request = request.query(&[("after", after)]);
            }
            let response = request
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .context("GET /admin/volumes")?;
            let page: VolumePage = checked(response).await?.json().await?;
            Ok((page.volumes, page.next_after))
        },
        || anyhow::anyhow!("the router's volume pages do not advance"),
    )
    .await
}

/// Turns an error answer into an error carrying the router's JSON message.
pub(crate) async fn checked(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|value| {
            value
                .get("message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or(text);
    bail!("router answered {status}: {message}")
}

fn as_list(value: &serde_json::Value) -> Vec<&serde_json::Value> {
    match value {
        serde_json::Value::Array(items) => items.iter().collect(),
        serde_json::Value::Object(map) => map
            .get("volumes")
            .or_else(|| map.get("nodes"))
            .and_then(|items| items.as_array())
            .map(|items| items.iter().collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn field(value: &serde_json::Value, key: &str) -> String {
    match value.get(key) {
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(serde_json::Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}
