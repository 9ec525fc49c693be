//! Reading a file being backed up: bounded chunks at an offset, read on the blocking pool
//! straight into the chunk (one copy from the page cache), with the next chunk read ahead
//! while the session hashes and encrypts the current one.
//!
//! Memory per file is at most two chunks: the one handed to the session and the one being
//! read ahead.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinHandle;

/// A file opened for backup, read in chunks at increasing offsets.
#[derive(Debug)]
pub(crate) struct SourceFile {
    file: Arc<File>,
    len: u64,
    ahead: Option<ReadAhead>,
}

/// The chunk being read on the blocking pool.
#[derive(Debug)]
struct ReadAhead {
    offset: u64,
    max: usize,
    task: JoinHandle<io::Result<Bytes>>,
}

impl SourceFile {
    /// Wraps `file`, whose size was `len` when the backup started; no read ahead is
    /// started past `len`.
    pub(crate) fn new(file: File, len: u64) -> Self {
        Self {
            file: Arc::new(file),
            len,
            ahead: None,
        }
    }

    /// Opens `path` and returns it with its current size.
    ///
    /// # Errors
    /// The file cannot be opened or its metadata read.
    pub(crate) async fn open(path: &std::path::Path) -> io::Result<Self> {
        let path = path.to_path_buf();
        let (file, len) = tokio::task::spawn_blocking(move || {
            let file = File::open(path)?;
            let len = file.metadata()?.len();
            Ok::<_, io::Error>((file, len))
        })
        .await
        .map_err(io::Error::other)??;
        Ok(Self::new(file, len))
    }

    /// The size when the file was opened.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Reads up to `max` bytes at `offset` (fewer only at the end of the file), then starts
    /// reading the following chunk of the same size in the background.
    ///
    /// # Errors
    /// The read failed (or the blocking task could not run).
    pub(crate) async fn read_at(&mut self, offset: u64, max: usize) -> io::Result<Bytes> {
        // A read ahead always finishes before the next read starts: they share the cursor.
        let ahead = match self.ahead.take() {
            Some(ahead) => Some((ahead.offset, ahead.max, join(ahead.task).await)),
            None => None,
        };
        let data = match ahead {
            Some((at, len, data)) if at == offset && len == max => data?,
            _ => join(self.spawn_read(offset, max)).await?,
        };
        let next = offset.saturating_add(data.len() as u64);
        if data.len() == max && next < self.len {
            self.ahead = Some(ReadAhead {
                offset: next,
                max,
                task: self.spawn_read(next, max),
            });
        }
        Ok(data)
    }

    fn spawn_read(&self, offset: u64, max: usize) -> JoinHandle<io::Result<Bytes>> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || read_chunk(&file, offset, max))
    }
}

async fn join(task: JoinHandle<io::Result<Bytes>>) -> io::Result<Bytes> {
    task.await.map_err(io::Error::other)?
}

/// Reads up to `max` bytes at `offset` into a fresh buffer (no zeroing: `read_to_end` on a
/// file reads into the spare capacity).
fn read_chunk(mut file: &File, offset: u64, max: usize) -> io::Result<Bytes> {
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(max);
    file.take(max as u64).read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..=252u8).cycle().take(len).collect()
    }

    async fn source(content: &[u8]) -> (tempfile::TempDir, SourceFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, content).unwrap();
        let source = SourceFile::open(&path).await.unwrap();
        (dir, source)
    }

    #[tokio::test]
    async fn sequential_reads_return_the_file_in_order() {
        let content = sample(10_000);
        let (_dir, mut file) = source(&content).await;
        assert_eq!(file.len(), 10_000);
        let mut got = Vec::new();
        let mut offset = 0;
        loop {
            let chunk = file.read_at(offset, 3_000).await.unwrap();
            if chunk.is_empty() {
                break;
            }
            assert!(chunk.len() <= 3_000);
            offset += chunk.len() as u64;
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, content);
        assert!(file.ahead.is_none(), "no read ahead past the end");
    }

    #[tokio::test]
    async fn a_read_elsewhere_discards_the_read_ahead() {
        let content = sample(10_000);
        let (_dir, mut file) = source(&content).await;
        assert_eq!(
            &file.read_at(0, 1_000).await.unwrap()[..],
            &content[..1_000]
        );
        assert_eq!(file.ahead.as_ref().map(|a| a.offset), Some(1_000));
        // Seek back (a resumed upload) and change the chunk size.
        assert_eq!(
            &file.read_at(500, 700).await.unwrap()[..],
            &content[500..1_200]
        );
        assert_eq!(
            &file.read_at(1_200, 700).await.unwrap()[..],
            &content[1_200..1_900]
        );
        assert_eq!(
            &file.read_at(9_990, 700).await.unwrap()[..],
            &content[9_990..]
        );
    }

    #[tokio::test]
    async fn a_file_that_grew_is_read_only_as_asked() {
        let content = sample(4_096);
        let (dir, mut file) = source(&content).await;
        std::fs::write(dir.path().join("f"), sample(8_192)).unwrap();
        assert_eq!(file.read_at(0, 4_096).await.unwrap().len(), 4_096);
        assert!(
            file.ahead.is_none(),
            "the size at open bounds the read ahead"
        );
    }
}
