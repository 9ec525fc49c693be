//! In-memory v4 harness (feature `test-util`): a [`MemStore`] that answers server effects,
//! a [`MemClient`] that answers client effects, drivers that follow the canonical loop, and
//! [`run_pair`] connecting both sessions without sockets.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rand_core::{CryptoRngCore, RngCore};

use super::client::{ClientEffect, ClientEvent, ClientSession, OpId};
use super::noise::PublicKey;
use super::repository::{
    GetTarget, MAX_DAMAGED_BATCH, PutTarget, RepoPruneReport, RepoRequest, RepoUsage, SnapshotEntry,
};
use super::server::{
    AuthDecision, RepoAnswer, ResumePoint, ServerEffect, ServerEvent, ServerSession,
};
use super::wire::{ClientAuth, ErrorCode, VersionRecord};
use super::{CloseReason, ContentDigest, Output, Refusal, V4Error};
use crate::names::{ClientId, FileName, NameField};
use crate::repo::{BlobId, PackHeader, PackId, RefChunk, SnapshotEnvelope};

/// A partial upload kept by [`MemStore`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemPartial {
    /// Announced size.
    pub size: u64,
    /// Bytes written so far.
    pub data: Vec<u8>,
    /// Offset of the last checkpoint.
    pub durable: u64,
}

impl MemPartial {
    /// The durable length, as an index into `data`.
    fn durable_len(&self) -> usize {
        usize::try_from(self.durable).unwrap_or(usize::MAX)
    }
}

/// A committed version and its content.
pub type StoredVersion = (VersionRecord, Vec<u8>);

/// Server-side storage in memory.
#[derive(Debug, Default)]
pub struct MemStore {
    /// Registration needs one of `tokens`.
    pub enrollment_required: bool,
    /// Valid single-use tokens.
    pub tokens: Vec<String>,
    /// Registered keys → (id, name).
    pub clients: BTreeMap<PublicKey, (ClientId, Vec<u8>)>,
    /// Committed versions per (client, name).
    pub versions: BTreeMap<(ClientId, Vec<u8>), Vec<StoredVersion>>,
    /// Partial uploads per (client, name).
    pub partials: BTreeMap<(ClientId, Vec<u8>), MemPartial>,
    /// Checkpoint offsets seen, in order.
    pub checkpoints: Vec<u64>,
    /// Number of `FinishUpload` effects performed (commits).
    pub commits: usize,
    /// Repositories per client.
    pub repos: BTreeMap<ClientId, MemRepo>,
    open: OpenState,
    /// The connection [`perform`](Self::perform) serves (see [`switch_to`](Self::switch_to)).
    current: u64,
    /// The open state of the other connections, by number.
    parked: BTreeMap<u64, OpenState>,
    /// Effects left before the power fails ([`power_off_after`](Self::power_off_after)).
    power_left: Option<usize>,
}

/// What one connection has open in the store.
#[derive(Debug, Default)]
struct OpenState {
    /// The upload this connection holds the claim on (the real server refuses a second
    /// connection the same file with `BUSY` until the claim is released).
    upload: Option<(ClientId, Vec<u8>)>,
    version: Option<Vec<u8>>,
    put: Option<(ClientId, PutTarget, Vec<u8>)>,
}

/// One client's repository kept by [`MemStore`]: the keyless checks of the real server
/// (pack hash and header, snapshot ID, every reference stored before a commit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemRepo {
    /// Encoded config.
    pub config: Bytes,
    /// Encoded key objects.
    pub keys: Vec<Bytes>,
    /// Blob index: ID → stored bytes (sealed blob or reference chunk).
    pub blobs: BTreeMap<BlobId, Bytes>,
    /// Stored packs.
    pub packs: BTreeMap<PackId, usize>,
    /// Committed snapshots.
    pub snapshots: BTreeMap<[u8; 32], Bytes>,
    /// Blobs a test marks as lying in damaged packs (what the server's scrub reports).
    pub damaged: BTreeSet<BlobId>,
}

impl MemRepo {
    fn store_pack(&mut self, id: PackId, pack: &[u8]) -> Result<(), Refusal> {
        if PackId::of(pack) != id {
            return Err(Refusal::new(ErrorCode::HASH_MISMATCH, "pack hash differs"));
        }
        let header = PackHeader::parse_pack(pack)
            .map_err(|e| Refusal::new(ErrorCode::BAD_OBJECT, e.to_string()))?;
        for entry in &header.entries {
            let blob = PackHeader::blob(pack, entry).unwrap_or_default();
            self.blobs
                .entry(entry.id)
                .or_insert_with(|| Bytes::copy_from_slice(blob));
        }
        self.packs.insert(id, pack.len());
        Ok(())
    }

    fn commit(&mut self, claimed: [u8; 32], object: Bytes) -> Result<(), Refusal> {
        let bad = |e: crate::repo::RepoError| Refusal::new(ErrorCode::BAD_OBJECT, e.to_string());
        let (envelope, id) = SnapshotEnvelope::decode(&object).map_err(bad)?;
        if id.0 != claimed {
            return Err(Refusal::new(
                ErrorCode::HASH_MISMATCH,
                "snapshot id differs",
            ));
        }
        for ref_id in &envelope.ref_chunks {
            let chunk = self.blobs.get(ref_id).ok_or_else(missing)?;
            let chunk = RefChunk::decode_verified(chunk, ref_id).map_err(bad)?;
            if chunk.ids().iter().any(|id| !self.blobs.contains_key(id)) {
                return Err(missing());
            }
        }
        self.snapshots.insert(claimed, object);
        Ok(())
    }
}

fn missing() -> Refusal {
    Refusal::new(ErrorCode::MISSING_BLOBS, "a referenced blob is not stored")
}

impl MemStore {
    /// Every committed version of every client.
    #[must_use]
    pub fn committed(&self) -> usize {
        self.versions.values().map(Vec::len).sum()
    }

    /// Serves connection `connection` from now on: the current connection's open upload,
    /// restore and put are set aside until it is switched back to. Connection 0 is the one
    /// served at first; a store used by one connection at a time never needs this.
    pub fn switch_to(&mut self, connection: u64) {
        if connection == self.current {
            return;
        }
        let open = self.parked.remove(&connection).unwrap_or_default();
        let previous = std::mem::replace(&mut self.open, open);
        self.parked.insert(self.current, previous);
        self.current = connection;
    }

    /// The current connection ended: what was written becomes durable (the driver's final
    /// checkpoint), as the real server does.
    pub fn end_connection(&mut self) {
        if let Some(key) = self.open.upload.take()
            && let Some(partial) = self.partials.get_mut(&key)
        {
            partial.durable = partial.data.len() as u64;
        }
        self.open.version = None;
    }

    /// Like a crash: every connection ended and non-durable bytes are lost.
    pub fn crash(&mut self) {
        self.restart();
        for partial in self.partials.values_mut() {
            partial.data.truncate(partial.durable_len());
        }
    }

    /// Like a crash that tears writes: every connection ends, and of each partial upload's
    /// bytes after its last checkpoint (never synced) `rng` picks how many reached the disk
    /// anyway (none, all or some) and which 512-byte sectors of those came back as zeros
    /// (allocated, never written). The durable part is untouched, as `fdatasync` promises;
    /// the store truncates the rest away when the upload is resumed, as the real server
    /// does. Returns how many unsynced bytes survived.
    pub fn crash_tearing(&mut self, rng: &mut dyn RngCore) -> u64 {
        const SECTOR: usize = 512;
        self.restart();
        let mut survived = 0;
        for partial in self.partials.values_mut() {
            let durable = partial.durable_len();
            let tail = partial.data.len().saturating_sub(durable);
            let kept = match rng.next_u32() % 3 {
                0 => 0,
                1 => tail,
                _ => usize::try_from(rng.next_u64() % (tail as u64 + 1)).unwrap_or(0),
            };
            partial.data.truncate(durable + kept);
            let torn = partial.data.get_mut(durable..).unwrap_or_default();
            for sector in torn.chunks_mut(SECTOR) {
                if rng.next_u32() % 4 == 0 {
                    sector.fill(0);
                }
            }
            survived += kept as u64;
        }
        survived
    }

    /// Every connection ends and the power is back.
    fn restart(&mut self) {
        self.open = OpenState::default();
        self.parked.clear();
        self.power_left = None;
    }

    /// The power fails after `effects` more effects: from then on [`perform`](Self::perform)
    /// does nothing (the server is gone mid-step, between any two of its storage calls)
    /// until one of the crash functions restarts the store. [`powered_off`](Self::powered_off)
    /// tells the driver.
    pub fn power_off_after(&mut self, effects: usize) {
        self.power_left = Some(effects);
    }

    /// Whether the power failed ([`power_off_after`](Self::power_off_after)).
    #[must_use]
    pub fn powered_off(&self) -> bool {
        self.power_left == Some(0)
    }

    /// Performs one server effect and answers it.
    ///
    /// # Errors
    /// What the session's `handle_*` returns.
    pub fn perform<R: CryptoRngCore>(
        &mut self,
        session: &mut ServerSession<R>,
        effect: ServerEffect,
        now: Instant,
    ) -> Result<(), V4Error> {
        match &mut self.power_left {
            Some(0) => return Ok(()),
            Some(left) => *left -= 1,
            None => {}
        }
        match effect {
            ServerEffect::Authenticate {
                client_key,
                request,
            } => {
                let decision = self.authenticate(client_key, request);
                session.handle_auth(now, decision)
            }
            ServerEffect::OpenUpload {
                client_id,
                name,
                size,
                restart,
            } => {
                let key = (client_id, name.as_bytes().to_vec());
                if self
                    .parked
                    .values()
                    .any(|open| open.upload.as_ref() == Some(&key))
                {
                    return session.handle_upload_opened(
                        now,
                        Err(Refusal::new(
                            ErrorCode::BUSY,
                            "this file is being uploaded on another connection",
                        )),
                    );
                }
                let partial = self.partials.entry(key.clone()).or_default();
                if restart || partial.size != size {
                    *partial = MemPartial {
                        size,
                        ..MemPartial::default()
                    };
                }
                let durable = partial.durable_len();
                partial.data.truncate(durable);
                let mut digest = ContentDigest::new();
                digest.update(&partial.data);
                let offset = partial.durable;
                self.open.upload = Some(key);
                session.handle_upload_opened(now, Ok(ResumePoint { offset, digest }))
            }
            ServerEffect::WriteUpload { data } => {
                if let Some(partial) = self.open_partial() {
                    partial.data.extend_from_slice(&data);
                }
                session.handle_storage(now, Ok(()))
            }
            ServerEffect::Checkpoint { offset } => {
                if let Some(partial) = self.open_partial() {
                    partial.durable = offset;
                }
                self.checkpoints.push(offset);
                session.handle_storage(now, Ok(()))
            }
            ServerEffect::FinishUpload {
                size,
                sha256,
                cksum,
            } => {
                let key = self.open.upload.take().unwrap_or_default();
                let partial = self.partials.remove(&key).unwrap_or_default();
                let versions = self.versions.entry(key.clone()).or_default();
                let version = versions.last().map_or(1, |(r, _)| r.version + 1);
                let name = FileName::validate(NameField::decode(&key.1))
                    .map_err(|_| V4Error::ApiMisuse("bad stored name"))?;
                versions.push((
                    VersionRecord {
                        name,
                        version,
                        size,
                        created_unix_secs: 1_700_000_000 + u64::from(version),
                        cksum,
                        sha256,
                    },
                    partial.data,
                ));
                self.commits += 1;
                session.handle_committed(now, Ok(version))
            }
            ServerEffect::DiscardUpload => {
                if let Some(key) = self.open.upload.take() {
                    self.partials.remove(&key);
                }
                Ok(())
            }
            ServerEffect::ListVersions { client_id } => {
                let records = self
                    .versions
                    .iter()
                    .filter(|((id, _), _)| *id == client_id)
                    .flat_map(|(_, versions)| versions.iter().map(|(r, _)| r.clone()))
                    .collect();
                session.handle_listing(now, Ok(records))
            }
            ServerEffect::OpenVersion {
                client_id,
                name,
                version,
            } => {
                let found = self
                    .versions
                    .get(&(client_id, name.as_bytes().to_vec()))
                    .and_then(|versions| match version {
                        None => versions.last(),
                        Some(v) => versions.iter().find(|(r, _)| r.version == v),
                    })
                    .cloned();
                self.open.version = found.as_ref().map(|(_, data)| data.clone());
                session.handle_version_opened(now, Ok(found.map(|(record, _)| record)))
            }
            ServerEffect::ReadVersion { offset, max } => {
                let data = self.open.version.as_deref().unwrap_or_default();
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(max).min(data.len());
                let piece = Bytes::copy_from_slice(data.get(start..end).unwrap_or_default());
                session.handle_version_data(now, Ok(piece))
            }
            ServerEffect::CloseVersion => {
                self.open.version = None;
                Ok(())
            }
            ServerEffect::Repository { client_id, request } => {
                let answer = self.repository(client_id, request);
                session.handle_repository(now, answer)
            }
            ServerEffect::WritePut { data } => {
                if let Some((_, _, staged)) = &mut self.open.put {
                    staged.extend_from_slice(&data);
                }
                session.handle_storage(now, Ok(()))
            }
            ServerEffect::FinishPut => {
                let Some((client_id, target, staged)) = self.open.put.take() else {
                    return Err(V4Error::ApiMisuse("no put is open"));
                };
                let repo = self.repos.entry(client_id).or_default();
                let stored = match target {
                    PutTarget::Pack(id) => repo.store_pack(id, &staged),
                    PutTarget::Snapshot(id) => repo.commit(id.0, Bytes::from(staged)),
                };
                session.handle_repository(now, stored.map(|()| RepoAnswer::Stored))
            }
            ServerEffect::AbortPut => {
                self.open.put = None;
                Ok(())
            }
        }
    }

    fn repository(
        &mut self,
        client_id: ClientId,
        request: RepoRequest,
    ) -> Result<RepoAnswer, Refusal> {
        let not_found = || Refusal::new(ErrorCode::NOT_FOUND, "no such object");
        if let RepoRequest::Create { config, key } = request {
            if self.repos.contains_key(&client_id) {
                return Err(Refusal::new(ErrorCode::EXISTS, "repository exists"));
            }
            let repo = MemRepo {
                config,
                keys: vec![key],
                ..MemRepo::default()
            };
            self.repos.insert(client_id, repo);
            return Ok(RepoAnswer::Done);
        }
        let Some(repo) = self.repos.get_mut(&client_id) else {
            return match request {
                RepoRequest::Open => Ok(RepoAnswer::State {
                    config: None,
                    keys: Vec::new(),
                }),
                _ => Err(Refusal::new(ErrorCode::NO_REPOSITORY, "no repository")),
            };
        };
        match request {
            RepoRequest::Open => Ok(RepoAnswer::State {
                config: Some(repo.config.clone()),
                keys: repo.keys.clone(),
            }),
            RepoRequest::AddKey { key } => {
                repo.keys.push(key);
                Ok(RepoAnswer::Done)
            }
            RepoRequest::RemoveKey { key } => {
                let Some(index) = repo.keys.iter().position(|stored| *stored == key) else {
                    return Err(not_found());
                };
                repo.keys.remove(index);
                Ok(RepoAnswer::Done)
            }
            RepoRequest::Prune => Ok(RepoAnswer::Pruned(RepoPruneReport {
                snapshots: repo.snapshots.len() as u64,
                ..RepoPruneReport::default()
            })),
            RepoRequest::Have { ids } => Ok(RepoAnswer::Have(
                ids.iter().map(|id| repo.blobs.contains_key(id)).collect(),
            )),
            RepoRequest::Put { target, .. } => {
                let stored = match target {
                    PutTarget::Pack(id) => repo.packs.contains_key(&id),
                    PutTarget::Snapshot(id) => repo.snapshots.contains_key(&id.0),
                };
                if stored {
                    return Ok(RepoAnswer::Stored);
                }
                self.open.put = Some((client_id, target, Vec::new()));
                Ok(RepoAnswer::PutReady)
            }
            RepoRequest::Get { target } => match target {
                GetTarget::Blob(id) => repo.blobs.get(&id).cloned(),
                GetTarget::Snapshot(id) => repo.snapshots.get(&id.0).cloned(),
            }
            .map(RepoAnswer::Object)
            .ok_or_else(not_found),
            RepoRequest::Snapshots => Ok(RepoAnswer::Snapshots(
                repo.snapshots
                    .iter()
                    .map(|(id, object)| SnapshotEntry {
                        id: crate::repo::SnapshotId(*id),
                        size: object.len() as u64,
                        stored_unix_secs: 1_700_000_000,
                    })
                    .collect(),
            )),
            RepoRequest::Forget { id } => repo
                .snapshots
                .remove(&id.0)
                .map(|_| RepoAnswer::Done)
                .ok_or_else(not_found),
            RepoRequest::Damaged { after } => {
                let mut ids: Vec<BlobId> = repo
                    .damaged
                    .iter()
                    .filter(|id| after.is_none_or(|after| id.as_bytes() > after.as_bytes()))
                    .copied()
                    .take(MAX_DAMAGED_BATCH + 1)
                    .collect();
                let more = ids.len() > MAX_DAMAGED_BATCH;
                ids.truncate(MAX_DAMAGED_BATCH);
                Ok(RepoAnswer::Damaged { ids, more })
            }
            RepoRequest::Usage => Ok(RepoAnswer::Usage(RepoUsage {
                stored_bytes: repo.packs.values().map(|&len| len as u64).sum(),
                ..RepoUsage::default()
            })),
            RepoRequest::Create { .. } | RepoRequest::PutEnd => {
                Err(Refusal::new(ErrorCode::PROTOCOL, "not a driver request"))
            }
        }
    }

    fn open_partial(&mut self) -> Option<&mut MemPartial> {
        let key = self.open.upload.as_ref()?;
        self.partials.get_mut(key)
    }

    fn authenticate(&mut self, key: PublicKey, request: ClientAuth) -> AuthDecision {
        if let Some((client_id, name)) = self.clients.get(&key) {
            return AuthDecision::Accepted {
                client_id: *client_id,
                name: NameField::decode(name),
                registered: false,
            };
        }
        match request {
            ClientAuth::Login => AuthDecision::Refused(Refusal::new(
                ErrorCode::UNKNOWN_CLIENT,
                "this key is not registered",
            )),
            ClientAuth::Register { name, token } => {
                if self.enrollment_required {
                    let Some(index) = self.tokens.iter().position(|t| *t == token) else {
                        return AuthDecision::Refused(Refusal::new(
                            ErrorCode::ENROLLMENT_INVALID,
                            "invalid enrollment token",
                        ));
                    };
                    self.tokens.remove(index);
                }
                if self.clients.values().any(|(_, n)| n == name.as_bytes()) {
                    return AuthDecision::Refused(Refusal::new(
                        ErrorCode::NAME_TAKEN,
                        "name taken",
                    ));
                }
                let index = u8::try_from(self.clients.len() + 1).unwrap_or(u8::MAX);
                let client_id = ClientId([index; 16]);
                self.clients
                    .insert(key, (client_id, name.as_bytes().to_vec()));
                AuthDecision::Accepted {
                    client_id,
                    name,
                    registered: true,
                }
            }
        }
    }
}

/// Client-side files in memory.
#[derive(Debug, Default)]
pub struct MemClient {
    /// Source content per upload.
    pub sources: BTreeMap<OpId, Bytes>,
    /// Restores being written.
    pub restoring: BTreeMap<OpId, Vec<u8>>,
    /// Restores made visible.
    pub restored: BTreeMap<OpId, Vec<u8>>,
    /// The key saved by `TrustServerKey`.
    pub trusted: Option<PublicKey>,
    /// Every event, in order.
    pub events: Vec<ClientEvent>,
}

impl MemClient {
    /// Performs one client effect and answers it.
    ///
    /// # Errors
    /// What the session's `handle_*` returns.
    pub fn perform(
        &mut self,
        session: &mut ClientSession,
        effect: ClientEffect,
        now: Instant,
    ) -> Result<(), V4Error> {
        match effect {
            ClientEffect::TrustServerKey { key } => {
                self.trusted = Some(key);
                session.handle_server_key_trusted(now, Ok(()))
            }
            ClientEffect::ReadFile { op, offset, max } => {
                let source = self.sources.get(&op).cloned().unwrap_or_default();
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(source.len());
                let end = start.saturating_add(max).min(source.len());
                session.handle_file_data(now, op, source.slice(start..end))
            }
            ClientEffect::BeginRestore { op, .. } => {
                self.restoring.insert(op, Vec::new());
                session.handle_restore_io(now, op, Ok(()))
            }
            ClientEffect::WriteRestore { op, data } => {
                self.restoring
                    .entry(op)
                    .or_default()
                    .extend_from_slice(&data);
                session.handle_restore_io(now, op, Ok(()))
            }
            ClientEffect::FinishRestore { op } => {
                let data = self.restoring.remove(&op).unwrap_or_default();
                self.restored.insert(op, data);
                session.handle_restore_io(now, op, Ok(()))
            }
            ClientEffect::AbortRestore { op } => {
                self.restoring.remove(&op);
                Ok(())
            }
        }
    }
}

/// What one drive step produced.
#[derive(Debug, Default)]
pub struct Step {
    /// Bytes transmitted, concatenated.
    pub sent: Vec<u8>,
    /// The close request, if the session closed.
    pub close: Option<CloseReason>,
}

/// Runs the server loop over `buf` until it needs more bytes; returns what it sent.
pub fn drive_server<R: CryptoRngCore>(
    session: &mut ServerSession<R>,
    store: &mut MemStore,
    buf: &mut BytesMut,
    events: &mut Vec<ServerEvent>,
    now: Instant,
) -> Step {
    let mut step = Step::default();
    let _ = session.handle_bytes(now, buf);
    loop {
        let mut answered = false;
        while let Some(output) = session.poll_output() {
            match output {
                Output::Transmit(bytes) => step.sent.extend_from_slice(&bytes),
                Output::Effect(effect) => {
                    answered |= effect.needs_answer();
                    let _ = store.perform(session, effect, now);
                }
                Output::Event(event) => events.push(event),
                Output::Close(reason) => step.close = Some(reason),
            }
        }
        if step.close.is_some() || !answered {
            return step;
        }
        let _ = session.handle_bytes(now, buf);
    }
}

/// Runs the client loop over `buf` until it needs more bytes; returns what it sent.
pub fn drive_client(
    session: &mut ClientSession,
    files: &mut MemClient,
    buf: &mut BytesMut,
    now: Instant,
) -> Step {
    let mut step = Step::default();
    if !buf.is_empty() {
        let _ = session.handle_bytes(now, buf);
    }
    loop {
        let mut answered = false;
        while let Some(output) = session.poll_output() {
            match output {
                Output::Transmit(bytes) => step.sent.extend_from_slice(&bytes),
                Output::Effect(effect) => {
                    answered |= effect.needs_answer();
                    let _ = files.perform(session, effect, now);
                }
                Output::Event(event) => files.events.push(event),
                Output::Close(reason) => step.close = Some(reason),
            }
        }
        if step.close.is_some() || !answered {
            return step;
        }
        let _ = session.handle_bytes(now, buf);
    }
}

/// The result of [`run_pair`].
#[derive(Debug, Default)]
pub struct PairOutcome {
    /// Every byte the client sent.
    pub c2s: Vec<u8>,
    /// Every byte the server sent.
    pub s2c: Vec<u8>,
    /// How the client closed.
    pub client_close: Option<CloseReason>,
    /// How the server closed.
    pub server_close: Option<CloseReason>,
    /// Server events.
    pub server_events: Vec<ServerEvent>,
}

/// Connects a client and a server in memory until both closed or nothing moves. Call
/// [`MemStore::end_connection`] (or [`MemStore::crash`]) afterwards when it was cut.
/// `tamper` sees every chunk the client sends (to flip, drop or replay bytes).
pub fn run_pair<R: CryptoRngCore>(
    client: &mut ClientSession,
    files: &mut MemClient,
    server: &mut ServerSession<R>,
    store: &mut MemStore,
    now: Instant,
    mut tamper: impl FnMut(Vec<u8>) -> Vec<u8>,
) -> PairOutcome {
    let mut outcome = PairOutcome::default();
    let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
    for _ in 0..1_000_000 {
        let step = drive_client(client, files, &mut to_client, now);
        outcome.c2s.extend_from_slice(&step.sent);
        let moved_c = !step.sent.is_empty();
        to_server.extend_from_slice(&tamper(step.sent));
        if outcome.client_close.is_none() {
            outcome.client_close = step.close;
        }
        let step = drive_server(
            server,
            store,
            &mut to_server,
            &mut outcome.server_events,
            now,
        );
        outcome.s2c.extend_from_slice(&step.sent);
        let moved_s = !step.sent.is_empty();
        to_client.extend_from_slice(&step.sent);
        if outcome.server_close.is_none() {
            outcome.server_close = step.close;
        }
        if outcome.server_close.is_some() && outcome.client_close.is_none() && !moved_s {
            let step = drive_client(client, files, &mut to_client, now);
            outcome.c2s.extend_from_slice(&step.sent);
            client.handle_eof(now);
            let step2 = drive_client(client, files, &mut to_client, now);
            outcome.client_close = step.close.or(step2.close);
        }
        if outcome.client_close.is_some() && outcome.server_close.is_none() && !moved_c {
            let _ = drive_server(
                server,
                store,
                &mut to_server,
                &mut outcome.server_events,
                now,
            );
            server.handle_eof(now);
            let step = drive_server(
                server,
                store,
                &mut to_server,
                &mut outcome.server_events,
                now,
            );
            outcome.server_close = step.close;
        }
        let done = outcome.client_close.is_some() && outcome.server_close.is_some();
        if done || (!moved_c && !moved_s) {
            break;
        }
    }
    outcome
}
