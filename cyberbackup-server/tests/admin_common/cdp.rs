//! A minimal Chrome DevTools Protocol driver for headless Chromium: launch, navigate,
//! evaluate JavaScript, wait for a condition, take screenshots, allow downloads into a
//! directory, and collect every console error, uncaught exception and failed load the page
//! reports.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tungstenite::WebSocket;

/// Chromium for a browser test, or `None` when the test is to be skipped (it prints why).
/// With `CYBERBACKUP_REQUIRE_BROWSER` set (as `.ci/run` does) a missing browser fails the
/// test instead.
#[allow(
    clippy::print_stderr,
    reason = "a skipped test must say so in the test output"
)]
pub fn chromium_or_skip() -> Option<PathBuf> {
    let found = find_chromium();
    if found.is_none() {
        assert!(
            std::env::var_os("CYBERBACKUP_REQUIRE_BROWSER").is_none(),
            "CYBERBACKUP_REQUIRE_BROWSER is set but Chromium is missing — apt-get install -y chromium"
        );
        eprintln!("SKIPPED: Chromium not found (apt-get install -y chromium, or set CHROMIUM)");
    }
    found
}

/// Where Chromium is, or `None`.
fn find_chromium() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("CHROMIUM").map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/chromium")),
        Some(PathBuf::from("/usr/bin/chromium-browser")),
        Some(PathBuf::from("/usr/bin/google-chrome")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    /// Console errors, exceptions and failed loads seen so far.
    pub errors: Vec<String>,
}

impl Browser {
    pub fn launch(chromium: &Path) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1280,1000",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("Chromium did not print its DevTools address within 30 s");
        let host = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let stream = TcpStream::connect(&host).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), stream).unwrap();
        let mut browser = Self {
            child,
            _profile: profile,
            ws,
            session: String::new(),
            next_id: 1,
            errors: Vec::new(),
        };
        let target = browser.call_browser("Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser.call_browser(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        for domain in [
            "Runtime.enable",
            "Log.enable",
            "Page.enable",
            "Network.enable",
        ] {
            browser.call(domain, json!({}));
        }
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
        );
        browser
    }

    fn call_browser(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None)
    }

    /// Sends a command to the page and returns its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, Some(session))
    }

    fn send(&mut self, method: &str, params: Value, session: Option<String>) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = Value::String(session);
        }
        self.ws
            .send(tungstenite::Message::text(message.to_string()))
            .unwrap();
        loop {
            let frame = self.ws.read().unwrap();
            let tungstenite::Message::Text(text) = frame else {
                continue;
            };
            let value: Value = serde_json::from_str(text.as_str()).unwrap();
            if value["id"].as_u64() == Some(id) {
                if let Some(error) = value.get("error") {
                    panic!("{method} failed: {error}");
                }
                return value["result"].clone();
            }
            self.note_event(&value);
        }
    }

    fn note_event(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => {
                let args: Vec<String> = params["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        a["value"]
                            .as_str()
                            .map_or_else(|| a.to_string(), str::to_owned)
                    })
                    .collect();
                self.errors
                    .push(format!("console.error: {}", args.join(" ")));
            }
            Some("Runtime.exceptionThrown") => {
                let details = &params["exceptionDetails"];
                self.errors.push(format!(
                    "uncaught exception: {} {}",
                    details["text"], details["exception"]["description"]
                ));
            }
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                self.errors
                    .push(format!("log error: {}", params["entry"]["text"]));
            }
            Some("Network.loadingFailed") if params["canceled"] != true => {
                self.errors
                    .push(format!("load failed: {}", params["errorText"]));
            }
            _ => {}
        }
    }

    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(20),
        );
    }

    /// Evaluates `expression` (awaiting a promise) and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(details) = result.get("exceptionDetails") {
            panic!("evaluating {expression:?} threw: {details}");
        }
        result["result"]["value"].clone()
    }

    /// Polls `condition` every 100 ms; panics with `describe`'s value after `timeout`.
    pub fn wait_for(&mut self, condition: &str, timeout: Duration) {
        self.wait_for_or(
            condition,
            timeout,
            "document.body ? document.body.innerText : ''",
        );
    }

    pub fn wait_for_or(&mut self, condition: &str, timeout: Duration, describe: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(condition) == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let page = self.eval(describe);
                panic!(
                    "timed out after {timeout:?} waiting for {condition}\npage:\n{}",
                    page.as_str()
                        .map_or_else(|| page.to_string(), str::to_owned)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Lets the page download files, saving them in `dir` under their suggested names.
    pub fn allow_downloads_to(&mut self, dir: &Path) {
        self.call_browser(
            "Browser.setDownloadBehavior",
            json!({ "behavior": "allow", "downloadPath": dir.display().to_string() }),
        );
    }

    /// A PNG of the whole page (beyond the viewport), up to `max_height` pixels tall.
    pub fn screenshot_page(&mut self, max_height: u64) -> Vec<u8> {
        let height = self
            .eval("document.documentElement.scrollHeight")
            .as_u64()
            .unwrap_or(1000)
            .min(max_height);
        let shot = self.call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": { "x": 0, "y": 0, "width": 1280, "height": height, "scale": 1 },
            }),
        );
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    }

    /// A PNG of the viewport.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": false }),
        );
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.ws.close(None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until Chromium has saved `path` completely (it writes `*.crdownload` first).
pub fn wait_for_download(path: &Path, len: usize) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        if let Ok(data) = std::fs::read(path) {
            if data.len() >= len {
                return data;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no complete download at {} within 45 s (directory: {:?})",
            path.display(),
            std::fs::read_dir(path.parent().unwrap()).map(|d| d
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .collect::<Vec<_>>())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where screenshots go: `docs/images/` with `CYBERBACKUP_UPDATE_SCREENSHOTS=1`, else the
/// test's temporary directory.
pub fn screenshot_dir(temp: &Path) -> PathBuf {
    if std::env::var_os("CYBERBACKUP_UPDATE_SCREENSHOTS").is_some() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("docs")
            .join("images")
    } else {
        temp.to_path_buf()
    }
}
