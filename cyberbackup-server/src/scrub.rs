//! Scrub: a background task that reads every stored object back and checks it against the
//! hash recorded when it was stored, at a bounded rate so that it never takes the disk away
//! from backups (docs/repository.md, "Server-side store"; docs/operations.md, "Scrub").
//!
//! * **Packs** are streamed from the storage backend through BLAKE3, which must equal the
//!   pack ID; **legacy flat files** (verified `files` rows) through SHA-256, which must equal
//!   the recorded `Sha256`. A missing or shorter object is damaged too.
//! * One **cycle** reads every object not read since the cycle began, never-read first, then
//!   the longest ago (`ScrubbedAt`), so a restarted server goes on where it stopped.
//! * Each verdict is recorded in the catalog (`ScrubbedAt`; `CorruptAt` and `CorruptReason`
//!   while damaged, cleared when a later cycle finds the object whole again) and each damaged
//!   object is logged with its key, never its content. `/metrics`, `/ready`, the admin API
//!   and the client's `DAMAGED` request report the marks.
//! * Reads are paced to `scrub_bytes_per_sec` ([`Pacer`]); `0` disables the task. A backend
//!   or catalog failure ends the cycle (no verdict: the next cycle tries again).
//!
//! The scrub reads only what the server may read: it needs no key.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cyberbackup_core::names::ClientId;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::catalog::scrub::{CorruptKind, CorruptObject, Damage, FileToScrub, PackToScrub};
use crate::catalog::{Catalog, CatalogLocation, ServiceLock};
use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::repository::{PieceError, RepoStore};
use crate::storage::{Storage, StorageError};

/// Bytes read (and hashed) at a time.
pub const SCRUB_PIECE: u64 = 1024 * 1024;
/// Objects fetched from the catalog at a time.
const BATCH: u32 = 64;
/// A pacer that fell this far behind (a slow backend) starts afresh instead of bursting.
const MAX_CATCH_UP: Duration = Duration::from_secs(1);

/// Paces reads to a byte rate: after `n` bytes, waits until `n / rate` seconds have passed
/// since the start. A rate of 0 does not wait (a `scrub` command run unthrottled).
#[derive(Debug)]
pub struct Pacer {
    bytes_per_sec: u64,
    started: tokio::time::Instant,
    bytes: u64,
}

impl Pacer {
    /// A pacer at `bytes_per_sec` (0: unthrottled), starting now.
    #[must_use]
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec,
            started: tokio::time::Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `len` bytes read and waits until the rate allows more.
    pub async fn consumed(&mut self, len: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        self.bytes = self.bytes.saturating_add(len);
        let due =
            self.started + Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec as f64);
        let now = tokio::time::Instant::now();
        if now > due + MAX_CATCH_UP {
            self.started = now;
            self.bytes = 0;
            return;
        }
        tokio::time::sleep_until(due).await;
    }
}

/// What one scrub cycle did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScrubReport {
    /// Packs read.
    pub packs: u64,
    /// Legacy flat files read.
    pub files: u64,
    /// Bytes read and hashed.
    pub bytes: u64,
    /// Objects found damaged or missing.
    pub damaged: u64,
}

/// One finished cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubCycle {
    /// When it finished.
    pub finished_at: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// What it read and found.
    pub report: ScrubReport,
}

/// A cycle in progress: when it started and what it has read and found so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubProgress {
    /// When the cycle started.
    pub started_at: SystemTime,
    /// What it read and found so far.
    pub report: ScrubReport,
}

/// Counters of the scrub task, shared with `/metrics` and the admin API.
#[derive(Debug, Default)]
pub struct ScrubStatus {
    bytes: AtomicU64,
    objects: AtomicU64,
    cycles: AtomicU64,
    last_cycle: Mutex<Option<ScrubCycle>>,
    running: Mutex<Option<ScrubProgress>>,
}

/// Clears [`ScrubStatus::running`] when the cycle ends, finished or failed.
struct RunningCycle<'a>(&'a ScrubStatus);

impl Drop for RunningCycle<'_> {
    fn drop(&mut self) {
        *lock(&self.0.running) = None;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ScrubStatus {
    /// Bytes read and hashed since start.
    #[must_use]
    pub fn bytes_scrubbed(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Objects read since start.
    #[must_use]
    pub fn objects_scrubbed(&self) -> u64 {
        self.objects.load(Ordering::Relaxed)
    }

    /// Full cycles finished since start.
    #[must_use]
    pub fn cycles(&self) -> u64 {
        self.cycles.load(Ordering::Relaxed)
    }

    /// The latest full cycle, if one finished.
    #[must_use]
    pub fn last_cycle(&self) -> Option<ScrubCycle> {
        *lock(&self.last_cycle)
    }

    /// The cycle running now, if any.
    #[must_use]
    pub fn running(&self) -> Option<ScrubProgress> {
        *lock(&self.running)
    }

    fn begin_cycle(&self) -> RunningCycle<'_> {
        *lock(&self.running) = Some(ScrubProgress {
            started_at: SystemTime::now(),
            report: ScrubReport::default(),
        });
        RunningCycle(self)
    }

    fn progressed(&self, report: ScrubReport) {
        if let Some(running) = lock(&self.running).as_mut() {
            running.report = report;
        }
    }

    fn read(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn finished(&self, cycle: ScrubCycle) {
        *lock(&self.last_cycle) = Some(cycle);
        self.cycles.fetch_add(1, Ordering::Relaxed);
    }
}

/// A stored object's verdict.
enum Verdict {
    Whole,
    Damaged(String),
}

/// Reads stored objects back and records the verdicts (see the module docs).
#[derive(Debug, Clone)]
pub struct Scrubber {
    catalog: Catalog,
    repo: RepoStore,
    storage: Storage,
    status: Arc<ScrubStatus>,
}

impl Scrubber {
    /// A scrubber over the server's catalog, repository store and legacy storage, counting
    /// into `status`.
    #[must_use]
    pub fn new(
        catalog: Catalog,
        repo: RepoStore,
        storage: Storage,
        status: Arc<ScrubStatus>,
    ) -> Self {
        Self {
            catalog,
            repo,
            storage,
            status,
        }
    }

    /// Runs one full cycle (only `client`'s objects when given), paced by `pacer`: every
    /// pack, then every verified legacy file, not read since the cycle began.
    ///
    /// # Errors
    /// [`ServerError::Catalog`], or [`ServerError::Repository`] / [`ServerError::Storage`]
    /// when an object cannot be read for another reason than damage (the cycle stops; its
    /// verdicts so far are recorded).
    pub async fn run_cycle(
        &self,
        client: Option<ClientId>,
        pacer: &mut Pacer,
    ) -> Result<ScrubReport, ServerError> {
        let started = std::time::Instant::now();
        let cycle_start = unix_ms();
        let only = client.map(|c| c.0);
        let mut report = ScrubReport::default();
        let _running = self.status.begin_cycle();
        loop {
            let due = self
                .catalog
                .packs_to_scrub(cycle_start, only, BATCH)
                .await?;
            if due.is_empty() {
                break;
            }
            for pack in due {
                let _no_deletion = self.repo.scrub_guard(ClientId(pack.client)).await?;
                let verdict = self.check_pack(&pack, pacer, &mut report).await?;
                report.packs += 1;
                let damage = to_damage(verdict);
                let indexed = self
                    .catalog
                    .record_pack_scrub(pack.client, pack.pack, unix_ms(), damage.clone())
                    .await?;
                // A pack a prune retired since the listing is gone on purpose: not damage.
                if let Some(damage) = damage.filter(|_| indexed) {
                    log_damage(
                        &format!("{}/packs/{}", hex::encode(pack.client), pack.pack.to_hex()),
                        &damage,
                    );
                    report.damaged += 1;
                }
                self.status.objects.fetch_add(1, Ordering::Relaxed);
                self.status.progressed(report);
            }
        }
        loop {
            let due = self
                .catalog
                .files_to_scrub(cycle_start, only, BATCH)
                .await?;
            if due.is_empty() {
                break;
            }
            for file in due {
                let verdict = self.check_file(&file, pacer, &mut report).await?;
                report.files += 1;
                let damage = to_damage(verdict);
                if let Some(damage) = &damage {
                    log_damage(&file.path_name, damage);
                }
                report.damaged += u64::from(damage.is_some());
                self.catalog
                    .record_file_scrub(file.row, file.path_name, unix_ms(), damage)
                    .await?;
                self.status.objects.fetch_add(1, Ordering::Relaxed);
                self.status.progressed(report);
            }
        }
        // Stamps are milliseconds and a cycle takes what was stamped before it began: make
        // sure the next cycle begins after the last stamp of this one.
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.status.finished(ScrubCycle {
            finished_at: SystemTime::now(),
            duration: started.elapsed(),
            report,
        });
        Ok(report)
    }

    async fn check_pack(
        &self,
        pack: &PackToScrub,
        pacer: &mut Pacer,
        report: &mut ScrubReport,
    ) -> Result<Verdict, ServerError> {
        let client = ClientId(pack.client);
        let mut hasher = blake3::Hasher::new();
        let mut offset = 0;
        while offset < pack.size {
            let end = pack.size.min(offset + SCRUB_PIECE);
            let piece = match self
                .repo
                .read_pack_piece(client, &pack.pack, offset..end)
                .await
            {
                Ok(piece) => piece,
                Err(PieceError::Missing) => {
                    return Ok(Verdict::Damaged("missing from the storage backend".into()));
                }
                Err(PieceError::Short { len_bytes }) => {
                    return Ok(Verdict::Damaged(format!(
                        "only {len_bytes} of its {} bytes are stored",
                        pack.size
                    )));
                }
                Err(PieceError::Failed(err)) => return Err(err.into()),
            };
            hasher.update(&piece);
            let len = piece.len() as u64;
            offset += len;
            self.account(len, pacer, report).await;
        }
        // Bytes after the indexed size: the object was altered (appended to, or replaced by
        // a longer one) even if its indexed prefix still hashes right.
        match self
            .repo
            .read_pack_piece(client, &pack.pack, pack.size..pack.size + 1)
            .await
        {
            Ok(extra) if !extra.is_empty() => {
                return Ok(Verdict::Damaged(format!(
                    "it holds more than the {} bytes indexed",
                    pack.size
                )));
            }
            Ok(_) | Err(PieceError::Short { .. } | PieceError::Missing) => {}
            Err(PieceError::Failed(err)) => return Err(err.into()),
        }
        let actual = hasher.finalize();
        if actual.as_bytes() == &pack.pack.0 {
            Ok(Verdict::Whole)
        } else {
            Ok(Verdict::Damaged(format!(
                "its BLAKE3 hash is {}, not its pack ID",
                actual.to_hex()
            )))
        }
    }

    /// A damaged verdict on a legacy file is trusted only when the row still names the same
    /// path and a second read agrees: a commit may have moved the file meanwhile.
    async fn check_file(
        &self,
        file: &FileToScrub,
        pacer: &mut Pacer,
        report: &mut ScrubReport,
    ) -> Result<Verdict, ServerError> {
        let first = self.read_file(file, pacer, report).await?;
        if matches!(first, Verdict::Whole) {
            return Ok(first);
        }
        if !self
            .catalog
            .file_still_at(file.row, file.path_name.clone())
            .await?
        {
            return Ok(Verdict::Whole);
        }
        self.read_file(file, pacer, report).await
    }

    async fn read_file(
        &self,
        file: &FileToScrub,
        pacer: &mut Pacer,
        report: &mut ScrubReport,
    ) -> Result<Verdict, ServerError> {
        let path = match self.storage.resolve(&file.path_name) {
            Ok(path) => path,
            Err(StorageError::OutsideClientDir { .. }) => {
                return Ok(Verdict::Damaged(
                    "its catalog path lies outside the storage tree".into(),
                ));
            }
            Err(err) => return Err(err.into()),
        };
        let io = |op: &'static str, path: &PathBuf| {
            let path = path.clone();
            move |source| StorageError::Io { op, path, source }
        };
        let mut handle = match tokio::fs::File::open(&path).await {
            Ok(handle) => handle,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Verdict::Damaged(
                    "missing from the storage directory".into(),
                ));
            }
            Err(e) => return Err(io("open", &path)(e).into()),
        };
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; usize::try_from(SCRUB_PIECE).unwrap_or(1 << 20)];
        loop {
            let n = handle.read(&mut buf).await.map_err(io("read", &path))?;
            let Some(piece) = buf.get(..n).filter(|p| !p.is_empty()) else {
                break;
            };
            hasher.update(piece);
            self.account(n as u64, pacer, report).await;
        }
        let actual: [u8; 32] = hasher.finalize().into();
        if actual == file.sha256 {
            Ok(Verdict::Whole)
        } else {
            Ok(Verdict::Damaged(format!(
                "its SHA-256 is {}, not the {} recorded when it was stored",
                hex::encode(actual),
                hex::encode(file.sha256)
            )))
        }
    }

    async fn account(&self, len: u64, pacer: &mut Pacer, report: &mut ScrubReport) {
        report.bytes += len;
        self.status.read(len);
        pacer.consumed(len).await;
    }
}

/// Runs a cycle every `interval` (measured from the start of one cycle to the next; the first
/// at once), paced to `bytes_per_sec`, until `shutdown` is cancelled; `None` (no task) when
/// `bytes_per_sec` is 0. A failed cycle is logged and retried at the next interval. Of the
/// servers sharing a catalog, one runs each cycle (the one that takes
/// [`ServiceLock::ScheduledScrub`]); the others skip it.
#[must_use]
pub fn spawn(
    scrubber: Scrubber,
    bytes_per_sec: u64,
    interval: Duration,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    if bytes_per_sec == 0 {
        tracing::info!("scrub disabled (scrub_bytes_per_sec = 0)");
        return None;
    }
    Some(tokio::spawn(async move {
        loop {
            let next = tokio::time::Instant::now() + interval;
            let mut pacer = Pacer::new(bytes_per_sec);
            let elected = scrubber
                .catalog
                .elect(ServiceLock::ScheduledScrub, "scheduled scrub")
                .await;
            if elected.is_some() {
                tokio::select! {
                () = shutdown.cancelled() => return,
                result = scrubber.run_cycle(None, &mut pacer) => match result {
                    Ok(report) if report.damaged > 0 => tracing::warn!(
                        packs = report.packs, files = report.files, bytes = report.bytes,
                        damaged = report.damaged, "scrub cycle found damaged objects"
                    ),
                    Ok(report) => tracing::info!(
                        packs = report.packs, files = report.files, bytes = report.bytes,
                        "scrub cycle done: every object is whole"
                    ),
                    Err(error) => tracing::warn!(%error, "scrub cycle failed; retrying at the next interval"),
                },
                }
            }
            drop(elected);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }))
}

/// Runs one full cycle for the `scrub` command (only the client named `client` when given),
/// at `rate` bytes per second (`None`: unthrottled), beside a running server or alone: it
/// opens the catalog and the stores of `config.data_dir` without start-up recovery (it
/// writes nothing but verdicts). Returns the report and every object now marked corrupt.
///
/// # Errors
/// No catalog in the data directory, an unknown client name, or a failed cycle.
pub async fn scrub_now(
    config: &ServerConfig,
    client: Option<&str>,
    rate: Option<u64>,
) -> Result<(ScrubReport, Vec<CorruptObject>), ServerError> {
    let location = config.catalog_location();
    if let CatalogLocation::Sqlite(path) = &location {
        if !path.is_file() {
            return Err(ServerError::io(
                format!(
                    "no catalog at {} — check --data-dir / CYBERBACKUP_DATA_DIR",
                    path.display()
                ),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
    }
    let catalog = Catalog::open_at(location).await?;
    let only = match client {
        None => None,
        Some(name) => {
            let clients = catalog.list_clients().await?;
            let Some(found) = clients.into_iter().find(|c| c.name == name.as_bytes()) else {
                return Err(ServerError::io(
                    format!(
                        "no client is named {name:?} — list them with `cyberbackup-server clients`"
                    ),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            };
            Some(ClientId(found.id))
        }
    };
    let repo = RepoStore::from_config(config, catalog.clone())?;
    let storage = Storage::open(&config.data_dir)?;
    let scrubber = Scrubber::new(catalog.clone(), repo, storage, Arc::default());
    let report = scrubber
        .run_cycle(only, &mut Pacer::new(rate.unwrap_or(0)))
        .await?;
    let corrupt = catalog.corrupt_objects(only.map(|c| c.0), u32::MAX).await?;
    catalog.close().await?;
    Ok((report, corrupt))
}

/// Writes what [`scrub_now`] returned: one summary line, then one line per corrupt object.
///
/// # Errors
/// The writer's error.
pub fn write_summary(
    report: &ScrubReport,
    corrupt: &[CorruptObject],
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    writeln!(
        out,
        "scrubbed {} packs and {} legacy files ({}): {} damaged now, {} objects marked corrupt",
        report.packs,
        report.files,
        cyberbackup_core::v4::repository::human_bytes(report.bytes),
        report.damaged,
        corrupt.len()
    )?;
    for object in corrupt {
        let kind = match object.kind {
            CorruptKind::Pack => "pack",
            CorruptKind::File => "file",
        };
        writeln!(
            out,
            "corrupt {kind} {} of client {}: {}",
            object.object,
            String::from_utf8_lossy(&object.client_name),
            object.reason
        )?;
    }
    Ok(())
}

/// The damage to record for `verdict`.
fn to_damage(verdict: Verdict) -> Option<Damage> {
    match verdict {
        Verdict::Whole => None,
        Verdict::Damaged(reason) => Some(Damage {
            found_at: unix_ms() / 1000,
            reason,
        }),
    }
}

/// The error line of a damaged object (once it is known to be stored, not pruned).
fn log_damage(object: &str, damage: &Damage) {
    tracing::error!(object, reason = %damage.reason, "scrub: stored object is damaged");
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_cycle_shows_its_progress_until_it_ends() {
        let status = ScrubStatus::default();
        let so_far = ScrubReport {
            packs: 2,
            files: 1,
            bytes: 300,
            damaged: 1,
        };

        let during = {
            let _running = status.begin_cycle();
            status.progressed(so_far);
            status.running()
        };

        assert_eq!(during.map(|r| r.report), Some(so_far));
        assert_eq!(status.running(), None, "the cycle ended (or failed)");
    }
}
