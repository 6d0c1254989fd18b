//! The streaming pipeline against real targets: a file, a loop device over a file in
//! /dev/shm (root), a tiny tmpfs (real ENOSPC), and every failure path.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::*;
use trident::cosi::source::{FileSource, Source};
use trident::cosi::stream::{stream_image, StreamJob};

/// A COSI-like container: `prefix` junk bytes, then the compressed image, then a tail.
struct Fixture {
    _dir: tempfile::TempDir,
    cosi: PathBuf,
    raw: Vec<u8>,
    comp: Vec<u8>,
    offset: u64,
}

fn fixture(raw: Vec<u8>, comp: Vec<u8>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cosi = dir.path().join("image.cosi");
    let mut bytes = vec![0x5a; 4096];
    bytes.extend_from_slice(&comp);
    bytes.extend_from_slice(&[0u8; 1024]);
    std::fs::write(&cosi, bytes).unwrap();
    Fixture {
        _dir: dir,
        cosi,
        raw,
        comp,
        offset: 4096,
    }
}

fn job<'a>(f: &Fixture, src: &'a dyn Source, target: &Path) -> StreamJob<'a> {
    StreamJob {
        name: "root.rawzst".into(),
        source: src,
        offset: f.offset,
        compressed_size: f.comp.len() as u64,
        sha384: sha384_hex(&f.comp),
        uncompressed_size: f.raw.len() as u64,
        target: target.to_path_buf(),
        skip_zero_blocks: false,
        max_window_log: None,
    }
}

fn run(j: &StreamJob) -> anyhow::Result<trident::cosi::stream::StreamStats> {
    stream_image(j, &|_| {}, &AtomicBool::new(false))
}

fn standard() -> Fixture {
    let raw = sample(12 << 20, 7);
    let comp = zstd::encode_all(&raw[..], 3).unwrap();
    fixture(raw, comp)
}

/// Compressed with raw (stored) blocks and no content checksum, so a flipped byte still
/// decodes: only the SHA-384 can catch it.
fn incompressible() -> Fixture {
    let mut raw = vec![0u8; 3 << 20];
    let mut x = 0x9e37_79b9u64;
    for b in raw.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    enc.include_checksum(false).unwrap();
    std::io::Write::write_all(&mut enc, &raw).unwrap();
    let comp = enc.finish().unwrap();
    fixture(raw, comp)
}

#[test]
fn into_file_correct_bytes_and_hash() {
    let f = standard();
    let src = FileSource::new(&f.cosi).unwrap();
    let out = f._dir.path().join("out.img");
    let last = AtomicU64::new(0);
    let stats = stream_image(
        &job(&f, &src, &out),
        &|p| last.store(p.done, Ordering::SeqCst),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), f.raw);
    assert_eq!(stats.sha384, sha384_hex(&f.comp));
    assert_eq!(stats.compressed_bytes, f.comp.len() as u64);
    assert_eq!(last.load(Ordering::SeqCst), f.raw.len() as u64);
}

#[test]
fn flipped_byte_is_hash_mismatch() {
    let mut f = incompressible();
    let expected = sha384_hex(&f.comp);
    let mid = f.offset as usize + f.comp.len() / 2;
    let mut bytes = std::fs::read(&f.cosi).unwrap();
    bytes[mid] ^= 0x40;
    std::fs::write(&f.cosi, &bytes).unwrap();
    f.comp = bytes[f.offset as usize..f.offset as usize + f.comp.len()].to_vec();
    let src = FileSource::new(&f.cosi).unwrap();
    let out = f._dir.path().join("out.img");
    let mut j = job(&f, &src, &out);
    j.sha384 = expected;
    let e = run(&j).unwrap_err();
    assert_eq!(code_of(&e), "image-hash-mismatch", "{e:#}");
    let te = trident::error::find_trident_error(&e).unwrap();
    assert_eq!(te.category, trident::Category::Servicing);
    assert_eq!(te.device.as_deref(), Some(out.to_str().unwrap()));
    assert!(te.message.contains("root.rawzst"), "{}", te.message);
}

#[test]
fn source_shorter_than_declared_is_short_read() {
    let f = standard();
    let src = FileSource::new(&f.cosi).unwrap();
    let out = f._dir.path().join("out.img");
    let mut j = job(&f, &src, &out);
    // Declared range runs past the end of the file.
    j.compressed_size = src.size().unwrap() - f.offset + 100;
    let e = run(&j).unwrap_err();
    assert_eq!(code_of(&e), "image-short-read", "{e:#}");
}

#[test]
fn truncated_frame_is_decode_error() {
    let f = standard();
    let cut = f.comp.len() * 2 / 3;
    let g = fixture(f.raw.clone(), f.comp[..cut].to_vec());
    let src = FileSource::new(&g.cosi).unwrap();
    let out = g._dir.path().join("out.img");
    let e = run(&job(&g, &src, &out)).unwrap_err();
    assert!(
        ["image-decode-failed", "image-size-mismatch"].contains(&code_of(&e).as_str()),
        "{e:#}"
    );
}

#[test]
fn trailing_garbage_is_decode_error() {
    let f = standard();
    let mut comp = f.comp.clone();
    comp.extend_from_slice(b"garbage after the frame");
    let g = fixture(f.raw.clone(), comp);
    let src = FileSource::new(&g.cosi).unwrap();
    let out = g._dir.path().join("out.img");
    let e = run(&job(&g, &src, &out)).unwrap_err();
    assert_eq!(code_of(&e), "image-decode-failed", "{e:#}");
}

#[test]
fn bomb_stops_at_declared_size() {
    // 1 GiB of zeros compresses to a few tens of KiB.
    let comp = {
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            std::io::Write::write_all(&mut enc, &zeros).unwrap();
        }
        enc.finish().unwrap()
    };
    let g = fixture(vec![0u8; 4 << 20], comp);
    let src = FileSource::new(&g.cosi).unwrap();
    let out = g._dir.path().join("out.img");
    let t = Instant::now();
    let e = run(&job(&g, &src, &out)).unwrap_err();
    assert_eq!(code_of(&e), "image-size-mismatch", "{e:#}");
    assert!(std::fs::metadata(&out).unwrap().len() <= 4 << 20);
    assert!(t.elapsed() < Duration::from_secs(20), "stopped promptly");
}

#[test]
fn decompressed_too_short_is_size_mismatch() {
    let f = standard();
    let src = FileSource::new(&f.cosi).unwrap();
    let out = f._dir.path().join("out.img");
    let mut j = job(&f, &src, &out);
    j.uncompressed_size += 4096;
    let e = run(&j).unwrap_err();
    assert_eq!(code_of(&e), "image-size-mismatch", "{e:#}");
}

#[test]
fn window_log_limit_is_enforced() {
    let f = standard();
    let raw = f.raw.clone();
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.window_log(24).unwrap();
    std::io::Write::write_all(&mut enc, &raw).unwrap();
    let g = fixture(raw, enc.finish().unwrap());
    let src = FileSource::new(&g.cosi).unwrap();
    let out = g._dir.path().join("out.img");
    let mut j = job(&g, &src, &out);
    j.max_window_log = Some(20);
    let e = run(&j).unwrap_err();
    assert_eq!(code_of(&e), "image-decode-failed", "{e:#}");
    j.max_window_log = Some(24);
    run(&j).unwrap();
}

/// A source that trickles: 64 KiB per read, 10 ms apart.
struct Slow(FileSource);

struct SlowReader(Box<dyn std::io::Read + Send>);

impl std::io::Read for SlowReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(10));
        let n = buf.len().min(64 << 10);
        self.0.read(&mut buf[..n])
    }
}

impl Source for Slow {
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn size(&self) -> anyhow::Result<u64> {
        self.0.size()
    }
    fn read_range(&self, offset: u64, len: u64) -> anyhow::Result<Box<dyn std::io::Read + Send>> {
        Ok(Box::new(SlowReader(self.0.read_range(offset, len)?)))
    }
}

#[test]
fn cancel_stops_promptly() {
    let f = standard();
    let out = f._dir.path().join("out.img");
    // Already cancelled: nothing happens.
    let src = FileSource::new(&f.cosi).unwrap();
    let e = stream_image(&job(&f, &src, &out), &|_| {}, &AtomicBool::new(true)).unwrap_err();
    assert_eq!(code_of(&e), "image-stream-cancelled", "{e:#}");

    // Cancelled mid-stream from another thread: returns within a few reads.
    let slow = Slow(FileSource::new(&f.cosi).unwrap());
    let full = (f.comp.len() as f64 / (64 << 10) as f64 * 0.010) as u64;
    assert!(full >= 1, "the slow source needs about {full} s in all");
    let cancel = AtomicBool::new(false);
    let j = job(&f, &slow, &out);
    let t = Instant::now();
    let res = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            cancel.store(true, Ordering::SeqCst);
        });
        stream_image(&j, &|_| {}, &cancel)
    });
    let e = res.unwrap_err();
    assert_eq!(code_of(&e), "image-stream-cancelled", "{e:#}");
    assert!(
        t.elapsed() < Duration::from_millis(300 + 700),
        "stopped {:?} after start",
        t.elapsed()
    );
}

fn shm_file(name: &str, len: u64) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("trident-stream-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let f = std::fs::File::create(d.path().join(name)).unwrap();
    f.set_len(len).unwrap();
    d
}

#[test]
fn into_loop_device() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let f = standard();
    let src = FileSource::new(&f.cosi).unwrap();
    let shm = shm_file("disk", f.raw.len() as u64 + (1 << 20));
    let lo = LoopDev::attach(&shm.path().join("disk"));
    for skip in [false, true] {
        // Dirty the device first so zero-skipping would show up if it were wrong for
        // a non-zeroed target (it is only used on zeroed targets: we re-zero here).
        std::fs::write(&lo.dev, vec![0u8; f.raw.len() + (1 << 20)]).unwrap();
        let mut j = job(&f, &src, &lo.dev);
        j.skip_zero_blocks = skip;
        let stats = run(&j).unwrap();
        let back = std::fs::read(&lo.dev).unwrap();
        assert_eq!(&back[..f.raw.len()], &f.raw[..]);
        assert_eq!(stats.sha384, sha384_hex(&f.comp));
        if skip {
            assert!(stats.skipped_zero_bytes > 0);
        }
    }
    // Flipped byte onto the device.
    let g = incompressible();
    let src = FileSource::new(&g.cosi).unwrap();
    let mut j = job(&g, &src, &lo.dev);
    j.sha384 = sha384_hex(b"something else");
    let e = run(&j).unwrap_err();
    assert_eq!(code_of(&e), "image-hash-mismatch", "{e:#}");
    let te = trident::error::find_trident_error(&e).unwrap();
    assert_eq!(te.device.as_deref(), Some(lo.dev.to_str().unwrap()));
}

#[test]
fn loop_device_smaller_than_image() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let f = standard();
    let src = FileSource::new(&f.cosi).unwrap();
    let shm = shm_file("small", 4 << 20);
    let lo = LoopDev::attach(&shm.path().join("small"));
    let e = run(&job(&f, &src, &lo.dev)).unwrap_err();
    assert_eq!(code_of(&e), "image-target-too-small", "{e:#}");
}

#[test]
fn enospc_on_full_filesystem() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let f = standard();
    let src = FileSource::new(&f.cosi).unwrap();
    let fs = Tmpfs::mount("2M");
    let out = fs.dir.path().join("image");
    let t = Instant::now();
    let e = run(&job(&f, &src, &out)).unwrap_err();
    assert_eq!(code_of(&e), "image-write-failed", "{e:#}");
    assert!(format!("{e:#}").contains("No space left"), "{e:#}");
    assert!(t.elapsed() < Duration::from_secs(20));
}

#[test]
fn mounted_device_is_refused() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let f = standard();
    let src = FileSource::new(&f.cosi).unwrap();
    let shm = shm_file("fs", 32 << 20);
    let lo = LoopDev::attach(&shm.path().join("fs"));
    trident::cmd::Cmd::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&lo.dev)
        .run()
        .unwrap();
    let mnt = tempfile::tempdir().unwrap();
    trident::cmd::Cmd::new("mount")
        .arg(&lo.dev)
        .arg(mnt.path())
        .run()
        .unwrap();
    let e = run(&job(&f, &src, &lo.dev)).unwrap_err();
    trident::cmd::Cmd::new("umount")
        .arg(mnt.path())
        .run()
        .unwrap();
    assert_eq!(code_of(&e), "image-target-busy", "{e:#}");
    // Once unmounted, the same device takes the image.
    run(&job(&f, &src, &lo.dev)).unwrap();
}
