//! The restore view over protocol v4: list the user's files and versions on the server, and
//! restore one as a browser download.
//!
//! `POST /api/restores` has the library ([`V4Client::restore`]) download the chosen version
//! into the staging directory: it writes a temp file, checks the size and SHA-256 against the
//! server's record, and only then renames it into place. The page then fetches
//! `GET /api/restores/{id}` once; the file is opened, unlinked and streamed from disk in
//! [`DOWNLOAD_CHUNK`] pieces, so nothing unverified is served and no file is held in memory.
//! Restores that are not downloaded within [`PREPARED_TTL`] are deleted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use cyberbackup_core::v4::noise::to_hex;
use cyberbackup_core::v4::wire::{ErrorCode, VersionRecord};
use rand_core::RngCore;
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncReadExt;

use super::store::{Settings, UiProtocol};
use super::{Ui, error};
use crate::ClientError;
use crate::v4::{V4Client, V4ClientError, V4Options};

/// Bytes read from the verified file per piece of the download.
pub(super) const DOWNLOAD_CHUNK: usize = 64 * 1024;
/// How long a verified restore waits for the page to download it.
pub(super) const PREPARED_TTL: Duration = Duration::from_secs(10 * 60);

/// A verified restore waiting to be downloaded.
#[derive(Debug)]
pub(super) struct Prepared {
    path: PathBuf,
    name: String,
    size: u64,
    sha256: String,
    created: Instant,
}

/// The v4 options the settings describe, with this UI's v4 identity; `register` passes the
/// client name so that a first backup registers a new identity (listing and restoring
/// never register).
pub(super) fn v4_options(
    ui: &Ui,
    settings: &Settings,
    register: bool,
) -> Result<V4Options, String> {
    settings.v4_options(&ui.options.v4_identity, register)
}

/// Rewrites the CLI's fix-it hints (flags) into what to do on this page.
pub(super) fn for_the_page(message: &str) -> String {
    [
        (
            "pass the token with --enroll-token",
            "enter it in the Enrollment token field of the server settings",
        ),
        (
            "use --protocol v3",
            "choose protocol v3 in the server settings",
        ),
        ("choose another --name", "choose another client name"),
        (
            "list your files to see the names and versions stored",
            "press Refresh in the restore list to see the names and versions stored",
        ),
        (
            "use the identity registered there (--v4-identity), or move the file away to register anew",
            "move the v4 identity file away to register anew",
        ),
    ]
    .iter()
    .fold(message.to_owned(), |text, (cli, page)| {
        text.replace(cli, page)
    })
}

/// Why there is nothing to list or restore yet (not an error of the request).
fn not_ready(ui: &Ui, settings: &Settings) -> Option<String> {
    if settings.protocol != UiProtocol::V4 {
        return Some(
            "listing and restoring need protocol v4; the settings use v3 (legacy servers keep no versions) — choose protocol v4 in the server settings".into(),
        );
    }
    if settings.server.is_empty() {
        return Some("enter the server address and a client name, then save them".into());
    }
    if !ui.options.v4_identity.exists() {
        return Some(format!(
            "nothing to restore yet: this computer has no v4 identity ({}) — back up a file first, and it will be listed here",
            ui.options.v4_identity.display()
        ));
    }
    None
}

/// Why a list or restore cannot run.
pub(super) enum NotReady {
    /// Nothing to list yet, or not over v3 (a state, not a bad request).
    Note(String),
    /// The saved settings cannot be used.
    BadSettings(String),
}

/// Settings for a list or restore: v4, with an identity that already exists.
pub(super) fn ready(ui: &Ui) -> Result<V4Options, NotReady> {
    let settings = ui.lock().settings.clone();
    if let Some(note) = not_ready(ui, &settings) {
        return Err(NotReady::Note(note));
    }
    v4_options(ui, &settings, false).map_err(NotReady::BadSettings)
}

/// A v4 failure as a response: the library's sentence (with the page's fixes), 404 when the
/// server has no such file or version, 502 when the server could not be used at all.
pub(super) fn failure(server: &str, err: V4ClientError) -> Response {
    let status = match &err {
        _ if err.code() == Some(ErrorCode::NOT_FOUND) => StatusCode::NOT_FOUND,
        V4ClientError::Usage { .. } => StatusCode::BAD_REQUEST,
        V4ClientError::Failed(_) => StatusCode::UNPROCESSABLE_ENTITY,
        V4ClientError::Identity(_) | V4ClientError::NameMismatch { .. } => StatusCode::CONFLICT,
        _ => StatusCode::BAD_GATEWAY,
    };
    let message = ClientError::V4 {
        server: server.to_owned(),
        error: err,
    }
    .to_string();
    error(status, for_the_page(&message))
}

fn record_json(record: &VersionRecord) -> serde_json::Value {
    let stored = std::time::UNIX_EPOCH + Duration::from_secs(record.created_unix_secs);
    json!({
        "name": record.name.to_string_lossy(),
        "version": record.version,
        "size": record.size,
        "stored": humantime::format_rfc3339_seconds(stored).to_string(),
        "sha256": to_hex(&record.sha256),
    })
}

/// `GET /api/versions`: every version of every file of ours on the server (newest version
/// first per name). Before the first v4 backup, or over v3, the list is empty and `note`
/// says why.
pub(super) async fn versions(State(ui): State<Arc<Ui>>) -> Response {
    let options = match ready(&ui) {
        Ok(options) => options,
        Err(NotReady::Note(note)) => {
            let server = ui.lock().settings.server.clone();
            return Json(json!({ "server": server, "versions": [], "note": note })).into_response();
        }
        Err(NotReady::BadSettings(message)) => return error(StatusCode::BAD_REQUEST, message),
    };
    let listed = async {
        let mut client = V4Client::connect(&options).await?;
        let entries = client.list().await?;
        let _ignored = client.close().await;
        Ok::<_, V4ClientError>(entries)
    }
    .await;
    match listed {
        Ok(mut entries) => {
            entries.sort_by(|a, b| {
                a.name
                    .as_bytes()
                    .cmp(b.name.as_bytes())
                    .then(b.version.cmp(&a.version))
            });
            Json(json!({
                "server": options.server,
                "versions": entries.iter().map(record_json).collect::<Vec<_>>(),
                "note": null,
            }))
            .into_response()
        }
        Err(err) => failure(&options.server, err),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct RestoreBody {
    name: String,
    /// Newest when absent.
    version: Option<u32>,
}

/// `POST /api/restores`: restores a version into the staging directory, verified; answers
/// with the one-time download URL.
pub(super) async fn prepare(State(ui): State<Arc<Ui>>, Json(body): Json<RestoreBody>) -> Response {
    let options = match ready(&ui) {
        Ok(options) => options,
        Err(NotReady::Note(note)) => return error(StatusCode::CONFLICT, note),
        Err(NotReady::BadSettings(message)) => return error(StatusCode::BAD_REQUEST, message),
    };
    if body.name.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "choose a file to restore from the list",
        );
    }
    purge_expired(&ui).await;
    let dir = ui.staging.path().join("restores");
    if let Err(err) = tokio::fs::create_dir_all(&dir).await {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "cannot prepare a restore in {}: {err} — check free space in the temporary directory",
                dir.display()
            ),
        );
    }
    let id = random_id();
    let output = dir.join(format!("{id}.restored"));
    let restored = async {
        let mut client = V4Client::connect(&options).await?;
        let record = client.restore(&body.name, body.version, &output).await?;
        let _ignored = client.close().await;
        Ok::<_, V4ClientError>(record)
    }
    .await;
    let record = match restored {
        Ok(record) => record,
        Err(err) => {
            let _ = tokio::fs::remove_file(&output).await;
            return failure(&options.server, err);
        }
    };
    let url = format!("/api/restores/{id}");
    let mut answer = record_json(&record);
    answer["id"] = id.clone().into();
    answer["url"] = url.into();
    answer["verified"] = true.into();
    ui.lock().restores.insert(
        id,
        Prepared {
            path: output,
            name: record.name.to_string_lossy(),
            size: record.size,
            sha256: to_hex(&record.sha256),
            created: Instant::now(),
        },
    );
    Json(answer).into_response()
}

/// `GET /api/restores/{id}`: the verified file, once, streamed from disk.
pub(super) async fn download(State(ui): State<Arc<Ui>>, UrlPath(id): UrlPath<String>) -> Response {
    let Some(prepared) = ui.lock().restores.remove(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            "this restore was already downloaded or has expired — press Restore again",
        );
    };
    let file = match tokio::fs::File::open(&prepared.path).await {
        Ok(file) => file,
        Err(err) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "the restored file {} cannot be read: {err} — press Restore again",
                    prepared.path.display()
                ),
            );
        }
    };
    // The open handle keeps the data; the name goes at once, so nothing is left behind
    // whether or not the download completes.
    let _ = tokio::fs::remove_file(&prepared.path).await;
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = BytesMut::zeroed(DOWNLOAD_CHUNK);
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<Bytes, std::io::Error>(buf.freeze()), Some(file)))
            }
            Err(err) => Some((Err(err), None)),
        }
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(prepared.size));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&content_disposition(&prepared.name)) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if let Ok(value) = HeaderValue::from_str(&prepared.sha256) {
        headers.insert("x-content-sha256", value);
    }
    response
}

/// Deletes verified restores nobody downloaded in time.
async fn purge_expired(ui: &Ui) {
    let expired: Vec<PathBuf> = {
        let mut inner = ui.lock();
        let old: Vec<String> = inner
            .restores
            .iter()
            .filter(|(_, p)| p.created.elapsed() > PREPARED_TTL)
            .map(|(id, _)| id.clone())
            .collect();
        old.iter()
            .filter_map(|id| inner.restores.remove(id))
            .map(|p| p.path)
            .collect()
    };
    for path in expired {
        let _ = tokio::fs::remove_file(path).await;
    }
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut bytes);
    to_hex(&bytes)
}

/// `attachment` with an ASCII fallback name and the exact name in RFC 5987 form.
pub(super) fn content_disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_names_are_quoted_safely() {
        assert_eq!(
            content_disposition("notes.txt"),
            "attachment; filename=\"notes.txt\"; filename*=UTF-8''notes.txt"
        );
        assert_eq!(
            content_disposition("a \"b\"\u{e9}.txt"),
            "attachment; filename=\"a _b__.txt\"; filename*=UTF-8''a%20%22b%22%C3%A9.txt"
        );
    }

    #[test]
    fn cli_hints_become_page_hints() {
        let text = for_the_page(
            "s:1: refused — this server needs an enrollment token: ask its operator to run `cyberbackup-server enroll` and pass the token with --enroll-token",
        );

        assert!(text.ends_with("enter it in the Enrollment token field of the server settings"));
        assert!(!text.contains("--"), "{text}");
    }
}
