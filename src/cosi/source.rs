//! Byte sources a COSI file is read from.
//!
//! A [`Source`] gives random access by byte range, so the reader fetches only the tar
//! headers and members it needs. `file://` lives here; HTTP(S) and OCI sources live in
//! their own modules and implement the same trait.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How remote sources (HTTP(S), OCI) connect, retry and trust servers.
///
/// Proxies come from the environment (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`), which
/// reqwest honours by default.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Extra PEM CA certificate(s) to trust (private registries, test servers), in
    /// addition to the built-in web roots.
    pub ca_file: Option<PathBuf>,
    /// How many times one range read is resumed after a dropped connection or a
    /// transient server error (5xx) before giving up.
    pub retries: u32,
    /// First backoff delay between retries; doubled after each attempt, capped at
    /// [`SourceOptions::max_backoff`].
    pub initial_backoff: Duration,
    /// Upper bound of the backoff delay.
    pub max_backoff: Duration,
    /// Time allowed to establish a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed for any single read or write on a connection (not the whole
    /// transfer).
    pub read_timeout: Duration,
    /// Allow plain `http://` for OCI registries on loopback (`localhost`, `127.0.0.1`,
    /// `[::1]`). Registries elsewhere always use HTTPS.
    pub oci_insecure_loopback: bool,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            ca_file: None,
            retries: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            oci_insecure_loopback: true,
        }
    }
}

/// Random access to the bytes of one COSI file.
pub trait Source: Send + Sync {
    /// Human-readable name (path or URL) for logs and error messages.
    fn describe(&self) -> String;
    /// Total length in bytes.
    fn size(&self) -> Result<u64>;
    /// A reader over `[offset, offset + len)`. Reading past the end of the source is
    /// an error of the returned reader (short read), not silent truncation.
    fn read_range(&self, offset: u64, len: u64) -> Result<Box<dyn Read + Send>>;

    /// Read `[offset, offset + len)` fully into memory (for headers and metadata).
    fn read_exact_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(len as usize);
        self.read_range(offset, len)?
            .read_to_end(&mut buf)
            .with_context(|| {
                format!(
                    "reading {len} bytes at offset {offset} of {}",
                    self.describe()
                )
            })?;
        if buf.len() as u64 != len {
            anyhow::bail!(
                "short read from {}: wanted {len} bytes at offset {offset}, got {}",
                self.describe(),
                buf.len()
            );
        }
        Ok(buf)
    }
}

/// A local file.
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    pub fn new(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Source for FileSource {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn size(&self) -> Result<u64> {
        Ok(std::fs::metadata(&self.path)
            .with_context(|| format!("reading size of {}", self.path.display()))?
            .len())
    }

    fn read_range(&self, offset: u64, len: u64) -> Result<Box<dyn Read + Send>> {
        let mut f =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        f.seek(SeekFrom::Start(offset))
            .with_context(|| format!("seeking to {offset} in {}", self.path.display()))?;
        Ok(Box::new(f.take(len)))
    }
}

/// An in-memory source (tests, and metadata already fetched).
#[derive(Debug, Clone)]
pub struct MemSource {
    name: String,
    data: std::sync::Arc<Vec<u8>>,
}

impl MemSource {
    pub fn new(name: impl Into<String>, data: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            data: std::sync::Arc::new(data),
        }
    }
}

impl Source for MemSource {
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn size(&self) -> Result<u64> {
        Ok(self.data.len() as u64)
    }
    fn read_range(&self, offset: u64, len: u64) -> Result<Box<dyn Read + Send>> {
        let start = (offset as usize).min(self.data.len());
        let end = (offset.saturating_add(len) as usize).min(self.data.len());
        Ok(Box::new(std::io::Cursor::new(
            self.data[start..end].to_vec(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_range_and_short_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let s = FileSource::new(&p).unwrap();
        assert_eq!(s.size().unwrap(), 10);
        assert_eq!(s.read_exact_at(3, 4).unwrap(), b"3456");
        assert!(s.read_exact_at(8, 4).is_err());
    }
}
