//! The dashboard's Accounts page in headless Chromium (driven over the DevTools protocol),
//! after real backups: a snapshot backup of `alice` and single-file backups of 26 more
//! accounts (one with a long name), so the table pages (25 rows a page). Alice's row is normal; with the
//! dashboard's injected clock moved past `backup_warn_after_secs` it turns amber, past
//! `backup_alert_after_secs` red — without sleeping through either. The table sorts, pages,
//! wraps the long name and fits 1280 px; a click on the row opens the account's snapshots,
//! which say that the server cannot show names and show none. The overview reports that no
//! prune or scrub runs and the start-up scrub cycle's result. No console errors.
//!
//! Without Chromium the test is skipped with a message, unless `CYBERBACKUP_REQUIRE_BROWSER=1`
//! (set by `.ci/run`), which turns a missing browser into a failure. With
//! `CYBERBACKUP_UPDATE_SCREENSHOTS=1` the screenshot is written to
//! `docs/images/admin-accounts.png`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod admin_common;

use std::time::Duration;

use admin_common::cdp::{Browser, chromium_or_skip, screenshot_dir};
use admin_common::{ShiftedClock, backup, config_for, snapshot_backup, start_with_clock};
use serde_json::Value;

/// File names in alice's tree: the dashboard must never show them.
const NAMES: [&str; 2] = ["holiday-plans-5e1d.txt", "tax-return-5e1d.pdf"];
const LONG_NAME: &str = "an-account-with-a-very-long-name-that-must-wrap-inside-its-cell-instead-of-widening-the-table-01";
/// Background colours of a row's cells (admin.css): normal, amber, red.
const WHITE: &str = "rgb(255, 255, 255)";
const AMBER: &str = "rgb(255, 244, 214)";
const RED: &str = "rgb(253, 232, 232)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_row_turns_amber_then_red_as_the_injected_clock_moves() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let clock = ShiftedClock::default();
    let server = start_with_clock(config_for(&dir.path().join("data")), clock.admin_clock()).await;
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    for (byte, name) in [b'a', b'b'].into_iter().zip(NAMES) {
        std::fs::write(tree.join(name), vec![byte; 200_000]).unwrap();
    }
    snapshot_backup(
        server.addr,
        &dir.path().join("alice-v4.json"),
        "alice",
        &tree,
    )
    .await;
    for i in 0..25 {
        let name = format!("member-{i:02}");
        backup(server.addr, dir.path(), &name, &[("f.txt", b"x")]).await;
    }
    backup(server.addr, dir.path(), LONG_NAME, &[("g.txt", b"y")]).await;
    let url = format!("http://{}/#accounts", server.admin);
    let screenshots = screenshot_dir(dir.path());

    let (errors, png) = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::launch(&chromium);
        let alice = "document.querySelector('#accounts-table tbody tr[data-name=\"alice\"]')";
        let row_is = |status: &str, colour: &str| {
            format!(
                "{alice}?.dataset.status === '{status}'
                 && getComputedStyle({alice}.cells[0]).backgroundColor === '{colour}'"
            )
        };
        browser.navigate(&url);
        browser.wait_for(&row_is("ok", WHITE), Duration::from_secs(30));
        assert_eq!(
            browser.eval(&format!("{alice}.cells[3].textContent")),
            Value::String("1".into()),
            "alice has one snapshot"
        );

        // 27 accounts, 25 a page, by name: alice, the long name, member-00 … member-22 on
        // the first.
        assert_eq!(
            browser.eval("document.getElementById('accounts-pageinfo').textContent"),
            Value::String("page 1 of 2 (27 rows)".into())
        );
        browser.eval("document.getElementById('accounts-next').click(), true");
        browser.wait_for(
            "document.querySelectorAll('#accounts-table tbody tr').length === 2",
            Duration::from_secs(5),
        );
        browser.eval("document.getElementById('accounts-prev').click(), true");
        browser.wait_for(&format!("{alice} !== null"), Duration::from_secs(5));
        // The long name's link breaks over several lines; a short one stays on one.
        let layout = browser.eval(&format!(
            "(() => {{ const lines = (name) => document.querySelector(
                           `#accounts-table tbody tr[data-name=\"${{name}}\"] a`).getClientRects().length;
                      return [document.documentElement.scrollWidth, lines('{LONG_NAME}'), lines('alice')]; }})()"
        ));
        let [width, long_lines, short_lines] = [0, 1, 2].map(|i| layout[i].as_f64().unwrap());
        assert!(width <= 1280.0, "the page is {width} px wide");
        assert!(
            long_lines >= 2.0 && short_lines == 1.0,
            "the long name does not wrap: {layout}"
        );
        // A click on the sorted column reverses it; another restores it.
        let name_header = "document.querySelector('#accounts-table th[data-sort=name]')";
        browser.eval(&format!("{name_header}.click(), true"));
        browser.wait_for(
            "document.querySelector('#accounts-table tbody tr').dataset.name === 'member-24'",
            Duration::from_secs(5),
        );
        browser.eval(&format!("{name_header}.click(), true"));
        browser.wait_for(
            "document.querySelector('#accounts-table tbody tr').dataset.name === 'alice'",
            Duration::from_secs(5),
        );

        // Past the warn threshold: amber, at the next refresh (called at once, not waited for).
        clock.set_ahead(Duration::from_secs(26 * 3600 + 60));
        browser.eval("refresh(), true");
        browser.wait_for(&row_is("warn", AMBER), Duration::from_secs(10));
        let png = browser.screenshot();
        clock.set_ahead(Duration::from_secs(72 * 3600 + 60));
        browser.eval("refresh(), true");
        browser.wait_for(&row_is("alert", RED), Duration::from_secs(10));

        // Click-through: alice's snapshots, envelope data only.
        browser.eval(&format!("{alice}.cells[1].click(), true"));
        browser.wait_for(
            "location.hash === '#accounts/alice'
             && document.querySelectorAll('#snapshots-table tbody tr:not(:has(td.empty))').length === 1
             && document.getElementById('snapshots-note').textContent.includes('never the names')",
            Duration::from_secs(10),
        );
        let text = browser.eval("document.body.innerText").as_str().unwrap().to_owned();
        for name in NAMES {
            assert!(!text.contains(name), "the dashboard showed {name}:\n{text}");
        }
        // The overview's maintenance part: nothing running, the start-up scrub cycle's result.
        browser.navigate(&url.replace("#accounts", "#overview"));
        browser.wait_for(
            "document.querySelector('#tasks-table td.empty')?.textContent === 'no prune or scrub running'
             && document.getElementById('tasks-last').textContent.includes('Last prune: none yet')
             && document.getElementById('tasks-last').textContent.includes('0 damaged')",
            Duration::from_secs(10),
        );
        (browser.errors.clone(), png)
    })
    .await
    .unwrap();

    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "admin-accounts.png looks empty"
    );
    std::fs::create_dir_all(&screenshots).unwrap();
    std::fs::write(screenshots.join("admin-accounts.png"), png).unwrap();
    server.stop().await;
}
