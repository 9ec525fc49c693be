//! Deterministic simulation of v4 (issue 19 item 3): the core's client and server sessions
//! run over a simulated network against the in-memory store (`v4::testing::MemStore`, which
//! keeps the real server's durability and keyless repository checks), all steered by one
//! seeded scheduler. Each schedule has three users who register (first contact, trusting the
//! server key on first use), upload files (resumable, checkpointed
//! every 4 KiB), build a repository (create, a data pack, a reference pack, a snapshot
//! commit) and read it back (`GET`s of both blobs and the snapshot, queued together so the
//! session keeps them in flight at once). Half the episodes run two connections at once
//! against the one store (each connection's open upload, restore and put kept apart,
//! `MemStore::switch_to`), a third of those two connections of the *same* user (the store
//! refuses the second one a file the first has open with `BUSY`, as the real server's
//! upload claim does); the scheduler delivers bytes in random pieces in both directions of a
//! random connection, cuts connections at any byte, crashes the server between steps or in
//! the middle of one (after any of its storage calls), tearing the unsynced tails of partial
//! uploads (some bytes survive, some sectors come back zeroed; the durable part is kept), and
//! jumps the clock past the idle timeouts. The users reconnect and retry until their work is
//! acknowledged.
//!
//! After every step it checks:
//! 1. every upload the client saw committed is stored with exactly its content — after any
//!    later cut or crash too (no acknowledged byte is lost);
//! 2. every stored version is exactly one of its user's sources (nothing partial or foreign
//!    becomes visible), and the durable part of every partial upload is a prefix of its
//!    source (torn bytes may follow it; a resumed upload starts at the durable offset);
//! 3. every snapshot the store lists has every blob it references stored (the commit rule),
//!    and every repository step the client saw acknowledged is still stored;
//! 4. every object a `GET` returned is the one asked for (a blob opens and verifies under its
//!    keyed ID; the snapshot is byte for byte the committed one), whatever was cut before;
//! 5. a registration the client saw accepted is stored under the id it was told, with its
//!    name, and a retried registration whose answer was lost gets that same id (never a
//!    second account, never "name taken" for its own name).
//!
//! And at the end of a schedule, that every user's work completed (retries make progress).
//!
//! `cargo test -p cyberbackup-core --test v4_simulation` runs [`DEFAULT_SCHEDULES`]
//! schedules; `SIM_SCHEDULES=1000000` runs more, `SIM_SEED=N` replays schedule N alone. A
//! failure names its seed, and the same seed replays the same schedule exactly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod repo_fixture;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cyberbackup_core::names::{ClientId, FileName, NameField};
use cyberbackup_core::repo::{BlobKind, BlobOpener, RefChunk, RepoConfig, SnapshotEnvelope};
use cyberbackup_core::v4::client::{
    ClientConfig, ClientEvent, ClientSession, OpFailure, OpId, RepoCall, RepoResult, UploadSpec,
};
use cyberbackup_core::v4::noise::{Fingerprint, StaticKeypair};
use cyberbackup_core::v4::repository::{GetTarget, PutTarget};
use cyberbackup_core::v4::server::{ServerConfig, ServerEvent, ServerSession};
use cyberbackup_core::v4::testing::{MemClient, MemStore, drive_client, drive_server};
use cyberbackup_core::v4::wire::{ClientAuth, ErrorCode};
use cyberbackup_core::v4::{CloseReason, V4Error};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use repo_fixture::{Fixture, fixture};

/// Schedules one `cargo test` runs (each a few connections of three users).
const DEFAULT_SCHEDULES: u64 = 10_000;
/// Bytes between the server's checkpoints of an upload.
const CHECKPOINT: u64 = 4096;
/// Both sides' idle and response timeout.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Connections a user may need before its work must be done.
const MAX_EPISODES: usize = 400;
/// Scheduler steps one connection may take.
const MAX_STEPS: usize = 4000;
/// Repository steps: create, data pack, reference pack, commit, then the reads.
const WRITES: usize = 4;
/// `GET`s after the commit: both blobs and the snapshot.
const READS: usize = 3;

/// One user: what it wants stored, and what the server acknowledged.
struct User {
    keys: StaticKeypair,
    name: String,
    /// The id the server told it (`None` until a registration's answer arrived).
    id: Option<ClientId>,
    /// The server key it trusted on first use (`None` until it saw the key).
    pin: Option<Fingerprint>,
    files: Vec<(FileName, Bytes)>,
    acked_files: BTreeMap<Vec<u8>, Bytes>,
    /// Repository steps acknowledged, in order: create, data pack, reference pack, commit,
    /// then the [`READS`].
    repo_acked: usize,
}

struct World {
    rng: ChaCha20Rng,
    store: MemStore,
    server_keys: StaticKeypair,
    repo: Fixture,
    users: Vec<User>,
    now: Instant,
    faults: Faults,
    /// Connections opened so far (each has its own number in the store).
    connections: u64,
}

/// One connection of an episode: a user's client session, the server's session for it and
/// the bytes in flight between them.
struct Conn {
    user: usize,
    /// Its number in the store ([`MemStore::switch_to`]).
    number: u64,
    client: ClientSession,
    server: ServerSession<ChaCha20Rng>,
    files: MemClient,
    work: Vec<(OpId, Work)>,
    to_server: BytesMut,
    to_client: BytesMut,
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    events: Vec<ServerEvent>,
    client_closed: bool,
    server_closed: bool,
    /// Client events already recorded.
    seen: usize,
    /// Closed, cut or crashed.
    ended: bool,
}

/// What the scheduler did, for the report at the end of a run.
#[derive(Default, Debug, Clone, Copy)]
struct Faults {
    cuts: u64,
    crashes: u64,
    clock_jumps: u64,
    steps: u64,
    /// Registrations that needed more than one connection.
    registrations_retried: u64,
    /// Episodes with two connections at once.
    concurrent_episodes: u64,
    /// Of those, episodes with two connections of the same user.
    same_user_episodes: u64,
    /// Uploads refused `BUSY` (the same file open on the user's other connection).
    busy_refusals: u64,
    /// Crashes in the middle of a server step (between two of its storage calls).
    mid_step_crashes: u64,
    /// Unsynced bytes that survived a crash (torn writes), zeroed ones included.
    torn_bytes: u64,
}

impl Faults {
    fn add(&mut self, other: Self) {
        self.cuts += other.cuts;
        self.crashes += other.crashes;
        self.clock_jumps += other.clock_jumps;
        self.steps += other.steps;
        self.registrations_retried += other.registrations_retried;
        self.concurrent_episodes += other.concurrent_episodes;
        self.same_user_episodes += other.same_user_episodes;
        self.busy_refusals += other.busy_refusals;
        self.mid_step_crashes += other.mid_step_crashes;
        self.torn_bytes += other.torn_bytes;
    }
}

/// The work of one user still to do in one connection, and its operation IDs.
enum Work {
    File(Vec<u8>, Bytes),
    Repo(usize),
}

fn server_config() -> Arc<ServerConfig> {
    Arc::new(ServerConfig {
        checkpoint_interval: CHECKPOINT,
        idle_timeout: TIMEOUT,
        ..ServerConfig::default()
    })
}

fn client_config() -> Arc<ClientConfig> {
    Arc::new(ClientConfig {
        read_chunk_len: 3000,
        response_timeout: TIMEOUT,
    })
}

fn file_name(text: &str) -> FileName {
    FileName::validate(NameField::new(Bytes::copy_from_slice(text.as_bytes())).unwrap()).unwrap()
}

fn content(rng: &mut ChaCha20Rng, max: u64) -> Bytes {
    let len = usize::try_from(rng.next_u64() % max).unwrap();
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    Bytes::from(data)
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut world = Self {
            server_keys: StaticKeypair::from_private([0xA5; 32]),
            store: MemStore::default(),
            repo: fixture(),
            users: Vec::new(),
            now: Instant::now(),
            faults: Faults::default(),
            connections: 0,
            rng: ChaCha20Rng::seed_from_u64(0),
        };
        for who in 0..3u8 {
            let keys = StaticKeypair::from_private([who + 1; 32]);
            let name = format!("user-{who}");
            let files = (0..1 + rng.next_u32() % 2)
                .map(|n| {
                    (
                        file_name(&format!("file-{n}.bin")),
                        content(&mut rng, 40_000),
                    )
                })
                .collect();
            world.users.push(User {
                keys,
                name,
                id: None,
                pin: None,
                files,
                acked_files: BTreeMap::new(),
                repo_acked: 0,
            });
        }
        world.rng = rng;
        world
    }

    fn server(&mut self) -> ServerSession<ChaCha20Rng> {
        let seed = self.rng.next_u64();
        ServerSession::new(
            server_config(),
            self.server_keys.clone(),
            ChaCha20Rng::seed_from_u64(seed),
            self.now,
        )
    }

    fn done(&self) -> bool {
        self.users.iter().all(|user| {
            user.id.is_some()
                && user.acked_files.len() == user.files.len()
                && user.repo_acked == WRITES + READS
        })
    }

    /// The users of the next episode: one, or (half the time) two users whose connections
    /// run at once — a third of those twice the same user (one device's two connections,
    /// or two devices of one account).
    fn pick_users(&mut self) -> Vec<usize> {
        let n = self.users.len() as u64;
        let first = usize::try_from(self.below(n)).unwrap();
        if self.below(2) == 0 {
            return vec![first];
        }
        vec![first, usize::try_from(self.below(n)).unwrap()]
    }

    /// The server crashes: every connection ends, and each partial upload's unsynced tail
    /// is torn (a random part of it reached the disk, a random few of those bytes as zeros).
    fn crash(&mut self, conns: &mut [Conn]) {
        self.faults.crashes += 1;
        self.faults.torn_bytes += self.store.crash_tearing(&mut self.rng);
        for conn in conns {
            conn.ended = true;
        }
    }

    /// A random number below `n`.
    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n
    }

    fn repo_call(&self, step: usize) -> RepoCall {
        let f = &self.repo;
        match step {
            0 => RepoCall::Create {
                config: f.config.clone(),
                key: Bytes::from_static(b"key object"),
            },
            1 => RepoCall::Put {
                target: PutTarget::Pack(f.data_pack.0),
                object: f.data_pack.1.clone(),
            },
            2 => RepoCall::Put {
                target: PutTarget::Pack(f.ref_pack.0),
                object: f.ref_pack.1.clone(),
            },
            3 => RepoCall::Put {
                target: PutTarget::Snapshot(f.snapshot.0),
                object: f.snapshot.1.clone(),
            },
            4 => RepoCall::Get(GetTarget::Blob(f.blob_ids[0])),
            5 => RepoCall::Get(GetTarget::Blob(f.blob_ids[1])),
            _ => RepoCall::Get(GetTarget::Snapshot(f.snapshot.0)),
        }
    }

    /// A new connection of user `u`, numbered `number` in the store: its remaining work
    /// queued, its first bytes in flight.
    fn connect(&mut self, u: usize, number: u64) -> Conn {
        let seed = self.rng.next_u64();
        let user = &self.users[u];
        // First contact registers; once the server's answer arrived, later connections log
        // in. A registration whose answer was lost is sent again.
        let auth = if user.id.is_some() {
            ClientAuth::Login
        } else {
            ClientAuth::Register {
                name: NameField::new(Bytes::copy_from_slice(user.name.as_bytes())).unwrap(),
                token: String::new(),
            }
        };
        let retrying_registration =
            user.id.is_none() && self.store.clients.contains_key(&user.keys.public());
        if retrying_registration {
            self.faults.registrations_retried += 1;
        }
        let user = &self.users[u];
        let mut client = ClientSession::new(
            client_config(),
            &user.keys,
            user.pin,
            auth,
            &mut ChaCha20Rng::seed_from_u64(seed),
            self.now,
        )
        .unwrap();
        let mut files = MemClient::default();
        let mut work: Vec<(OpId, Work)> = Vec::new();
        for (name, data) in &user.files {
            if user.acked_files.contains_key(name.as_bytes()) {
                continue;
            }
            let op = client.upload(UploadSpec {
                name: name.clone(),
                size: data.len() as u64,
                restart: false,
            });
            files.sources.insert(op, data.clone());
            work.push((op, Work::File(name.as_bytes().to_vec(), data.clone())));
        }
        for step in user.repo_acked..WRITES + READS {
            work.push((client.repository(self.repo_call(step)), Work::Repo(step)));
        }
        client.finish_when_idle();
        let server = self.server();
        let mut to_client = BytesMut::new();
        let first = drive_client(&mut client, &mut files, &mut to_client, self.now);
        Conn {
            user: u,
            number,
            client,
            server,
            files,
            work,
            to_server: BytesMut::new(),
            to_client,
            c2s: first.sent,
            s2c: Vec::new(),
            events: Vec::new(),
            client_closed: false,
            server_closed: false,
            seen: 0,
            ended: false,
        }
    }

    /// One episode: a connection of each of `users` (distinct users) at once, their bytes
    /// delivered in random pieces, in a random direction of a random connection, until each
    /// has closed, is cut, or the server crashes (all of them end) — or the clock jumps past
    /// the timeouts (of all of them).
    fn episode(&mut self, users: &[usize]) -> Result<(), String> {
        if users.len() > 1 {
            self.faults.concurrent_episodes += 1;
            if users[0] == users[1] {
                self.faults.same_user_episodes += 1;
            }
        }
        let mut conns: Vec<Conn> = Vec::with_capacity(users.len());
        for &u in users {
            let number = self.connections;
            self.connections += 1;
            conns.push(self.connect(u, number));
        }
        for _ in 0..MAX_STEPS {
            let live: Vec<usize> = (0..conns.len()).filter(|&i| !conns[i].ended).collect();
            if live.is_empty() {
                break;
            }
            self.faults.steps += 1;
            self.now += Duration::from_millis(1);
            let k = live[usize::try_from(self.below(live.len() as u64)).unwrap()];
            match self.below(1000) {
                0..=3 => {
                    self.faults.cuts += 1;
                    self.store.switch_to(conns[k].number);
                    self.store.end_connection();
                    conns[k].ended = true;
                    continue;
                }
                // Half the crashes come between steps, half within the next server step,
                // after a random number of its storage calls.
                4 if self.below(2) == 0 => {
                    self.crash(&mut conns);
                    break;
                }
                4 => {
                    let effects = usize::try_from(self.below(6)).unwrap();
                    self.store.power_off_after(effects);
                }
                5 => {
                    self.faults.clock_jumps += 1;
                    self.now += TIMEOUT * 2;
                    for &i in &live {
                        conns[i].client.handle_timeout(self.now);
                        conns[i].server.handle_timeout(self.now);
                    }
                }
                pick => {
                    let conn = &mut conns[k];
                    let (queue, buf) = if pick % 2 == 0 {
                        (&mut conn.c2s, &mut conn.to_server)
                    } else {
                        (&mut conn.s2c, &mut conn.to_client)
                    };
                    if !queue.is_empty() {
                        // Half the time all that is in flight, else a random prefix of it.
                        let len = queue.len() as u64;
                        let take = if self.rng.next_u32() % 2 == 0 {
                            queue.len()
                        } else {
                            usize::try_from(1 + self.rng.next_u64() % len).unwrap()
                        };
                        buf.extend_from_slice(&queue[..take]);
                        queue.drain(..take);
                    }
                }
            }
            let conn = &mut conns[k];
            self.store.switch_to(conn.number);
            let step = drive_server(
                &mut conn.server,
                &mut self.store,
                &mut conn.to_server,
                &mut conn.events,
                self.now,
            );
            if self.store.powered_off() {
                // What the server sent before its power failed is lost with it.
                self.faults.mid_step_crashes += 1;
                self.crash(&mut conns);
                break;
            }
            conn.s2c.extend_from_slice(&step.sent);
            conn.server_closed |= step.close.is_some();
            let step = drive_client(
                &mut conn.client,
                &mut conn.files,
                &mut conn.to_client,
                self.now,
            );
            conn.c2s.extend_from_slice(&step.sent);
            if let Some(CloseReason::Error(V4Error::Refused { code, message })) = &step.close {
                // Nothing here is refused for a good reason: a lost answer must not turn a
                // retried registration or a login into a refusal.
                return Err(format!(
                    "{}: the server refused the connection: {message} [{code}]",
                    self.users[conn.user].name
                ));
            }
            conn.client_closed |= step.close.is_some();
            self.take_events(conn)?;
            self.check()?;
            if conn.client_closed && (conn.server_closed || conn.c2s.is_empty()) {
                self.store.end_connection();
                conn.ended = true;
            }
        }
        for conn in &mut conns {
            if !conn.ended {
                self.store.switch_to(conn.number);
                self.store.end_connection();
            }
            self.take_events(conn)?;
        }
        self.check()
    }

    /// Records the connection's client events not yet seen: its acknowledgements, and the
    /// server key it trusted.
    fn take_events(&mut self, conn: &mut Conn) -> Result<(), String> {
        conn.seen = self.record_acks(
            conn.user,
            &conn.files.events[conn.seen..],
            &conn.work,
            conn.seen,
        )?;
        self.remember_trust(conn.user, &conn.files);
        Ok(())
    }

    /// Trust on first use: the server key the client saw is pinned for its later
    /// connections (as the real client saves it in its identity file).
    fn remember_trust(&mut self, u: usize, files: &MemClient) {
        let user = &mut self.users[u];
        if user.pin.is_none() {
            user.pin = files.trusted.map(|key| key.fingerprint());
        }
    }

    /// Records what the client saw acknowledged in `events` (the connection's events from
    /// index `seen` on); returns the index after them. A `GET` answer must be the object
    /// asked for.
    fn record_acks(
        &mut self,
        u: usize,
        events: &[ClientEvent],
        work: &[(OpId, Work)],
        seen: usize,
    ) -> Result<usize, String> {
        let user = &mut self.users[u];
        for event in events {
            if let ClientEvent::Authenticated { client_id, .. } = event {
                match user.id {
                    None => user.id = Some(*client_id),
                    Some(id) if id == *client_id => {}
                    Some(id) => {
                        return Err(format!("{}: told id {client_id:?} after {id:?}", user.name));
                    }
                }
                continue;
            }
            if let ClientEvent::OpFailed {
                failure: OpFailure::Refused { code, .. },
                ..
            } = event
            {
                if *code == ErrorCode::NAME_TAKEN {
                    return Err(format!("{}: its own name was refused as taken", user.name));
                }
                if *code == ErrorCode::BUSY {
                    self.faults.busy_refusals += 1;
                }
            }
            let op = match event {
                ClientEvent::UploadCommitted { op, .. }
                | ClientEvent::RepoDone { op, .. }
                | ClientEvent::OpFailed { op, .. } => *op,
                _ => continue,
            };
            match (work.iter().find(|(o, _)| *o == op).map(|(_, w)| w), event) {
                (Some(Work::File(name, data)), ClientEvent::UploadCommitted { .. }) => {
                    user.acked_files.insert(name.clone(), data.clone());
                }
                (Some(Work::Repo(step)), _) if *step == user.repo_acked => {
                    let acked = match event {
                        // An earlier connection created it without seeing the answer.
                        ClientEvent::OpFailed {
                            failure: OpFailure::Refused { code, .. },
                            ..
                        } => *step == 0 && *code == ErrorCode::EXISTS,
                        ClientEvent::RepoDone {
                            result: RepoResult::Done | RepoResult::Stored,
                            ..
                        } => *step < WRITES,
                        ClientEvent::RepoDone {
                            result: RepoResult::Object(object),
                            ..
                        } if *step >= WRITES => {
                            if !read_is_right(&self.repo, *step, object) {
                                return Err(format!(
                                    "{}: GET {step} returned the wrong object",
                                    user.name
                                ));
                            }
                            true
                        }
                        _ => false,
                    };
                    if acked {
                        user.repo_acked += 1;
                    }
                }
                _ => {}
            }
        }
        Ok(seen + events.len())
    }

    /// The invariants of the module docs.
    fn check(&self) -> Result<(), String> {
        for user in &self.users {
            let registered = self.store.clients.get(&user.keys.public());
            let Some((id, stored_name)) = registered else {
                if user.id.is_some() {
                    return Err(format!(
                        "{}: its acknowledged registration is lost",
                        user.name
                    ));
                }
                continue;
            };
            let id = *id;
            if user.id.is_some_and(|seen| seen != id) || stored_name != user.name.as_bytes() {
                return Err(format!(
                    "{}: registered as {id:?} / {:?}, told {:?}",
                    user.name,
                    String::from_utf8_lossy(stored_name),
                    user.id
                ));
            }
            for (name, data) in &user.acked_files {
                let stored = self.store.versions.get(&(id, name.clone()));
                if !stored.is_some_and(|versions| versions.iter().any(|(_, c)| c == data)) {
                    return Err(format!(
                        "{}: acknowledged upload {} is not stored",
                        user.name,
                        String::from_utf8_lossy(name)
                    ));
                }
            }
            let source = |name: &[u8]| {
                user.files
                    .iter()
                    .find(|(n, _)| n.as_bytes() == name)
                    .map(|(_, data)| data)
            };
            for ((client, name), versions) in &self.store.versions {
                if *client != id {
                    continue;
                }
                let Some(data) = source(name) else {
                    return Err(format!("{}: a version of an unknown file", user.name));
                };
                if versions.iter().any(|(_, c)| c != data) {
                    return Err(format!(
                        "{}: a stored version differs from its source",
                        user.name
                    ));
                }
            }
            for ((client, name), partial) in &self.store.partials {
                if *client != id {
                    continue;
                }
                // Past the last checkpoint, a crash may have left torn bytes: only the
                // durable part is promised (a resumed upload starts after it).
                let data = source(name).ok_or("a partial of an unknown file")?;
                let durable = usize::try_from(partial.durable).unwrap();
                if partial.durable > partial.data.len() as u64
                    || !data.starts_with(&partial.data[..durable])
                    || partial.size != data.len() as u64
                {
                    return Err(format!(
                        "{}: a partial upload's durable part is not a prefix",
                        user.name
                    ));
                }
            }
            let repo = self.store.repos.get(&id);
            let f = &self.repo;
            let acked_stored = [
                repo.is_some(),
                repo.is_some_and(|r| r.packs.contains_key(&f.data_pack.0)),
                repo.is_some_and(|r| r.packs.contains_key(&f.ref_pack.0)),
                repo.is_some_and(|r| r.snapshots.contains_key(&f.snapshot.0.0)),
            ];
            if let Some(lost) = acked_stored[..user.repo_acked.min(WRITES)]
                .iter()
                .position(|ok| !ok)
            {
                return Err(format!(
                    "{}: acknowledged repository step {lost} is lost",
                    user.name
                ));
            }
            for snapshot in repo.map(|r| r.snapshots.values()).into_iter().flatten() {
                let repo = repo.unwrap();
                let (envelope, _) =
                    SnapshotEnvelope::decode(snapshot).map_err(|e| e.to_string())?;
                for chunk_id in &envelope.ref_chunks {
                    let chunk = repo
                        .blobs
                        .get(chunk_id)
                        .ok_or("a listed snapshot's reference chunk is not stored")?;
                    let chunk =
                        RefChunk::decode_verified(chunk, chunk_id).map_err(|e| e.to_string())?;
                    if chunk.ids().iter().any(|id| !repo.blobs.contains_key(id)) {
                        return Err("a listed snapshot references a blob not stored".into());
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `object`, the answer to read `step`, is what was asked for.
fn read_is_right(f: &Fixture, step: usize, object: &Bytes) -> bool {
    match step {
        4 | 5 => BlobOpener::new(&f.keys, &RepoConfig::new([1; 16]))
            .and_then(|mut opener| opener.open(BlobKind::Data, &f.blob_ids[step - 4], object))
            .is_ok(),
        _ => *object == f.snapshot.1,
    }
}

/// Runs schedule `seed` to its end; `Err` names the broken invariant.
fn run_schedule(seed: u64) -> Result<Faults, String> {
    let mut world = World::new(seed);
    for _ in 0..MAX_EPISODES {
        if world.done() {
            return Ok(world.faults);
        }
        let users = world.pick_users();
        world.episode(&users)?;
    }
    Err(format!(
        "work left after {MAX_EPISODES} connections: {:?}",
        world
            .users
            .iter()
            .map(|u| (u.acked_files.len(), u.files.len(), u.repo_acked))
            .collect::<Vec<_>>()
    ))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().expect("a number"))
}

#[test]
fn seeded_schedules_with_cuts_crashes_and_clock_jumps_keep_every_promise() {
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("SIM_SCHEDULES").unwrap_or(DEFAULT_SCHEDULES)).collect(),
    };
    // Schedules are independent: one thread per core, each a share of the seeds.
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let shares: Vec<&[u64]> = seeds.chunks(seeds.len().div_ceil(threads).max(1)).collect();
    let totals: Vec<Faults> = std::thread::scope(|scope| {
        let runs: Vec<_> = shares
            .iter()
            .map(|share| {
                scope.spawn(move || {
                    let mut total = Faults::default();
                    for seed in *share {
                        let faults = run_schedule(*seed).unwrap_or_else(|broken| {
                            panic!("schedule {seed} (replay: SIM_SEED={seed}): {broken}")
                        });
                        total.add(faults);
                    }
                    total
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    let mut total = Faults::default();
    for share in totals {
        total.add(share);
    }
    eprintln!("{} schedules: {total:?}", seeds.len());
    assert!(
        seeds.len() < 100 || (total.cuts > 0 && total.crashes > 0 && total.clock_jumps > 0),
        "the scheduler injected no faults: {total:?}"
    );
}

/// The same seed gives the same schedule: the store ends in the same state.
#[test]
fn a_seed_replays_exactly() {
    let end = |seed| {
        let mut world = World::new(seed);
        while !world.done() {
            let users = world.pick_users();
            world.episode(&users).unwrap();
        }
        (
            world.faults.steps,
            world.store.committed(),
            world.store.checkpoints.clone(),
        )
    };
    assert_eq!(end(42), end(42));
}
