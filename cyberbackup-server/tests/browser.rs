//! Browser tests in headless Chromium (driven over the DevTools protocol): the client's web
//! UI backs a file up to a real server (protocol v4) and shows 100 % and a success row, lists
//! the file in its restore view with the right SHA-256, and restores it as a real browser
//! download whose bytes must equal the original; the server's dashboard then lists that
//! file. Both pages must run without console errors.
//!
//! Runtime: about 2–3 s in a debug build (Chromium start-up included).
//!
//! Without Chromium the test is skipped with a message, unless `CYBERBACKUP_REQUIRE_BROWSER=1`
//! (set by `.ci/run`), which turns a missing browser into a failure. With
//! `CYBERBACKUP_UPDATE_SCREENSHOTS=1` the screenshots are written to `docs/images/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod admin_common;

use std::time::Duration;

use admin_common::cdp::{Browser, chromium_or_skip, screenshot_dir, wait_for_download};
use admin_common::ui::{RunningUi, ui_options};
use admin_common::{config_for, post_empty_json, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ui_backs_up_and_dashboard_lists_the_file() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start(config_for(&dir.path().join("data"))).await;
    let typed = dir.path().join("typed-path.txt");
    std::fs::write(&typed, vec![b'x'; 300_000]).unwrap();
    let ui = RunningUi::start(ui_options(dir.path(), server.addr, "browser-test")).await;
    let ui_url = ui.url();
    let admin_url = format!("http://{}/", server.admin);
    let screenshots = screenshot_dir(dir.path());
    let expected_server = server.addr.to_string();
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let download_dir = downloads.clone();
    let uploaded = "hello from the browser test\n".repeat(2000).into_bytes();
    let uploaded_sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&uploaded));
    let uploaded_len = uploaded.len();

    // A prune the operator asked for, reported on the maintenance page.
    let pruned = post_empty_json(server.admin, "/api/v1/prune").await;
    assert_eq!(pruned.status, 200, "{}", pruned.body);

    let (errors, client_png, files_png, overview_png, downloaded) = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::launch(&chromium);
        browser.allow_downloads_to(&download_dir);

        // The client UI: connect, add one file by drag and drop and one by typed path.
        browser.navigate(&ui_url);
        browser.wait_for(
            "document.getElementById('conn').textContent === 'live'",
            Duration::from_secs(30),
        );
        assert_eq!(
            browser.eval("document.getElementById('server').value"),
            serde_json::Value::String(expected_server)
        );
        browser.eval(
            "(() => {
                const dt = new DataTransfer();
                dt.items.add(new File(['hello from the browser test\\n'.repeat(2000)],
                                      'browser-upload.txt', { type: 'text/plain' }));
                const drop = document.getElementById('drop');
                drop.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
                drop.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
                return true;
            })()",
        );
        browser.eval(&format!(
            "(() => {{ document.getElementById('path').value = {:?};
                       document.getElementById('add-path').requestSubmit(); return true; }})()",
            typed.display().to_string()
        ));
        browser.wait_for(
            "document.querySelectorAll('#items tbody tr:not(:has(td.empty))').length === 2",
            Duration::from_secs(30),
        );

        // Start, then watch the progress reach 100 % and the success row appear.
        browser.eval("document.getElementById('start').click(), true");
        browser.wait_for(
            "document.getElementById('overall-percent').textContent === '100%'
             && document.getElementById('job-state').textContent === 'succeeded'
             && [...document.querySelectorAll('#job-files tbody tr')]
                  .every(tr => tr.dataset.status === 'verified')
             && document.querySelector('#history tbody tr')?.dataset.result === 'succeeded'
             && document.querySelector('#history tbody tr').textContent.includes('browser-upload.txt')",
            Duration::from_secs(60),
        );

        // The restore view lists the file (reloaded after the backup) with its SHA-256.
        let row = "document.querySelector('#versions tbody tr[data-name=\"browser-upload.txt\"]')";
        browser.wait_for(&format!("{row} !== null"), Duration::from_secs(45));
        assert_eq!(
            browser.eval(&format!("{row}.querySelector('[data-sha256]').dataset.sha256")),
            serde_json::Value::String(uploaded_sha256)
        );
        assert_eq!(
            browser.eval(&format!("{row}.dataset.version")),
            serde_json::Value::String("1".into())
        );
        // Restore it: the browser downloads the verified file.
        browser.eval(&format!("{row}.querySelector('button.restore').click(), true"));
        browser.wait_for(
            "document.getElementById('restore-status').textContent.includes('SHA-256 verified')",
            Duration::from_secs(45),
        );
        let downloaded = wait_for_download(&download_dir.join("browser-upload.txt"), uploaded_len);
        let client_png = browser.screenshot_page(1800);

        // The dashboard: the uploaded file is in the files table.
        browser.navigate(&format!("{admin_url}#files"));
        browser.eval(
            "(() => { document.querySelector('#files-filter [name=name]').value = 'browser-upload';
                      document.getElementById('files-filter').requestSubmit(); return true; })()",
        );
        browser.wait_for(
            "[...document.querySelectorAll('#files-table tbody tr')].some(tr =>
                tr.textContent.includes('browser-upload.txt') && tr.textContent.includes('browser-test')
                && tr.textContent.includes('verified'))
             && document.querySelectorAll('#files-table tbody tr').length === 1",
            Duration::from_secs(30),
        );
        let files_png = browser.screenshot();
        browser.navigate(&format!("{admin_url}#overview"));
        browser.wait_for(
            "document.getElementById('ov-files').textContent === '2'
             && document.getElementById('ov-clients').textContent === '1'
             && document.querySelector('#chart text') !== null",
            Duration::from_secs(30),
        );
        let overview_png = browser.screenshot();
        // The client's v4 device and its role; the prune's report.
        browser.navigate(&format!("{admin_url}#clients"));
        browser.wait_for(
            "[...document.querySelectorAll('#devices-table tbody tr')].some(tr =>
                tr.textContent.includes('browser-test') && tr.textContent.includes('append-only'))",
            Duration::from_secs(30),
        );
        browser.navigate(&format!("{admin_url}#maintenance"));
        browser.wait_for(
            "document.getElementById('maintenance').textContent.includes('Last prune')
             && document.getElementById('maintenance').textContent.includes('0 repositories')
             && document.getElementById('maintenance').textContent.includes('Space given back')",
            Duration::from_secs(30),
        );
        let errors = browser.errors.clone();
        (errors, client_png, files_png, overview_png, downloaded)
    })
    .await
    .unwrap();

    assert!(errors.is_empty(), "the pages reported errors: {errors:#?}");
    assert!(
        downloaded == uploaded,
        "the restored download differs from the uploaded file ({} bytes vs {})",
        downloaded.len(),
        uploaded.len()
    );
    std::fs::create_dir_all(&screenshots).unwrap();
    for (name, png) in [
        ("client-ui.png", &client_png),
        ("admin-files.png", &files_png),
        ("admin-overview.png", &overview_png),
    ] {
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name} looks empty"
        );
        std::fs::write(screenshots.join(name), png).unwrap();
    }
    ui.shutdown().await;
    server.stop().await;
}
