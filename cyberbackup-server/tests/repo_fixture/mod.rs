//! Shared by the repository store and prune tests: a store on a fresh data directory (real
//! catalog, SQLite or PostgreSQL; real local backend) and a client-side repository built with
//! the core's own writers under a seeded RNG. [`on_both_engines!`] runs a scenario on each.
#![allow(
    dead_code,
    unused_macros,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cyberbackup_core::names::ClientId;
use cyberbackup_core::repo::{
    BlobId, BlobKind, BlobSealer, DeviceKey, KeyObject, MasterKey, PackId, PackWriter,
    RefListBuilder, RepoConfig, RepoKeys, SealedSnapshot, Snapshot, SnapshotEnvelope, Timestamp,
};
use cyberbackup_server::backend::faulty::{FaultPlan, Faulty};
use cyberbackup_server::backend::local::{LocalBackend, LocalConfig};
use cyberbackup_server::backend::{Backend, ObjectKey};
use cyberbackup_server::catalog::{Catalog, CatalogLocation};
use cyberbackup_server::repository::{ObjectClass, PutStart, RepoStore, RepoStoreError};
use cyberbackup_server::scrub::{ScrubStatus, Scrubber};
use cyberbackup_server::storage::Storage;
use futures_util::StreamExt;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

#[path = "../postgres_server/mod.rs"]
pub mod postgres_server;

/// Runs each scenario (`async fn name(fx: Fixture)`) as two tests, `on_sqlite::name` and
/// `on_postgres::name`, each on a fresh fixture (the second skips when PostgreSQL is not
/// installed; see [`postgres_server`]).
macro_rules! on_both_engines {
    ($($scenario:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(crate::repo_fixture::Fixture::new().await).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let Some(fx) = crate::repo_fixture::Fixture::on_postgres().await else {
                        return;
                    };
                    super::$scenario(fx).await;
                }
            )*
        }
    };
}

pub const ALICE: ClientId = ClientId([0xa1; 16]);
pub const BOB: ClientId = ClientId([0xb0; 16]);
pub const NOBODY: ClientId = ClientId([0x0e; 16]);
/// Plaintext that must never reach the server's disk.
pub const MARKER: &[u8] = b"PLAINTEXT-MARKER-7f3a9c-file-content";
pub const HOST_MARKER: &[u8] = b"HOSTNAME-MARKER-51d2e0";

/// A scrubber over the fixture's store, with its own catalog handle and legacy storage.
pub async fn scrubber(fx: &Fixture) -> (Scrubber, Catalog) {
    let catalog = Catalog::open_at(fx.catalog.clone()).await.unwrap();
    let storage = Storage::open(fx.data()).unwrap();
    let scrubber = Scrubber::new(
        catalog.clone(),
        fx.store.clone(),
        storage,
        Arc::new(ScrubStatus::default()),
    );
    (scrubber, catalog)
}

/// A store on a fresh data directory, recovered once (as the server's start-up does).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: RepoStore,
    pub backend: Arc<LocalBackend>,
    /// The store's catalog.
    pub catalog: CatalogLocation,
    /// The PostgreSQL server of that catalog, if it is one (stopped with the fixture).
    postgres: Option<postgres_server::PgServer>,
}

impl Fixture {
    /// On a SQLite catalog in the data directory.
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let catalog = CatalogLocation::Sqlite(dir.path().join("data").join("defensive.db"));
        Self::on(dir, catalog, None).await
    }

    /// On a PostgreSQL catalog, in a server of its own; `None` when PostgreSQL is not
    /// installed (see [`postgres_server::PgServer::start_or_skip`]).
    pub async fn on_postgres() -> Option<Self> {
        let server = postgres_server::PgServer::start_or_skip()?;
        let catalog = server.database();
        Some(Self::on(tempfile::tempdir().unwrap(), catalog, Some(server)).await)
    }

    async fn on(
        dir: tempfile::TempDir,
        catalog: CatalogLocation,
        postgres: Option<postgres_server::PgServer>,
    ) -> Self {
        let (store, backend) = open_at(dir.path(), &catalog).await;
        store.recover().await.unwrap();
        Self {
            dir,
            store,
            backend,
            catalog,
            postgres,
        }
    }

    /// Another store on the same data directory and catalog (a restarted server's).
    pub async fn reopen(&self) -> RepoStore {
        open_at(self.dir.path(), &self.catalog).await.0
    }

    /// A fixture whose store reaches its backend through a [`Faulty`] steered by `plan`.
    pub async fn with_faults(plan: Arc<FaultPlan>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let catalog = Catalog::open(data.join("defensive.db")).await.unwrap();
        let backend =
            Arc::new(LocalBackend::open(LocalConfig::new(data.join("repository"))).unwrap());
        let faulty = Faulty::new(Arc::clone(&backend), plan);
        let store = RepoStore::new(
            Arc::new(faulty),
            catalog,
            data.join("repo-staging"),
            64 << 20,
        );
        store.recover().await.unwrap();
        let catalog = CatalogLocation::Sqlite(data.join("defensive.db"));
        Self {
            dir,
            store,
            backend,
            catalog,
            postgres: None,
        }
    }

    /// Every file that holds the catalog: SQLite's database, WAL and shared memory in the
    /// data directory, or the PostgreSQL server's whole data directory (tables and WAL).
    pub fn catalog_files(&self) -> Vec<PathBuf> {
        match &self.postgres {
            Some(server) => walk(&server.data_dir()),
            None => walk(&self.data())
                .into_iter()
                .filter(|f| {
                    f.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("defensive.db"))
                })
                .collect(),
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn staging(&self) -> PathBuf {
        self.data().join("repo-staging")
    }

    /// Where the local backend keeps one of Alice's packs.
    pub fn backend_path(&self, pack: &PackId) -> PathBuf {
        self.data()
            .join("repository")
            .join(pack_key(ALICE, pack).to_string())
    }

    /// Every backend key, sorted.
    pub async fn objects(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .backend
            .list(None)
            .map(|item| item.unwrap().key.to_string())
            .collect()
            .await;
        keys.sort();
        keys
    }
}

/// A store on the data directory under `root` with its catalog there (SQLite).
pub async fn open(root: &Path) -> (RepoStore, Arc<LocalBackend>) {
    open_at(
        root,
        &CatalogLocation::Sqlite(root.join("data").join("defensive.db")),
    )
    .await
}

/// A store on the data directory under `root` with its catalog at `catalog`.
pub async fn open_at(root: &Path, catalog: &CatalogLocation) -> (RepoStore, Arc<LocalBackend>) {
    let data = root.join("data");
    let catalog = Catalog::open_at(catalog.clone()).await.unwrap();
    let backend = Arc::new(LocalBackend::open(LocalConfig::new(data.join("repository"))).unwrap());
    let store = RepoStore::new(
        Arc::clone(&backend) as Arc<dyn Backend>,
        catalog,
        data.join("repo-staging"),
        64 << 20,
    );
    (store, backend)
}

/// A client-side repository: keys, config, a key object, and the core's writers.
pub struct Repo {
    pub keys: RepoKeys,
    pub config: Bytes,
    pub key: Bytes,
    pub sealer: BlobSealer,
    pub rng: ChaCha20Rng,
}

impl Repo {
    pub fn new(seed: u8) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(u64::from(seed));
        let master = MasterKey::generate(&mut rng);
        let keys = master.derive();
        let config = RepoConfig::new([seed; 16]);
        let encoded = config.encode(&keys).unwrap();
        let device = DeviceKey::generate(&mut rng);
        let key = KeyObject::wrap_with_device_key(&master, &device, b"laptop", &mut rng).unwrap();
        Self {
            sealer: BlobSealer::new(&keys, &config).unwrap(),
            keys,
            config: encoded.into(),
            key: key.encode().into(),
            rng,
        }
    }

    pub fn another_key(&mut self) -> Bytes {
        let master = MasterKey::generate(&mut self.rng);
        let device = DeviceKey::generate(&mut self.rng);
        KeyObject::wrap_with_device_key(&master, &device, b"other", &mut self.rng)
            .unwrap()
            .encode()
            .into()
    }

    /// A pack of sealed data blobs: its ID, bytes, and the blobs' IDs and sealed bytes.
    pub fn data_pack(&mut self, plaintexts: &[&[u8]]) -> (PackId, Vec<u8>, Vec<(BlobId, Bytes)>) {
        let mut writer = PackWriter::new(1 << 20);
        let mut bytes = Vec::new();
        let mut blobs = Vec::new();
        for plain in plaintexts {
            let id = self.sealer.id(plain);
            let sealed = self
                .sealer
                .seal(BlobKind::Data, id, plain, &mut self.rng)
                .unwrap();
            bytes.extend_from_slice(&writer.push_sealed(&sealed).unwrap());
            blobs.push((id, sealed.bytes));
        }
        let finished = writer.finish();
        bytes.extend_from_slice(&finished.tail);
        assert_eq!(PackId::of(&bytes), finished.id);
        (finished.id, bytes, blobs)
    }

    /// A pack of the reference chunks listing `ids`: its ID, bytes and the chunks' IDs.
    pub fn ref_pack(&mut self, ids: &[BlobId]) -> (PackId, Vec<u8>, Vec<BlobId>) {
        let mut sorted = ids.to_vec();
        sorted.sort();
        sorted.dedup();
        let mut builder = RefListBuilder::new();
        let mut chunks = Vec::new();
        for id in sorted {
            chunks.extend(builder.push(id).unwrap());
        }
        chunks.extend(builder.finish());
        let mut writer = PackWriter::new(1 << 20);
        let mut bytes = Vec::new();
        for chunk in &chunks {
            bytes.extend_from_slice(&writer.push_ref_chunk(chunk).unwrap());
        }
        let finished = writer.finish();
        bytes.extend_from_slice(&finished.tail);
        (finished.id, bytes, chunks.iter().map(|c| c.id()).collect())
    }

    /// A sealed snapshot whose envelope names `ref_chunks`.
    pub fn snapshot(&mut self, ref_chunks: Vec<BlobId>, secs: i64) -> SealedSnapshot {
        self.snapshot_of(ref_chunks, secs, b"/home/alice/secret-project")
    }

    /// A sealed snapshot of `path` whose envelope names `ref_chunks`.
    pub fn snapshot_of(
        &mut self,
        ref_chunks: Vec<BlobId>,
        secs: i64,
        path: &[u8],
    ) -> SealedSnapshot {
        let time = Timestamp { secs, nanos: 5 };
        let body = Snapshot {
            time,
            host: HOST_MARKER.to_vec(),
            user: b"alice".to_vec(),
            paths: vec![path.to_vec()],
            ..Snapshot::default()
        };
        let envelope = SnapshotEnvelope {
            time,
            total_bytes: 100,
            blob_count: 2,
            group: body.group(&self.keys),
            ref_chunks,
        };
        body.seal(&envelope, &self.keys, &mut self.rng).unwrap()
    }
}

/// Sends `bytes` as one put in uneven pieces, the way a connection would.
pub async fn put(
    store: &RepoStore,
    client: ClientId,
    class: ObjectClass,
    id: [u8; 32],
    bytes: &[u8],
) -> Result<(), RepoStoreError> {
    let start = store
        .begin_put(client, class, id, bytes.len() as u64)
        .await?;
    let PutStart::Receiving(mut staged) = start else {
        return Ok(());
    };
    for piece in bytes.chunks(1000) {
        staged.write(Bytes::copy_from_slice(piece)).await?;
    }
    store.finish_put(staged).await
}

pub async fn put_pack(store: &RepoStore, client: ClientId, id: PackId, bytes: &[u8]) {
    put(store, client, ObjectClass::Pack, id.0, bytes)
        .await
        .unwrap();
}

pub async fn commit(
    store: &RepoStore,
    client: ClientId,
    snapshot: &SealedSnapshot,
) -> Result<(), RepoStoreError> {
    put(
        store,
        client,
        ObjectClass::Snapshot,
        snapshot.id.0,
        &snapshot.bytes,
    )
    .await
}

pub async fn create(fx: &Fixture, client: ClientId, repo: &Repo) {
    fx.store
        .create(client, repo.config.clone(), repo.key.clone())
        .await
        .unwrap();
}

/// Every file under `root` (relative), hidden ones included.
/// Every file under `root`, recursively.
fn walk(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_file())
        .map(walkdir::DirEntry::into_path)
        .collect()
}

pub fn files_under(root: &Path) -> Vec<String> {
    let mut files: Vec<String> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(root).unwrap().display().to_string())
        .collect();
    files.sort();
    files
}

pub fn pack_key(client: ClientId, pack: &PackId) -> ObjectKey {
    let hex = pack.to_hex();
    ObjectKey::new(format!(
        "{}/packs/{}/{hex}",
        hex::encode(client.0),
        &hex[..2]
    ))
    .unwrap()
}

pub fn snapshot_key(client: ClientId, snapshot: &SealedSnapshot) -> ObjectKey {
    ObjectKey::new(format!(
        "{}/snapshots/{}",
        hex::encode(client.0),
        snapshot.id.to_hex()
    ))
    .unwrap()
}
