//! The four trees of `compare`, deterministic for a given machine: (a) a source tree copied
//! from the Rust toolchain (`rustc --print sysroot`: its libraries, docs and `rust-src` when
//! installed) and the cargo registry sources, files picked in the order of a hash of their
//! path until the size is reached; (b) a mixed home: (a) plus pseudo-random binaries and
//! compressible text; (c) many tiny files of 0–4 KiB; (d) one big file.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::data::{self, Noise};

/// Words of the generated text (compressible, like code and notes).
const WORDS: &[&str] = &[
    "fn", "let", "mut", "impl", "struct", "pub", "return", "match", "Some", "None", "Ok", "Err",
    "self", "async", "await", "use", "crate", "where", "for", "in", "if", "else", "loop", "buffer",
    "length", "offset", "stream", "packet", "client", "server", "catalog", "snapshot",
];
/// Source files larger than this are left out (`libLLVM.so` is not a source file).
const MAX_SOURCE_FILE: u64 = 8 << 20;
/// Size of each generated text file of the mixed home.
const TEXT_FILE_LEN: u64 = 4 << 20;
/// Tiny files per folder.
const TINY_PER_DIR: usize = 100;

/// Which tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Kind {
    /// (a) Rust toolchain and cargo registry files.
    Source,
    /// (b) (a) plus binaries and text.
    Mixed,
    /// (c) Many files of 0–4 KiB.
    Tiny,
    /// (d) One big file.
    Big,
}

impl Kind {
    /// Its name in tables, JSON and chart file names.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Mixed => "mixed",
            Self::Tiny => "tiny",
            Self::Big => "big",
        }
    }
}

/// Sizes of the trees.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub(crate) struct Sizes {
    /// Bytes copied for the source tree (and the source part of the mixed home).
    pub(crate) source_bytes: u64,
    /// Total of the mixed home's three binaries (1/6, 2/6 and 3/6 of it).
    pub(crate) binary_bytes: u64,
    /// Total of the mixed home's generated text, in files of 4 MiB.
    pub(crate) text_bytes: u64,
    /// Number of tiny files.
    pub(crate) tiny_files: usize,
    /// Size of the big file.
    pub(crate) big_bytes: u64,
}

impl Sizes {
    /// The defaults: the whole comparison in under 15 minutes on a 2-core VM.
    pub(crate) const DEFAULT: Self = Self {
        source_bytes: 64 << 20,
        binary_bytes: 192 << 20,
        text_bytes: 64 << 20,
        tiny_files: 10_000,
        big_bytes: 384 << 20,
    };
    /// `--smoke`: every step of every tool in seconds, even in a debug build.
    pub(crate) const SMOKE: Self = Self {
        source_bytes: 3 << 20,
        binary_bytes: 6 << 20,
        text_bytes: 1 << 20,
        tiny_files: 300,
        big_bytes: 16 << 20,
    };
}

/// One regular file of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Path relative to the tree's root.
    pub(crate) rel: PathBuf,
    /// Its length.
    pub(crate) len: u64,
}

/// A written tree.
#[derive(Debug)]
pub(crate) struct Dataset {
    /// Which one.
    pub(crate) kind: Kind,
    /// Its root (absolute).
    pub(crate) root: PathBuf,
    /// Its files, sorted by path.
    pub(crate) files: Vec<Entry>,
}

impl Dataset {
    /// Total bytes of its files.
    pub(crate) fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.len).sum()
    }

    /// One line: what it holds.
    pub(crate) fn describe(&self) -> String {
        format!("{} files, {}", self.files.len(), data::human(self.bytes()))
    }
}

/// Writes tree `kind` under `root` (which must not exist).
///
/// # Errors
/// The source tree's origins cannot be found or read, or the disk is full.
pub(crate) fn build(kind: Kind, root: &Path, sizes: &Sizes) -> anyhow::Result<Dataset> {
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let root = std::path::absolute(root)?;
    match kind {
        Kind::Source => copy_sources(&root, sizes.source_bytes)?,
        Kind::Mixed => {
            copy_sources(&root.join("src"), sizes.source_bytes)?;
            let bins = root.join("bin");
            std::fs::create_dir_all(&bins)?;
            for i in 1..=3u64 {
                data::write_file(
                    &bins.join(format!("blob{i}.bin")),
                    sizes.binary_bytes / 6 * i,
                    1000 + i,
                )?;
            }
            let docs = root.join("docs");
            std::fs::create_dir_all(&docs)?;
            let mut noise = Noise::new(7);
            let mut left = sizes.text_bytes;
            let mut i = 0;
            while left > 0 {
                let len = left.min(TEXT_FILE_LEN);
                write_text(&docs.join(format!("notes{i}.txt")), len, &mut noise)?;
                left -= len;
                i += 1;
            }
        }
        Kind::Tiny => {
            let mut noise = Noise::new(11);
            let mut byte = [0u8; 8];
            let mut buf = vec![0u8; 4096];
            for i in 0..sizes.tiny_files {
                let dir = root.join(format!("d{:04}", i / TINY_PER_DIR));
                if i % TINY_PER_DIR == 0 {
                    std::fs::create_dir_all(&dir)?;
                }
                noise.fill(&mut byte);
                let len = usize::try_from(u64::from_le_bytes(byte) % 4097).unwrap_or(0);
                noise.fill(&mut buf[..len]);
                std::fs::write(dir.join(format!("f{i}")), &buf[..len])?;
            }
        }
        Kind::Big => data::write_file(&root.join("big.bin"), sizes.big_bytes, 4242)?,
    }
    let files = list(&root)?;
    Ok(Dataset { kind, root, files })
}

/// Writes `len` bytes of generated text (words from [`WORDS`]) to `path`.
///
/// # Errors
/// The file cannot be written.
pub(crate) fn write_text(path: &Path, len: u64, noise: &mut Noise) -> anyhow::Result<()> {
    let target = usize::try_from(len).context("text file too large")?;
    let mut text = String::with_capacity(target + 16);
    let mut byte = [0u8; 2];
    while text.len() < target {
        noise.fill(&mut byte);
        text.push_str(WORDS[usize::from(byte[0]) % WORDS.len()]);
        text.push(if byte[1] % 9 == 0 { '\n' } else { ' ' });
    }
    text.truncate(target);
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The regular files under `root`, relative, sorted.
///
/// # Errors
/// A folder cannot be read.
pub(crate) fn list(root: &Path) -> anyhow::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let entry = entry?;
            let meta = entry.metadata()?;
            let child = rel.join(entry.file_name());
            if meta.is_dir() {
                stack.push(child);
            } else if meta.is_file() {
                out.push(Entry {
                    rel: child,
                    len: meta.len(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// Where the source tree's files come from: `(label, folder)`.
fn source_origins() -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("cannot run `rustc --print sysroot` (the source tree copies the toolchain)")?;
    if !out.status.success() {
        bail!("`rustc --print sysroot` failed");
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let origins = vec![
        ("toolchain", sysroot),
        ("registry", cargo_home.join("registry").join("src")),
    ];
    Ok(origins
        .into_iter()
        .filter(|(_, dir)| dir.is_dir())
        .collect())
}

/// Copies files of the toolchain and the registry into `root` until `budget` bytes: every
/// regular file up to [`MAX_SOURCE_FILE`], in the order of the FNV-1a hash of
/// `label/relative path` (a spread over all folders, the same on every run).
fn copy_sources(root: &Path, budget: u64) -> anyhow::Result<()> {
    let mut candidates: Vec<(u64, String, PathBuf, u64)> = Vec::new();
    for (label, origin) in source_origins()? {
        for entry in list(&origin)? {
            if entry.len > MAX_SOURCE_FILE {
                continue;
            }
            let rel = format!("{label}/{}", entry.rel.display());
            candidates.push((
                fnv1a(rel.as_bytes()),
                rel,
                origin.join(&entry.rel),
                entry.len,
            ));
        }
    }
    if candidates.is_empty() {
        bail!("no toolchain or cargo registry files found to build the source tree");
    }
    candidates.sort();
    let mut copied = 0u64;
    for (_, rel, from, len) in candidates {
        if copied >= budget {
            break;
        }
        let to = root.join(&rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&from, &to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        copied += len;
    }
    if copied < budget {
        bail!(
            "the toolchain and the cargo registry hold only {} of files up to {}; ask for a smaller --source-size",
            data::human(copied),
            data::human(MAX_SOURCE_FILE)
        );
    }
    Ok(())
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_are_deterministic_and_sized() {
        let sizes = Sizes {
            source_bytes: 256 << 10,
            binary_bytes: 6 << 10,
            text_bytes: 5 << 20,
            tiny_files: 250,
            big_bytes: 100_000,
        };
        let dir = tempfile::tempdir().unwrap();

        let a = build(Kind::Mixed, &dir.path().join("a"), &sizes).unwrap();
        let b = build(Kind::Mixed, &dir.path().join("b"), &sizes).unwrap();
        let tiny = build(Kind::Tiny, &dir.path().join("t"), &sizes).unwrap();
        let big = build(Kind::Big, &dir.path().join("g"), &sizes).unwrap();

        assert_eq!(a.files, b.files);
        let binaries: Vec<u64> = a
            .files
            .iter()
            .filter(|f| f.rel.starts_with("bin"))
            .map(|f| f.len)
            .collect();
        assert_eq!(binaries, [1 << 10, 2 << 10, 3 << 10]);
        let text: Vec<u64> = a
            .files
            .iter()
            .filter(|f| f.rel.starts_with("docs"))
            .map(|f| f.len)
            .collect();
        assert_eq!(text, [4 << 20, 1 << 20]);
        let source: u64 = a
            .files
            .iter()
            .filter(|f| f.rel.starts_with("src"))
            .map(|f| f.len)
            .sum();
        assert!(source >= 256 << 10, "{source}");
        assert_eq!(tiny.files.len(), 250);
        assert!(tiny.files.iter().all(|f| f.len <= 4096));
        assert_eq!(big.bytes(), 100_000);
    }
}
