//! Progress reporting: the [`ProgressEvent`]s a backup emits, the [`ProgressSink`] trait
//! that receives them (any `FnMut(&ProgressEvent)` is one), and two sinks for the CLI:
//! [`BarProgress`] (indicatif bars per file and overall, with speed and ETA) and
//! [`LineProgress`] (quiet lines for logs and pipes). Sinks write where they are told;
//! they never pick stdout or stderr themselves.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::FileReport;

/// What a file transfer is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reading, encrypting and sending.
    Sending,
    /// Waiting for the server's checksum.
    Verifying,
}

/// Bytes sent of the current file and of the whole run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferProgress {
    /// The local file.
    pub path: PathBuf,
    /// The name it is stored under.
    pub name: String,
    /// Plaintext bytes of this file sent in the current attempt.
    pub sent: u64,
    /// The file's length.
    pub total: u64,
    /// What the transfer is doing.
    pub phase: Phase,
    /// Bytes of the whole run handled so far (finished files plus `sent`).
    pub overall_sent: u64,
    /// Bytes of the whole run.
    pub overall_total: u64,
}

/// Something worth showing while a backup runs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProgressEvent {
    /// Opening a connection (attempt 1 is the first).
    Connecting {
        /// `host:port`.
        server: String,
        /// Connection attempt number.
        attempt: u32,
    },
    /// The server registered us under a new id.
    Registered {
        /// The id as 32 hex digits.
        client_id: String,
    },
    /// The server accepted our reconnect.
    Reconnected {
        /// The id as 32 hex digits.
        client_id: String,
    },
    /// The server does not know our id (1606): registering again.
    ReconnectRefused,
    /// Protocol v4: the server authenticated us with our registered key.
    LoggedIn {
        /// The id as 32 hex digits.
        client_id: String,
    },
    /// Protocol v4: no server key was pinned yet; this one was trusted on first use and
    /// saved in the identity file (later runs require it).
    ServerKeyTrusted {
        /// `sha256:…` of the server's static key.
        fingerprint: String,
    },
    /// Protocol v4: an interrupted upload resumes from what the server stored durably.
    Resumed {
        /// The stored name.
        name: String,
        /// Bytes already on the server.
        offset: u64,
        /// The file's length.
        total: u64,
    },
    /// Protocol v4: the content no longer matches the interrupted upload (the file changed
    /// in between); it is sent again from the start.
    Restarting {
        /// The stored name.
        name: String,
    },
    /// The identity file was written.
    IdentitySaved {
        /// Where.
        path: PathBuf,
    },
    /// The server answered a request with 1607; the request is retried.
    ServerError {
        /// The request code.
        request: u16,
        /// Attempts so far.
        attempt: u8,
    },
    /// A file is being sent or verified.
    Transfer(TransferProgress),
    /// The server's checksum of a file did not match ours.
    CrcMismatch {
        /// The stored name.
        name: String,
        /// Sends so far.
        attempt: u8,
        /// Whether the next send encrypts every packet on its own.
        switched_to_per_packet: bool,
    },
    /// The server refused a file sent in packets (1607); it is sent again as one packet.
    ResendingAsOnePacket {
        /// The stored name.
        name: String,
    },
    /// A file is finished (verified or failed).
    FileDone(FileReport),
    /// The connection failed; reconnecting after `delay`.
    Retrying {
        /// Reconnect number (1-based).
        attempt: u32,
        /// Reconnects allowed.
        max: u32,
        /// Wait before reconnecting.
        delay: Duration,
        /// Why the connection failed.
        error: String,
    },
}

impl ProgressEvent {
    /// A one-line description, or `None` for events only bars show (transfer progress).
    #[must_use]
    pub fn describe(&self) -> Option<String> {
        let line = match self {
            Self::Connecting { server, attempt } if *attempt <= 1 => {
                format!("connecting to {server}")
            }
            Self::Connecting { server, attempt } => {
                format!("connecting to {server} (attempt {attempt})")
            }
            Self::Registered { client_id } => format!("registered as client {client_id}"),
            Self::Reconnected { client_id } => format!("reconnected as client {client_id}"),
            Self::ReconnectRefused => {
                "the server does not know this client; registering again".to_owned()
            }
            Self::LoggedIn { client_id } => format!("logged in as client {client_id}"),
            Self::ServerKeyTrusted { fingerprint } => format!(
                "trusting the server key {fingerprint} on first use and pinning it (compare it with `cyberbackup-server fingerprint` on the server)"
            ),
            Self::Resumed {
                name,
                offset,
                total,
            } => format!("resuming {name} at byte {offset} of {total} (already on the server)"),
            Self::Restarting { name } => format!(
                "{name} changed since its interrupted upload; sending it again from the start"
            ),
            Self::IdentitySaved { path } => format!("identity saved to {}", path.display()),
            Self::ServerError { request, attempt } => format!(
                "server responded with an error (request {request}, attempt {attempt}); retrying"
            ),
            Self::Transfer(_) => return None,
            Self::CrcMismatch {
                name,
                attempt,
                switched_to_per_packet,
            } => {
                let extra = if *switched_to_per_packet {
                    "; resending with per-packet encryption"
                } else {
                    ""
                };
                format!("checksum mismatch for {name} after send {attempt}{extra}")
            }
            Self::ResendingAsOnePacket { name } => {
                format!("the server refused {name} sent in packets; resending it as one packet")
            }
            Self::FileDone(report) => report.summary(),
            Self::Retrying {
                attempt,
                max,
                delay,
                error,
            } => format!(
                "{error}; reconnecting in {:.1} s (retry {attempt} of {max})",
                delay.as_secs_f64()
            ),
        };
        Some(line)
    }
}

/// Receives progress events. Implemented for every `FnMut(&ProgressEvent)`.
pub trait ProgressSink {
    /// Called for each event, in order.
    fn on_progress(&mut self, event: &ProgressEvent);
}

impl<F: FnMut(&ProgressEvent)> ProgressSink for F {
    fn on_progress(&mut self, event: &ProgressEvent) {
        self(event);
    }
}

/// A sink that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn on_progress(&mut self, _event: &ProgressEvent) {}
}

/// Quiet line-oriented progress: one line per notable event and per file phase change.
#[derive(Debug)]
pub struct LineProgress<W> {
    out: W,
    last_phase: Option<(PathBuf, Phase)>,
}

impl<W: Write> LineProgress<W> {
    /// Progress lines written to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            last_phase: None,
        }
    }
}

impl<W: Write> ProgressSink for LineProgress<W> {
    fn on_progress(&mut self, event: &ProgressEvent) {
        let line = match event {
            ProgressEvent::Transfer(progress) => {
                let key = (progress.path.clone(), progress.phase);
                if self.last_phase.as_ref() == Some(&key) {
                    return;
                }
                self.last_phase = Some(key);
                match progress.phase {
                    Phase::Sending => {
                        format!("sending {} ({} bytes)", progress.name, progress.total)
                    }
                    Phase::Verifying => {
                        format!("waiting for the server to verify {}", progress.name)
                    }
                }
            }
            other => match other.describe() {
                Some(line) => line,
                None => return,
            },
        };
        // Progress is best effort: a closed pipe must not fail the backup.
        let _ignored = writeln!(self.out, "{line}");
    }
}

/// Progress bars (one for the current file, one overall) with speed and ETA, drawn on
/// stderr. Other events are printed above the bars.
#[derive(Debug)]
pub struct BarProgress {
    multi: MultiProgress,
    overall: ProgressBar,
    file: Option<(PathBuf, ProgressBar)>,
    /// A resumed upload jumps to bytes sent by an earlier run: the rates restart there.
    jumped: bool,
}

impl Default for BarProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl BarProgress {
    /// Bars drawn on stderr.
    #[must_use]
    pub fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(bar_style("overall"));
        Self {
            multi,
            overall,
            file: None,
            jumped: false,
        }
    }

    fn file_bar(&mut self, progress: &TransferProgress) -> &ProgressBar {
        let same = self
            .file
            .as_ref()
            .is_some_and(|(path, _)| *path == progress.path);
        if !same {
            if let Some((_, old)) = self.file.take() {
                old.finish_and_clear();
            }
            let bar = self
                .multi
                .insert_before(&self.overall, ProgressBar::new(progress.total));
            bar.set_style(bar_style("file"));
            bar.set_message(progress.name.clone());
            self.file = Some((progress.path.clone(), bar));
        }
        match &self.file {
            Some((_, bar)) => bar,
            None => &self.overall,
        }
    }
}

impl ProgressSink for BarProgress {
    fn on_progress(&mut self, event: &ProgressEvent) {
        match event {
            ProgressEvent::Transfer(progress) => {
                self.overall.set_length(progress.overall_total);
                self.overall.set_position(progress.overall_sent);
                let bar = self.file_bar(progress).clone();
                bar.set_length(progress.total);
                bar.set_position(progress.sent);
                if progress.phase == Phase::Verifying {
                    bar.set_message(format!("{} (verifying)", progress.name));
                }
                if std::mem::take(&mut self.jumped) {
                    // Bytes already on the server were not sent now: the rate counts from
                    // here (the estimators record the jump, then forget it).
                    for bar in [&self.overall, &bar] {
                        bar.tick();
                        bar.reset_eta();
                    }
                }
            }
            ProgressEvent::Resumed { .. } => {
                self.jumped = true;
                if let Some(line) = event.describe() {
                    let _ignored = self.multi.println(line);
                }
            }
            ProgressEvent::FileDone(report) => {
                if let Some((_, bar)) = self.file.take() {
                    bar.finish_and_clear();
                }
                let _ignored = self.multi.println(report.summary());
            }
            other => {
                if let Some(line) = other.describe() {
                    let _ignored = self.multi.println(line);
                }
            }
        }
    }
}

impl Drop for BarProgress {
    fn drop(&mut self) {
        if let Some((_, bar)) = self.file.take() {
            bar.finish_and_clear();
        }
        self.overall.finish_and_clear();
    }
}

fn bar_style(label: &str) -> ProgressStyle {
    let template = format!(
        "{label:>7} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ETA {{eta}} {{msg}}"
    );
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer_of(name: &str, sent: u64, total: u64) -> ProgressEvent {
        ProgressEvent::Transfer(TransferProgress {
            path: name.into(),
            name: name.into(),
            sent,
            total,
            phase: Phase::Sending,
            overall_sent: sent,
            overall_total: total,
        })
    }

    /// A resume at byte 60 MiB is not 60 MiB sent in no time: the bars showed `27.44 TiB/s`.
    #[test]
    fn a_resumed_upload_does_not_count_the_bytes_already_on_the_server_in_the_rate() {
        const MIB: u64 = 1024 * 1024;
        let mut bars = BarProgress::new();
        bars.multi.set_draw_target(ProgressDrawTarget::hidden());
        bars.on_progress(&ProgressEvent::Resumed {
            name: "big.bin".into(),
            offset: 60 * MIB,
            total: 64 * MIB,
        });
        bars.on_progress(&transfer_of("big.bin", 60 * MIB, 64 * MIB));
        let file = bars.file.as_ref().map(|(_, bar)| bar.clone()).unwrap();
        for bar in [&bars.overall, &file] {
            // What the next redraw does: the estimator records the position.
            bar.tick();
            assert_eq!(bar.position(), 60 * MIB);
            // Nothing was sent since the resume.
            assert!(bar.per_sec() < 1.0, "{} B/s", bar.per_sec());
        }
    }

    fn transfer(phase: Phase, sent: u64) -> ProgressEvent {
        ProgressEvent::Transfer(TransferProgress {
            path: "a.txt".into(),
            name: "a.txt".into(),
            sent,
            total: 10,
            phase,
            overall_sent: sent,
            overall_total: 10,
        })
    }

    #[test]
    fn line_progress_prints_phase_changes_once() {
        let mut out = Vec::new();
        {
            let mut sink = LineProgress::new(&mut out);
            sink.on_progress(&transfer(Phase::Sending, 1));
            sink.on_progress(&transfer(Phase::Sending, 5));
            sink.on_progress(&transfer(Phase::Verifying, 10));
            sink.on_progress(&ProgressEvent::ServerError {
                request: 1028,
                attempt: 1,
            });
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "sending a.txt (10 bytes)\nwaiting for the server to verify a.txt\n\
             server responded with an error (request 1028, attempt 1); retrying\n"
        );
    }
}
