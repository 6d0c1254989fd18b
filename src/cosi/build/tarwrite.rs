//! A streaming tar writer for COSI files.
//!
//! Members are written in one pass: a placeholder header first, then the data as it is
//! produced, then the real header (size, checksum) is written back over the placeholder
//! with a positional write. Headers are plain USTAR; a member of 8 GiB or more gets a
//! GNU header whose size field is base-256 (the encoding GNU tar, libarchive, Go and
//! Python read). No PAX headers are ever written, so `cosi-marker` is the first header
//! of the file.
//!
//! A region can also be *reserved* ahead of its contents ([`TarWriter::reserve`]) and
//! filled later: `metadata.json` is second in the archive but only known once every
//! image has been compressed.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

/// Tar block size.
pub const BLOCK: u64 = 512;
/// Largest size the 11-digit octal field holds (8 GiB - 1).
pub const MAX_OCTAL_SIZE: u64 = 0o77777777777;

/// Round `n` up to a whole number of tar blocks.
pub fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// Encode one regular-file header. `size` above [`MAX_OCTAL_SIZE`] switches to a GNU
/// header with a base-256 size field.
pub fn encode_header(name: &str, size: u64, mtime: u64) -> Result<[u8; 512]> {
    let mut h = [0u8; 512];
    if name.is_empty() || name.len() > 100 {
        bail!("tar member name {name:?} must be 1 to 100 bytes long");
    }
    h[..name.len()].copy_from_slice(name.as_bytes());
    put_octal(&mut h[100..108], 0o644);
    put_octal(&mut h[108..116], 0);
    put_octal(&mut h[116..124], 0);
    let gnu = size > MAX_OCTAL_SIZE;
    if gnu {
        // Base-256: high bit of the first byte set, value big-endian in the rest.
        let field = &mut h[124..136];
        field[0] = 0x80;
        field[4..12].copy_from_slice(&size.to_be_bytes());
    } else {
        put_octal(&mut h[124..136], size);
    }
    put_octal(&mut h[136..148], mtime.min(0o77777777777));
    h[156] = b'0';
    if gnu {
        h[257..265].copy_from_slice(b"ustar  \0");
    } else {
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
    }
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    // Checksum: sum of all bytes with the checksum field read as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let cks = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(cks.as_bytes());
    Ok(h)
}

/// Zero-padded octal, NUL-terminated, filling the field.
fn put_octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

/// Decode a header's size field (octal or base-256). Used by tests and by callers that
/// want to double-check what they wrote.
pub fn decode_size(field: &[u8]) -> Result<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .context("base-256 size overflows 64 bits")?;
        }
        return Ok(v);
    }
    let s: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .map(|&b| b as char)
        .collect();
    u64::from_str_radix(s.trim_start(), 8).with_context(|| format!("bad octal size {s:?}"))
}

/// A space reserved in the archive for a member written later.
#[derive(Debug, Clone)]
pub struct Reservation {
    name: String,
    header_offset: u64,
    capacity: u64,
}

impl Reservation {
    /// Exact number of bytes the member must have when filled.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

/// Writes a tar archive to a seekable file.
pub struct TarWriter {
    file: File,
    out: BufWriter<File>,
    pos: u64,
    mtime: u64,
}

impl TarWriter {
    /// Start an archive at the beginning of `file` (which should be empty).
    pub fn new(file: File, mtime: u64) -> Result<Self> {
        let clone = file
            .try_clone()
            .context("duplicating the output file handle")?;
        Ok(Self {
            file,
            out: BufWriter::with_capacity(1 << 20, clone),
            pos: 0,
            mtime,
        })
    }

    /// Current offset (always block-aligned between members).
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn write_raw(&mut self, data: &[u8]) -> Result<()> {
        self.out.write_all(data).context("writing the archive")?;
        self.pos += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let pad = padded(self.pos) - self.pos;
        if pad > 0 {
            self.write_raw(&vec![0u8; pad as usize])?;
        }
        Ok(())
    }

    fn patch(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.out.flush().context("flushing the archive")?;
        self.file
            .write_all_at(data, offset)
            .with_context(|| format!("patching the archive at offset {offset}"))
    }

    /// Append a member whose contents are in memory.
    pub fn append(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let h = encode_header(name, data.len() as u64, self.mtime)?;
        self.write_raw(&h)?;
        self.write_raw(data)?;
        self.pad()
    }

    /// Reserve room for a member of exactly `capacity` bytes to be filled later.
    pub fn reserve(&mut self, name: &str, capacity: u64) -> Result<Reservation> {
        encode_header(name, capacity, self.mtime)?; // validate the name now
        let header_offset = self.pos;
        self.write_raw(&[0u8; 512])?;
        let zeros = vec![0u8; 64 * 1024];
        let mut left = padded(capacity);
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.write_raw(&zeros[..n])?;
            left -= n as u64;
        }
        Ok(Reservation {
            name: name.to_string(),
            header_offset,
            capacity,
        })
    }

    /// Fill a reservation; `data` must be exactly its capacity.
    pub fn fill(&mut self, r: &Reservation, data: &[u8]) -> Result<()> {
        if data.len() as u64 != r.capacity {
            bail!(
                "member {} has {} bytes but {} were reserved",
                r.name,
                data.len(),
                r.capacity
            );
        }
        let h = encode_header(&r.name, r.capacity, self.mtime)?;
        self.patch(r.header_offset + BLOCK, data)?;
        self.patch(r.header_offset, &h)
    }

    /// Start a member whose size is known only once its data is written.
    pub fn begin(&mut self, name: &str) -> Result<MemberWriter<'_>> {
        encode_header(name, 0, self.mtime)?;
        let header_offset = self.pos;
        self.write_raw(&[0u8; 512])?;
        Ok(MemberWriter {
            tar: self,
            name: name.to_string(),
            header_offset,
            len: 0,
        })
    }

    /// Write the end-of-archive marker, flush and fsync. Returns the archive length.
    pub fn finish(mut self) -> Result<u64> {
        self.write_raw(&[0u8; 1024])?;
        self.out.flush().context("flushing the archive")?;
        self.file.sync_all().context("syncing the archive")?;
        Ok(self.pos)
    }
}

/// Streams one member's data; [`MemberWriter::finish`] writes the real header.
pub struct MemberWriter<'a> {
    tar: &'a mut TarWriter,
    name: String,
    header_offset: u64,
    len: u64,
}

impl MemberWriter<'_> {
    /// Pad the data and write the header with the final size. Returns the size.
    pub fn finish(self) -> Result<u64> {
        self.tar.pad()?;
        let h = encode_header(&self.name, self.len, self.tar.mtime)?;
        self.tar.patch(self.header_offset, &h)?;
        Ok(self.len)
    }
}

impl Write for MemberWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.tar.out.write(buf)?;
        self.tar.pos += n as u64;
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tar.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(h: &[u8; 512]) -> bool {
        let stored = decode_size(&h[148..155]).unwrap() as u32;
        let mut copy = *h;
        copy[148..156].copy_from_slice(b"        ");
        stored == copy.iter().map(|&b| u32::from(b)).sum::<u32>()
    }

    #[test]
    fn ustar_header_fields() {
        let h = encode_header("images/root.rawzst", 12345, 1_700_000_000).unwrap();
        assert_eq!(&h[..18], b"images/root.rawzst");
        assert_eq!(&h[124..136], b"00000030071\0");
        assert_eq!(&h[257..265], b"ustar\x0000");
        assert_eq!(h[156], b'0');
        assert_eq!(decode_size(&h[124..136]).unwrap(), 12345);
        assert!(checksum_ok(&h));
    }

    #[test]
    fn largest_octal_size_stays_ustar() {
        let h = encode_header("a", MAX_OCTAL_SIZE, 0).unwrap();
        assert_eq!(&h[124..136], b"77777777777\0");
        assert_eq!(&h[257..263], b"ustar\0");
    }

    #[test]
    fn gnu_base256_for_8gib_and_more() {
        let size = 8 * 1024 * 1024 * 1024u64; // exactly 8 GiB: one past the octal limit
        let h = encode_header("images/big.rawzst", size, 0).unwrap();
        assert_eq!(h[124], 0x80);
        assert_eq!(&h[125..128], &[0, 0, 0]);
        assert_eq!(&h[128..136], &size.to_be_bytes());
        assert_eq!(&h[257..265], b"ustar  \0");
        assert_eq!(decode_size(&h[124..136]).unwrap(), size);
        assert!(checksum_ok(&h));
        let huge = 3 * 1024 * 1024 * 1024 * 1024u64 + 7;
        let h = encode_header("x", huge, 0).unwrap();
        assert_eq!(decode_size(&h[124..136]).unwrap(), huge);
    }

    #[test]
    fn gnu_tar_lists_base256_header() {
        // Write a header claiming 9 GiB followed by nothing, and let GNU tar list it
        // (tar -t reads the header; it reports the truncated archive only afterwards).
        if !crate::cmd::have_program("tar") {
            eprintln!("skipping: no tar");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.tar");
        let size = 9 * 1024 * 1024 * 1024u64;
        std::fs::write(&p, encode_header("images/big.rawzst", size, 0).unwrap()).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&p)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            listing.contains(&size.to_string()) && listing.contains("images/big.rawzst"),
            "{listing} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn name_too_long_is_refused() {
        assert!(encode_header(&"x".repeat(101), 0, 0).is_err());
        assert!(encode_header("", 0, 0).is_err());
    }

    #[test]
    fn streamed_and_reserved_members_round_trip_through_tar() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.tar");
        let f = File::create(&p).unwrap();
        let mut tw = TarWriter::new(f, 1_700_000_000).unwrap();
        tw.append("cosi-marker", b"").unwrap();
        let r = tw.reserve("metadata.json", 700).unwrap();
        let mut m = tw.begin("images/a.bin").unwrap();
        m.write_all(&[7u8; 1000]).unwrap();
        assert_eq!(m.finish().unwrap(), 1000);
        assert!(tw.fill(&r, b"short").is_err());
        tw.fill(&r, &[b'{'; 700]).unwrap();
        let len = tw.finish().unwrap();
        assert_eq!(len, 512 + 512 + 1024 + 512 + 1024 + 1024);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), len);
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&p)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let listing = String::from_utf8(out.stdout).unwrap();
        let names: Vec<_> = listing
            .lines()
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        assert_eq!(names, ["cosi-marker", "metadata.json", "images/a.bin"]);
        assert!(listing.lines().nth(2).unwrap().contains(" 1000 "));
    }
}
