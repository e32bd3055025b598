//! Content-addressed blob store on the local filesystem.
//!
//! Every blob is a file named by the blake3 hash of its content, so storing the same bytes
//! twice keeps one copy and a blob's name proves what it holds.
//!
//! # Layout
//! ```text
//! <dir>/
//!   00/ … ff/                 fan-out directories, by the first two hex characters
//!     ab/ab12…ef              one file per blob, named by its 64-hex-character hash
//!   tmp/<random>.tmp          blobs being written
//!   partial/<64 hex>          resumable downloads in progress (see [`Partial`])
//! ```
//!
//! # Atomicity and durability
//! A blob never appears under its final name until it is complete and verified. Writers
//! stream the content into a fresh temp file under `tmp/` while hashing it, enforcing the
//! caller's size limit as they go. Once the content is in, the hash is compared with the one
//! the caller expected; on a mismatch, an oversized blob, an I/O error or a cancelled
//! [`BlobStore::put_async`], the temp file is deleted and nothing is published. Otherwise the
//! temp file is fsynced, renamed onto its final name (`tmp/` is on the same filesystem, so
//! the rename is atomic) and the fan-out directory is fsynced so that the new name survives
//! a crash. Readers therefore see either no file or the whole blob.
//!
//! If the blob is already present, the temp file is simply dropped. Concurrent puts of the
//! same blob are safe: each writes its own temp file, and a rename onto an existing name
//! replaces it atomically with identical content.
//!
//! Temp files orphaned by a crash are removed by [`BlobStore::gc`] once they are more than
//! an hour old.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::{Result, StoreError};

/// Size of the buffer used to stream blobs.
const CHUNK: usize = 64 * 1024;
/// Temp files older than this are considered abandoned by [`BlobStore::gc`].
const TEMP_MAX_AGE: Duration = Duration::from_secs(60 * 60);
/// Directory of blobs being written.
const TMP_DIR: &str = "tmp";
/// Directory of resumable downloads.
const PARTIAL_DIR: &str = "partial";

/// The blake3 hash of a blob's content, which is also its name in a [`BlobStore`].
///
/// Displayed, parsed and serialized as 64 lowercase hexadecimal characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobHash([u8; 32]);

impl BlobHash {
    /// Wraps a raw 32-byte blake3 digest.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from(blake3::hash(data))
    }

    /// The raw digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The name of the fan-out directory holding this blob: its first byte in hex.
    fn fanout(&self) -> String {
        format!("{:02x}", self.0[0])
    }
}

impl From<blake3::Hash> for BlobHash {
    fn from(hash: blake3::Hash) -> Self {
        Self(*hash.as_bytes())
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({self})")
    }
}

impl FromStr for BlobHash {
    type Err = StoreError;

    /// Parses exactly 64 lowercase hexadecimal characters; anything else is
    /// [`StoreError::InvalidHash`].
    fn from_str(s: &str) -> Result<Self> {
        let well_formed =
            s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        let mut bytes = [0u8; 32];
        if !well_formed || hex::decode_to_slice(s, &mut bytes).is_err() {
            return Err(invalid_hash(s));
        }
        Ok(Self(bytes))
    }
}

/// The error for an unparsable hash, quoting (the start of) the input.
fn invalid_hash(s: &str) -> StoreError {
    const QUOTE: usize = 80;
    let mut quoted: String = s.chars().take(QUOTE).collect();
    if s.chars().nth(QUOTE).is_some() {
        quoted.push('…');
    }
    StoreError::InvalidHash(quoted)
}

impl Serialize for BlobHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BlobHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct HexVisitor;

        impl Visitor<'_> for HexVisitor {
            type Value = BlobHash;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a blob hash as 64 lowercase hexadecimal characters")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<BlobHash, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(HexVisitor)
    }
}

/// What [`BlobStore::gc`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Blobs the caller asked to keep.
    pub blobs_kept: u64,
    /// Blobs deleted.
    pub blobs_removed: u64,
    /// Abandoned temp files deleted.
    pub temps_removed: u64,
    /// Bytes freed by deleting blobs and temp files.
    pub bytes_freed: u64,
}

/// A content-addressed blob store in one directory. See the [module docs](self) for the
/// layout and the atomicity guarantees.
///
/// The handle is cheap to clone; clones use the same directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens the store in `dir`, creating the directory and its layout if needed.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let root = dir.as_ref().to_path_buf();
        fs::create_dir_all(&root)?;
        // Create every fan-out directory up front, and make their names durable once, so
        // that publishing a blob only ever has to fsync its own fan-out directory.
        let mut created = false;
        for sub in (0..=u8::MAX)
            .map(|b| format!("{b:02x}"))
            .chain([TMP_DIR.to_owned(), PARTIAL_DIR.to_owned()])
        {
            match fs::create_dir(root.join(sub)) {
                Ok(()) => created = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            }
        }
        if created {
            sync_dir(&root)?;
        }
        Ok(Self { root })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Where the blob `hash` lives (or would live): `dir/ab/ab…` .
    pub fn path(&self, hash: &BlobHash) -> PathBuf {
        self.root.join(hash.fanout()).join(hash.to_string())
    }

    /// Whether the blob `hash` is in the store.
    pub fn contains(&self, hash: &BlobHash) -> bool {
        self.path(hash).is_file()
    }

    /// Stores `data` and returns its hash. Does not rewrite a blob that is already present.
    pub fn put_bytes(&self, data: &[u8]) -> Result<BlobHash> {
        let hash = BlobHash::of(data);
        if self.contains(&hash) {
            return Ok(hash);
        }
        let mut temp = TempBlob::create(self, None)?;
        temp.write(data)?;
        temp.finish(Some(hash)).map(|(hash, _)| hash)
    }

    /// Streams a blob from `reader` into the store, returning its hash and length.
    ///
    /// The content is never held in memory as a whole. If it grows beyond `max_len` bytes the
    /// put fails with [`StoreError::BlobTooLarge`]; if it does not hash to `expected` it fails
    /// with [`StoreError::BlobMismatch`]. On any failure nothing is published and the temp
    /// file is removed.
    pub fn put_reader(
        &self,
        mut reader: impl Read,
        expected: Option<BlobHash>,
        max_len: Option<u64>,
    ) -> Result<(BlobHash, u64)> {
        let mut temp = TempBlob::create(self, max_len)?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            temp.write(&buf[..n])?;
        }
        temp.finish(expected)
    }

    /// The async twin of [`put_reader`](Self::put_reader), with the same checks and
    /// guarantees.
    ///
    /// The reader is polled on the calling task; hashing and file writes run on tokio's
    /// blocking pool. Must be called within a tokio runtime. If the returned future is
    /// dropped before the content has been read to the end, the temp file is removed and
    /// nothing is published.
    pub async fn put_async(
        &self,
        mut reader: impl AsyncRead + Unpin,
        expected: Option<BlobHash>,
        max_len: Option<u64>,
    ) -> Result<(BlobHash, u64)> {
        enum Msg {
            Data(Vec<u8>),
            End,
        }

        let (tx, mut rx) = mpsc::channel::<Msg>(4);
        let store = self.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut temp = TempBlob::create(&store, max_len)?;
            loop {
                match rx.blocking_recv() {
                    Some(Msg::Data(data)) => temp.write(&data)?,
                    Some(Msg::End) => return temp.finish(expected),
                    // The reading side failed or was dropped: abandon the temp file.
                    None => {
                        return Err(StoreError::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "blob upload abandoned",
                        )));
                    }
                }
            }
        });

        let read: io::Result<()> = async {
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = reader.read(&mut buf).await?;
                let msg = if n == 0 {
                    Msg::End
                } else {
                    buf.truncate(n);
                    Msg::Data(buf)
                };
                // A send fails only when the writer has given up (too large, I/O error); its
                // result says why.
                if tx.send(msg).await.is_err() || n == 0 {
                    return Ok(());
                }
            }
        }
        .await;
        drop(tx);

        let written = writer.await.map_err(StoreError::Task)?;
        read?;
        written
    }

    /// Opens the blob `hash` for reading; [`StoreError::BlobNotFound`] if it is absent.
    pub fn open_blob(&self, hash: &BlobHash) -> Result<File> {
        File::open(self.path(hash)).map_err(|e| not_found(e, hash))
    }

    /// Reads the whole blob `hash` into memory.
    pub fn read(&self, hash: &BlobHash) -> Result<Vec<u8>> {
        let mut file = self.open_blob(hash)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        Ok(data)
    }

    /// The length in bytes of the blob `hash`.
    pub fn len(&self, hash: &BlobHash) -> Result<u64> {
        fs::metadata(self.path(hash))
            .map(|meta| meta.len())
            .map_err(|e| not_found(e, hash))
    }

    /// Every blob in the store, sorted. Files whose names are not valid blob names, or that
    /// sit in the wrong fan-out directory, are ignored.
    pub fn list(&self) -> Result<Vec<BlobHash>> {
        let mut hashes = Vec::new();
        for fan in fs::read_dir(&self.root)? {
            let fan = fan?;
            let fan_name = fan.file_name();
            let Some(prefix) = fan_name.to_str().filter(|name| is_fanout_name(name)) else {
                continue;
            };
            if !fan.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(fan.path())? {
                let entry = entry?;
                let name = entry.file_name();
                let Some(Ok(hash)) = name.to_str().map(BlobHash::from_str) else {
                    continue;
                };
                if hash.fanout() == prefix && entry.file_type()?.is_file() {
                    hashes.push(hash);
                }
            }
        }
        hashes.sort_unstable();
        Ok(hashes)
    }

    /// Re-hashes the blob `hash` on disk: `false` means the file is corrupt.
    pub fn verify(&self, hash: &BlobHash) -> Result<bool> {
        let file = self.open_blob(hash)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(file)?;
        Ok(BlobHash::from(hasher.finalize()) == *hash)
    }

    /// Deletes every blob for which `keep` returns `false`, and temp files (abandoned
    /// writes) more than an hour old.
    ///
    /// **`keep` must describe the complete set of referenced blobs**: anything it does not
    /// claim is deleted, including blobs that a concurrent writer has just stored and not yet
    /// recorded. Callers must take their snapshot of references after such puts have been
    /// recorded, or otherwise serialize them with gc. Partial downloads are left alone.
    pub fn gc(&self, mut keep: impl FnMut(&BlobHash) -> bool) -> Result<GcStats> {
        let mut stats = GcStats::default();
        for hash in self.list()? {
            if keep(&hash) {
                stats.blobs_kept += 1;
                continue;
            }
            let path = self.path(&hash);
            let len = match fs::metadata(&path) {
                Ok(meta) => meta.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            match fs::remove_file(&path) {
                Ok(()) => {
                    stats.blobs_removed += 1;
                    stats.bytes_freed += len;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }

        let entries = match fs::read_dir(self.root.join(TMP_DIR)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(stats),
            Err(e) => return Err(e.into()),
        };
        let now = SystemTime::now();
        for entry in entries {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let abandoned = meta
                .modified()
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .is_some_and(|age| age > TEMP_MAX_AGE);
            if !meta.is_file() || !abandoned {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    stats.temps_removed += 1;
                    stats.bytes_freed += meta.len();
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(stats)
    }

    /// Opens (creating it if needed) the partial download of `target`, `dir/partial/<hex>`,
    /// to resume appending to it. [`Partial::len`] tells how much is already there.
    pub fn partial(&self, target: &BlobHash) -> Result<Partial> {
        let dir = self.root.join(PARTIAL_DIR);
        let path = dir.join(target.to_string());
        let open = |path: &Path| OpenOptions::new().append(true).create(true).open(path);
        let file = match open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&dir)?;
                open(&path)?
            }
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata()?.len();
        Ok(Partial {
            store: self.clone(),
            target: *target,
            path,
            file,
            len,
        })
    }

    /// Makes `src` (complete, verified, fsynced, on the store's filesystem) the blob `hash`.
    fn publish(&self, src: &Path, hash: &BlobHash) -> Result<()> {
        let fan = self.root.join(hash.fanout());
        // Fan-out directories are made at open; recreate one that was removed since.
        match fs::create_dir(&fan) {
            Ok(()) => sync_dir(&self.root)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        fs::rename(src, fan.join(hash.to_string()))?;
        sync_dir(&fan)?;
        Ok(())
    }
}

/// A resumable download of one blob into `dir/partial/<hex>`, opened by
/// [`BlobStore::partial`].
///
/// Appends are not fsynced; after a crash the file may have lost its tail, which is
/// harmless: resume from [`len`](Self::len). A corrupt file is caught by
/// [`finish`](Self::finish). Only one handle per target should append at a time.
#[derive(Debug)]
pub struct Partial {
    store: BlobStore,
    target: BlobHash,
    path: PathBuf,
    file: File,
    len: u64,
}

impl Partial {
    /// The blob being downloaded.
    pub fn target(&self) -> BlobHash {
        self.target
    }

    /// How many bytes the partial file holds: the offset to resume from.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been downloaded yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data` to the partial file.
    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        if let Err(e) = self.file.write_all(data) {
            // Part of `data` may have been written: report the length actually on disk.
            self.len = self.file.metadata().map_or(self.len, |meta| meta.len());
            return Err(e.into());
        }
        self.len += data.len() as u64;
        Ok(())
    }

    /// Completes the download: verifies that the whole file hashes to the target, then
    /// publishes it atomically like any other blob. On a mismatch the partial file is
    /// deleted and [`StoreError::BlobMismatch`] returned.
    pub fn finish(self) -> Result<()> {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(File::open(&self.path)?)?;
        let actual = BlobHash::from(hasher.finalize());
        if actual != self.target {
            remove_quietly(&self.path);
            return Err(mismatch(&self.target, &actual));
        }
        if self.store.contains(&self.target) {
            remove_quietly(&self.path);
            return Ok(());
        }
        self.file.sync_all()?;
        self.store.publish(&self.path, &self.target)
    }

    /// Abandons the download and deletes the partial file.
    pub fn discard(self) -> Result<()> {
        drop(self.file);
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// A blob being written to `dir/tmp/`, hashed as it goes. Dropping it before a successful
/// [`finish`](Self::finish) deletes the temp file.
struct TempBlob<'a> {
    store: &'a BlobStore,
    file: File,
    path: PathBuf,
    hasher: blake3::Hasher,
    len: u64,
    max_len: Option<u64>,
    published: bool,
}

impl<'a> TempBlob<'a> {
    fn create(store: &'a BlobStore, max_len: Option<u64>) -> Result<Self> {
        let dir = store.root.join(TMP_DIR);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let path = dir.join(format!("{:032x}.tmp", rand::random::<u128>()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(Self {
                        store,
                        file,
                        path,
                        hasher: blake3::Hasher::new(),
                        len: 0,
                        max_len,
                        published: false,
                    });
                }
                Err(e) if attempts < 4 && e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) if attempts < 4 && e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(&dir)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        let len = self.len + data.len() as u64;
        if let Some(limit) = self.max_len
            && len > limit
        {
            return Err(StoreError::BlobTooLarge { limit });
        }
        self.hasher.update(data);
        self.file.write_all(data)?;
        self.len = len;
        Ok(())
    }

    fn finish(mut self, expected: Option<BlobHash>) -> Result<(BlobHash, u64)> {
        let hash = BlobHash::from(self.hasher.finalize());
        if let Some(expected) = expected
            && expected != hash
        {
            return Err(mismatch(&expected, &hash));
        }
        // Already present: identical content, so the temp file is just dropped.
        if !self.store.contains(&hash) {
            self.file.sync_all()?;
            self.store.publish(&self.path, &hash)?;
            self.published = true;
        }
        Ok((hash, self.len))
    }
}

impl Drop for TempBlob<'_> {
    fn drop(&mut self) {
        if !self.published {
            remove_quietly(&self.path);
        }
    }
}

/// Deletes a file we no longer want, logging (not failing) if that is impossible.
fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not remove blob temp file");
    }
}

fn mismatch(expected: &BlobHash, actual: &BlobHash) -> StoreError {
    StoreError::BlobMismatch {
        expected: expected.to_string(),
        actual: actual.to_string(),
    }
}

fn not_found(e: io::Error, hash: &BlobHash) -> StoreError {
    if e.kind() == io::ErrorKind::NotFound {
        StoreError::BlobNotFound(hash.to_string())
    } else {
        e.into()
    }
}

fn is_fanout_name(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Makes a directory's entries durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for fsync here; renames are as durable as the OS makes them.
#[cfg(not(unix))]
#[allow(clippy::unnecessary_wraps)]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    fn store() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        (dir, store)
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    /// Nothing at all is stored: no blob, no temp file, no stray file in a fan-out dir.
    fn assert_empty(store: &BlobStore) {
        assert_eq!(store.list().unwrap(), Vec::<BlobHash>::new());
        assert!(entries(&store.dir().join(TMP_DIR)).is_empty());
        for b in 0..=u8::MAX {
            let fan = store.dir().join(format!("{b:02x}"));
            assert!(entries(&fan).is_empty(), "{} not empty", fan.display());
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn roundtrip() {
        let (_dir, store) = store();
        let content = data(200_000);
        let hash = store.put_bytes(&content).unwrap();
        assert_eq!(hash, BlobHash::of(&content));
        assert_eq!(hash.as_bytes(), blake3::hash(&content).as_bytes());
        assert!(store.contains(&hash));
        assert_eq!(store.read(&hash).unwrap(), content);
        assert_eq!(store.len(&hash).unwrap(), content.len() as u64);
        assert!(store.verify(&hash).unwrap());
        let hex = hash.to_string();
        assert_eq!(store.path(&hash), store.dir().join(&hex[..2]).join(&hex));
        let mut read = Vec::new();
        store
            .open_blob(&hash)
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read, content);
        assert_eq!(store.list().unwrap(), vec![hash]);
        assert!(entries(&store.dir().join(TMP_DIR)).is_empty());

        // put_reader, with and without the right expected hash.
        let other = data(70_000);
        let (h, len) = store.put_reader(&other[..], None, None).unwrap();
        assert_eq!((h, len), (BlobHash::of(&other), other.len() as u64));
        let again = store
            .put_reader(&other[..], Some(h), Some(other.len() as u64))
            .unwrap();
        assert_eq!(again, (h, len));
        assert_eq!(store.read(&h).unwrap(), other);

        // Reopening sees the same blobs.
        let reopened = BlobStore::open(store.dir()).unwrap();
        assert_eq!(reopened.list().unwrap().len(), 2);
    }

    #[test]
    fn empty_blob() {
        let (_dir, store) = store();
        let hash = store.put_bytes(b"").unwrap();
        assert_eq!(hash, BlobHash::of(b""));
        assert_eq!(store.read(&hash).unwrap(), Vec::<u8>::new());
        assert_eq!(store.len(&hash).unwrap(), 0);
    }

    #[test]
    fn dedup() {
        let (_dir, store) = store();
        let a = store.put_bytes(b"same").unwrap();
        let b = store.put_bytes(b"same").unwrap();
        let (c, _) = store.put_reader(&b"same"[..], None, None).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(store.list().unwrap(), vec![a]);
        assert!(entries(&store.dir().join(TMP_DIR)).is_empty());
    }

    #[test]
    fn concurrent_puts_of_the_same_blob() {
        let (_dir, store) = store();
        let content = data(300_000);
        let hashes: Vec<BlobHash> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| store.put_reader(&content[..], None, None).unwrap().0))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(hashes.iter().all(|h| *h == BlobHash::of(&content)));
        assert_eq!(store.list().unwrap(), vec![hashes[0]]);
        assert_eq!(store.read(&hashes[0]).unwrap(), content);
        assert!(entries(&store.dir().join(TMP_DIR)).is_empty());
    }

    #[test]
    fn mismatch_leaves_nothing_behind() {
        let (_dir, store) = store();
        let content = data(150_000);
        let wrong = BlobHash::of(b"something else");
        let err = store
            .put_reader(&content[..], Some(wrong), None)
            .unwrap_err();
        match err {
            StoreError::BlobMismatch { expected, actual } => {
                assert_eq!(expected, wrong.to_string());
                assert_eq!(actual, BlobHash::of(&content).to_string());
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(!store.contains(&wrong));
        assert!(!store.contains(&BlobHash::of(&content)));
        assert_empty(&store);
    }

    #[test]
    fn too_large_leaves_nothing_behind() {
        let (_dir, store) = store();
        let content = data(200_000);
        let err = store
            .put_reader(&content[..], None, Some(100_000))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::BlobTooLarge { limit: 100_000 }),
            "{err:?}"
        );
        // One byte over is too much, too.
        let err = store
            .put_reader(&content[..], None, Some(content.len() as u64 - 1))
            .unwrap_err();
        assert!(matches!(err, StoreError::BlobTooLarge { .. }), "{err:?}");
        assert_empty(&store);
        // Exactly at the limit is fine.
        let (hash, len) = store
            .put_reader(&content[..], None, Some(content.len() as u64))
            .unwrap();
        assert_eq!(len, content.len() as u64);
        assert!(store.contains(&hash));
    }

    #[test]
    fn reader_error_leaves_nothing_behind() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("boom"));
                }
                self.0 -= 1;
                buf.fill(7);
                Ok(buf.len())
            }
        }
        let (_dir, store) = store();
        let err = store.put_reader(Failing(3), None, None).unwrap_err();
        assert!(matches!(err, StoreError::Io(_)), "{err:?}");
        assert_empty(&store);
    }

    #[test]
    fn missing_blob_is_not_found() {
        let (_dir, store) = store();
        let hash = BlobHash::of(b"absent");
        assert!(!store.contains(&hash));
        for err in [
            store.open_blob(&hash).map(|_| ()).unwrap_err(),
            store.read(&hash).map(|_| ()).unwrap_err(),
            store.len(&hash).map(|_| ()).unwrap_err(),
            store.verify(&hash).map(|_| ()).unwrap_err(),
        ] {
            assert!(
                matches!(&err, StoreError::BlobNotFound(h) if *h == hash.to_string()),
                "{err:?}"
            );
        }
    }

    #[test]
    fn verify_detects_corruption() {
        let (_dir, store) = store();
        let hash = store.put_bytes(b"precious").unwrap();
        assert!(store.verify(&hash).unwrap());
        fs::write(store.path(&hash), b"tampered").unwrap();
        assert!(!store.verify(&hash).unwrap());
    }

    #[test]
    fn list_ignores_foreign_files() {
        let (_dir, store) = store();
        let hash = store.put_bytes(b"real").unwrap();
        let stray = BlobHash::of(b"stray").to_string();
        let hex = hash.to_string();
        let root = store.dir();
        fs::write(root.join(&hex[..2]).join("not-a-hash"), b"x").unwrap();
        fs::write(root.join(&hex[..2]).join(hex.to_uppercase()), b"x").unwrap();
        fs::write(root.join(&hex[..2]).join(format!("{hex}.tmp")), b"x").unwrap();
        // A valid name in the wrong fan-out directory.
        let wrong_fan = if &stray[..2] == "00" { "01" } else { "00" };
        fs::write(root.join(wrong_fan).join(&stray), b"stray").unwrap();
        // Valid names outside fan-out directories.
        fs::write(root.join(&stray), b"stray").unwrap();
        fs::create_dir(root.join("zz")).unwrap();
        fs::write(root.join("zz").join(&stray), b"stray").unwrap();
        fs::write(root.join(TMP_DIR).join(&stray), b"stray").unwrap();
        // A directory with a blob name.
        fs::create_dir(root.join(&stray[..2]).join(&stray)).unwrap();
        assert_eq!(store.list().unwrap(), vec![hash]);
    }

    #[test]
    fn gc_keeps_referenced_and_removes_the_rest() {
        let (_dir, store) = store();
        let keep = store.put_bytes(b"keep me").unwrap();
        let drop1 = store.put_bytes(b"drop me").unwrap();
        let drop2 = store.put_bytes(&data(10_000)).unwrap();

        let tmp = store.dir().join(TMP_DIR);
        let old = tmp.join("old.tmp");
        fs::write(&old, b"abandoned").unwrap();
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(SystemTime::now() - 2 * TEMP_MAX_AGE)
            .unwrap();
        let fresh = tmp.join("fresh.tmp");
        fs::write(&fresh, b"in flight").unwrap();

        let stats = store.gc(|h| *h == keep).unwrap();
        assert_eq!(
            stats,
            GcStats {
                blobs_kept: 1,
                blobs_removed: 2,
                temps_removed: 1,
                bytes_freed: (b"drop me".len() + 10_000 + b"abandoned".len()) as u64,
            }
        );
        assert_eq!(store.list().unwrap(), vec![keep]);
        assert_eq!(store.read(&keep).unwrap(), b"keep me");
        assert!(!store.contains(&drop1));
        assert!(!store.contains(&drop2));
        assert!(!old.exists());
        assert!(fresh.exists());

        // Nothing left to do.
        let stats = store.gc(|h| *h == keep).unwrap();
        assert_eq!(
            stats.blobs_removed + stats.temps_removed + stats.bytes_freed,
            0
        );
        // Blobs can be stored again after gc.
        assert_eq!(store.put_bytes(b"drop me").unwrap(), drop1);
    }

    #[test]
    fn partial_resumes_across_handles() {
        let (_dir, store) = store();
        let content = data(100_000);
        let target = BlobHash::of(&content);

        let mut first = store.partial(&target).unwrap();
        assert!(first.is_empty());
        assert_eq!(first.target(), target);
        first.append(&content[..40_000]).unwrap();
        assert_eq!(first.len(), 40_000);
        drop(first);
        assert!(!store.contains(&target));

        let mut second = store.partial(&target).unwrap();
        assert_eq!(second.len(), 40_000);
        let resume = second.len() as usize;
        second.append(&content[resume..70_000]).unwrap();
        second.append(&content[70_000..]).unwrap();
        assert_eq!(second.len(), content.len() as u64);
        second.finish().unwrap();

        assert_eq!(store.read(&target).unwrap(), content);
        assert!(store.verify(&target).unwrap());
        assert!(entries(&store.dir().join(PARTIAL_DIR)).is_empty());
        // A later download of a blob already present just cleans up.
        let mut again = store.partial(&target).unwrap();
        again.append(&content).unwrap();
        again.finish().unwrap();
        assert!(entries(&store.dir().join(PARTIAL_DIR)).is_empty());
        assert_eq!(store.list().unwrap(), vec![target]);
    }

    #[test]
    fn partial_mismatch_is_deleted() {
        let (_dir, store) = store();
        let target = BlobHash::of(b"the real thing");
        let mut partial = store.partial(&target).unwrap();
        partial.append(b"the real thin").unwrap();
        partial.append(b"k").unwrap();
        let err = partial.finish().unwrap_err();
        assert!(matches!(err, StoreError::BlobMismatch { .. }), "{err:?}");
        assert!(entries(&store.dir().join(PARTIAL_DIR)).is_empty());
        assert_empty(&store);

        // A fresh start works, and discard removes the file.
        let partial = store.partial(&target).unwrap();
        assert!(partial.is_empty());
        partial.discard().unwrap();
        assert!(entries(&store.dir().join(PARTIAL_DIR)).is_empty());
    }

    #[test]
    fn hash_strings() {
        let hash = BlobHash::of(b"hello");
        let hex = hash.to_string();
        assert_eq!(hex, blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(hex.len(), 64);
        assert_eq!(hex.parse::<BlobHash>().unwrap(), hash);
        assert_eq!(format!("{hash:?}"), format!("BlobHash({hex})"));
        assert_eq!(BlobHash::from_bytes(*hash.as_bytes()), hash);

        let long = "a".repeat(1000);
        let invalid = [
            String::new(),
            hex[..63].to_owned(),
            format!("{hex}0"),
            hex.to_uppercase(),
            format!("g{}", &hex[1..]),
            format!(" {}", &hex[1..]),
            format!("{} ", &hex[..63]),
            format!("0x{}", &hex[2..]),
            format!("é{}", &hex[2..]),
            long.clone(),
        ];
        for s in &invalid {
            let err = s.parse::<BlobHash>().unwrap_err();
            assert!(matches!(err, StoreError::InvalidHash(_)), "{s:?}: {err:?}");
        }
        // Long inputs are quoted, not copied whole, in the error.
        let StoreError::InvalidHash(quoted) = long.parse::<BlobHash>().unwrap_err() else {
            unreachable!()
        };
        assert!(quoted.len() < 100);
        assert!(
            "nope"
                .parse::<BlobHash>()
                .unwrap_err()
                .to_string()
                .contains("64 lowercase hexadecimal")
        );
    }

    #[test]
    fn hash_serde() {
        let hash = BlobHash::of(b"serde");
        let bytes = postcard::to_allocvec(&hash).unwrap();
        // A length prefix and the 64 hex characters.
        assert_eq!(bytes.len(), 65);
        assert_eq!(&bytes[1..], hash.to_string().as_bytes());
        assert_eq!(postcard::from_bytes::<BlobHash>(&bytes).unwrap(), hash);

        let bad = postcard::to_allocvec(&hash.to_string().to_uppercase()).unwrap();
        assert!(postcard::from_bytes::<BlobHash>(&bad).is_err());
    }

    /// Yields at most `step` bytes per read, and `Pending` every other poll.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        pending: bool,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.pending = !self.pending;
            if self.pending {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = self.step.min(buf.remaining()).min(self.data.len());
            let (head, tail) = self.data.split_at(n);
            buf.put_slice(head);
            self.data = tail;
            Poll::Ready(Ok(()))
        }
    }

    /// Yields some data, then fails.
    struct FailingAsync(usize);

    impl AsyncRead for FailingAsync {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.0 == 0 {
                return Poll::Ready(Err(io::Error::other("boom")));
            }
            self.0 -= 1;
            buf.put_slice(&[1; 1000]);
            Poll::Ready(Ok(()))
        }
    }

    /// Never yields anything.
    struct Stall;

    impl AsyncRead for Stall {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn async_put() {
        let (_dir, store) = store();
        let content = data(500_000);
        let hash = BlobHash::of(&content);

        let (h, len) = store
            .put_async(&content[..], Some(hash), None)
            .await
            .unwrap();
        assert_eq!((h, len), (hash, content.len() as u64));
        assert_eq!(store.read(&hash).unwrap(), content);

        // Dedup, through a slow reader.
        let trickle = Trickle {
            data: &content,
            step: 7_777,
            pending: false,
        };
        assert_eq!(store.put_async(trickle, None, None).await.unwrap().0, hash);
        assert_eq!(store.list().unwrap(), vec![hash]);
        assert!(entries(&store.dir().join(TMP_DIR)).is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn async_put_failures_leave_nothing_behind() {
        let (_dir, store) = store();
        let content = data(300_000);

        let wrong = BlobHash::of(b"other");
        let err = store
            .put_async(&content[..], Some(wrong), None)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::BlobMismatch { .. }), "{err:?}");

        let err = store
            .put_async(&content[..], None, Some(200_000))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::BlobTooLarge { limit: 200_000 }),
            "{err:?}"
        );

        let err = store
            .put_async(FailingAsync(5), None, None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Io(e) if e.to_string() == "boom"),
            "{err:?}"
        );

        // A put abandoned halfway.
        let never_ends = Trickle {
            data: &content,
            step: 1000,
            pending: false,
        };
        let chained = tokio::io::AsyncReadExt::chain(never_ends, Stall);
        let timed_out = tokio::time::timeout(
            Duration::from_millis(50),
            store.put_async(chained, None, None),
        )
        .await;
        assert!(timed_out.is_err());
        // The blocking writer notices the dropped channel and cleans up.
        for _ in 0..200 {
            if entries(&store.dir().join(TMP_DIR)).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_empty(&store);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn random_content_roundtrips(content in proptest::collection::vec(any::<u8>(), 0..200_000)) {
            let (_dir, store) = store();
            let (hash, len) = store.put_reader(&content[..], None, None).unwrap();
            prop_assert_eq!(*hash.as_bytes(), *blake3::hash(&content).as_bytes());
            prop_assert_eq!(len, content.len() as u64);
            prop_assert_eq!(store.read(&hash).unwrap(), content);
            prop_assert_eq!(hash.to_string().parse::<BlobHash>().unwrap(), hash);
        }
    }
}
