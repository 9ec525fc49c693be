//! `browse`: the client UI's snapshot browser on a tree of many files. A snapshot of N
//! small files (half in one folder, half in folders of 1,000) is taken with the client
//! library against the real server binary; then the UI server runs in this process and
//! every kind of page is fetched over HTTP on loopback, as the browser fetches it. The time
//! of a page is the whole request: the UI server's work, the tree fetches from the server
//! and their decryption, and the JSON answer — server and client time together.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use cyberbackup_client::IdentityFile;
use cyberbackup_client::snapshot::{BackupOptions, KeyOptions, NoObserver, Repository};
use cyberbackup_client::ui::{UiOptions, UiServer};
use cyberbackup_client::v4::{DEFAULT_IDENTITY_FILE, V4Client, V4Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::report::{Section, Target, Verdict};
use crate::server::{Binaries, ServerProcess, ServerSettings};

/// The goal of issue 17: every page under this, server and client time together.
const PAGE_GOAL: Duration = Duration::from_millis(200);
/// Files per folder in the nested half of the tree.
const PER_FOLDER: usize = 1000;
/// Fetches of each page; the median and the slowest are reported.
const REPEATS: usize = 9;

/// Runs the scenario on a tree of `files` files.
pub(crate) fn run(bins: &Binaries, work: &Path, files: usize) -> Section {
    let mut section = Section::new("browse");
    if let Err(error) = run_inner(bins, work, files, &mut section) {
        section.failures.push(format!("{error:#}"));
    }
    section
}

fn run_inner(
    bins: &Binaries,
    work: &Path,
    files: usize,
    section: &mut Section,
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("browse-")
        .tempdir_in(work)
        .context("cannot create a temporary directory")?;
    let tree = dir.path().join("tree");
    let flat = tree.join("flat");
    std::fs::create_dir_all(&flat)?;
    let flat_files = files / 2;
    for i in 0..flat_files {
        std::fs::write(flat.join(format!("file-{i:06}.txt")), i.to_le_bytes())?;
    }
    let folders = (files - flat_files).div_ceil(PER_FOLDER);
    for folder in 0..folders {
        let path = tree.join("nested").join(format!("d{folder:03}"));
        std::fs::create_dir_all(&path)?;
        for i in 0..PER_FOLDER.min(files - flat_files - folder * PER_FOLDER) {
            std::fs::write(path.join(format!("n-{i:04}.txt")), format!("{folder}:{i}"))?;
        }
    }
    let server_dir = dir.path().join("server");
    std::fs::create_dir(&server_dir)?;
    let server = ServerProcess::start(&bins.server, &server_dir, &ServerSettings::default())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let addr = server.addr().to_string();
    let backup_started = Instant::now();
    runtime
        .block_on(snapshot(dir.path(), &addr, &tree))
        .with_context(|| format!("the backup failed; server log:\n{}", server.log_tail()))?;
    let backup_secs = backup_started.elapsed().as_secs_f64();
    let timings = runtime.block_on(browse(dir.path(), &addr, &tree, files, folders));
    server.stop()?;
    let timings = timings?;

    section.row("files in the snapshot", files.to_string());
    section.row(
        "layout",
        format!(
            "{flat_files} in one folder, {} in {folders} folders of {PER_FOLDER}",
            files - flat_files
        ),
    );
    section.row("backup (library, first)", format!("{backup_secs:.1} s"));
    let mut slowest_page = Duration::ZERO;
    let mut data = Vec::new();
    for timing in &timings {
        section.row(
            format!(
                "{} (median / slowest of {})",
                timing.name,
                timing.samples.len()
            ),
            format!("{} / {}", ms(timing.median()), ms(timing.slowest())),
        );
        if timing.is_page {
            slowest_page = slowest_page.max(timing.slowest());
        }
        data.push(serde_json::json!({
            "name": timing.name,
            "page": timing.is_page,
            "median_ms": timing.median().as_secs_f64() * 1e3,
            "slowest_ms": timing.slowest().as_secs_f64() * 1e3,
        }));
    }
    section.targets.push(Target::new(
        "slowest folder page",
        format!("< {}", ms(PAGE_GOAL)),
        ms(slowest_page),
        Verdict::of(slowest_page < PAGE_GOAL),
    ));
    section.data = serde_json::json!({
        "files": files,
        "backup_secs": backup_secs,
        "requests": data,
    });
    Ok(())
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

/// One kind of request and its times.
struct Timing {
    name: String,
    /// A folder page (the goal applies), or another request such as a search.
    is_page: bool,
    samples: Vec<Duration>,
}

impl Timing {
    fn median(&self) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        sorted[sorted.len() / 2]
    }

    fn slowest(&self) -> Duration {
        self.samples.iter().copied().max().unwrap_or_default()
    }
}

/// Takes the snapshot with the identity the UI will use.
async fn snapshot(dir: &Path, server: &str, tree: &Path) -> anyhow::Result<()> {
    let identity = dir.join(DEFAULT_IDENTITY_FILE);
    let mut options = V4Options::new(server, identity.clone());
    options.name = Some("bench-browse".into());
    let client = V4Client::connect(&options).await?;
    let mut repo = Repository::open(client, &KeyOptions::new(&identity)).await?;
    let backup = BackupOptions {
        paths: vec![tree.to_path_buf()],
        ..BackupOptions::default()
    };
    repo.backup(&backup, &mut NoObserver).await?;
    repo.into_remote().close().await?;
    Ok(())
}

/// Starts the UI server and times its pages.
async fn browse(
    dir: &Path,
    server: &str,
    tree: &Path,
    files: usize,
    folders: usize,
) -> anyhow::Result<Vec<Timing>> {
    let mut options = UiOptions::new(
        dir.join("ui").join("ui-history.json"),
        IdentityFile::new(dir.join("me.info")),
    );
    options.listen = "127.0.0.1:0".parse()?;
    options.default_server = Some(server.to_owned());
    options.default_name = Some("bench-browse".into());
    let ui = UiServer::bind(options).await?;
    let addr = ui.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ui.serve(async {
        let _ = stopped.await;
    }));
    let hex = |path: &Path| hex_of(path.as_os_str().as_encoded_bytes());
    let tree = tree.canonicalize()?;
    // The first request opens the repository (connection, handshake, keys): timed once.
    let (opened, listed) = timed_get(addr, "/api/snapshots").await?;
    let listed: serde_json::Value = serde_json::from_slice(&listed)?;
    let id = listed["snapshots"][0]["id"]
        .as_str()
        .context("the UI listed no snapshot")?
        .to_owned();
    let flat = hex(&tree.join("flat"));
    let middle = files / 4;
    let nested = hex(&tree.join("nested").join(format!("d{:03}", folders / 2)));
    let requests: Vec<(String, bool, String)> = vec![
        ("timeline".into(), false, "/api/snapshots".into()),
        (
            "root folder page".into(),
            true,
            format!("/api/snapshots/{id}/dir"),
        ),
        (
            "the tree's folder page".into(),
            true,
            format!("/api/snapshots/{id}/dir?path={}", hex(&tree)),
        ),
        (
            format!("{}-entry folder, first page", files / 2),
            true,
            format!("/api/snapshots/{id}/dir?path={flat}"),
        ),
        (
            format!("{}-entry folder, page at {middle}, by size desc", files / 2),
            true,
            format!("/api/snapshots/{id}/dir?path={flat}&offset={middle}&sort=size&order=desc"),
        ),
        (
            format!("{PER_FOLDER}-entry folder, by mtime"),
            true,
            format!("/api/snapshots/{id}/dir?path={nested}&sort=mtime"),
        ),
        (
            format!("search of all {files} names (one hit)"),
            false,
            format!("/api/snapshots/{id}/search?q=n-0999.txt"),
        ),
    ];
    let mut timings = vec![Timing {
        name: "first request (opens the repository)".into(),
        is_page: false,
        samples: vec![opened],
    }];
    for (name, is_page, path) in requests {
        let mut samples = Vec::with_capacity(REPEATS);
        for _ in 0..REPEATS {
            let (took, _) = timed_get(addr, &path).await?;
            samples.push(took);
        }
        timings.push(Timing {
            name,
            is_page,
            samples,
        });
    }
    let _ = stop.send(());
    task.await??;
    Ok(timings)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A GET over a new loopback connection: its time (until the whole answer is read) and
/// its body. A status other than 200 is an error.
async fn timed_get(addr: SocketAddr, path: &str) -> anyhow::Result<(Duration, Vec<u8>)> {
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let took = started.elapsed();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the UI server's answer has no header end")?;
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "GET {path} answered {}",
        head.lines().next().unwrap_or("")
    );
    anyhow::ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "GET {path} answered a chunked body; this harness reads plain bodies only"
    );
    let body = answer[split + 4..].to_vec();
    Ok((took, body))
}
