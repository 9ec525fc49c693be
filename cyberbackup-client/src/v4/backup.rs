//! [`backup`]: many files over protocol v4 with the same report, progress events, retries
//! and partial-report rules as the v3 [`Client::backup`](crate::Client::backup), so the CLI
//! prints both protocols the same way.
//!
//! One connection carries every file; after a network failure the run reconnects (per the
//! [`RetryPolicy`]) and the file in flight resumes from the server's last durable
//! checkpoint. A file that fails on its own (unreadable, refused by the server, changed
//! while sent) is reported and the run goes on.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cyberbackup_core::v4::V4Error;
use cyberbackup_core::v4::client::ClientEvent;
use cyberbackup_core::v4::noise::to_hex;
use cyberbackup_core::v4::wire::ErrorCode;

use super::{V4Client, V4ClientError, V4Identity, V4Options};
use crate::progress::{Phase, ProgressEvent, ProgressSink, TransferProgress};
use crate::{BackupReport, ClientError, FileReport, Job, RetryPolicy, V4FileDetails};

/// Backs up `paths` (regular files) in order over protocol v4.
///
/// Registers a new identity on first use (`options.name`), pins the server key (trust on
/// first use unless `options.server_fingerprint` is given), then uploads each file, reporting
/// [`ProgressEvent`]s to `progress` exactly like the v3 client (plus `LoggedIn`,
/// `ServerKeyTrusted`, `Resumed` and `Restarting`).
///
/// # Errors
/// [`ClientError::DuplicateName`] (before anything is sent) when two paths share a base
/// name; [`ClientError::V4`] for a fatal failure (identity, name mismatch, connection after
/// the retries, handshake, changed server key, fatal refusal), wrapped in
/// [`ClientError::RetriesExhausted`] when reconnecting did not help, and in
/// [`ClientError::Incomplete`] (with the report of every file) when some files were already
/// settled.
pub async fn backup(
    options: &V4Options,
    paths: &[PathBuf],
    retry: RetryPolicy,
    progress: &mut dyn ProgressSink,
) -> Result<BackupReport, ClientError> {
    crate::refuse_duplicate_names(paths)?;
    let v4_error = |error| ClientError::V4 {
        server: options.server.clone(),
        error,
    };
    check_identity_name(options).map_err(v4_error)?;
    let mut run = Run::new(options, retry);
    let jobs = crate::prepare_all(paths, |index, prepared| match prepared {
        Ok(job) => run.overall_total += job.len,
        Err(report) => run.finish(index, report, progress),
    })
    .await;
    let outcome = run.send(&jobs, progress).await;
    let settled = !run.reports.is_empty();
    let report = run.into_report(paths, &jobs, outcome.as_ref().err());
    crate::backup_result(report, outcome, settled)
}

/// An existing identity must belong to the name asked for (as `me.info` in v3). One that
/// was never registered (the server refused its name) takes the new name instead.
fn check_identity_name(options: &V4Options) -> Result<(), V4ClientError> {
    let (Some(wanted), Some(identity)) = (&options.name, V4Identity::load(&options.identity)?)
    else {
        return Ok(());
    };
    if identity.name != *wanted && identity.client_id.is_some() {
        return Err(V4ClientError::NameMismatch {
            path: options.identity.clone(),
            found: identity.name,
            wanted: wanted.clone(),
        });
    }
    Ok(())
}

/// Book-keeping of one v4 backup run.
struct Run<'a> {
    options: &'a V4Options,
    retry: RetryPolicy,
    client: Option<V4Client>,
    reports: BTreeMap<usize, FileReport>,
    /// Upload attempts per file index.
    attempts: BTreeMap<usize, u8>,
    done_bytes: u64,
    overall_total: u64,
    connect_attempts: u32,
    /// Reconnects since the last file finished.
    retries: u32,
    client_id: Option<String>,
    registered: bool,
    server_fingerprint: Option<String>,
}

/// What became of one upload attempt.
enum Attempt {
    /// The file is settled (verified or failed); go on with the next.
    Settled,
    /// Try the same file again (after a reconnect: it resumes).
    Again,
    /// Try the same file again from byte 0 (its content no longer matched the partial
    /// upload on the server).
    Restart,
}

impl<'a> Run<'a> {
    fn new(options: &'a V4Options, retry: RetryPolicy) -> Self {
        Self {
            options,
            retry,
            client: None,
            reports: BTreeMap::new(),
            attempts: BTreeMap::new(),
            done_bytes: 0,
            overall_total: 0,
            connect_attempts: 0,
            retries: 0,
            client_id: None,
            registered: false,
            server_fingerprint: None,
        }
    }

    fn v4(&self, error: V4ClientError) -> ClientError {
        ClientError::V4 {
            server: self.options.server.clone(),
            error,
        }
    }

    fn finish(&mut self, index: usize, report: FileReport, progress: &mut dyn ProgressSink) {
        self.done_bytes += report.len;
        progress.on_progress(&ProgressEvent::FileDone(report.clone()));
        self.reports.insert(index, report);
    }

    async fn send(
        &mut self,
        jobs: &[Option<Job>],
        progress: &mut dyn ProgressSink,
    ) -> Result<(), ClientError> {
        for (index, job) in jobs.iter().enumerate() {
            let Some(job) = job else { continue };
            let mut restart = false;
            loop {
                match self.attempt(index, job, restart, progress).await? {
                    Attempt::Settled => break,
                    Attempt::Again => {}
                    Attempt::Restart => restart = true,
                }
            }
        }
        if let Some(client) = self.client.take() {
            // Every file is settled; a failure to say goodbye does not change the outcome.
            let _ignored = client.close().await;
        }
        Ok(())
    }

    async fn attempt(
        &mut self,
        index: usize,
        job: &Job,
        restart: bool,
        progress: &mut dyn ProgressSink,
    ) -> Result<Attempt, ClientError> {
        let client = match self.client.take() {
            Some(client) => client,
            None => match self.connect(progress).await {
                Ok(client) => client,
                Err(error) => {
                    self.back_off(error, progress).await?;
                    return Ok(Attempt::Again);
                }
            },
        };
        let mut client = client;
        let attempts = {
            let count = self.attempts.entry(index).or_insert(0);
            *count = count.saturating_add(1);
            *count
        };
        let (done_bytes, overall_total) = (self.done_bytes, self.overall_total);
        let mut observer = UploadObserver {
            job,
            done_bytes,
            overall_total,
            progress: &mut *progress,
        };
        let result = client
            .upload_observed(&job.path, Some(&job.stored_name), restart, |event| {
                observer.on_event(event);
            })
            .await;
        match result {
            Ok(done) => {
                self.client = Some(client);
                self.retries = 0;
                let report = FileReport {
                    path: job.path.clone(),
                    stored_name: job.stored_name.clone(),
                    len: done.size,
                    verified: true,
                    cksum: Some(done.cksum),
                    attempts,
                    failure: None,
                    v4: Some(V4FileDetails {
                        sha256: Some(to_hex(&done.sha256)),
                        version: Some(done.version),
                        resumed_from: done.resumed_from,
                    }),
                };
                self.finish(index, report, progress);
                Ok(Attempt::Settled)
            }
            Err(error) if error.code() == Some(ErrorCode::HASH_MISMATCH) && !restart => {
                // The partial upload on the server came from other content: start over.
                self.client = Some(client);
                progress.on_progress(&ProgressEvent::Restarting {
                    name: job.stored_name.clone(),
                });
                Ok(Attempt::Restart)
            }
            Err(error) if error.is_transient() => {
                drop(client);
                self.back_off(self.v4(error), progress).await?;
                Ok(Attempt::Again)
            }
            Err(
                error @ (V4ClientError::Failed(_)
                | V4ClientError::Local { .. }
                | V4ClientError::Usage { .. }),
            ) => {
                // Refused or unreadable before anything was sent: the connection goes on.
                self.client = Some(client);
                self.fail_file(index, job, attempts, error.to_string(), progress);
                Ok(Attempt::Settled)
            }
            Err(
                error @ V4ClientError::Session(V4Error::Local { .. } | V4Error::FileChanged { .. }),
            ) => {
                // A local read failed mid-upload: the session is gone, this file failed, the
                // next file gets a new connection.
                drop(client);
                let message = format!(
                    "{error} — the connection was reset; the other files go on, run again for this one"
                );
                self.fail_file(index, job, attempts, message, progress);
                Ok(Attempt::Settled)
            }
            Err(error) => Err(self.v4(error)),
        }
    }

    fn fail_file(
        &mut self,
        index: usize,
        job: &Job,
        attempts: u8,
        failure: String,
        progress: &mut dyn ProgressSink,
    ) {
        let mut report = FileReport::failed(
            &job.path,
            job.stored_name.clone(),
            job.len,
            attempts,
            failure,
        );
        report.v4 = Some(V4FileDetails {
            sha256: None,
            version: None,
            resumed_from: 0,
        });
        self.finish(index, report, progress);
    }

    async fn connect(&mut self, progress: &mut dyn ProgressSink) -> Result<V4Client, ClientError> {
        self.connect_attempts += 1;
        progress.on_progress(&ProgressEvent::Connecting {
            server: self.options.server.clone(),
            attempt: self.connect_attempts,
        });
        let existed = self.options.identity.exists();
        let client = V4Client::connect(self.options)
            .await
            .map_err(|error| self.v4(error))?;
        if !existed {
            progress.on_progress(&ProgressEvent::IdentitySaved {
                path: self.options.identity.clone(),
            });
        }
        if let Some(fingerprint) = client.trusted_on_first_use() {
            progress.on_progress(&ProgressEvent::ServerKeyTrusted {
                fingerprint: fingerprint.to_string(),
            });
        }
        let client_id = client.client_id().map(|id| id.to_hex());
        if let Some(id) = &client_id {
            progress.on_progress(&if client.registered() {
                ProgressEvent::Registered {
                    client_id: id.clone(),
                }
            } else {
                ProgressEvent::LoggedIn {
                    client_id: id.clone(),
                }
            });
        }
        self.registered |= client.registered();
        self.client_id = client_id;
        self.server_fingerprint = client.server_fingerprint().map(|f| f.to_string());
        Ok(client)
    }

    /// After a failed connection: sleep per the policy, or give up with the error.
    async fn back_off(
        &mut self,
        error: ClientError,
        progress: &mut dyn ProgressSink,
    ) -> Result<(), ClientError> {
        crate::back_off(self.retry, &mut self.retries, error, progress).await
    }

    /// One report per path; files never settled are `not sent`, with the fatal error that
    /// stopped the run if there was one.
    fn into_report(
        mut self,
        paths: &[PathBuf],
        jobs: &[Option<Job>],
        stopped_by: Option<&ClientError>,
    ) -> BackupReport {
        let why = match stopped_by {
            Some(error) => format!("not sent: the run stopped first ({error})"),
            None => "not sent".to_owned(),
        };
        let files = (0..paths.len())
            .map(|index| {
                self.reports.remove(&index).unwrap_or_else(|| {
                    let path = paths.get(index).cloned().unwrap_or_default();
                    let (name, len) = jobs
                        .get(index)
                        .and_then(Option::as_ref)
                        .map(|job| (job.stored_name.clone(), job.len))
                        .unwrap_or_default();
                    let attempts = self.attempts.get(&index).copied().unwrap_or(0);
                    let mut report = FileReport::failed(&path, name, len, attempts, why.clone());
                    report.v4 = Some(V4FileDetails {
                        sha256: None,
                        version: None,
                        resumed_from: 0,
                    });
                    report
                })
            })
            .collect();
        BackupReport {
            server: self.options.server.clone(),
            protocol: "v4",
            server_fingerprint: self.server_fingerprint,
            client_id: self.client_id.or_else(|| {
                V4Identity::load(&self.options.identity)
                    .ok()
                    .flatten()
                    .and_then(|identity| identity.client_id)
                    .map(|id| to_hex(&id))
            }),
            registered: self.registered,
            files,
        }
    }
}

/// Turns the session events of one upload into [`ProgressEvent`]s.
struct UploadObserver<'p, 'j> {
    job: &'j Job,
    done_bytes: u64,
    overall_total: u64,
    progress: &'p mut dyn ProgressSink,
}

impl UploadObserver<'_, '_> {
    fn on_event(&mut self, event: &ClientEvent) {
        let (sent, total) = match event {
            ClientEvent::UploadStarted { offset, size, .. } => {
                if *offset > 0 {
                    self.progress.on_progress(&ProgressEvent::Resumed {
                        name: self.job.stored_name.clone(),
                        offset: *offset,
                        total: *size,
                    });
                }
                self.transfer(*offset, *size, Phase::Sending);
                (*offset, *size)
            }
            ClientEvent::Progress { done, total, .. } => (*done, *total),
            _ => return,
        };
        // Every byte is written to the socket: the server now checks the SHA-256 and commits.
        if sent >= total {
            self.transfer(sent, total, Phase::Verifying);
        } else if matches!(event, ClientEvent::Progress { .. }) {
            self.transfer(sent, total, Phase::Sending);
        }
    }

    fn transfer(&mut self, sent: u64, total: u64, phase: Phase) {
        self.progress
            .on_progress(&ProgressEvent::Transfer(TransferProgress {
                path: self.job.path.clone(),
                name: self.job.stored_name.clone(),
                sent,
                total,
                phase,
                overall_sent: self.done_bytes + sent,
                overall_total: self.overall_total,
            }));
    }
}
