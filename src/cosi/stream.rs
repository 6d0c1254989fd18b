//! The streaming pipeline: one compressed partition image from a [`Source`] onto a
//! block device (or file).
//!
//! ```text
//!  reader ──► hasher (SHA-384 of compressed bytes)
//!    │
//!    └────► decoder (zstd, bounded window) ──► writer (large writes, fsync)
//! ```
//!
//! Each stage runs on its own thread; stages are joined by bounded channels, so the
//! slowest stage alone sets the pace and memory stays bounded whatever the image size
//! (at most [`QUEUE_DEPTH`] chunks in flight per channel).
//!
//! The SHA-384 is only known once the last compressed byte has been read, i.e. after
//! most of the image has been written. A failed [`stream_image`] therefore leaves the
//! target with arbitrary content: the caller (the engine) must treat the volume as
//! unusable — never boot it, mark it so in the Host Status — until a later stream
//! succeeds.
//!
//! Any failure stops all stages promptly and returns a [`TridentError`] of category
//! `servicing` naming the image and the device, with one of these codes:
//! `image-hash-mismatch`, `image-short-read` (the source ended early),
//! `image-decode-failed` (not zstd, corrupt, or trailing bytes after the last frame),
//! `image-size-mismatch` (decompressed length differs from `uncompressedSize`; a stream
//! that expands further is stopped at `uncompressedSize + 1` bytes and nothing past
//! `uncompressedSize` is written), `image-target-too-small`, `image-write-failed`,
//! `image-target-busy` (the device is mounted or claimed: it is opened with `O_EXCL`),
//! `image-source-failed`, `image-stream-cancelled`.

use crate::cosi::source::Source;
use crate::error::TridentError;
use anyhow::{Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use sha2::{Digest, Sha384};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Size of the compressed chunks read from the source.
pub const READ_CHUNK: usize = 1 << 20;
/// Size of the decompressed chunks handed to the writer (one `pwrite` each).
pub const WRITE_CHUNK: usize = 4 << 20;
/// Chunks in flight per channel.
pub const QUEUE_DEPTH: usize = 4;
/// Granularity of zero-block skipping.
pub const ZERO_BLOCK: usize = 64 << 10;
/// Alignment of decompressed buffers, offsets and lengths for `O_DIRECT` writes.
pub const DIRECT_ALIGN: usize = 4096;
/// Minimum time between two progress callbacks (the final one is always sent).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// One image to stream.
pub struct StreamJob<'a> {
    /// Image name for messages (e.g. the partition image's path in the COSI).
    pub name: String,
    /// Where the COSI file lives.
    pub source: &'a dyn Source,
    /// Offset of the compressed image inside the source.
    pub offset: u64,
    /// Length of the compressed image.
    pub compressed_size: u64,
    /// Expected SHA-384 (hex) of the compressed bytes.
    pub sha384: String,
    /// Exact decompressed length.
    pub uncompressed_size: u64,
    /// Block device or regular file to write to (a file is created if missing, never
    /// truncated).
    pub target: PathBuf,
    /// Seek over all-zero blocks instead of writing them. Only correct when the target
    /// is known to read back zeros (fresh sparse file, discarded device).
    pub skip_zero_blocks: bool,
    /// Largest zstd window accepted (log2 bytes); `None` keeps zstd's default (27).
    pub max_window_log: Option<u32>,
}

/// Progress of one image, in decompressed bytes written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub name: String,
    pub done: u64,
    pub total: u64,
}

/// Final figures of a successful stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStats {
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    /// Bytes actually written (the rest was skipped as zero blocks).
    pub written_bytes: u64,
    pub skipped_zero_bytes: u64,
    /// SHA-384 of the compressed bytes (hex), equal to the expected one.
    pub sha384: String,
    pub elapsed: Duration,
}

/// Overall progress over several images (sum of their byte counts).
#[derive(Debug, Default)]
pub struct ProgressAggregator {
    done: Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
    total: u64,
}

impl ProgressAggregator {
    /// `total` is the sum of the uncompressed sizes of all images to stream.
    pub fn new(total: u64) -> Self {
        Self {
            done: Mutex::new(Default::default()),
            total,
        }
    }

    /// Record one image's progress; returns `(done, total)` over all images.
    pub fn update(&self, p: &Progress) -> (u64, u64) {
        let mut m = self.done.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(p.name.clone(), (p.done, p.total));
        (m.values().map(|v| v.0).sum(), self.total)
    }

    /// Overall percentage (0–100).
    pub fn percent(&self, p: &Progress) -> u32 {
        let (done, total) = self.update(p);
        if total == 0 {
            100
        } else {
            ((done as u128 * 100) / total as u128).min(100) as u32
        }
    }
}

/// Why a stage stopped. The first one recorded wins, except that a known hash
/// mismatch outranks everything (it says the input is not the expected image).
#[derive(Debug)]
struct Failure {
    code: &'static str,
    what: String,
    cause: Option<anyhow::Error>,
}

impl Failure {
    fn new(code: &'static str, what: impl Into<String>) -> Self {
        Self {
            code,
            what: what.into(),
            cause: None,
        }
    }
    fn because(mut self, cause: anyhow::Error) -> Self {
        self.cause = Some(cause);
        self
    }
}

/// Shared stop flag + first failure.
struct Stop<'a> {
    cancel: &'a AtomicBool,
    failed: AtomicBool,
    first: Mutex<Option<Failure>>,
}

impl Stop<'_> {
    fn fail(&self, f: Failure) {
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(f);
        }
        self.failed.store(true, Ordering::SeqCst);
    }
    /// Whether a stage should stop now; records cancellation as the failure.
    fn stopped(&self) -> bool {
        if self.failed.load(Ordering::SeqCst) {
            return true;
        }
        if self.cancel.load(Ordering::SeqCst) {
            self.fail(Failure::new("image-stream-cancelled", "cancelled"));
            return true;
        }
        false
    }
}

/// Stream one compressed image onto its target. See the module documentation for the
/// pipeline and the error codes.
pub fn stream_image(
    job: &StreamJob,
    progress: &(dyn Fn(&Progress) + Sync),
    cancel: &AtomicBool,
) -> Result<StreamStats> {
    let start = Instant::now();
    let device = job.target.display().to_string();
    let error = |f: Failure| -> anyhow::Error {
        let mut msg = format!(
            "streaming image '{}' from {} to {}: {}",
            job.name,
            job.source.describe(),
            device,
            f.what
        );
        if let Some(c) = &f.cause {
            msg.push_str(&format!(": {c:#}"));
        }
        anyhow::Error::new(TridentError::servicing(f.code, msg).on_device(device.clone()))
    };

    let expected = job.sha384.trim().to_ascii_lowercase();
    if expected.len() != 96 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(anyhow::Error::new(
            TridentError::invalid_input(
                "image-hash-invalid",
                format!(
                    "image '{}': sha384 '{}' is not 96 hexadecimal digits",
                    job.name, job.sha384
                ),
            )
            .on_device(device.clone()),
        ));
    }

    let target = open_target(&job.target, job.uncompressed_size).map_err(&error)?;
    tracing::info!(
        image = %job.name,
        source = %job.source.describe(),
        target = %device,
        compressed = job.compressed_size,
        uncompressed = job.uncompressed_size,
        "streaming image"
    );

    let stop = Stop {
        cancel,
        failed: AtomicBool::new(false),
        first: Mutex::new(None),
    };
    let (to_hash, hash_rx) = bounded::<Arc<Vec<u8>>>(QUEUE_DEPTH * 4);
    let (to_decode, decode_rx) = bounded::<Arc<Vec<u8>>>(QUEUE_DEPTH * 4);
    let (to_write, write_rx) = bounded::<Block>(QUEUE_DEPTH);
    let (recycle_tx, recycle_rx) = bounded::<Block>(QUEUE_DEPTH + 2);

    let (read_res, hash_res, decode_res, write_res) = std::thread::scope(|s| {
        let stop = &stop;
        let reader = s.spawn(move || read_stage(job, stop, to_hash, to_decode));
        let hasher = s.spawn(move || hash_stage(hash_rx));
        let decoder = s.spawn(move || decode_stage(job, stop, decode_rx, to_write, recycle_rx));
        let writer =
            s.spawn(move || write_stage(job, target, stop, write_rx, recycle_tx, progress));
        (reader.join(), hasher.join(), decoder.join(), writer.join())
    });
    let panicked = |what: &str| {
        error(Failure::new(
            "image-stream-internal",
            format!("{what} thread panicked"),
        ))
    };
    let compressed_bytes = read_res.map_err(|_| panicked("reader"))?;
    let actual = hash_res.map_err(|_| panicked("hasher"))?;
    let decoded = decode_res.map_err(|_| panicked("decoder"))?;
    let (written_bytes, skipped) = write_res.map_err(|_| panicked("writer"))?;

    // The hash is authoritative when the whole compressed range was read.
    if let (Some(total), Some(actual)) = (compressed_bytes, &actual) {
        if total == job.compressed_size && *actual != expected {
            return Err(error(Failure::new(
                "image-hash-mismatch",
                format!(
                    "SHA-384 of the compressed image is {actual}, expected {expected}; \
                     the target holds unverified data and must not be used"
                ),
            )));
        }
    }
    if let Some(f) = stop.first.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(error(f));
    }
    let (Some(compressed_bytes), Some(sha384), Some(uncompressed_bytes)) =
        (compressed_bytes, actual, decoded)
    else {
        return Err(error(Failure::new(
            "image-stream-internal",
            "a pipeline stage stopped without reporting why",
        )));
    };
    let stats = StreamStats {
        compressed_bytes,
        uncompressed_bytes,
        written_bytes,
        skipped_zero_bytes: skipped,
        sha384,
        elapsed: start.elapsed(),
    };
    tracing::info!(
        image = %job.name,
        target = %device,
        bytes = stats.uncompressed_bytes,
        seconds = stats.elapsed.as_secs_f64(),
        "image streamed and verified"
    );
    Ok(stats)
}

/// The target, opened twice for a block device: buffered, and with `O_DIRECT` so that
/// large aligned writes bypass the page cache (one copy less, no page-cache churn).
struct Target {
    buffered: File,
    direct: Option<File>,
}

/// Open the target for writing and check that it can hold the image.
fn open_target(path: &Path, size: u64) -> std::result::Result<Target, Failure> {
    let io = |what: String, e: std::io::Error| {
        Failure::new("image-write-failed", what).because(anyhow::Error::new(e))
    };
    use std::os::unix::fs::OpenOptionsExt;
    let is_block = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
    let file = if is_block {
        // O_EXCL on a block device is an exclusive claim: it fails with EBUSY while
        // the device (or a partition of it) is mounted or claimed by someone else.
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_EXCL)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    Failure::new(
                        "image-target-busy",
                        "the device is in use (mounted, or held by another program); \
                         refusing to write to it",
                    )
                    .because(anyhow::Error::new(e))
                } else {
                    io(format!("opening {}", path.display()), e)
                }
            })?
    } else {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io(format!("opening {}", path.display()), e))?
    };
    let meta = file
        .metadata()
        .map_err(|e| io(format!("inspecting {}", path.display()), e))?;
    if meta.file_type().is_block_device() {
        let dev_size = block_device_size(&file)
            .map_err(|e| io(format!("reading the size of {}", path.display()), e))?;
        if dev_size < size {
            return Err(Failure::new(
                "image-target-too-small",
                format!("the device holds {dev_size} bytes but the image needs {size} bytes"),
            ));
        }
        // Not every block device accepts O_DIRECT; buffered writes are the fallback.
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .map_err(|e| tracing::debug!(target = %path.display(), "no O_DIRECT: {e}"))
            .ok();
        return Ok(Target {
            buffered: file,
            direct,
        });
    }
    Ok(Target {
        buffered: file,
        direct: None,
    })
}

/// A decompressed chunk inside a buffer whose data starts at a [`DIRECT_ALIGN`]ed
/// address.
struct Block {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Block {
    fn new() -> Self {
        let buf = vec![0u8; WRITE_CHUNK + DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        Self { buf, start, len: 0 }
    }
    fn space(&mut self, cap: usize) -> &mut [u8] {
        &mut self.buf[self.start..self.start + cap]
    }
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

fn block_device_size(file: &File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 into `size`; the fd is open.
    unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }.map_err(std::io::Error::from)?;
    Ok(size)
}

/// Read the compressed range, feeding the hasher and the decoder. Returns the number
/// of bytes read when the whole range was read.
fn read_stage(
    job: &StreamJob,
    stop: &Stop,
    to_hash: Sender<Arc<Vec<u8>>>,
    to_decode: Sender<Arc<Vec<u8>>>,
) -> Option<u64> {
    let mut reader = match job
        .source
        .read_range(job.offset, job.compressed_size)
        .with_context(|| format!("opening range at offset {}", job.offset))
    {
        Ok(r) => r,
        Err(e) => {
            stop.fail(Failure::new("image-source-failed", "reading the source").because(e));
            return None;
        }
    };
    let mut total = 0u64;
    while total < job.compressed_size {
        if stop.stopped() {
            return None;
        }
        let want = (job.compressed_size - total).min(READ_CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            // Checked per read, not per chunk: a slow source must not delay a stop.
            if filled > 0 && stop.stopped() {
                return None;
            }
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    stop.fail(
                        Failure::new(
                            "image-source-failed",
                            format!("reading the source at offset {}", job.offset + total),
                        )
                        .because(anyhow::Error::new(e)),
                    );
                    return None;
                }
            }
        }
        buf.truncate(filled);
        total += filled as u64;
        if filled > 0 {
            let chunk = Arc::new(buf);
            if to_hash.send(chunk.clone()).is_err() || to_decode.send(chunk).is_err() {
                return None;
            }
        }
        if filled < want {
            stop.fail(Failure::new(
                "image-short-read",
                format!(
                    "the source ended after {total} of {} compressed bytes",
                    job.compressed_size
                ),
            ));
            return None;
        }
    }
    Some(total)
}

fn hash_stage(rx: Receiver<Arc<Vec<u8>>>) -> Option<String> {
    let mut h = Sha384::new();
    for chunk in rx {
        h.update(&chunk[..]);
    }
    // Whether all bytes arrived is judged by the caller from the reader's count.
    Some(hex::encode(h.finalize()))
}

/// A `BufRead` over the chunks arriving from the reader.
struct ChunkReader<'a> {
    rx: Receiver<Arc<Vec<u8>>>,
    cur: Arc<Vec<u8>>,
    pos: usize,
    stop: &'a Stop<'a>,
}

impl BufRead for ChunkReader<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.pos >= self.cur.len() {
            if self.stop.stopped() {
                return Err(std::io::Error::other("pipeline stopped"));
            }
            match self.rx.recv() {
                Ok(c) => {
                    self.cur = c;
                    self.pos = 0;
                }
                Err(_) => return Ok(&[]),
            }
        }
        Ok(&self.cur[self.pos..])
    }
    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.cur.len());
    }
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Decompress, enforcing the exact decompressed length. Returns the decompressed
/// length on success.
fn decode_stage(
    job: &StreamJob,
    stop: &Stop,
    rx: Receiver<Arc<Vec<u8>>>,
    to_write: Sender<Block>,
    recycle: Receiver<Block>,
) -> Option<u64> {
    let input = ChunkReader {
        rx,
        cur: Arc::new(Vec::new()),
        pos: 0,
        stop,
    };
    let mut decoder = match zstd::stream::read::Decoder::with_buffer(input) {
        Ok(d) => d,
        Err(e) => {
            stop.fail(
                Failure::new("image-decode-failed", "starting the zstd decoder")
                    .because(anyhow::Error::new(e)),
            );
            return None;
        }
    };
    if let Some(log) = job.max_window_log {
        if let Err(e) = decoder.window_log_max(log) {
            stop.fail(
                Failure::new(
                    "image-decode-failed",
                    format!("setting zstd window log {log}"),
                )
                .because(anyhow::Error::new(e)),
            );
            return None;
        }
    }
    let limit = job.uncompressed_size;
    let mut total = 0u64;
    loop {
        let mut block = recycle.try_recv().unwrap_or_else(|_| Block::new());
        // Never ask for more than one byte past the declared size: a stream that
        // expands beyond it is stopped there.
        let cap = (limit - total.min(limit))
            .saturating_add(1)
            .min(WRITE_CHUNK as u64) as usize;
        let buf = block.space(cap);
        let mut filled = 0;
        while filled < cap {
            match decoder.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if !stop.stopped() {
                        stop.fail(
                            Failure::new(
                                "image-decode-failed",
                                format!(
                                    "decompressing (zstd) after {} decompressed bytes; the \
                                     compressed data is corrupt, truncated, or followed by \
                                     trailing bytes",
                                    total + filled as u64
                                ),
                            )
                            .because(anyhow::Error::new(e)),
                        );
                    }
                    return None;
                }
            }
        }
        if total + filled as u64 > limit {
            stop.fail(Failure::new(
                "image-size-mismatch",
                format!(
                    "the image decompresses to more than its declared uncompressedSize \
                     of {limit} bytes; stopped there"
                ),
            ));
            return None;
        }
        total += filled as u64;
        if filled == 0 {
            break;
        }
        block.len = filled;
        if to_write.send(block).is_err() {
            return None;
        }
    }
    if stop.stopped() {
        return None;
    }
    if total != limit {
        stop.fail(Failure::new(
            "image-size-mismatch",
            format!(
                "the image decompresses to {total} bytes but its declared uncompressedSize \
                 is {limit}"
            ),
        ));
        return None;
    }
    Some(total)
}

/// Whether a block is all zeros (OR-folds 16-byte words, which vectorizes well).
fn is_zero(b: &[u8]) -> bool {
    let words = b.chunks_exact(16);
    let rest = words.remainder();
    let acc = words.fold(0u128, |acc, w| {
        let mut x = [0u8; 16];
        x.copy_from_slice(w);
        acc | u128::from_ne_bytes(x)
    });
    acc == 0 && rest.iter().all(|&x| x == 0)
}

impl Target {
    /// Write `data` at `offset`: through `O_DIRECT` when address, length and offset
    /// are aligned, buffered otherwise (the unaligned tail of an image). A device that
    /// refuses a direct write (`EINVAL`) is written buffered from then on.
    fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
        let aligned = data.as_ptr() as usize % DIRECT_ALIGN == 0
            && data.len() % DIRECT_ALIGN == 0
            && offset % DIRECT_ALIGN as u64 == 0;
        if let (true, Some(direct)) = (aligned, &self.direct) {
            match direct.write_all_at(data, offset) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!("O_DIRECT write refused ({e}); writing buffered");
                    self.direct = None;
                }
                other => return other,
            }
        }
        self.buffered.write_all_at(data, offset)
    }

    /// Give a regular file its full length and flush everything to stable storage.
    fn finish(&self, len: u64) -> std::io::Result<()> {
        let meta = self.buffered.metadata()?;
        if meta.file_type().is_file() && meta.len() < len {
            self.buffered.set_len(len)?;
        }
        if let Some(d) = &self.direct {
            d.sync_all()?;
        }
        self.buffered.sync_all()
    }
}

/// Write decompressed chunks in order; returns `(written, skipped)` bytes.
fn write_stage(
    job: &StreamJob,
    mut target: Target,
    stop: &Stop,
    rx: Receiver<Block>,
    recycle: Sender<Block>,
    progress: &(dyn Fn(&Progress) + Sync),
) -> (u64, u64) {
    let mut offset = 0u64;
    let mut written = 0u64;
    let mut skipped = 0u64;
    let mut last_report = Instant::now();
    let report = |done: u64| {
        progress(&Progress {
            name: job.name.clone(),
            done,
            total: job.uncompressed_size,
        })
    };
    report(0);
    for block in rx {
        if stop.stopped() {
            return (written, skipped);
        }
        let data = block.data();
        let res = if job.skip_zero_blocks {
            write_skipping_zeros(&mut target, data, offset, &mut written, &mut skipped)
        } else {
            target
                .write_at(data, offset)
                .map(|()| written += data.len() as u64)
        };
        if let Err(e) = res {
            stop.fail(
                Failure::new("image-write-failed", format!("writing at offset {offset}"))
                    .because(anyhow::Error::new(e)),
            );
            return (written, skipped);
        }
        offset += data.len() as u64;
        if last_report.elapsed() >= PROGRESS_INTERVAL {
            report(offset);
            last_report = Instant::now();
        }
        // Hand the buffer back to the decoder; dropping it is fine when the queue is full.
        let _ = recycle.try_send(block);
    }
    if stop.stopped() || offset != job.uncompressed_size {
        // The decoder reports why it stopped short.
        return (written, skipped);
    }
    if let Err(e) = target.finish(offset) {
        stop.fail(
            Failure::new("image-write-failed", "flushing (fsync) the target")
                .because(anyhow::Error::new(e)),
        );
        return (written, skipped);
    }
    report(offset);
    (written, skipped)
}

fn write_skipping_zeros(
    target: &mut Target,
    buf: &[u8],
    base: u64,
    written: &mut u64,
    skipped: &mut u64,
) -> std::io::Result<()> {
    // Coalesce runs of non-zero blocks into one write.
    let mut run_start: Option<usize> = None;
    let mut pos = 0;
    while pos < buf.len() {
        let end = (pos + ZERO_BLOCK).min(buf.len());
        if is_zero(&buf[pos..end]) {
            if let Some(s) = run_start.take() {
                target.write_at(&buf[s..pos], base + s as u64)?;
                *written += (pos - s) as u64;
            }
            *skipped += (end - pos) as u64;
        } else if run_start.is_none() {
            run_start = Some(pos);
        }
        pos = end;
    }
    if let Some(s) = run_start {
        target.write_at(&buf[s..], base + s as u64)?;
        *written += (buf.len() - s) as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cosi::source::MemSource;
    use crate::error::find_trident_error;

    fn compress(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 3).unwrap()
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha384::digest(data))
    }

    fn job<'a>(src: &'a MemSource, comp: &[u8], raw_len: u64, target: PathBuf) -> StreamJob<'a> {
        StreamJob {
            name: "root".into(),
            source: src,
            offset: 0,
            compressed_size: comp.len() as u64,
            sha384: sha(comp),
            uncompressed_size: raw_len,
            target,
            skip_zero_blocks: false,
            max_window_log: None,
        }
    }

    fn code(e: &anyhow::Error) -> String {
        find_trident_error(e).map(|t| t.code).unwrap_or_default()
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        let mut x = 0x1234_5678u32;
        for (i, b) in v.iter_mut().enumerate() {
            // Mix of compressible and zero regions.
            if (i / 100_000) % 3 == 0 {
                continue;
            }
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *b = (x >> 24) as u8 & 0x0f;
        }
        v
    }

    #[test]
    fn streams_into_file_with_offset_and_zero_skip() {
        let raw = sample(9 << 20);
        let comp = compress(&raw);
        let mut cosi = vec![7u8; 1000];
        cosi.extend_from_slice(&comp);
        let src = MemSource::new("mem", cosi);
        let dir = tempfile::tempdir().unwrap();
        for skip in [false, true] {
            let t = dir.path().join(format!("out-{skip}"));
            let mut j = job(&src, &comp, raw.len() as u64, t.clone());
            j.offset = 1000;
            j.skip_zero_blocks = skip;
            let calls = std::sync::atomic::AtomicU64::new(0);
            let stats = stream_image(
                &j,
                &|p| {
                    assert!(p.done <= p.total);
                    calls.fetch_add(1, Ordering::SeqCst);
                },
                &AtomicBool::new(false),
            )
            .unwrap();
            assert_eq!(std::fs::read(&t).unwrap(), raw);
            assert_eq!(stats.uncompressed_bytes, raw.len() as u64);
            assert_eq!(stats.sha384, sha(&comp));
            assert!(calls.load(Ordering::SeqCst) >= 2);
            if skip {
                assert!(stats.skipped_zero_bytes > 0);
            } else {
                assert_eq!(stats.written_bytes, raw.len() as u64);
            }
        }
    }

    #[test]
    fn bomb_is_stopped_at_declared_size() {
        let raw = vec![0u8; 64 << 20];
        let comp = compress(&raw);
        let src = MemSource::new("mem", comp.clone());
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("out");
        let j = job(&src, &comp, 1 << 20, t.clone());
        let e = stream_image(&j, &|_| {}, &AtomicBool::new(false)).unwrap_err();
        assert_eq!(code(&e), "image-size-mismatch", "{e:#}");
        assert!(std::fs::metadata(&t).unwrap().len() <= 1 << 20);
    }

    #[test]
    fn bad_hash_string_is_invalid_input() {
        let src = MemSource::new("mem", vec![]);
        let mut j = job(&src, &[], 0, PathBuf::from("/nonexistent/x"));
        j.sha384 = "abc".into();
        let e = stream_image(&j, &|_| {}, &AtomicBool::new(false)).unwrap_err();
        assert_eq!(code(&e), "image-hash-invalid");
    }

    #[test]
    fn aggregator_sums() {
        let a = ProgressAggregator::new(200);
        let p = |n: &str, d| Progress {
            name: n.into(),
            done: d,
            total: 100,
        };
        assert_eq!(a.update(&p("a", 50)), (50, 200));
        assert_eq!(a.update(&p("b", 100)), (150, 200));
        assert_eq!(a.percent(&p("a", 100)), 100);
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 13]));
        let mut v = vec![0u8; 100];
        v[99] = 1;
        assert!(!is_zero(&v));
        v[99] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }
}
