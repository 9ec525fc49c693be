//! `many-files`: one `cyberbackup_client::Client` (in this process) backs up N small files
//! over one connection to the real server binary.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use cyberbackup_client::{Client, ClientOptions, IdentityFile, NoProgress};

use crate::data;
use crate::procfs::{self, Sampler, Watch};
use crate::report::{Section, mib_from_kib};
use crate::server::{Binaries, ServerProcess, ServerSettings};

/// Runs the scenario: `files` files of `file_len` bytes each.
pub(crate) fn run(bins: &Binaries, work: &Path, files: usize, file_len: u64) -> Section {
    let mut section = Section::new("many-files");
    if let Err(error) = run_inner(bins, work, files, file_len, &mut section) {
        section.failures.push(format!("{error:#}"));
    }
    section
}

fn run_inner(
    bins: &Binaries,
    work: &Path,
    files: usize,
    file_len: u64,
    section: &mut Section,
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("many-files-")
        .tempdir_in(work)
        .context("cannot create a temporary directory")?;
    let inputs = dir.path().join("inputs");
    std::fs::create_dir(&inputs)?;
    let mut paths: Vec<PathBuf> = Vec::with_capacity(files);
    for i in 0..files {
        let path = inputs.join(format!("small-{i:06}.bin"));
        data::write_file(&path, file_len, i as u64)?;
        paths.push(path);
    }
    let server_dir = dir.path().join("server");
    std::fs::create_dir(&server_dir)?;
    let server = ServerProcess::start(&bins.server, &server_dir, &ServerSettings::default())?;
    let sampler = Sampler::start(vec![Watch {
        pid: server.pid(),
        count_fds: false,
    }]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let options = ClientOptions::new(
        server.addr().to_string(),
        "bench-many-files",
        IdentityFile::new(dir.path().join("me.info")),
    );
    let start = Instant::now();
    let outcome = runtime.block_on(async {
        let mut client = Client::new(options)?;
        let report = client.backup(&paths, &mut NoProgress).await?;
        client.close(&mut NoProgress).await?;
        Ok::<_, cyberbackup_client::ClientError>(report)
    });
    let wall = start.elapsed().as_secs_f64();
    let series = sampler.finish();
    let peaks = procfs::peaks(&series, 0);
    let log = server.log_tail();
    server.stop()?;
    let report = outcome.with_context(|| format!("the backup failed; server log:\n{log}"))?;
    let verified = report.files.iter().filter(|f| f.verified).count();
    let failures = files - verified;
    let files_per_s = verified as f64 / wall;
    section.row(
        "files × size",
        format!("{files} × {}", data::human(file_len)),
    );
    section.row(
        "wall time (one connection, incl. registration)",
        format!("{wall:.2} s"),
    );
    section.row("files/s", format!("{files_per_s:.0}"));
    section.row("failures", failures.to_string());
    section.row("server peak RSS (VmHWM)", mib_from_kib(peaks.hwm_kib));
    if let Some(first) = report.failures().next() {
        section.failures.push(format!(
            "{failures} of {files} files failed; first: {}",
            first.summary()
        ));
    }
    section.data = serde_json::json!({
        "files": files,
        "file_bytes": file_len,
        "wall_secs": wall,
        "files_per_s": files_per_s,
        "failures": failures,
        "server": peaks,
    });
    Ok(())
}
