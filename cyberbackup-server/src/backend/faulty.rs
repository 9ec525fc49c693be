//! [`Faulty`]: a fault injector around any [`Backend`], for the error paths of whatever
//! stores through the trait (failing puts, slow gets, 503-style unavailability).
//!
//! Production never builds one. Tests wrap a real backend, keep the [`FaultPlan`] handle and
//! change it while the code under test runs. An injected failure happens *instead of* the
//! operation, so the inner backend is untouched by it, exactly as when a store refuses a
//! request before acting on it. Hand-written because it is a few counters behind our trait.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream};

use super::{Backend, BackendError, ContentHash, ObjectInfo, ObjectKey, Upload};

/// The faults to inject, shared between a [`Faulty`] backend and the test that steers it.
#[derive(Debug, Default)]
pub struct FaultPlan {
    passing_writes: AtomicUsize,
    failing_puts: AtomicUsize,
    unavailable: AtomicUsize,
    get_delay_ms: AtomicU64,
    injected: AtomicUsize,
    gets_started: AtomicUsize,
}

impl FaultPlan {
    /// A plan that injects nothing (yet).
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The next `n` writes (`put_bytes`, `begin_upload`, `upload_part`, `complete_upload`)
    /// fail with a retryable [`BackendError::Unavailable`].
    pub fn fail_puts(&self, n: usize) {
        self.fail_writes_after(0, n);
    }

    /// The next `ok` writes succeed, then `n` fail as in [`fail_puts`](Self::fail_puts)
    /// (a put that fails half-way through its parts).
    pub fn fail_writes_after(&self, ok: usize, n: usize) {
        self.passing_writes.store(ok, Ordering::SeqCst);
        self.failing_puts.store(n, Ordering::SeqCst);
    }

    /// The next `n` operations of any kind fail as a store answering 503 would.
    pub fn unavailable(&self, n: usize) {
        self.unavailable.store(n, Ordering::SeqCst);
    }

    /// Every `get` waits `delay` before it reads (zero: no delay).
    pub fn slow_gets(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.get_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// How many `get`s have started so far (a test waits for the code under test to reach
    /// its reads).
    #[must_use]
    pub fn gets_started(&self) -> usize {
        self.gets_started.load(Ordering::SeqCst)
    }

    /// How many failures have been injected so far.
    #[must_use]
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }

    /// Takes one from `counter` if it is not zero.
    fn take(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn inject(&self, counter: &AtomicUsize) -> bool {
        let taken = Self::take(counter);
        if taken {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        taken
    }

    fn check(&self, op: &str) -> Result<(), BackendError> {
        if self.inject(&self.unavailable) {
            return Err(injected(op, "503 Service Unavailable"));
        }
        Ok(())
    }

    fn check_write(&self, op: &str) -> Result<(), BackendError> {
        self.check(op)?;
        if self.failing_puts.load(Ordering::SeqCst) == 0 || Self::take(&self.passing_writes) {
            return Ok(());
        }
        if self.inject(&self.failing_puts) {
            return Err(injected(op, "write failed"));
        }
        Ok(())
    }
}

fn injected(op: &str, what: &str) -> BackendError {
    BackendError::Unavailable {
        backend: "fault injector".into(),
        retryable: true,
        message: format!("injected fault: {op} {what}"),
    }
}

/// A [`Backend`] that injects the faults of its [`FaultPlan`] in front of `inner`.
#[derive(Debug)]
pub struct Faulty<B> {
    inner: B,
    plan: Arc<FaultPlan>,
}

impl<B: Backend> Faulty<B> {
    /// Wraps `inner`, steered by `plan`.
    pub fn new(inner: B, plan: Arc<FaultPlan>) -> Self {
        Self { inner, plan }
    }
}

#[async_trait]
impl<B: Backend> Backend for Faulty<B> {
    fn part_len(&self) -> u64 {
        self.inner.part_len()
    }

    async fn put_bytes(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        expected: ContentHash,
    ) -> Result<(), BackendError> {
        self.plan.check_write("put")?;
        self.inner.put_bytes(key, bytes, expected).await
    }

    async fn get(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<Bytes, BackendError> {
        self.plan.gets_started.fetch_add(1, Ordering::SeqCst);
        self.plan.check("get")?;
        let delay = self.plan.get_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.inner.get(key, range).await
    }

    fn list(&self, prefix: Option<&ObjectKey>) -> BoxStream<'_, Result<ObjectInfo, BackendError>> {
        match self.plan.check("list") {
            Ok(()) => self.inner.list(prefix),
            Err(e) => Box::pin(stream::iter([Err(e)])),
        }
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), BackendError> {
        self.plan.check("delete")?;
        self.inner.delete(key).await
    }

    async fn remove_interrupted_puts(&self) -> Result<u64, BackendError> {
        self.plan.check("remove interrupted puts")?;
        self.inner.remove_interrupted_puts().await
    }

    async fn begin_upload(&self, key: &ObjectKey) -> Result<Upload, BackendError> {
        self.plan.check_write("begin upload")?;
        self.inner.begin_upload(key).await
    }

    async fn upload_part(&self, upload: &mut Upload, data: Bytes) -> Result<(), BackendError> {
        self.plan.check_write("upload part")?;
        self.inner.upload_part(upload, data).await
    }

    async fn complete_upload(
        &self,
        upload: &Upload,
        expected: ContentHash,
    ) -> Result<(), BackendError> {
        self.plan.check_write("complete upload")?;
        self.inner.complete_upload(upload, expected).await
    }

    async fn abort_upload(&self, upload: Upload) -> Result<(), BackendError> {
        self.plan.check("abort upload")?;
        self.inner.abort_upload(upload).await
    }

    fn abandon_upload(&self, upload: Upload) {
        self.inner.abandon_upload(upload);
    }
}
