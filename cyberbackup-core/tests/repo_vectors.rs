#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Committed test vectors of the repository format: a fixed master key, a seeded RNG and a
//! tiny tree → the exact config, key objects, chunks, blob IDs, sealed blobs, trees,
//! reference chunk, pack and snapshot (`tests/vectors/repo/tiny.txt`, one `name: hex` line
//! each). The test rebuilds everything and compares it byte for byte with the committed
//! file, then opens the committed bytes independently.
//!
//! Regenerate (only after a deliberate format change, which also needs a new format
//! version): `CYBERBACKUP_UPDATE_VECTORS=1 cargo test -p cyberbackup-core --test repo_vectors`.

use std::fmt::Write as _;
use std::path::PathBuf;

use cyberbackup_core::repo::{
    BlobClass, BlobKind, BlobOpener, BlobSealer, Chunker, ChunkerParams, DeviceKey, EntryKind,
    KdfParams, KeyObject, MasterKey, Metadata, PackHeader, PackId, PackWriter, RefListBuilder,
    RepoConfig, Snapshot, SnapshotEnvelope, SnapshotStats, Timestamp, Tree, TreeEntry,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

const MASTER: [u8; 32] = [0x11; 32];
const DEVICE: [u8; 32] = [0x22; 32];
const PASSPHRASE: &[u8] = b"correct horse battery staple";
/// Tiny Argon2 parameters: the vector checks the format, not the cost.
const KDF: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};
const TIME: Timestamp = Timestamp {
    secs: 1_764_633_600,
    nanos: 123_456_789,
};

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/repo/tiny.txt")
}

fn config() -> RepoConfig {
    RepoConfig {
        repo_id: *b"cyberbackup-vect",
        chunker: ChunkerParams {
            min_bytes: 256,
            avg_bytes: 1024,
            max_bytes: 4096,
            normalization: 1,
        },
        compression_level: 3,
        pack_target_bytes: 1 << 20,
    }
}

/// Deterministic file content: 6000 bytes of a counter mix (so the chunker cuts it several
/// times) and a short compressible text.
fn files() -> (Vec<u8>, Vec<u8>) {
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    let binary = (0..6000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[3]
        })
        .collect();
    let text = b"hello, repository\n".repeat(20);
    (binary, text)
}

fn build() -> Vec<(String, Vec<u8>)> {
    let master = MasterKey::from_bytes(MASTER);
    let keys = master.derive();
    let config = config();
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    out.push(("config".into(), config.encode(&keys).unwrap()));
    let device = DeviceKey::from_bytes(DEVICE);
    out.push((
        "key_device".into(),
        KeyObject::wrap_with_device_key(&master, &device, b"laptop", &mut rng)
            .unwrap()
            .encode(),
    ));
    out.push((
        "key_passphrase".into(),
        KeyObject::wrap_with_passphrase(&master, PASSPHRASE, KDF, b"recovery", &mut rng)
            .unwrap()
            .encode(),
    ));

    let mut chunker = Chunker::new(&config.chunker, &keys).unwrap();
    let mut sealer = BlobSealer::new(&keys, &config).unwrap();
    let mut pack = PackWriter::new(config.pack_target_bytes);
    let mut pack_bytes = Vec::new();
    let mut all_ids = Vec::new();
    let (binary, text) = files();
    let mut file_entry =
        |name: &[u8], content: &[u8], out: &mut Vec<(String, Vec<u8>)>, rng: &mut ChaCha20Rng| {
            let mut ids = Vec::new();
            let mut rest = content;
            let mut chunks = Vec::new();
            loop {
                let taken = chunker.handle_bytes(rest);
                rest = &rest[taken..];
                while let Some(c) = chunker.poll_chunk() {
                    chunks.push(c);
                }
                if rest.is_empty() {
                    break;
                }
            }
            chunker.handle_eof();
            while let Some(c) = chunker.poll_chunk() {
                chunks.push(c);
            }
            let label = String::from_utf8_lossy(name).replace('.', "_");
            for (i, chunk) in chunks.iter().enumerate() {
                let id = sealer.id(chunk);
                let sealed = sealer.seal(BlobKind::Data, id, chunk, rng).unwrap();
                out.push((
                    format!("{label}_chunk{i}_len"),
                    u32::try_from(chunk.len()).unwrap().to_le_bytes().to_vec(),
                ));
                out.push((format!("{label}_chunk{i}_id"), id.0.to_vec()));
                out.push((format!("{label}_chunk{i}_sealed"), sealed.bytes.to_vec()));
                pack_bytes.extend_from_slice(&pack.push_sealed(&sealed).unwrap());
                ids.push(id);
                all_ids.push(id);
            }
            TreeEntry {
                name: name.to_vec(),
                kind: EntryKind::File { content: ids },
                meta: Metadata {
                    mode: 0o100_644,
                    uid: 1000,
                    gid: 1000,
                    user: b"alice".to_vec(),
                    group: b"staff".to_vec(),
                    mtime: TIME,
                    ctime: TIME,
                    size: content.len() as u64,
                    ..Metadata::default()
                },
            }
        };
    let binary_entry = file_entry(b"data.bin", &binary, &mut out, &mut rng);
    let text_entry = file_entry(b"hello.txt", &text, &mut out, &mut rng);
    let dir_meta = Metadata {
        mode: 0o040_755,
        uid: 1000,
        gid: 1000,
        mtime: TIME,
        ctime: TIME,
        ..Metadata::default()
    };
    let subtree = Tree::new(vec![text_entry]).unwrap();
    let link = TreeEntry {
        name: b"link".to_vec(),
        kind: EntryKind::Symlink {
            target: b"docs/hello.txt".to_vec(),
        },
        meta: Metadata {
            mode: 0o120_777,
            mtime: TIME,
            ctime: TIME,
            ..Metadata::default()
        },
    };
    let mut tree_blob =
        |tree: &Tree, name: &str, out: &mut Vec<(String, Vec<u8>)>, rng: &mut ChaCha20Rng| {
            let plain = tree.encode().unwrap();
            let id = sealer.id(&plain);
            let sealed = sealer.seal(BlobKind::Tree, id, &plain, rng).unwrap();
            out.push((format!("{name}_plain"), plain));
            out.push((format!("{name}_id"), id.0.to_vec()));
            out.push((format!("{name}_sealed"), sealed.bytes.to_vec()));
            pack_bytes.extend_from_slice(&pack.push_sealed(&sealed).unwrap());
            all_ids.push(id);
            id
        };
    let docs_id = tree_blob(&subtree, "tree_docs", &mut out, &mut rng);
    let root = Tree::new(vec![
        binary_entry,
        TreeEntry {
            name: b"docs".to_vec(),
            kind: EntryKind::Dir { subtree: docs_id },
            meta: dir_meta,
        },
        link,
    ])
    .unwrap();
    let root_id = tree_blob(&root, "tree_root", &mut out, &mut rng);

    all_ids.sort();
    all_ids.dedup();
    let mut builder = RefListBuilder::new();
    let mut ref_chunks: Vec<_> = all_ids
        .iter()
        .filter_map(|id| builder.push(*id).unwrap())
        .collect();
    ref_chunks.extend(builder.finish());
    let mut ref_ids = Vec::new();
    for (i, chunk) in ref_chunks.iter().enumerate() {
        out.push((format!("ref_chunk{i}"), chunk.encode()));
        pack_bytes.extend_from_slice(&pack.push_ref_chunk(chunk).unwrap());
        ref_ids.push(chunk.id());
    }
    let finished = pack.finish();
    pack_bytes.extend_from_slice(&finished.tail);
    out.push(("pack".into(), pack_bytes));
    out.push(("pack_id".into(), finished.id.0.to_vec()));

    let snapshot = Snapshot {
        root: root_id,
        time: TIME,
        host: b"vector-host".to_vec(),
        user: b"alice".to_vec(),
        paths: vec![b"/home/alice".to_vec()],
        tags: vec![b"vectors".to_vec()],
        parent: None,
        stats: SnapshotStats {
            files: 2,
            dirs: 2,
            bytes: (binary.len() + text.len()) as u64,
            added_bytes: 0,
        },
    };
    let envelope = SnapshotEnvelope {
        time: TIME,
        total_bytes: snapshot.stats.bytes,
        blob_count: all_ids.len() as u64,
        group: snapshot.group(&keys),
        ref_chunks: ref_ids,
    };
    let sealed = snapshot.seal(&envelope, &keys, &mut rng).unwrap();
    out.push(("snapshot".into(), sealed.bytes));
    out.push(("snapshot_id".into(), sealed.id.0.to_vec()));
    out
}

fn render(vectors: &[(String, Vec<u8>)]) -> String {
    let mut text = String::from(
        "# Repository format vectors; see tests/repo_vectors.rs (do not edit by hand)\n",
    );
    for (name, bytes) in vectors {
        writeln!(text, "{name}: {}", hex::encode(bytes)).unwrap();
    }
    text
}

fn committed() -> Vec<(String, Vec<u8>)> {
    let text =
        std::fs::read_to_string(vectors_path()).expect("tests/vectors/repo/tiny.txt is committed");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line.split_once(": ").unwrap();
            (name.to_string(), hex::decode(value).unwrap())
        })
        .collect()
}

fn get<'v>(vectors: &'v [(String, Vec<u8>)], name: &str) -> &'v [u8] {
    &vectors
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("vector {name}"))
        .1
}

#[test]
fn the_tiny_tree_reproduces_the_committed_bytes() {
    let built = render(&build());
    if std::env::var_os("CYBERBACKUP_UPDATE_VECTORS").is_some() {
        std::fs::write(vectors_path(), &built).unwrap();
    }
    let committed = std::fs::read_to_string(vectors_path()).unwrap();
    for (built_line, committed_line) in built.lines().zip(committed.lines()) {
        assert_eq!(built_line, committed_line);
    }
    assert_eq!(built.lines().count(), committed.lines().count());
}

#[test]
fn the_committed_objects_open_with_the_fixed_keys() {
    let v = committed();
    let master = MasterKey::from_bytes(MASTER);
    let keys = master.derive();
    assert_eq!(
        RepoConfig::decode(get(&v, "config"), &keys).unwrap(),
        config()
    );
    let device_object = KeyObject::decode(get(&v, "key_device")).unwrap();
    assert_eq!(
        device_object
            .unwrap_with_device_key(&DeviceKey::from_bytes(DEVICE))
            .unwrap()
            .as_bytes(),
        &MASTER
    );
    let pass_object = KeyObject::decode(get(&v, "key_passphrase")).unwrap();
    assert_eq!(
        pass_object
            .unwrap_with_passphrase(PASSPHRASE)
            .unwrap()
            .as_bytes(),
        &MASTER
    );

    let pack = get(&v, "pack");
    assert_eq!(PackId::of(pack).0.as_slice(), get(&v, "pack_id"));
    let header = PackHeader::parse_pack(pack).unwrap();
    let mut opener = BlobOpener::new(&keys, &config()).unwrap();
    let root_id = cyberbackup_core::repo::BlobId(get(&v, "tree_root_id").try_into().unwrap());
    let root_entry = header.entries.iter().find(|e| e.id == root_id).unwrap();
    assert_eq!(root_entry.class, BlobClass::Sealed);
    let root = Tree::decode(
        &opener
            .open(
                BlobKind::Tree,
                &root_id,
                PackHeader::blob(pack, root_entry).unwrap(),
            )
            .unwrap(),
    )
    .unwrap();
    let EntryKind::File { content } = &root.get(b"data.bin").unwrap().kind else {
        panic!("data.bin is a file")
    };
    assert!(
        content.len() >= 3,
        "the binary file is cut into several chunks"
    );
    let mut restored = Vec::new();
    for id in content {
        let entry = header.entries.iter().find(|e| e.id == *id).unwrap();
        restored.extend(
            opener
                .open(BlobKind::Data, id, PackHeader::blob(pack, entry).unwrap())
                .unwrap(),
        );
    }
    assert_eq!(restored, files().0);

    let (envelope, id) = SnapshotEnvelope::decode(get(&v, "snapshot")).unwrap();
    assert_eq!(id.0.as_slice(), get(&v, "snapshot_id"));
    assert_eq!(envelope.time, TIME);
    let (_, snapshot) = Snapshot::open(get(&v, "snapshot"), &keys).unwrap();
    assert_eq!(snapshot.root, root_id);
    for ref_id in &envelope.ref_chunks {
        let entry = header.entries.iter().find(|e| e.id == *ref_id).unwrap();
        assert_eq!(entry.class, BlobClass::RefChunk);
    }
}
