//! The client's local UI in-process for the UI and browser tests: its options on a test
//! directory, and the running UI with its address and a clean stop.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;

use cyberbackup_client::IdentityFile;
use cyberbackup_client::ui::{UiOptions, UiServer};

/// Options of a UI whose files live under `dir` (`ui/ui-history.json`, identity `me.info`),
/// on a free loopback port, proposing `server` and the client name `name`.
pub fn ui_options(dir: &Path, server: SocketAddr, name: &str) -> UiOptions {
    let mut options = UiOptions::new(
        dir.join("ui").join("ui-history.json"),
        IdentityFile::new(dir.join("me.info")),
    );
    options.listen = "127.0.0.1:0".parse().unwrap();
    options.default_server = Some(server.to_string());
    options.default_name = Some(name.into());
    options
}

/// A UI serving until [`RunningUi::shutdown`].
pub struct RunningUi {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), cyberbackup_client::ClientError>>,
}

impl RunningUi {
    /// Binds and serves a UI with `options`.
    pub async fn start(options: UiOptions) -> Self {
        let ui = UiServer::bind(options).await.unwrap();
        let addr = ui.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(ui.serve(async {
            let _ = stopped.await;
        }));
        Self { addr, stop, task }
    }

    /// The page's address.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops the UI and waits until it has stopped cleanly.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}
