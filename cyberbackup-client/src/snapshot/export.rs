//! Export: a path of a snapshot as one byte stream, written to any [`AsyncWrite`] as the
//! blobs arrive — a file's content as it is, a directory (or a symlink) as a tar or zip
//! archive. `dump` prints it (restic's behaviour for a directory) and the local UI streams
//! it as a download. Every blob is opened and verified before a byte of it is written; a
//! file whose content does not add up to the size its tree records ends the stream with an
//! error. One tree walk serves both formats; [`Archive`] turns its members into records.
//!
//! The zip records are `export_zip.rs`'s (which says why they are written by hand).
//! The 512-byte tar headers come from the `tar` crate ([`tar::Header`]: fields, checksum). Its
//! `Builder` is not used because it wants a blocking `Read` for each file while the content
//! here arrives asynchronously, blob by blob; so this module writes the headers, the
//! content, the padding and, for a name or link target longer than the header's 100 bytes,
//! the GNU long-name record (which GNU tar, bsdtar, Python's tarfile and the `tar` crate
//! read) itself.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cyberbackup_core::repo::{BlobId, BlobKind, EntryKind, Metadata, RepoError, TreeEntry};
use tar::{EntryType, Header};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::export_zip::{NameTooLong, ZipEncoder};
use super::{BlobError, RepoRemote, Repository, short_hex};
use crate::v4::V4ClientError;

/// Size of a tar block.
const BLOCK: usize = 512;
/// Longest name (or link target) a plain header holds.
const HEADER_NAME_BYTES: usize = 100;

/// What a directory or symlink is exported as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// A tar archive (GNU long names).
    #[default]
    Tar,
    /// A zip archive of stored members with Unix modes and times, written as a stream.
    Zip,
}

impl ArchiveFormat {
    /// The file name extension: `tar` or `zip`.
    #[must_use]
    pub fn extension(self) -> &'static str {
        match self {
            Self::Tar => "tar",
            Self::Zip => "zip",
        }
    }

    /// The media type of the archive.
    #[must_use]
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Tar => "application/x-tar",
            Self::Zip => "application/zip",
        }
    }
}

impl std::str::FromStr for ArchiveFormat {
    type Err = String;

    /// `tar` or `zip`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "tar" => Ok(Self::Tar),
            "zip" => Ok(Self::Zip),
            other => Err(format!(
                "{other:?} is not an archive format: give tar or zip"
            )),
        }
    }
}

/// What an export wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExportSummary {
    /// Whether the stream is an archive (of a directory or symlink) rather than a file's
    /// bytes.
    pub archive: bool,
    /// Regular files written.
    pub files: u64,
    /// Directories written (archives only).
    pub dirs: u64,
    /// Symlinks written (archives only).
    pub symlinks: u64,
    /// Bytes of file content written (without headers and padding).
    pub bytes: u64,
}

impl<R: RepoRemote> Repository<R> {
    /// `dump SNAPSHOT PATH`: [`Self::export`] with directories as tar archives.
    ///
    /// # Errors
    /// As [`Self::export`].
    pub async fn dump(
        &mut self,
        spec: &str,
        path: &[u8],
        out: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<ExportSummary, V4ClientError> {
        self.export(spec, path, ArchiveFormat::Tar, out).await
    }

    /// Writes the file at `path` to `out`, or, for a directory (`/` for the whole snapshot)
    /// or a symlink, an archive of it in `format` whose names start with its base name
    /// (`snapshot-<short ID>` for `/`).
    ///
    /// # Errors
    /// As [`Self::resolve`]; [`V4ClientError::PathNotInSnapshot`];
    /// [`V4ClientError::Corrupt`] when a blob fails verification or a file's content does not
    /// match its recorded size (the stream is then incomplete); [`V4ClientError::Local`] when
    /// `out` fails (a closed pipe included); [`V4ClientError::Usage`] for a zip whose member
    /// name would exceed 65,535 bytes.
    pub async fn export(
        &mut self,
        spec: &str,
        path: &[u8],
        format: ArchiveFormat,
        out: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<ExportSummary, V4ClientError> {
        let found = self.locate(spec, path).await?;
        let at = found.path;
        let mut summary = ExportSummary::default();
        let encoding = match format {
            ArchiveFormat::Tar => Encoding::Tar,
            ArchiveFormat::Zip => Encoding::Zip(ZipEncoder::default()),
        };
        let mut archive = Archive {
            out,
            at: &at,
            encoding,
        };
        match found.entry {
            Some(TreeEntry {
                kind: EntryKind::File { content },
                meta,
                ..
            }) => {
                // A file is its bytes whatever the format: no archive around it.
                summary.files = 1;
                summary.bytes = self
                    .copy_content(&content, meta.size, &at, &mut archive)
                    .await?;
                archive.flush().await?;
                return Ok(summary);
            }
            Some(entry) => {
                summary.archive = true;
                let name = PathBuf::from(OsStr::from_bytes(&entry.name));
                self.archive_entry(&mut archive, &entry, &name, &mut summary)
                    .await?;
            }
            None => {
                summary.archive = true;
                let name =
                    PathBuf::from(format!("snapshot-{}", short_hex(found.snapshot.as_bytes())));
                archive.directory(&name, &root_meta()).await?;
                summary.dirs += 1;
                self.archive_tree(&mut archive, found.root, &name, &mut summary)
                    .await?;
            }
        }
        archive.finish().await?;
        Ok(summary)
    }

    /// Writes one entry (a directory with everything below it) under `name`.
    async fn archive_entry(
        &mut self,
        archive: &mut Archive<'_>,
        entry: &TreeEntry,
        name: &Path,
        summary: &mut ExportSummary,
    ) -> Result<(), V4ClientError> {
        match &entry.kind {
            EntryKind::File { content } => {
                let size = entry.meta.size;
                archive.begin_file(name, &entry.meta, size).await?;
                let at = archive.at.join(name);
                let written = self.copy_content(content, size, &at, archive).await?;
                archive.end_file(written).await?;
                summary.files += 1;
                summary.bytes += written;
            }
            EntryKind::Dir { subtree } => {
                archive.directory(name, &entry.meta).await?;
                summary.dirs += 1;
                self.archive_tree(archive, *subtree, name, summary).await?;
            }
            EntryKind::Symlink { target } => {
                archive.symlink(name, &entry.meta, target).await?;
                summary.symlinks += 1;
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes the entries of tree `tree` (and below) under the directory `name`.
    fn archive_tree<'a>(
        &'a mut self,
        archive: &'a mut Archive<'_>,
        tree: BlobId,
        name: &'a Path,
        summary: &'a mut ExportSummary,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), V4ClientError>> + Send + 'a>>
    where
        R: 'a,
    {
        Box::pin(async move {
            let tree = self.tree(tree).await?;
            for entry in tree.entries() {
                let child = name.join(OsStr::from_bytes(&entry.name));
                self.archive_entry(archive, entry, &child, summary).await?;
            }
            Ok(())
        })
    }

    /// Writes a file's verified content; exactly `size` bytes or an error.
    async fn copy_content(
        &mut self,
        content: &[BlobId],
        size: u64,
        at: &Path,
        archive: &mut Archive<'_>,
    ) -> Result<u64, V4ClientError> {
        let mut written = 0u64;
        for blob in content {
            let plaintext = self
                .blob(BlobKind::Data, *blob)
                .await
                .map_err(|err| match err {
                    BlobError::Remote(err) => err,
                    BlobError::Verify(source) => super::corrupt(at, source),
                })?;
            written += plaintext.len() as u64;
            if written > size {
                break;
            }
            archive.content(&plaintext).await?;
        }
        if written != size {
            return Err(super::corrupt(
                at,
                RepoError::Malformed {
                    object: cyberbackup_core::repo::ObjectKind::Tree,
                    reason: "the file's content does not add up to its recorded size",
                },
            ));
        }
        Ok(written)
    }
}

/// The archive being written: the walk's members become the records of its encoding.
struct Archive<'a> {
    out: &'a mut (dyn AsyncWrite + Unpin + Send),
    /// The snapshot path exported (for error messages).
    at: &'a Path,
    encoding: Encoding,
}

/// The format's state.
enum Encoding {
    Tar,
    Zip(ZipEncoder),
}

impl Archive<'_> {
    /// A directory member.
    async fn directory(&mut self, name: &Path, meta: &Metadata) -> Result<(), V4ClientError> {
        match &mut self.encoding {
            Encoding::Tar => self.header(name, EntryType::Directory, meta, 0, None).await,
            Encoding::Zip(zip) => {
                let record = zip
                    .directory(name.as_os_str().as_bytes(), meta.mode, meta.mtime.secs)
                    .map_err(|NameTooLong| name_too_long(self.at, name))?;
                self.write(&record).await
            }
        }
    }

    /// A symlink member pointing at `target`.
    async fn symlink(
        &mut self,
        name: &Path,
        meta: &Metadata,
        target: &[u8],
    ) -> Result<(), V4ClientError> {
        match &mut self.encoding {
            Encoding::Tar => {
                self.header(name, EntryType::Symlink, meta, 0, Some(target))
                    .await
            }
            Encoding::Zip(zip) => {
                let record = zip
                    .symlink(
                        name.as_os_str().as_bytes(),
                        meta.mode,
                        meta.mtime.secs,
                        target,
                    )
                    .map_err(|NameTooLong| name_too_long(self.at, name))?;
                self.write(&record).await
            }
        }
    }

    /// Starts a file member of `size` bytes; its content follows through
    /// [`Self::content`], then [`Self::end_file`].
    async fn begin_file(
        &mut self,
        name: &Path,
        meta: &Metadata,
        size: u64,
    ) -> Result<(), V4ClientError> {
        match &mut self.encoding {
            Encoding::Tar => {
                self.header(name, EntryType::Regular, meta, size, None)
                    .await
            }
            Encoding::Zip(zip) => {
                let record = zip
                    .begin_file(
                        name.as_os_str().as_bytes(),
                        meta.mode,
                        meta.mtime.secs,
                        size,
                    )
                    .map_err(|NameTooLong| name_too_long(self.at, name))?;
                self.write(&record).await
            }
        }
    }

    /// A piece of the current file's content.
    async fn content(&mut self, bytes: &[u8]) -> Result<(), V4ClientError> {
        if let Encoding::Zip(zip) = &mut self.encoding {
            zip.content(bytes);
        }
        self.write(bytes).await
    }

    /// Ends the current file member after `len` bytes of content.
    async fn end_file(&mut self, len: u64) -> Result<(), V4ClientError> {
        match &mut self.encoding {
            Encoding::Tar => self.pad(len).await,
            Encoding::Zip(zip) => {
                let descriptor = zip.end_file();
                self.write(&descriptor).await
            }
        }
    }

    /// Ends the archive (tar's two zero blocks; zip's central directory), then flushes.
    async fn finish(&mut self) -> Result<(), V4ClientError> {
        match std::mem::replace(&mut self.encoding, Encoding::Tar) {
            Encoding::Tar => self.write(&[0; 2 * BLOCK]).await?,
            Encoding::Zip(zip) => self.write(&zip.finish()).await?,
        }
        self.flush().await
    }

    /// Writes the tar header of one member, preceded by GNU long-name records when `name`
    /// or `link` does not fit.
    async fn header(
        &mut self,
        name: &Path,
        kind: EntryType,
        meta: &Metadata,
        size: u64,
        link: Option<&[u8]>,
    ) -> Result<(), V4ClientError> {
        let mut path = name.as_os_str().as_bytes().to_vec();
        if kind == EntryType::Directory {
            path.push(b'/');
        }
        if path.len() > HEADER_NAME_BYTES {
            self.long_record(EntryType::GNULongName, &path).await?;
        }
        if let Some(link) = link.filter(|link| link.len() > HEADER_NAME_BYTES) {
            self.long_record(EntryType::GNULongLink, link).await?;
        }
        let mut header = Header::new_gnu();
        put_truncated(&mut header.as_old_mut().name, &path);
        if let Some(link) = link {
            put_truncated(&mut header.as_old_mut().linkname, link);
        }
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(meta.mode & 0o7777);
        header.set_uid(u64::from(meta.uid));
        header.set_gid(u64::from(meta.gid));
        header.set_mtime(u64::try_from(meta.mtime.secs).unwrap_or(0));
        // Owner names that do not fit the 32-byte fields are left out; the IDs stay.
        let _ = header.set_username(&String::from_utf8_lossy(&meta.user));
        let _ = header.set_groupname(&String::from_utf8_lossy(&meta.group));
        header.set_cksum();
        self.write(header.as_bytes()).await
    }

    /// A GNU `././@LongLink` member holding `value` (NUL-terminated) for the next header.
    async fn long_record(&mut self, kind: EntryType, value: &[u8]) -> Result<(), V4ClientError> {
        let mut header = Header::new_gnu();
        put_truncated(&mut header.as_old_mut().name, b"././@LongLink");
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(value.len() as u64 + 1);
        header.set_cksum();
        self.write(header.as_bytes()).await?;
        self.write(value).await?;
        self.write(&[0]).await?;
        self.pad(value.len() as u64 + 1).await
    }

    /// Tar's zeros up to the next block boundary after `len` bytes of content.
    async fn pad(&mut self, len: u64) -> Result<(), V4ClientError> {
        let partial = usize::try_from(len % BLOCK as u64).unwrap_or(0);
        if partial == 0 {
            return Ok(());
        }
        self.write(&[0; BLOCK][partial..]).await
    }

    async fn flush(&mut self) -> Result<(), V4ClientError> {
        self.out
            .flush()
            .await
            .map_err(|source| write_error(self.at, source))
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), V4ClientError> {
        self.out
            .write_all(bytes)
            .await
            .map_err(|source| write_error(self.at, source))
    }
}

/// Copies `value` into a NUL-padded header field, cut to its size (the long-name record
/// carries the whole value).
fn put_truncated(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Metadata of the directory that holds a whole snapshot in its archive.
fn root_meta() -> Metadata {
    Metadata {
        mode: 0o755,
        ..Metadata::default()
    }
}

fn write_error(at: &Path, source: std::io::Error) -> V4ClientError {
    V4ClientError::Local {
        what: "cannot write the dump of",
        path: at.to_path_buf(),
        source,
    }
}

fn name_too_long(at: &Path, name: &Path) -> V4ClientError {
    V4ClientError::Usage {
        message: format!(
            "{}: a name in it is longer than a .zip member can hold (65,535 bytes) — download it as .tar instead",
            at.join(name).display()
        ),
    }
}
