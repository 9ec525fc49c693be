//! The storage backend conformance suite (restic's `internal/backend/test` is the model):
//! one set of cases, run against every [`Backend`] implementation — the local directory,
//! S3 against a real S3 server process started by the test (see `s3_server`), and the fault
//! injector around the local backend — plus the error paths only a fault injector or a
//! failing S3 front reaches.
//!
//! The S3 cases skip with a one-line message when no S3 server is installed, unless
//! `CYBERBACKUP_REQUIRE_S3=1` (set by `.ci/run`) turns that into a failure.
//!
//! Runtime: a few seconds (the S3 cases move ~100 MiB through the server in 8 MiB parts).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::cast_possible_truncation
)]

mod s3_server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cyberbackup_server::backend::faulty::{FaultPlan, Faulty};
use cyberbackup_server::backend::local::{LocalBackend, LocalConfig};
use cyberbackup_server::backend::s3::S3Backend;
use cyberbackup_server::backend::{
    Backend, BackendError, ContentHash, ObjectInfo, ObjectKey, PutBody, Upload,
};
use futures_util::StreamExt;
use s3_server::S3Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A backend under test, a way to open it again as a restarted server would, and what
/// keeps its storage alive.
struct Fixture {
    backend: Arc<dyn Backend>,
    reopen: Box<dyn Fn() -> Arc<dyn Backend> + Send + Sync>,
    _keep: Box<dyn std::any::Any + Send + Sync>,
}

/// Local backend with 4 KiB parts, so multipart cases run many parts quickly.
fn local() -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalConfig {
        part_len: 4096,
        ..LocalConfig::new(dir.path().join("objects"))
    };
    let open = move || Arc::new(LocalBackend::open(config.clone()).unwrap()) as Arc<dyn Backend>;
    Some(Fixture {
        backend: open(),
        reopen: Box::new(open),
        _keep: Box::new(dir),
    })
}

/// S3 backend (8 MiB parts, S3's minimum is 5 MiB) on a fresh server and bucket.
fn s3() -> Option<Fixture> {
    let server = S3Server::start_or_skip()?;
    let config = server.config(Some("repo/one"));
    let open = move || Arc::new(S3Backend::new(&config).unwrap()) as Arc<dyn Backend>;
    Some(Fixture {
        backend: open(),
        reopen: Box::new(open),
        _keep: Box::new(server),
    })
}

/// The fault injector around a local backend, with no fault planned: it must pass every
/// case unchanged.
fn faulty() -> Option<Fixture> {
    let inner = local()?;
    let dir = inner._keep;
    let reopen_inner = inner.reopen;
    let open = move || Arc::new(Faulty::new(reopen_inner(), FaultPlan::new())) as Arc<dyn Backend>;
    Some(Fixture {
        backend: open(),
        reopen: Box::new(open),
        _keep: dir,
    })
}

/// Generates one `#[tokio::test]` per conformance case for a fixture.
macro_rules! conformance {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(fixture) = super::$backend() else { return };
                    super::cases::$case(&fixture).await;
                }
            )*
        }
    };
}

macro_rules! all_cases {
    ($($backend:ident),*) => {
        $(
            conformance!($backend:
                save_and_load_whole_and_ranges,
                ranges_outside_the_object_are_refused,
                missing_objects_are_not_found,
                list_with_and_without_prefix,
                delete_removes_and_is_idempotent,
                overwrite_replaces_the_whole_object,
                wrong_hash_is_refused_and_nothing_is_visible,
                streamed_put_is_stored_in_parts,
                streamed_put_with_wrong_hash_leaves_nothing,
                failing_stream_leaves_nothing,
                cancelled_put_leaves_nothing,
                upload_resumes_after_a_restart,
                upload_refuses_parts_that_break_the_rules,
                concurrent_writers,
                removing_interrupted_puts_keeps_every_object,
            );
        )*
    };
}

all_cases!(local, s3, faulty);

mod cases {
    use super::*;

    /// Start-up recovery's sweep removes no object, whole or partly uploaded.
    pub(super) async fn removing_interrupted_puts_keeps_every_object(fx: &Fixture) {
        let b = &*fx.backend;
        put(b, &key("data/aa/kept"), b"kept").await;
        put(b, &key("snapshots/also-kept"), b"also kept").await;
        let first_part = pattern(usize::try_from(b.part_len()).unwrap(), 3);
        let mut upload = b.begin_upload(&key("data/bb/in-progress")).await.unwrap();
        b.upload_part(&mut upload, Bytes::from(first_part.clone()))
            .await
            .unwrap();
        assert_eq!(b.remove_interrupted_puts().await.unwrap(), 0);
        assert_eq!(
            list(b, None).await,
            objects(&[("data/aa/kept", 4), ("snapshots/also-kept", 9)])
        );
        b.upload_part(&mut upload, Bytes::from_static(b"end"))
            .await
            .unwrap();
        let whole = [first_part.as_slice(), b"end"].concat();
        b.complete_upload(&upload, ContentHash::of(&whole))
            .await
            .unwrap();
        assert_eq!(
            b.get(&key("data/bb/in-progress"), None).await.unwrap(),
            whole
        );
    }

    pub(super) async fn save_and_load_whole_and_ranges(fx: &Fixture) {
        let b = &*fx.backend;
        for (name, len) in [("empty", 0), ("one", 1), ("small", 1000), ("mib", 1 << 20)] {
            let data = pattern(len, 1);
            let k = key(&format!("data/{name}"));
            b.put(&k, data.clone().into(), ContentHash::of(&data))
                .await
                .unwrap();
            assert_eq!(b.get(&k, None).await.unwrap(), data, "{name}");
            let len = len as u64;
            let mut ranges = vec![0..0, 0..len, len..len];
            if len > 2 {
                ranges.extend([0..1, 1..len - 1, len - 1..len, len / 3..len / 2]);
            }
            for range in ranges {
                let got = b.get(&k, Some(range.clone())).await.unwrap();
                let want = &data[range.start as usize..range.end as usize];
                assert_eq!(got, want, "{name} {range:?}");
            }
        }
    }

    pub(super) async fn ranges_outside_the_object_are_refused(fx: &Fixture) {
        let b = &*fx.backend;
        let data = pattern(100, 2);
        let k = key("data/ranged");
        put(b, &k, &data).await;
        // The last one starts after its end.
        let backwards = std::ops::Range { start: 7, end: 3 };
        for range in [100..101, 0..101, 50..200, 101..102, backwards] {
            match b.get(&k, Some(range.clone())).await {
                Err(BackendError::InvalidRange {
                    start,
                    end,
                    len_bytes,
                    ..
                }) => {
                    assert_eq!((start, end, len_bytes), (range.start, range.end, 100));
                }
                other => panic!("{range:?}: {other:?}"),
            }
        }
    }

    pub(super) async fn missing_objects_are_not_found(fx: &Fixture) {
        let b = &*fx.backend;
        let k = key("data/never-stored");
        let err = b.get(&k, None).await.unwrap_err();
        assert!(
            matches!(&err, BackendError::NotFound { key } if *key == k),
            "{err:?}"
        );
        assert!(err.to_string().contains("data/never-stored"), "{err}");
        assert!(!err.is_retryable());
        let err = b.get(&k, Some(0..1)).await.unwrap_err();
        assert!(matches!(err, BackendError::NotFound { .. }), "{err:?}");
    }

    pub(super) async fn list_with_and_without_prefix(fx: &Fixture) {
        let b = &*fx.backend;
        assert_eq!(list(b, None).await, objects(&[]));
        let keys = [
            ("config", 3),
            ("data/aa/one", 10),
            ("data/ab/two", 20),
            ("database/three", 30),
            ("index/four", 40),
        ];
        for (k, len) in keys {
            put(b, &key(k), &pattern(len, 3)).await;
        }
        let all: Vec<(&str, u64)> = keys.iter().map(|(k, l)| (*k, *l as u64)).collect();
        assert_eq!(list(b, None).await, objects(&all));
        assert_eq!(
            list(b, Some("data")).await,
            objects(&[("data/aa/one", 10), ("data/ab/two", 20)])
        );
        assert_eq!(
            list(b, Some("data/ab")).await,
            objects(&[("data/ab/two", 20)])
        );
        assert_eq!(list(b, Some("dat")).await, objects(&[]));
        assert_eq!(list(b, Some("config")).await, objects(&[]));
        assert_eq!(list(b, Some("missing/prefix")).await, objects(&[]));
    }

    pub(super) async fn delete_removes_and_is_idempotent(fx: &Fixture) {
        let b = &*fx.backend;
        let (gone, kept) = (key("data/gone"), key("data/kept"));
        put(b, &gone, b"delete me").await;
        put(b, &kept, b"keep me").await;
        b.delete(&gone).await.unwrap();
        assert!(matches!(
            b.get(&gone, None).await,
            Err(BackendError::NotFound { .. })
        ));
        assert_eq!(list(b, None).await, objects(&[("data/kept", 7)]));
        b.delete(&gone).await.unwrap();
        b.delete(&key("data/never")).await.unwrap();
        assert_eq!(b.get(&kept, None).await.unwrap(), &b"keep me"[..]);
    }

    pub(super) async fn overwrite_replaces_the_whole_object(fx: &Fixture) {
        let b = &*fx.backend;
        let k = key("config");
        put(b, &k, &pattern(5000, 4)).await;
        put(b, &k, b"short").await;
        assert_eq!(b.get(&k, None).await.unwrap(), &b"short"[..]);
        assert_eq!(list(b, None).await, objects(&[("config", 5)]));
    }

    pub(super) async fn wrong_hash_is_refused_and_nothing_is_visible(fx: &Fixture) {
        let b = &*fx.backend;
        let (fresh, existing) = (key("data/fresh"), key("data/existing"));
        let data = pattern(3000, 5);
        let wrong = ContentHash::of(b"something else");
        let err = b.put(&fresh, data.clone().into(), wrong).await.unwrap_err();
        match &err {
            BackendError::HashMismatch {
                key,
                expected,
                actual,
            } => {
                assert_eq!(key, &fresh);
                assert_eq!(*expected, wrong);
                assert_eq!(*actual, ContentHash::of(&data));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("nothing was stored"), "{err}");
        assert!(matches!(
            b.get(&fresh, None).await,
            Err(BackendError::NotFound { .. })
        ));
        put(b, &existing, b"the original").await;
        let err = b.put(&existing, data.into(), wrong).await.unwrap_err();
        assert!(matches!(err, BackendError::HashMismatch { .. }), "{err:?}");
        assert_eq!(b.get(&existing, None).await.unwrap(), &b"the original"[..]);
        assert_eq!(list(b, None).await, objects(&[("data/existing", 12)]));
    }

    pub(super) async fn streamed_put_is_stored_in_parts(fx: &Fixture) {
        let b = &*fx.backend;
        let part = b.part_len() as usize;
        let data = pattern(2 * part + part / 2 + 3, 6);
        let k = key("data/streamed");
        // Pieces that do not line up with the parts.
        let pieces = odd_pieces(&data, part / 3 + 1);
        b.put(&k, stream(pieces), ContentHash::of(&data))
            .await
            .unwrap();
        assert_eq!(b.get(&k, None).await.unwrap(), data);
        let across = part as u64 - 10..part as u64 + 10;
        assert_eq!(
            b.get(&k, Some(across.clone())).await.unwrap(),
            &data[across.start as usize..across.end as usize]
        );
        assert_eq!(
            list(b, None).await,
            objects(&[("data/streamed", data.len() as u64)])
        );
        // A stream no longer than one part is one put.
        let small = pattern(part / 2, 7);
        let k = key("data/small-stream");
        b.put(&k, stream(odd_pieces(&small, 100)), ContentHash::of(&small))
            .await
            .unwrap();
        assert_eq!(b.get(&k, None).await.unwrap(), small);
    }

    pub(super) async fn streamed_put_with_wrong_hash_leaves_nothing(fx: &Fixture) {
        let b = &*fx.backend;
        let part = b.part_len() as usize;
        let data = pattern(2 * part + 1, 8);
        let mut tampered = data.clone();
        tampered[part + 5] ^= 1;
        let k = key("data/tampered");
        let err = b
            .put(
                &k,
                stream(odd_pieces(&tampered, part)),
                ContentHash::of(&data),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BackendError::HashMismatch { actual, .. } if *actual == ContentHash::of(&tampered)),
            "{err:?}"
        );
        assert_eq!(list(b, None).await, objects(&[]));
    }

    pub(super) async fn failing_stream_leaves_nothing(fx: &Fixture) {
        let b = &*fx.backend;
        let part = b.part_len() as usize;
        let data = pattern(part + 10, 9);
        let pieces = vec![
            Ok(Bytes::copy_from_slice(&data[..part + 1])),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "client went away",
            )),
        ];
        let body = PutBody::Stream(Box::pin(futures_util::stream::iter(pieces)));
        let err = b
            .put(&key("data/broken"), body, ContentHash::of(&data))
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::Source { .. }), "{err:?}");
        assert!(err.to_string().contains("client went away"), "{err}");
        assert_eq!(list(b, None).await, objects(&[]));
    }

    pub(super) async fn cancelled_put_leaves_nothing(fx: &Fixture) {
        let backend = Arc::clone(&fx.backend);
        let part = backend.part_len() as usize;
        let data = pattern(3 * part, 10);
        let k = key("data/cancelled");
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(1);
        let body = PutBody::Stream(Box::pin(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|piece| (piece, rx)) },
        )));
        let expected = ContentHash::of(&data);
        let put = tokio::spawn({
            let backend = Arc::clone(&backend);
            let k = k.clone();
            async move { backend.put(&k, body, expected).await }
        });
        // With one slot in the channel, the third send returns only after the put took the
        // second piece, i.e. after it stored the first part.
        tx.send(Ok(Bytes::copy_from_slice(&data[..part])))
            .await
            .unwrap();
        tx.send(Ok(Bytes::copy_from_slice(&data[part..part + 10])))
            .await
            .unwrap();
        tx.send(Ok(Bytes::copy_from_slice(&data[part + 10..part + 20])))
            .await
            .unwrap();
        put.abort();
        assert!(put.await.unwrap_err().is_cancelled());
        assert!(matches!(
            backend.get(&k, None).await,
            Err(BackendError::NotFound { .. })
        ));
        assert_eq!(list(&*backend, None).await, objects(&[]));
    }

    pub(super) async fn upload_resumes_after_a_restart(fx: &Fixture) {
        let part = fx.backend.part_len() as usize;
        let data = pattern(2 * part + 77, 11);
        let k = key("data/resumed");
        let mut upload = fx.backend.begin_upload(&k).await.unwrap();
        for chunk in data.chunks(part).take(2) {
            fx.backend
                .upload_part(&mut upload, Bytes::copy_from_slice(chunk))
                .await
                .unwrap();
        }
        assert_eq!(upload.len_bytes(), 2 * part as u64);
        assert_eq!(
            list(&*fx.backend, None).await,
            objects(&[]),
            "nothing visible before completion"
        );
        // The caller persists the upload; a restarted server reads it back.
        let saved = serde_json::to_string(&upload).unwrap();
        let restarted = (fx.reopen)();
        let mut upload: Upload = serde_json::from_str(&saved).unwrap();
        restarted
            .upload_part(&mut upload, Bytes::copy_from_slice(&data[2 * part..]))
            .await
            .unwrap();
        let wrong = ContentHash::of(b"not it");
        restarted
            .complete_upload(&upload, ContentHash::of(&data))
            .await
            .unwrap();
        assert_eq!(restarted.get(&k, None).await.unwrap(), data);
        assert_eq!(fx.backend.get(&k, None).await.unwrap(), data);
        // A resumed upload is checked against the whole object's hash too.
        let k2 = key("data/resumed-wrong");
        let mut upload = restarted.begin_upload(&k2).await.unwrap();
        for chunk in data.chunks(part) {
            restarted
                .upload_part(&mut upload, Bytes::copy_from_slice(chunk))
                .await
                .unwrap();
        }
        let upload: Upload =
            serde_json::from_str(&serde_json::to_string(&upload).unwrap()).unwrap();
        let err = (fx.reopen)()
            .complete_upload(&upload, wrong)
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::HashMismatch { .. }), "{err:?}");
        assert!(matches!(
            restarted.get(&k2, None).await,
            Err(BackendError::NotFound { .. })
        ));
        assert_eq!(
            list(&*restarted, None).await,
            objects(&[("data/resumed", data.len() as u64)])
        );
    }

    pub(super) async fn upload_refuses_parts_that_break_the_rules(fx: &Fixture) {
        let b = &*fx.backend;
        let part = b.part_len() as usize;
        let mut upload = b.begin_upload(&key("data/rules")).await.unwrap();
        for bad in [Bytes::new(), Bytes::from(vec![1u8; part + 1])] {
            let err = b.upload_part(&mut upload, bad).await.unwrap_err();
            assert!(matches!(err, BackendError::InvalidUpload { .. }), "{err:?}");
        }
        assert!(upload.parts().is_empty(), "a refused part is not recorded");
        b.upload_part(&mut upload, Bytes::from(vec![2u8; part / 2]))
            .await
            .unwrap();
        let err = b
            .upload_part(&mut upload, Bytes::from(vec![3u8; part]))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("its last part was shorter"),
            "{err}"
        );
        b.abort_upload(upload).await.unwrap();
        assert_eq!(list(b, None).await, objects(&[]));
    }

    pub(super) async fn concurrent_writers(fx: &Fixture) {
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let backend = Arc::clone(&fx.backend);
            tasks.push(tokio::spawn(async move {
                let data = pattern(2000 + usize::from(i), i);
                put(&*backend, &key(&format!("data/writer-{i}")), &data).await;
            }));
        }
        let contents: Vec<Vec<u8>> = (0..4u8).map(|i| pattern(5000, 100 + i)).collect();
        for data in contents.clone() {
            let backend = Arc::clone(&fx.backend);
            tasks.push(tokio::spawn(async move {
                put(&*backend, &key("data/contended"), &data).await;
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let winner = fx.backend.get(&key("data/contended"), None).await.unwrap();
        assert!(contents.iter().any(|c| *c == winner), "a mix of writers");
        let listed = list(&*fx.backend, Some("data")).await;
        assert_eq!(listed.len(), 9, "{listed:?}");
        for i in 0..8u8 {
            let data = fx
                .backend
                .get(&key(&format!("data/writer-{i}")), None)
                .await
                .unwrap();
            assert_eq!(data, pattern(2000 + usize::from(i), i));
        }
    }
}

// ---- error paths through the fault injector ----

fn faulty_local() -> (Faulty<LocalBackend>, Arc<FaultPlan>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalConfig {
        part_len: 4096,
        ..LocalConfig::new(dir.path().join("objects"))
    };
    let plan = FaultPlan::new();
    let backend = Faulty::new(LocalBackend::open(config).unwrap(), Arc::clone(&plan));
    (backend, plan, dir)
}

#[tokio::test]
async fn failing_put_is_surfaced_as_retryable_and_leaves_nothing() {
    let (b, plan, _dir) = faulty_local();
    let k = key("data/x");
    plan.fail_puts(1);
    let err = b
        .put(&k, b"abc".to_vec().into(), ContentHash::of(b"abc"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("injected fault: put"), "{err}");
    assert!(matches!(
        b.get(&k, None).await,
        Err(BackendError::NotFound { .. })
    ));
    put(&b, &k, b"abc").await;
    assert_eq!(plan.injected(), 1);
}

#[tokio::test]
async fn failing_part_aborts_a_streamed_put_and_leaves_no_temp_file() {
    let (b, plan, dir) = faulty_local();
    let part = b.part_len() as usize;
    let data = pattern(3 * part, 12);
    plan.fail_writes_after(2, 1); // begin_upload and part 1 succeed, part 2 fails
    let err = b
        .put(
            &key("data/x"),
            stream(odd_pieces(&data, 1000)),
            ContentHash::of(&data),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("injected fault: upload part"),
        "{err}"
    );
    assert_eq!(plan.injected(), 1);
    assert_eq!(list(&b, None).await, objects(&[]));
    assert_eq!(
        files_under(dir.path()),
        Vec::<String>::new(),
        "temp files left behind"
    );
}

#[tokio::test]
async fn unavailable_store_is_retryable_on_every_verb() {
    let (b, plan, _dir) = faulty_local();
    let k = key("data/x");
    put(&b, &k, b"abc").await;
    plan.unavailable(4);
    let err = b.get(&k, None).await.unwrap_err();
    assert!(
        err.is_retryable() && err.to_string().contains("503"),
        "{err}"
    );
    let first = b.list(None).next().await.unwrap().unwrap_err();
    assert!(first.is_retryable(), "{first:?}");
    assert!(b.delete(&k).await.unwrap_err().is_retryable());
    assert!(b.begin_upload(&k).await.unwrap_err().is_retryable());
    assert_eq!(plan.injected(), 4);
    assert_eq!(b.get(&k, None).await.unwrap(), &b"abc"[..]);
}

#[tokio::test]
async fn slow_get_can_be_bounded_by_the_caller() {
    let (b, plan, _dir) = faulty_local();
    let k = key("data/x");
    put(&b, &k, b"abc").await;
    plan.slow_gets(Duration::from_secs(600));
    let timed_out = tokio::time::timeout(Duration::from_millis(50), b.get(&k, None)).await;
    assert!(timed_out.is_err(), "the get should still be waiting");
    plan.slow_gets(Duration::ZERO);
    assert_eq!(b.get(&k, None).await.unwrap(), &b"abc"[..]);
}

#[tokio::test]
async fn local_cancelled_put_leaves_no_temp_file() {
    let fx = local().unwrap();
    cases::cancelled_put_leaves_nothing(&fx).await;
    let root = fx._keep.downcast_ref::<tempfile::TempDir>().unwrap().path();
    assert_eq!(
        files_under(root),
        Vec::<String>::new(),
        "temp files left behind"
    );
}

#[tokio::test]
async fn local_removes_the_temp_file_of_a_put_a_crash_interrupted() {
    let fx = local().unwrap();
    let b = &*fx.backend;
    put(b, &key("data/aa/kept"), b"kept").await;
    let root = fx._keep.downcast_ref::<tempfile::TempDir>().unwrap().path();
    let object = root.join("objects/data/aa/kept");
    let temp = object.with_file_name(".put-interrupted");
    std::fs::write(&temp, b"half").unwrap();
    assert_eq!(b.remove_interrupted_puts().await.unwrap(), 1);
    assert!(!temp.exists() && object.exists());
    assert_eq!(list(b, None).await, objects(&[("data/aa/kept", 4)]));
}

#[tokio::test]
async fn local_objects_and_directories_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let fx = local().unwrap();
    put(&*fx.backend, &key("data/ab/object"), b"ciphertext").await;
    let root = fx._keep.downcast_ref::<tempfile::TempDir>().unwrap().path();
    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("objects/data/ab/object"), 0o600);
    assert_eq!(mode("objects/data/ab"), 0o700);
    assert_eq!(mode("objects/data"), 0o700);
    assert_eq!(mode("objects"), 0o700);
}

// ---- S3 only ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_prefixes_keep_repositories_apart() {
    let Some(server) = S3Server::start_or_skip() else {
        return;
    };
    let one = S3Backend::new(&server.config(Some("site/one"))).unwrap();
    let two = S3Backend::new(&server.config(Some("site/two"))).unwrap();
    put(&one, &key("config"), b"one").await;
    put(&two, &key("config"), b"two").await;
    assert_eq!(list(&one, None).await, objects(&[("config", 3)]));
    assert_eq!(two.get(&key("config"), None).await.unwrap(), &b"two"[..]);
    one.delete(&key("config")).await.unwrap();
    assert_eq!(two.get(&key("config"), None).await.unwrap(), &b"two"[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_unreachable_store_is_retryable_after_the_configured_retries() {
    // A port nothing listens on: every attempt is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = cyberbackup_server::backend::s3::S3Config::new("bucket");
    config.endpoint = Some(format!("http://127.0.0.1:{port}"));
    config.region = Some("us-east-1".into());
    config.access_key_id = Some("id".into());
    config.secret_access_key = Some(zeroize::Zeroizing::new("secret".into()));
    config.allow_http = true;
    config.max_retries = 2;
    config.initial_backoff = Duration::from_millis(1);
    let b = S3Backend::new(&config).unwrap();
    let err = b.get(&key("config"), None).await.unwrap_err();
    assert!(
        matches!(
            &err,
            BackendError::Unavailable {
                retryable: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("after 2 retries"), "{err}");
    assert!(
        !format!("{config:?}").contains("secret\""),
        "secret in Debug output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_retries_503_answers_with_back_off() {
    let Some(server) = S3Server::start_or_skip() else {
        return;
    };
    let direct = S3Backend::new(&server.config(None)).unwrap();
    put(&direct, &key("config"), b"retried").await;

    // Two 503s, three retries allowed: the get succeeds on the third attempt.
    let (front, refused) = flaky_front(server.addr, 2).await;
    let mut config = server.config(None);
    config.endpoint = Some(format!("http://{front}"));
    config.max_retries = 3;
    let b = S3Backend::new(&config).unwrap();
    assert_eq!(b.get(&key("config"), None).await.unwrap(), &b"retried"[..]);
    assert_eq!(refused.load(Ordering::SeqCst), 2);

    // More 503s than retries: a retryable error that names the status.
    let (front, refused) = flaky_front(server.addr, usize::MAX).await;
    config.endpoint = Some(format!("http://{front}"));
    config.max_retries = 1;
    let b = S3Backend::new(&config).unwrap();
    let err = b.get(&key("config"), None).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(
        refused.load(Ordering::SeqCst),
        2,
        "one attempt and one retry"
    );
}

/// A front for `upstream` that answers the first `fail` connections with `503` (and closes
/// them) and forwards every later one; returns its address and the count of 503s sent.
async fn flaky_front(upstream: SocketAddr, fail: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&refused);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let refuse = counter
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < fail).then_some(n + 1)
                })
                .is_ok();
            tokio::spawn(async move {
                if refuse {
                    read_request_head(&mut client).await;
                    let _ = client
                        .write_all(
                            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\
                              Connection: close\r\n\r\n",
                        )
                        .await;
                } else if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (addr, refused)
}

async fn read_request_head(stream: &mut tokio::net::TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65_536 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

// ---- helpers ----

/// `(key, size)` pairs as [`list`] returns them, sorted.
fn objects(items: &[(&str, u64)]) -> Vec<(String, u64)> {
    let mut items: Vec<(String, u64)> = items.iter().map(|(k, l)| ((*k).to_owned(), *l)).collect();
    items.sort();
    items
}

fn key(k: &str) -> ObjectKey {
    ObjectKey::new(k).unwrap()
}

async fn put(b: &(impl Backend + ?Sized), k: &ObjectKey, data: &[u8]) {
    b.put(k, data.to_vec().into(), ContentHash::of(data))
        .await
        .unwrap();
}

/// Every listed key and size, sorted (the contract gives no order).
async fn list(b: &(impl Backend + ?Sized), prefix: Option<&str>) -> Vec<(String, u64)> {
    let prefix = prefix.map(key);
    let items: Vec<ObjectInfo> = b
        .list(prefix.as_ref())
        .map(|item| item.unwrap())
        .collect()
        .await;
    let mut listed: Vec<(String, u64)> = items
        .into_iter()
        .map(|info| (info.key.to_string(), info.len_bytes))
        .collect();
    listed.sort();
    listed
}

/// Deterministic bytes that differ per `seed` and are not periodic in a part.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn odd_pieces(data: &[u8], size: usize) -> Vec<std::io::Result<Bytes>> {
    data.chunks(size)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect()
}

fn stream(pieces: Vec<std::io::Result<Bytes>>) -> PutBody {
    PutBody::Stream(Box::pin(futures_util::stream::iter(pieces)))
}

/// Every file under `root`, relative, including hidden ones.
fn files_under(root: &std::path::Path) -> Vec<String> {
    let mut files: Vec<String> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(root).unwrap().display().to_string())
        .collect();
    files.sort();
    files
}
