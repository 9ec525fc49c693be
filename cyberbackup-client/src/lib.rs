//! # cyberbackup-client
//!
//! An async (tokio) client for CyberBackup servers: [`Client`] for the legacy v3 protocol,
//! built on the sans-IO [`cyberbackup_core::v3::ClientSession`], and [`v4`] for
//! protocol v4 (the CLI's default), on [`cyberbackup_core::v4::client::ClientSession`]. Both
//! produce a [`BackupReport`] and report [`ProgressEvent`]s the same way.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cyberbackup_client::ClientError> {
//! use cyberbackup_client::{Client, ClientOptions, IdentityFile, NoProgress};
//!
//! let options = ClientOptions::new("127.0.0.1:1256", "alice", IdentityFile::new("me.info"));
//! let mut client = Client::new(options)?;            // loads me.info if it exists
//! let report = client.backup(&["notes.txt".into()], &mut NoProgress).await?;
//! client.close(&mut NoProgress).await?;
//! for file in &report.files {
//!     println!("{}", file.summary());
//! }
//! # Ok(()) }
//! ```
//!
//! The client registers (1025/1026) on its first run and saves `me.info` atomically with
//! mode 0600; later runs reconnect (1027). Network failures are retried with exponential
//! backoff ([`RetryPolicy`]); a new connection reconnects with the saved identity and sends
//! only the files not yet verified.

#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod cli;
mod connection;
pub mod error;
pub mod identity;
pub mod legacy;
pub mod progress;
pub mod retry;
pub mod schedule;
pub mod snapshot;
mod source;
pub mod ui;
pub mod v4;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cyberbackup_core::identity::Identity;
use cyberbackup_core::limits::{DEFAULT_PACKET_CONTENT_LEN, DEFAULT_READ_CHUNK_LEN};
use cyberbackup_core::names::{FileName, NameField};
use cyberbackup_core::v3::{ClientConfig, ClientEvent, FileFailure, FileId, TransferPhase};

use crate::connection::{Connection, Note};
pub use crate::error::ClientError;
pub use crate::identity::IdentityFile;
pub use crate::progress::{
    BarProgress, LineProgress, NoProgress, Phase, ProgressEvent, ProgressSink, TransferProgress,
};
pub use crate::retry::RetryPolicy;

/// Most files a backup holds open (queued on the connection) at once.
const OPEN_FILES_WINDOW: usize = 32;

/// Everything a [`Client`] needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Server address, `host:port`.
    pub server: String,
    /// Client name to register (1 to 100 characters, as in `transfer.info`).
    pub name: String,
    /// Where the identity (`me.info`) is read from and saved to.
    pub identity: IdentityFile,
    /// Ciphertext bytes per 1028 packet (default 1 MiB; see [`cli::TransferArgs`] on small
    /// sizes).
    pub packet_size: u32,
    /// Send every file as one packet.
    pub single_packet: bool,
    /// Largest file read, in bytes (bounds memory per transfer).
    pub read_chunk_len: usize,
    /// How long a TCP connect may take.
    pub connect_timeout: Duration,
    /// How long the server may stay silent while an answer is due.
    pub response_timeout: Duration,
    /// Reconnects after network errors.
    pub retry: RetryPolicy,
    /// Use the name in an existing identity file even if it differs from `name` (legacy
    /// mode) instead of failing with [`ClientError::NameMismatch`].
    pub prefer_identity_name: bool,
}

impl ClientOptions {
    /// Options with defaults: 1 MiB packets and reads, 10 s connect timeout, 60 s response
    /// timeout, 3 reconnects.
    pub fn new(server: impl Into<String>, name: impl Into<String>, identity: IdentityFile) -> Self {
        Self {
            server: server.into(),
            name: name.into(),
            identity,
            packet_size: DEFAULT_PACKET_CONTENT_LEN,
            single_packet: false,
            read_chunk_len: DEFAULT_READ_CHUNK_LEN,
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            prefer_identity_name: false,
        }
    }
}

/// The outcome of one file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FileReport {
    /// The local path.
    pub path: PathBuf,
    /// The name the server stores it under (the base name).
    pub stored_name: String,
    /// Its length in bytes.
    pub len: u64,
    /// Whether the server's checksum matched ours and the server acknowledged it.
    pub verified: bool,
    /// The POSIX cksum (when verified).
    pub cksum: Option<u32>,
    /// Sends made (1 to 4).
    pub attempts: u8,
    /// Why it failed, naming the file and what to do.
    pub failure: Option<String>,
    /// What protocol v4 adds (`None` for v3 runs; flattened into the JSON object, so v4
    /// file objects carry `sha256`, `version` and `resumed_from` and v3 ones do not).
    #[serde(flatten)]
    pub v4: Option<V4FileDetails>,
}

/// The per-file results only protocol v4 has.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct V4FileDetails {
    /// SHA-256 of the content as the server verified it, lowercase hex (when verified).
    pub sha256: Option<String>,
    /// The version the file became on the server (when verified).
    pub version: Option<u32>,
    /// Byte offset the last upload attempt resumed from (0 when it started fresh).
    pub resumed_from: u64,
}

impl FileReport {
    /// One line for humans.
    #[must_use]
    pub fn summary(&self) -> String {
        if let (None, Some(cksum), Some(v4)) = (&self.failure, self.cksum, &self.v4) {
            let resumed = if v4.resumed_from > 0 {
                format!(", resumed at byte {}", v4.resumed_from)
            } else {
                String::new()
            };
            let attempts = if self.attempts > 1 {
                format!(", {} attempts", self.attempts)
            } else {
                String::new()
            };
            return format!(
                "verified {} as {:?} version {} ({} bytes, sha256 {}, cksum {cksum}{resumed}{attempts})",
                self.path.display(),
                self.stored_name,
                v4.version.unwrap_or_default(),
                self.len,
                v4.sha256.as_deref().unwrap_or("?"),
            );
        }
        match (&self.failure, self.cksum) {
            (Some(failure), _) => format!("FAILED {}: {failure}", self.path.display()),
            (None, Some(cksum)) => format!(
                "verified {} as {:?} ({} bytes, cksum {cksum}, {} send{})",
                self.path.display(),
                self.stored_name,
                self.len,
                self.attempts,
                if self.attempts == 1 { "" } else { "s" }
            ),
            (None, None) => format!("{}: not sent", self.path.display()),
        }
    }

    pub(crate) fn failed(
        path: &Path,
        stored_name: String,
        len: u64,
        attempts: u8,
        failure: String,
    ) -> Self {
        Self {
            path: path.to_path_buf(),
            stored_name,
            len,
            verified: false,
            cksum: None,
            attempts,
            failure: Some(failure),
            v4: None,
        }
    }
}

/// The outcome of a backup run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BackupReport {
    /// `host:port`.
    pub server: String,
    /// The protocol used: `"v3"` or `"v4"`.
    pub protocol: &'static str,
    /// Protocol v4: the fingerprint of the server key the run authenticated (`sha256:…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_fingerprint: Option<String>,
    /// Our client id (32 hex digits), once known.
    pub client_id: Option<String>,
    /// Whether this run registered a new client.
    pub registered: bool,
    /// One report per requested file, in the order given.
    pub files: Vec<FileReport>,
}

impl BackupReport {
    /// Whether every file was verified.
    #[must_use]
    pub fn all_verified(&self) -> bool {
        self.files.iter().all(|file| file.verified)
    }

    /// The files that failed.
    pub fn failures(&self) -> impl Iterator<Item = &FileReport> {
        self.files.iter().filter(|file| !file.verified)
    }
}

/// A file the run will try to send.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) path: PathBuf,
    name: NameField,
    pub(crate) stored_name: String,
    pub(crate) len: u64,
}

/// A CyberBackup v3 client: one identity, one server, a connection opened on demand.
#[derive(Debug)]
pub struct Client {
    options: ClientOptions,
    config: Arc<ClientConfig>,
    name: NameField,
    identity: Option<Identity>,
    registered: bool,
    connection: Option<Connection>,
    connect_attempts: u32,
    retries: u32,
}

impl Client {
    /// A client for `options`: validates the name and loads the identity file if it exists.
    /// No connection is made yet.
    ///
    /// # Errors
    /// [`ClientError::Usage`] for a bad name, [`ClientError::Identity`] for an unreadable
    /// identity file, [`ClientError::NameMismatch`] when it belongs to another name.
    pub fn new(options: ClientOptions) -> Result<Self, ClientError> {
        identity::check_client_name(&options.name).map_err(|why| ClientError::Usage {
            message: format!("{why} (got {:?})", options.name),
        })?;
        let identity = options.identity.load()?;
        let name = match &identity {
            Some(identity) if options.prefer_identity_name => identity.name().clone(),
            Some(identity) if identity.name().as_bytes() != options.name.as_bytes() => {
                return Err(ClientError::NameMismatch {
                    path: options.identity.path().to_path_buf(),
                    found: identity.name().to_string_lossy(),
                    wanted: options.name.clone(),
                });
            }
            _ => NameField::new(options.name.clone().into_bytes()).map_err(|err| {
                ClientError::Usage {
                    message: format!("the client name {:?} cannot be used: {err}", options.name),
                }
            })?,
        };
        let config = Arc::new(ClientConfig {
            packet_content_len: options.packet_size.max(16),
            read_chunk_len: options.read_chunk_len.max(1),
            single_packet: options.single_packet,
            response_timeout: options.response_timeout,
            ..ClientConfig::default()
        });
        Ok(Self {
            options,
            config,
            name,
            identity,
            registered: false,
            connection: None,
            connect_attempts: 0,
            retries: 0,
        })
    }

    /// [`Client::new`], then [`Client::connect_now`].
    ///
    /// # Errors
    /// As both.
    pub async fn connect(
        options: ClientOptions,
        progress: &mut dyn ProgressSink,
    ) -> Result<Self, ClientError> {
        let mut client = Self::new(options)?;
        client.connect_now(progress).await?;
        Ok(client)
    }

    /// Connects and registers or reconnects (retrying per the [`RetryPolicy`]), unless
    /// already connected.
    ///
    /// # Errors
    /// The fatal error, or [`ClientError::RetriesExhausted`].
    pub async fn connect_now(
        &mut self,
        progress: &mut dyn ProgressSink,
    ) -> Result<(), ClientError> {
        while self.connection.is_none() {
            match self.open_session(progress).await {
                Ok(connection) => self.connection = Some(connection),
                Err(error) => self.back_off(error, progress).await?,
            }
        }
        Ok(())
    }

    /// The identity in use (loaded, or saved by a registration), if any.
    #[must_use]
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Whether this client registered a new identity.
    #[must_use]
    pub fn registered(&self) -> bool {
        self.registered
    }

    /// Backs up one file.
    ///
    /// # Errors
    /// As [`Client::backup`].
    pub async fn backup_file(
        &mut self,
        path: impl Into<PathBuf>,
        progress: &mut dyn ProgressSink,
    ) -> Result<FileReport, ClientError> {
        let report = self.backup(&[path.into()], progress).await?;
        report
            .files
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Usage {
                message: "no file to back up".into(),
            })
    }

    /// Backs up `paths` (regular files) in order. A file that cannot be read or whose
    /// checksum never matches fails on its own (see [`FileReport::failure`]); the others go
    /// on. Connects when there is something to send.
    ///
    /// # Errors
    /// [`ClientError::DuplicateName`] (before anything is sent) when two paths share a base
    /// name. A fatal error: no connection after the retries, identity, protocol or name
    /// errors; when some files were already settled it comes wrapped in
    /// [`ClientError::Incomplete`] with the report of every file.
    pub async fn backup(
        &mut self,
        paths: &[PathBuf],
        progress: &mut dyn ProgressSink,
    ) -> Result<BackupReport, ClientError> {
        refuse_duplicate_names(paths)?;
        let mut run = Run::default();
        let jobs = prepare_all(paths, |index, prepared| match prepared {
            Ok(job) => {
                run.overall_total += job.len;
                run.pending.push(index);
            }
            Err(report) => run.finish(index, report, progress),
        })
        .await;
        let outcome = self.send(&mut run, &jobs, progress).await;
        let settled = !run.reports.is_empty();
        let report = BackupReport {
            server: self.options.server.clone(),
            protocol: "v3",
            server_fingerprint: None,
            client_id: self.identity.as_ref().map(|id| id.client_id().to_hex()),
            registered: self.registered,
            files: run.into_reports(paths, &jobs, outcome.as_ref().err()),
        };
        backup_result(report, outcome, settled)
    }

    /// Sends the pending jobs of `run`, reconnecting per the policy.
    async fn send(
        &mut self,
        run: &mut Run,
        jobs: &[Option<Job>],
        progress: &mut dyn ProgressSink,
    ) -> Result<(), ClientError> {
        while !run.pending.is_empty() {
            self.connect_now(progress).await?;
            let Some(mut connection) = self.connection.take() else {
                continue;
            };
            let mut in_flight = BTreeMap::new();
            // Files are opened a window at a time, so a backup of many files never holds more
            // than OPEN_FILES_WINDOW descriptors.
            let mut waiting: VecDeque<usize> = run.pending.iter().copied().collect();
            Self::queue_more(
                &mut connection,
                &mut waiting,
                &mut in_flight,
                run,
                jobs,
                progress,
            )
            .await;
            let mut result = Ok(());
            while !in_flight.is_empty() {
                let note = connection
                    .next_note(&self.options.identity, self.options.read_chunk_len)
                    .await;
                match note {
                    Ok(Note::Event(event)) => {
                        if self.on_event(&event, progress) {
                            continue;
                        }
                        if run.on_event(event, &mut in_flight, jobs, progress) {
                            // A file finished: the connection works, start the count anew.
                            self.retries = 0;
                            Self::queue_more(
                                &mut connection,
                                &mut waiting,
                                &mut in_flight,
                                run,
                                jobs,
                                progress,
                            )
                            .await;
                        }
                    }
                    Ok(Note::IdentitySaved(identity)) => self.on_identity_saved(identity, progress),
                    Ok(Note::Closed) => {
                        result = Err(ClientError::ConnectionClosed {
                            server: self.options.server.clone(),
                            during: "files were still queued".into(),
                        });
                        break;
                    }
                    Err(error) => {
                        result = Err(error);
                        break;
                    }
                }
            }
            match result {
                Ok(()) => self.connection = Some(connection),
                Err(ClientError::LocalFileAborted { .. }) => {}
                Err(error) => self.back_off(error, progress).await?,
            }
        }
        Ok(())
    }

    /// Opens and queues waiting files until [`OPEN_FILES_WINDOW`] are in flight; a file that
    /// cannot be opened is reported failed at once.
    async fn queue_more(
        connection: &mut Connection,
        waiting: &mut VecDeque<usize>,
        in_flight: &mut BTreeMap<FileId, usize>,
        run: &mut Run,
        jobs: &[Option<Job>],
        progress: &mut dyn ProgressSink,
    ) {
        while in_flight.len() < OPEN_FILES_WINDOW {
            let Some(index) = waiting.pop_front() else {
                return;
            };
            let Some(job) = jobs.get(index).and_then(Option::as_ref) else {
                continue;
            };
            match source::SourceFile::open(&job.path).await {
                Ok(file) => {
                    let id = connection.queue(file, job.name.clone(), job.len);
                    in_flight.insert(id, index);
                }
                Err(err) => {
                    let failure = open_failure(&job.path, &err);
                    let report =
                        FileReport::failed(&job.path, job.stored_name.clone(), job.len, 0, failure);
                    run.finish(index, report, progress);
                }
            }
        }
    }

    /// Ends the session cleanly (if connected) and closes the connection.
    ///
    /// # Errors
    /// A connection error while closing.
    pub async fn close(mut self, progress: &mut dyn ProgressSink) -> Result<(), ClientError> {
        let Some(mut connection) = self.connection.take() else {
            return Ok(());
        };
        connection.finish();
        loop {
            match connection
                .next_note(&self.options.identity, self.options.read_chunk_len)
                .await?
            {
                Note::Closed => return Ok(()),
                Note::Event(event) => {
                    self.on_event(&event, progress);
                }
                Note::IdentitySaved(identity) => self.on_identity_saved(identity, progress),
            }
        }
    }

    async fn open_session(
        &mut self,
        progress: &mut dyn ProgressSink,
    ) -> Result<Connection, ClientError> {
        self.connect_attempts += 1;
        progress.on_progress(&ProgressEvent::Connecting {
            server: self.options.server.clone(),
            attempt: self.connect_attempts,
        });
        let mut connection = Connection::open(
            &self.options.server,
            Arc::clone(&self.config),
            self.identity.clone(),
            &self.name,
            self.options.connect_timeout,
        )
        .await?;
        loop {
            match connection
                .next_note(&self.options.identity, self.options.read_chunk_len)
                .await?
            {
                Note::Event(ClientEvent::KeyExchanged) => return Ok(connection),
                Note::Event(event) => {
                    self.on_event(&event, progress);
                }
                Note::IdentitySaved(identity) => self.on_identity_saved(identity, progress),
                Note::Closed => {
                    return Err(ClientError::ConnectionClosed {
                        server: self.options.server.clone(),
                        during: "exchanging keys".into(),
                    });
                }
            }
        }
    }

    /// Handles the session-level events; `true` if `event` was one of them.
    fn on_event(&mut self, event: &ClientEvent, progress: &mut dyn ProgressSink) -> bool {
        let shown = match event {
            ClientEvent::Registered { client_id } => {
                self.registered = true;
                ProgressEvent::Registered {
                    client_id: client_id.to_hex(),
                }
            }
            ClientEvent::Reconnected { client_id } => ProgressEvent::Reconnected {
                client_id: client_id.to_hex(),
            },
            ClientEvent::ReconnectRefused => ProgressEvent::ReconnectRefused,
            ClientEvent::ServerError { request, attempt } => ProgressEvent::ServerError {
                request: *request,
                attempt: *attempt,
            },
            ClientEvent::KeyExchanged => return true,
            _ => return false,
        };
        progress.on_progress(&shown);
        true
    }

    fn on_identity_saved(&mut self, identity: Identity, progress: &mut dyn ProgressSink) {
        self.identity = Some(identity);
        progress.on_progress(&ProgressEvent::IdentitySaved {
            path: self.options.identity.path().to_path_buf(),
        });
    }

    /// After a failed connection: sleep per the policy, or give up with the error.
    async fn back_off(
        &mut self,
        error: ClientError,
        progress: &mut dyn ProgressSink,
    ) -> Result<(), ClientError> {
        back_off(self.options.retry, &mut self.retries, error, progress).await
    }
}

/// After a failed connection (either protocol): counts the retry, then sleeps per `policy`
/// and reports it, or gives up with the error when it is not retryable or retries ran out.
pub(crate) async fn back_off(
    policy: RetryPolicy,
    retries: &mut u32,
    error: ClientError,
    progress: &mut dyn ProgressSink,
) -> Result<(), ClientError> {
    if !error.is_retryable() {
        return Err(error);
    }
    *retries += 1;
    let delay = if error.is_rate_limited() {
        policy.rate_limited_delay(*retries)
    } else {
        policy.delay(*retries)
    };
    let Some(delay) = delay else {
        if policy.max_retries == 0 {
            return Err(error);
        }
        return Err(ClientError::RetriesExhausted {
            attempts: *retries,
            last: Box::new(error),
        });
    };
    progress.on_progress(&ProgressEvent::Retrying {
        attempt: *retries,
        max: policy.max_retries,
        delay,
        error: error.to_string(),
    });
    tokio::time::sleep(delay).await;
    Ok(())
}

/// Book-keeping of one `backup` call.
#[derive(Debug, Default)]
struct Run {
    reports: BTreeMap<usize, FileReport>,
    pending: Vec<usize>,
    done_bytes: u64,
    overall_total: u64,
}

impl Run {
    fn finish(&mut self, index: usize, report: FileReport, progress: &mut dyn ProgressSink) {
        self.pending.retain(|&i| i != index);
        self.done_bytes += report.len;
        progress.on_progress(&ProgressEvent::FileDone(report.clone()));
        self.reports.insert(index, report);
    }

    /// Handles a file event; `true` when a file finished.
    fn on_event(
        &mut self,
        event: ClientEvent,
        in_flight: &mut BTreeMap<FileId, usize>,
        jobs: &[Option<Job>],
        progress: &mut dyn ProgressSink,
    ) -> bool {
        let job_of = |file: &FileId| {
            in_flight.get(file).and_then(|&index| {
                jobs.get(index)
                    .and_then(Option::as_ref)
                    .map(|job| (index, job))
            })
        };
        match event {
            ClientEvent::Progress {
                file,
                sent,
                total,
                phase,
            } => {
                let Some((_, job)) = job_of(&file) else {
                    return false;
                };
                progress.on_progress(&ProgressEvent::Transfer(TransferProgress {
                    path: job.path.clone(),
                    name: job.stored_name.clone(),
                    sent,
                    total,
                    phase: match phase {
                        TransferPhase::Sending => Phase::Sending,
                        TransferPhase::Verifying => Phase::Verifying,
                    },
                    overall_sent: self.done_bytes + sent,
                    overall_total: self.overall_total,
                }));
                false
            }
            ClientEvent::CrcMismatch {
                file,
                attempt,
                switched_to_per_packet,
                ..
            } => {
                if let Some((_, job)) = job_of(&file) {
                    progress.on_progress(&ProgressEvent::CrcMismatch {
                        name: job.stored_name.clone(),
                        attempt,
                        switched_to_per_packet,
                    });
                }
                false
            }
            ClientEvent::ResendingAsOnePacket { file, .. } => {
                if let Some((_, job)) = job_of(&file) {
                    progress.on_progress(&ProgressEvent::ResendingAsOnePacket {
                        name: job.stored_name.clone(),
                    });
                }
                false
            }
            ClientEvent::FileVerified {
                file,
                cksum,
                attempts,
            } => {
                let Some((index, job)) = job_of(&file) else {
                    return false;
                };
                let report = FileReport {
                    path: job.path.clone(),
                    stored_name: job.stored_name.clone(),
                    len: job.len,
                    verified: true,
                    cksum: Some(cksum),
                    attempts,
                    failure: None,
                    v4: None,
                };
                in_flight.remove(&file);
                self.finish(index, report, progress);
                true
            }
            ClientEvent::FileFailed { file, failure } => {
                let Some((index, job)) = job_of(&file) else {
                    return false;
                };
                let (attempts, reason) = describe_failure(job, &failure);
                let report = FileReport::failed(
                    &job.path,
                    job.stored_name.clone(),
                    job.len,
                    attempts,
                    reason,
                );
                in_flight.remove(&file);
                self.finish(index, report, progress);
                true
            }
            _ => false,
        }
    }

    /// One report per path; files never settled are `not sent`, with the fatal error that
    /// stopped the run if there was one.
    fn into_reports(
        mut self,
        paths: &[PathBuf],
        jobs: &[Option<Job>],
        stopped_by: Option<&ClientError>,
    ) -> Vec<FileReport> {
        let why = match stopped_by {
            Some(error) => format!("not sent: the run stopped first ({error})"),
            None => "not sent".to_owned(),
        };
        (0..paths.len())
            .map(|index| {
                self.reports.remove(&index).unwrap_or_else(|| {
                    let path = paths.get(index).cloned().unwrap_or_default();
                    let (name, len) = jobs
                        .get(index)
                        .and_then(Option::as_ref)
                        .map(|job| (job.stored_name.clone(), job.len))
                        .unwrap_or_default();
                    FileReport::failed(&path, name, len, 0, why.clone())
                })
            })
            .collect()
    }
}

fn describe_failure(job: &Job, failure: &FileFailure) -> (u8, String) {
    let name = &job.stored_name;
    match failure {
        FileFailure::CrcMismatch { attempts } => (
            *attempts,
            format!(
                "the server's checksum of {name:?} did not match ours after {attempts} sends; gave up (sent 1031) — the file is NOT backed up; check the network or the server and run again"
            ),
        ),
        FileFailure::Local { reason } => (
            0,
            format!(
                "reading {} failed while sending it: {reason}",
                job.path.display()
            ),
        ),
        FileFailure::TooLarge { len } => (
            0,
            format!("{name:?} is {len} bytes; the v3 protocol cannot carry files of 4 GiB or more"),
        ),
        other => (0, format!("{name:?} failed: {other:?}")),
    }
}

/// Refuses a run in which two paths share a base name: the server would store the second
/// over the first. (Mapping them to distinct names was rejected: the v3 server has no
/// directories, so any mapping invents names the user never chose and that a later run
/// from another directory could collide with.)
pub(crate) fn refuse_duplicate_names(paths: &[PathBuf]) -> Result<(), ClientError> {
    let mut seen: BTreeMap<Vec<u8>, &PathBuf> = BTreeMap::new();
    for path in paths {
        let Some(name) = path.file_name() else {
            continue;
        };
        if let Some(first) = seen.insert(os_bytes(name), path) {
            return Err(ClientError::DuplicateName {
                name: name.to_string_lossy().into_owned(),
                first: first.clone(),
                second: path.clone(),
            });
        }
    }
    Ok(())
}

/// [`prepare`]s every path in order, telling `each` about it as soon as it is checked: the
/// job, or the report of a path that cannot be backed up.
pub(crate) async fn prepare_all(
    paths: &[PathBuf],
    mut each: impl FnMut(usize, Result<&Job, FileReport>),
) -> Vec<Option<Job>> {
    let mut jobs = Vec::with_capacity(paths.len());
    for (index, path) in paths.iter().enumerate() {
        match prepare(path).await {
            Ok(job) => {
                each(index, Ok(&job));
                jobs.push(Some(job));
            }
            Err((stored_name, failure)) => {
                jobs.push(None);
                each(
                    index,
                    Err(FileReport::failed(path, stored_name, 0, 0, failure)),
                );
            }
        }
    }
    jobs
}

/// The result of a backup run: the report when `outcome` is `Ok`; otherwise the error, wrapped
/// in [`ClientError::Incomplete`] with the report when some files were already `settled`.
pub(crate) fn backup_result(
    report: BackupReport,
    outcome: Result<(), ClientError>,
    settled: bool,
) -> Result<BackupReport, ClientError> {
    match outcome {
        Ok(()) => Ok(report),
        Err(cause) if settled => Err(ClientError::Incomplete {
            report: Box::new(report),
            cause: Box::new(cause),
        }),
        Err(cause) => Err(cause),
    }
}

/// Checks that `path` is a readable regular file with a usable name.
pub(crate) async fn prepare(path: &Path) -> Result<Job, (String, String)> {
    let stored_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fail = |message: String| (stored_name.clone(), message);
    let metadata = tokio::fs::metadata(path)
        .await
        .map_err(|err| fail(open_failure(path, &err)))?;
    if !metadata.is_file() {
        return Err(fail(format!(
            "{} is not a regular file — pass files, or directories with the CLI",
            path.display()
        )));
    }
    let Some(raw_name) = path.file_name() else {
        return Err(fail(format!("{} has no file name", path.display())));
    };
    let name = NameField::new(os_bytes(raw_name)).map_err(|err| {
        fail(format!(
            "the name of {} cannot be sent: {err}",
            path.display()
        ))
    })?;
    // The server's own validator: a name it would refuse fails this file alone, before
    // anything is sent (a v3 server answers an invalid name by closing the connection).
    let name = FileName::validate(name).map_err(|err| {
        fail(format!(
            "the server would refuse the name of {}: {err} — rename the file (names are stored without directories)",
            path.display()
        ))
    })?;
    // Fail early (before connecting) on files we cannot open.
    drop(
        tokio::fs::File::open(path)
            .await
            .map_err(|err| fail(open_failure(path, &err)))?,
    );
    Ok(Job {
        path: path.to_path_buf(),
        name: name.field().clone(),
        stored_name: stored_name.clone(),
        len: metadata.len(),
    })
}

fn open_failure(path: &Path, err: &std::io::Error) -> String {
    let hint = match err.kind() {
        std::io::ErrorKind::NotFound => " — check the path",
        std::io::ErrorKind::PermissionDenied => " — check the file's permissions",
        _ => "",
    };
    format!("cannot open {}: {err}{hint}", path.display())
}

#[cfg(unix)]
fn os_bytes(name: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    name.as_bytes().to_vec()
}

#[cfg(not(unix))]
fn os_bytes(name: &std::ffi::OsStr) -> Vec<u8> {
    name.to_string_lossy().into_owned().into_bytes()
}
