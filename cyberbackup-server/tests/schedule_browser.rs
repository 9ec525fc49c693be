//! Browser test in headless Chromium of the client UI's scheduled backups, against a real
//! server: a folder is added in the Scheduled backups form (every minute, an exclude, the
//! default retention); the UI's scheduler backs it up at once (a new source's first run is
//! its baseline), the row shows the result and the next run a minute later, and the new
//! snapshot appears in the timeline by itself; "Back up now" adds a second one. The source
//! is in the sources file the daemon reads, and the excluded file is not in the snapshot.
//!
//! Skipped without Chromium unless `CYBERBACKUP_REQUIRE_BROWSER=1`; with
//! `CYBERBACKUP_UPDATE_SCREENSHOTS=1` the screenshot is written to `docs/images/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod admin_common;

use std::path::Path;
use std::time::Duration;

use admin_common::cdp::{Browser, chromium_or_skip, screenshot_dir};
use admin_common::ui::{RunningUi, ui_options};
use admin_common::{config_for, start};
use cyberbackup_client::schedule::{Schedule, SourcesFile};
use cyberbackup_client::snapshot::{KeyOptions, Repository};
use cyberbackup_client::v4::{DEFAULT_IDENTITY_FILE, V4Client, V4Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_added_in_the_page_is_backed_up_by_the_ui_scheduler_and_shows_in_the_timeline() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start(config_for(&dir.path().join("data"))).await;
    let tree = dir.path().join("Documents");
    std::fs::create_dir_all(tree.join("letters")).unwrap();
    std::fs::write(tree.join("letters/to-bank.txt"), b"dear bank").unwrap();
    std::fs::write(tree.join("budget.ods"), vec![7_u8; 50_000]).unwrap();
    std::fs::write(tree.join("scratch.tmp"), b"not wanted").unwrap();

    let data_dir = dir.path().join("ui");
    let ui = RunningUi::start(ui_options(dir.path(), server.addr, "sched-test")).await;
    let ui_url = ui.url();

    let session = {
        let tree = tree.clone();
        tokio::task::spawn_blocking(move || schedule_session(&chromium, &ui_url, &tree))
    };
    let (errors, png) = session.await.unwrap();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");

    // The source is in the file the daemon and `schedule list` read.
    let sources = SourcesFile::in_dir(&data_dir).load().unwrap();
    assert_eq!(sources.len(), 1, "{sources:?}");
    assert_eq!(sources[0].name, "documents");
    assert_eq!(sources[0].schedule, Schedule::Interval { secs: 60 });
    assert_eq!(sources[0].exclude, vec!["*.tmp".to_owned()]);
    assert_eq!(sources[0].retention.keep_daily, Some(7));
    assert!(sources[0].paused);

    // Two snapshots of the folder, tagged with the source, without the excluded file.
    let identity = dir.path().join(DEFAULT_IDENTITY_FILE);
    let client = V4Client::connect(&V4Options::new(server.addr.to_string(), identity.clone()))
        .await
        .unwrap();
    let mut repo = Repository::open(client, &KeyOptions::new(&identity))
        .await
        .unwrap();
    let snapshots = repo.snapshots().await.unwrap();
    assert_eq!(snapshots.len(), 2);
    for info in &snapshots {
        assert_eq!(info.snapshot.tags, vec![b"source:documents".to_vec()]);
    }
    let prefix = tree.canonicalize().unwrap().display().to_string();
    let listed: Vec<String> = repo
        .ls("latest", prefix.as_bytes())
        .await
        .unwrap()
        .iter()
        .map(|entry| entry.display_path())
        .collect();
    assert!(
        listed.iter().any(|p| p.ends_with("letters/to-bank.txt")),
        "{listed:?}"
    );
    assert!(
        listed.iter().any(|p| p.ends_with("budget.ods")),
        "{listed:?}"
    );
    assert!(
        !listed.iter().any(|p| p.contains("scratch.tmp")),
        "{listed:?}"
    );
    repo.into_remote().close().await.unwrap();

    let screenshots = screenshot_dir(dir.path());
    std::fs::create_dir_all(&screenshots).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "the screenshot looks empty"
    );
    std::fs::write(screenshots.join("client-schedules.png"), png).unwrap();
    ui.shutdown().await;
    server.stop().await;
}

/// The browser's part: returns the page's errors and a screenshot of the panel.
fn schedule_session(chromium: &Path, ui_url: &str, tree: &Path) -> (Vec<String>, Vec<u8>) {
    let wait = Duration::from_secs(45);
    let mut browser = Browser::launch(chromium);
    browser.navigate(ui_url);
    browser.wait_for(
        "document.getElementById('conn').textContent === 'live'",
        wait,
    );
    browser.wait_for(
        "document.querySelector('#sources tbody td.empty') !== null",
        wait,
    );

    // Fill in the form as a user would: a name, the folder, an exclude, every minute.
    let fill = format!(
        "(() => {{
            document.getElementById('source-editor').open = true;
            document.getElementById('source-name').value = 'documents';
            document.getElementById('source-paths').value = {tree:?};
            document.getElementById('source-exclude').value = '*.tmp';
            const when = document.getElementById('source-when');
            when.value = 'every';
            when.dispatchEvent(new Event('change'));
            document.getElementById('source-minutes').value = '1';
            document.getElementById('source-form').requestSubmit();
            return true;
        }})()",
        tree = tree.display().to_string()
    );
    browser.eval(&fill);
    let row = "document.querySelector('#sources tbody tr')";
    let status = "document.getElementById('error').textContent + ' | ' + document.querySelector('#sources').innerText";
    // The scheduler backs the new source up at once; the row shows the result and the
    // next run, a minute after this one.
    browser.wait_for_or(
        &format!("{row} !== null && {row}.querySelector('.badge.ok') !== null && {row}.innerText.includes('every 1m')"),
        wait,
        status,
    );
    let next_run = browser.eval(&format!("{row}.cells[5].textContent"));
    let next_run = next_run.as_str().unwrap();
    assert!(
        next_run.starts_with("in ") && (next_run.contains(" s ") || next_run.contains("1 min")),
        "next run: {next_run}"
    );
    assert!(
        browser
            .eval(&format!("{row}.cells[4].textContent"))
            .as_str()
            .unwrap()
            .contains("2 file(s) new"),
        "{}",
        browser.eval(status)
    );
    // The snapshot shows in the timeline without a reload.
    let timeline_rows = "document.querySelectorAll('#timeline tbody tr[data-id]').length";
    browser.wait_for_or(
        &format!("{timeline_rows} === 1"),
        wait,
        "document.getElementById('snapshots-status').textContent",
    );
    // Back up now: a second snapshot, again in the timeline.
    browser.eval(&format!(
        "[...{row}.querySelectorAll('button')].find(b => b.textContent === 'Back up now').click(), true"
    ));
    browser.wait_for_or(
        &format!("{timeline_rows} === 2"),
        wait,
        "document.getElementById('snapshots-status').textContent + ' | ' + document.querySelector('#sources').innerText",
    );
    browser.wait_for_or(
        &format!("{row}.innerText.includes('0 changed, 2 unmodified')"),
        wait,
        status,
    );
    // Pause: the next run says so, and the sources file keeps it.
    browser.eval(&format!(
        "[...{row}.querySelectorAll('button')].find(b => b.textContent === 'Pause').click(), true"
    ));
    browser.wait_for_or(
        &format!("{row}.cells[5].textContent === 'paused'"),
        wait,
        status,
    );
    let errors: Vec<String> = browser
        .eval("document.getElementById('error').hidden ? [] : [document.getElementById('error').textContent]")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect();
    browser.eval("document.getElementById('sources-panel').scrollIntoView(), true");
    let png = browser.screenshot();
    drop(browser);
    (errors, png)
}
