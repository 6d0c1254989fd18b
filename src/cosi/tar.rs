//! Tar walking without extraction.
//!
//! A COSI file is an uncompressed tar. The reader never extracts it: [`walk`] reads the
//! 512-byte headers one by one through a [`Source`] (range reads), skips member data by
//! offset, and returns an index of [`TarMember`]s (`path`, `data_offset`, `size`,
//! `kind`) so a source reads only the bytes it needs.
//!
//! Parsing is separate from I/O: [`parse_header`] and [`parse_pax_records`] are pure
//! functions over byte slices. Supported: USTAR (with `prefix`), GNU (`L` long names,
//! `K` long link names, base-256 numbers), PAX (`x` per-member and `g` global records:
//! `path`, `linkpath`, `size`), `./` prefixes, directory members, the two zero blocks at
//! the end and any data after them (e.g. a VHD footer). Every header checksum is
//! verified.

// `TridentError` is the project's error value (136 bytes); these are cold paths.
#![allow(clippy::result_large_err)]

use crate::cosi::source::Source;
use crate::error::TridentError;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;

/// Tar block size.
pub const BLOCK: u64 = 512;

/// Largest GNU long-name or PAX extended header the walker reads into memory.
pub const MAX_EXTENDED_HEADER: u64 = 1024 * 1024;

/// Error codes (stable, documented in `docs/cosi.md`).
pub const E_BAD_CHECKSUM: &str = "cosi-tar-bad-checksum";
pub const E_BAD_HEADER: &str = "cosi-tar-bad-header";
pub const E_BAD_PAX: &str = "cosi-tar-bad-pax-header";
pub const E_TRUNCATED: &str = "cosi-tar-truncated";
pub const E_MEMBER_PAST_END: &str = "cosi-tar-member-past-end";

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberKind {
    Regular,
    Directory,
    Symlink,
    Hardlink,
    /// Device nodes, FIFOs, GNU sparse files and unknown type flags (the flag byte).
    Other(u8),
}

/// A member of the archive, located by offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TarMember {
    /// Path with any `./` prefix and a directory's trailing `/` removed.
    pub path: String,
    /// Offset of the member's own header (after any long-name/PAX headers).
    pub header_offset: u64,
    /// Offset of the first data byte.
    pub data_offset: u64,
    /// Data length in bytes (PAX `size` wins over the header field).
    pub size: u64,
    pub kind: MemberKind,
    /// Target of a symlink or hardlink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

/// The result of walking an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarIndex {
    pub members: Vec<TarMember>,
    /// Offset just after the two zero blocks ending the archive.
    pub end_offset: u64,
    /// Bytes after the end-of-archive marker (not interpreted).
    pub trailing_bytes: u64,
}

impl TarIndex {
    pub fn get(&self, path: &str) -> Option<&TarMember> {
        self.members.iter().find(|m| m.path == path)
    }
}

/// One parsed 512-byte header, before long names and PAX records are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `prefix/name` for USTAR, `name` otherwise (raw bytes up to the first NUL).
    pub name: Vec<u8>,
    pub size: u64,
    pub typeflag: u8,
    pub linkname: Vec<u8>,
}

/// True if the block is all zeroes (half of the end-of-archive marker).
pub fn is_zero_block(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

fn bad_header(msg: impl Into<String>) -> TridentError {
    TridentError::invalid_input(E_BAD_HEADER, msg)
}

/// Bytes of a NUL-terminated (or full-width) string field.
fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(n) => &field[..n],
        None => field,
    }
}

/// Parse a numeric header field: octal ASCII (leading spaces, terminated by NUL or
/// space) or GNU base-256 (first byte `0x80`; negative `0xff` values are refused).
pub fn parse_number(field: &[u8], what: &str) -> std::result::Result<u64, TridentError> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            if first != 0x80 {
                return Err(bad_header(format!(
                    "negative or malformed base-256 {what} field"
                )));
            }
            let mut v: u64 = 0;
            for &b in &field[1..] {
                if v >> 56 != 0 {
                    return Err(bad_header(format!("base-256 {what} does not fit 64 bits")));
                }
                v = (v << 8) | u64::from(b);
            }
            return Ok(v);
        }
    }
    let mut v: u64 = 0;
    let mut seen_digit = false;
    let mut ended = false;
    for &b in field {
        match b {
            b' ' if !seen_digit => {}
            b'0'..=b'7' if !ended => {
                seen_digit = true;
                v = v
                    .checked_mul(8)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                    .ok_or_else(|| bad_header(format!("octal {what} does not fit 64 bits")))?;
            }
            0 | b' ' => ended = true,
            _ => {
                return Err(bad_header(format!(
                    "{what} field is not an octal number: {:?}",
                    String::from_utf8_lossy(field)
                )))
            }
        }
    }
    Ok(v)
}

/// Parse one header block and verify its checksum. The caller has already handled the
/// all-zero block.
pub fn parse_header(block: &[u8]) -> std::result::Result<Header, TridentError> {
    if block.len() != BLOCK as usize {
        return Err(bad_header(format!(
            "header block is {} bytes, not 512",
            block.len()
        )));
    }
    let stored = parse_number(&block[148..156], "checksum")?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
        return Err(TridentError::invalid_input(
            E_BAD_CHECKSUM,
            format!("header checksum is {stored:o}, computed {unsigned:o}: the header is corrupt"),
        ));
    }
    let size = parse_number(&block[124..136], "size")?;
    let typeflag = block[156];
    let name_field = cstr(&block[0..100]);
    let linkname = cstr(&block[157..257]).to_vec();
    // The prefix field exists only in POSIX USTAR; GNU stores times there.
    let is_ustar = &block[257..263] == b"ustar\0";
    let prefix = if is_ustar {
        cstr(&block[345..500])
    } else {
        &[][..]
    };
    let mut name = Vec::with_capacity(prefix.len() + 1 + name_field.len());
    if !prefix.is_empty() {
        name.extend_from_slice(prefix);
        name.push(b'/');
    }
    name.extend_from_slice(name_field);
    Ok(Header {
        name,
        size,
        typeflag,
        linkname,
    })
}

/// Parse PAX extended header records (`"%d %s=%s\n"`, the length counting the whole
/// record). An empty value is kept (it unsets a global value).
pub fn parse_pax_records(data: &[u8]) -> std::result::Result<Vec<(String, Vec<u8>)>, TridentError> {
    let bad = |msg: String| TridentError::invalid_input(E_BAD_PAX, msg);
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // Trailing NUL padding after the last record is tolerated.
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("PAX record without a length".into()))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("PAX record length is not a number".into()))?;
        if len <= sp + 1 || len > rest.len() {
            return Err(bad(format!(
                "PAX record length {len} is out of range ({} bytes left)",
                rest.len()
            )));
        }
        let record = &rest[sp + 1..len];
        let Some((&b'\n', kv)) = record.split_last() else {
            return Err(bad("PAX record does not end with a newline".into()));
        };
        let eq = kv
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("PAX record without '='".into()))?;
        let key = std::str::from_utf8(&kv[..eq])
            .map_err(|_| bad("PAX key is not UTF-8".into()))?
            .to_string();
        out.push((key, kv[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

fn utf8(bytes: Vec<u8>, what: &str) -> std::result::Result<String, TridentError> {
    String::from_utf8(bytes).map_err(|_| bad_header(format!("{what} is not valid UTF-8")))
}

/// Strip `./` prefixes and a trailing `/`; the archive root (`./`) becomes empty.
pub fn normalize_path(p: &str) -> String {
    let mut s = p;
    while let Some(r) = s.strip_prefix("./") {
        // `.//x` is `x` too.
        s = r.trim_start_matches('/');
    }
    if s == "." {
        s = "";
    }
    s.trim_end_matches('/').to_string()
}

fn round_up(n: u64) -> Option<u64> {
    n.checked_add(BLOCK - 1).map(|v| v / BLOCK * BLOCK)
}

/// Extended data (GNU long name/link, PAX) that applies to the next member.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Vec<(String, Vec<u8>)>,
    any: bool,
}

/// Walk the archive in `source` and index its members. Stops at the end-of-archive
/// marker; whatever follows is counted in `trailing_bytes` and never interpreted.
pub fn walk(source: &dyn Source) -> Result<TarIndex> {
    let total = source
        .size()
        .with_context(|| format!("reading the size of {}", source.describe()))?;
    walk_sized(source, total)
}

fn walk_sized(source: &dyn Source, total: u64) -> Result<TarIndex> {
    let dev = source.describe();
    let at = |e: TridentError, off: u64| -> anyhow::Error {
        let mut e = e.on_device(dev.clone());
        e.message = format!("{} (header at offset {off})", e.message);
        e.into()
    };
    let mut members = Vec::new();
    let mut globals: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut pending = Pending::default();
    let mut offset: u64 = 0;
    loop {
        if offset + BLOCK > total {
            return Err(at(
                TridentError::invalid_input(
                    E_TRUNCATED,
                    format!(
                        "the archive ends after {total} bytes without the end-of-archive marker"
                    ),
                ),
                offset,
            ));
        }
        let block = source
            .read_exact_at(offset, BLOCK)
            .with_context(|| format!("reading the tar header at offset {offset}"))?;
        if is_zero_block(&block) {
            if offset + 2 * BLOCK > total {
                return Err(at(
                    TridentError::invalid_input(
                        E_TRUNCATED,
                        "the archive ends inside the end-of-archive marker",
                    ),
                    offset,
                ));
            }
            let second = source
                .read_exact_at(offset + BLOCK, BLOCK)
                .with_context(|| format!("reading the tar block at offset {}", offset + BLOCK))?;
            if !is_zero_block(&second) {
                return Err(at(
                    bad_header("a single zero block inside the archive"),
                    offset,
                ));
            }
            if pending.any {
                return Err(at(
                    bad_header("an extended header is not followed by a member"),
                    offset,
                ));
            }
            let end_offset = offset + 2 * BLOCK;
            return Ok(TarIndex {
                members,
                end_offset,
                trailing_bytes: total - end_offset,
            });
        }
        let header = parse_header(&block).map_err(|e| at(e, offset))?;
        let data_offset = offset + BLOCK;
        let is_meta = matches!(header.typeflag, b'L' | b'K' | b'x' | b'g');
        // Sparse members store a map before (or around) their data, so their bytes are
        // not the file's bytes; old GNU sparse headers may even be followed by extra
        // header blocks. No COSI writer produces them.
        let pax_sparse = pending
            .pax
            .iter()
            .map(|(k, _)| k)
            .chain(globals.keys())
            .any(|k| k.starts_with("GNU.sparse."));
        if header.typeflag == b'S' || (!is_meta && pax_sparse) {
            return Err(at(
                bad_header("sparse members (GNU or PAX sparse formats) are not supported"),
                offset,
            ));
        }

        // Effective size: a PAX `size` (per-member, then global) overrides the field.
        let mut size = header.size;
        if !is_meta {
            let pax_size = pending
                .pax
                .iter()
                .rev()
                .find(|(k, _)| k == "size")
                .map(|(_, v)| v.clone())
                .or_else(|| globals.get("size").cloned())
                .filter(|v| !v.is_empty());
            if let Some(v) = pax_size {
                size = std::str::from_utf8(&v)
                    .ok()
                    .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        at(
                            TridentError::invalid_input(E_BAD_PAX, "PAX size is not a number"),
                            offset,
                        )
                    })?;
            }
        }
        let end = data_offset.checked_add(size).filter(|&e| e <= total);
        let Some(data_end) = end else {
            return Err(at(
                TridentError::invalid_input(
                    E_MEMBER_PAST_END,
                    format!(
                        "a member of {size} bytes at offset {data_offset} runs past the end of \
                         the file ({total} bytes); the file is truncated or the header is corrupt"
                    ),
                ),
                offset,
            ));
        };
        let next = round_up(data_end).filter(|&n| n <= total).ok_or_else(|| {
            at(
                TridentError::invalid_input(
                    E_TRUNCATED,
                    "the archive ends inside the padding of a member",
                ),
                offset,
            )
        })?;

        if is_meta {
            if size > MAX_EXTENDED_HEADER {
                return Err(at(
                    bad_header(format!(
                        "extended header of {size} bytes is larger than {MAX_EXTENDED_HEADER}"
                    )),
                    offset,
                ));
            }
            let data = source
                .read_exact_at(data_offset, size)
                .with_context(|| format!("reading the extended header at offset {offset}"))?;
            match header.typeflag {
                b'L' => pending.long_name = Some(cstr(&data).to_vec()),
                b'K' => pending.long_link = Some(cstr(&data).to_vec()),
                b'x' => {
                    let recs = parse_pax_records(&data).map_err(|e| at(e, offset))?;
                    pending.pax.extend(recs);
                }
                _ => {
                    for (k, v) in parse_pax_records(&data).map_err(|e| at(e, offset))? {
                        if v.is_empty() {
                            globals.remove(&k);
                        } else {
                            globals.insert(k, v);
                        }
                    }
                }
            }
            // A global header does not by itself need a following member.
            pending.any |= header.typeflag != b'g';
            offset = next;
            continue;
        }

        let pax_get = |key: &str| -> Option<Vec<u8>> {
            pending
                .pax
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| globals.get(key).cloned())
                .filter(|v| !v.is_empty())
        };
        let raw_name = pax_get("path")
            .or_else(|| pending.long_name.clone())
            .unwrap_or(header.name.clone());
        let raw_link = pax_get("linkpath")
            .or_else(|| pending.long_link.clone())
            .unwrap_or(header.linkname.clone());
        let name = utf8(raw_name, "member name").map_err(|e| at(e, offset))?;
        let kind = match header.typeflag {
            b'0' | 0 | b'7' => {
                if name.ends_with('/') && header.typeflag == 0 {
                    // Old tars mark directories only by the trailing slash.
                    MemberKind::Directory
                } else {
                    MemberKind::Regular
                }
            }
            b'1' => MemberKind::Hardlink,
            b'2' => MemberKind::Symlink,
            b'5' => MemberKind::Directory,
            other => MemberKind::Other(other),
        };
        let link_target = match kind {
            MemberKind::Symlink | MemberKind::Hardlink => {
                Some(utf8(raw_link, "link target").map_err(|e| at(e, offset))?)
            }
            _ => None,
        };
        let path = normalize_path(&name);
        if !path.is_empty() || !name.starts_with('.') {
            members.push(TarMember {
                path: if path.is_empty() { name.clone() } else { path },
                header_offset: offset,
                data_offset,
                size,
                kind,
                link_target,
            });
        }
        pending = Pending::default();
        offset = next;
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Hand-made headers for tests (the malicious cases `tar` will not produce).
    use super::BLOCK;

    /// Build a header block; `size` is written in octal unless `base256`.
    pub fn header(name: &str, size: u64, typeflag: u8, linkname: &str, base256: bool) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK as usize];
        b[..name.len()].copy_from_slice(name.as_bytes());
        b[100..107].copy_from_slice(b"0000644");
        b[108..115].copy_from_slice(b"0000000");
        b[116..123].copy_from_slice(b"0000000");
        if base256 {
            b[124] = 0x80;
            b[128..136].copy_from_slice(&size.to_be_bytes());
        } else {
            let s = format!("{size:011o}");
            b[124..135].copy_from_slice(s.as_bytes());
        }
        b[136..147].copy_from_slice(b"00000000000");
        b[156] = typeflag;
        b[157..157 + linkname.len()].copy_from_slice(linkname.as_bytes());
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        set_checksum(&mut b);
        b
    }

    pub fn set_checksum(b: &mut [u8]) {
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        let s = format!("{sum:06o}\0 ");
        b[148..156].copy_from_slice(s.as_bytes());
    }

    /// Append a member with data and padding.
    pub fn member(out: &mut Vec<u8>, name: &str, data: &[u8], typeflag: u8) {
        out.extend(header(name, data.len() as u64, typeflag, "", false));
        out.extend_from_slice(data);
        pad(out);
    }

    pub fn pad(out: &mut Vec<u8>) {
        while out.len() % BLOCK as usize != 0 {
            out.push(0);
        }
    }

    pub fn end(out: &mut Vec<u8>) {
        out.extend(std::iter::repeat(0u8).take(2 * BLOCK as usize));
    }

    /// One PAX record with its self-inclusive length.
    pub fn pax_record(key: &str, value: &str) -> String {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        loop {
            let rec = format!("{len}{body}");
            if rec.len() == len {
                return rec;
            }
            len = rec.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::cosi::source::MemSource;

    fn code_of(e: &anyhow::Error) -> String {
        crate::error::find_trident_error(e)
            .map(|t| t.code)
            .unwrap_or_else(|| format!("no TridentError in: {e:#}"))
    }

    fn walk_bytes(b: Vec<u8>) -> Result<TarIndex> {
        walk(&MemSource::new("test.tar", b))
    }

    #[test]
    fn octal_and_base256_numbers() {
        assert_eq!(parse_number(b"00000001750\0", "size").unwrap(), 1000);
        assert_eq!(parse_number(b"     1750 \0\0", "size").unwrap(), 1000);
        assert_eq!(parse_number(b"\0\0\0\0", "size").unwrap(), 0);
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[4..12].copy_from_slice(&(20u64 << 30).to_be_bytes());
        assert_eq!(parse_number(&f, "size").unwrap(), 20 << 30);
        f[0] = 0xff;
        assert!(parse_number(&f, "size").is_err());
        assert!(parse_number(b"0000009\0", "size").is_err());
        assert!(parse_number(b"12 34\0", "size").is_err());
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[2] = 1; // 2^72
        assert!(parse_number(&big, "size").is_err());
    }

    #[test]
    fn header_fields_and_checksum() {
        let b = header("images/root.rawzst", 1234, b'0', "", false);
        let h = parse_header(&b).unwrap();
        assert_eq!(h.name, b"images/root.rawzst");
        assert_eq!(h.size, 1234);
        assert_eq!(h.typeflag, b'0');

        let mut bad = b.clone();
        bad[10] ^= 0x01;
        let e = parse_header(&bad).unwrap_err();
        assert_eq!(e.code, E_BAD_CHECKSUM);
    }

    #[test]
    fn ustar_prefix_is_joined_but_not_for_gnu() {
        let mut b = header("file", 0, b'0', "", false);
        b[345..351].copy_from_slice(b"images");
        set_checksum(&mut b);
        assert_eq!(parse_header(&b).unwrap().name, b"images/file");
        // GNU magic: bytes 345.. are atime, never a prefix.
        b[257..265].copy_from_slice(b"ustar  \0");
        set_checksum(&mut b);
        assert_eq!(parse_header(&b).unwrap().name, b"file");
    }

    #[test]
    fn pax_records() {
        let data = format!(
            "{}{}",
            pax_record("path", "images/a b=c.raw"),
            pax_record("size", "42")
        );
        let recs = parse_pax_records(data.as_bytes()).unwrap();
        assert_eq!(recs[0], ("path".into(), b"images/a b=c.raw".to_vec()));
        assert_eq!(recs[1], ("size".into(), b"42".to_vec()));
        for bad in [
            &b"9 path=x"[..],
            b"x path=y\n",
            b"99 path=y\n",
            b"11 pathxyz\n",
            b"3 a\n",
        ] {
            assert_eq!(
                parse_pax_records(bad).unwrap_err().code,
                E_BAD_PAX,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize_path("./metadata.json"), "metadata.json");
        assert_eq!(normalize_path("./images/"), "images");
        assert_eq!(normalize_path("././x"), "x");
        assert_eq!(normalize_path("./"), "");
        assert_eq!(normalize_path("."), "");
        assert_eq!(normalize_path("/abs"), "/abs");
        assert_eq!(normalize_path("../x"), "../x");
    }

    #[test]
    fn walks_members_and_trailing_data() {
        let mut t = Vec::new();
        member(&mut t, "cosi-marker", b"", b'0');
        member(&mut t, "./images/", b"", b'5');
        member(&mut t, "./images/a.rawzst", &[7u8; 700], b'0');
        end(&mut t);
        let end_at = t.len() as u64;
        t.extend_from_slice(&[0xAB; 512]); // a VHD-like footer
        let idx = walk_bytes(t).unwrap();
        assert_eq!(idx.end_offset, end_at);
        assert_eq!(idx.trailing_bytes, 512);
        let paths: Vec<_> = idx.members.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(paths, ["cosi-marker", "images", "images/a.rawzst"]);
        let a = idx.get("images/a.rawzst").unwrap();
        assert_eq!(a.data_offset, 3 * 512);
        assert_eq!(a.size, 700);
        assert_eq!(idx.get("images").unwrap().kind, MemberKind::Directory);
    }

    #[test]
    fn gnu_long_name_and_link() {
        let long = format!("images/{}.rawzst", "x".repeat(150));
        let mut t = Vec::new();
        member(
            &mut t,
            "././@LongLink",
            format!("{long}\0").as_bytes(),
            b'L',
        );
        member(&mut t, &long[..99], b"abc", b'0');
        let target = format!("images/{}", "y".repeat(120));
        member(&mut t, "././@LongLink", target.as_bytes(), b'K');
        t.extend(header("images/l", 0, b'2', "short", false));
        end(&mut t);
        let idx = walk_bytes(t).unwrap();
        assert_eq!(idx.members[0].path, long);
        assert_eq!(idx.members[0].size, 3);
        assert_eq!(idx.members[1].kind, MemberKind::Symlink);
        assert_eq!(idx.members[1].link_target.as_deref(), Some(target.as_str()));
    }

    #[test]
    fn pax_path_size_and_global() {
        let mut t = Vec::new();
        let g = pax_record("comment", "made by test");
        member(&mut t, "pax_global_header", g.as_bytes(), b'g');
        let x = format!(
            "{}{}",
            pax_record("path", "images/from-pax.rawzst"),
            pax_record("size", "600")
        );
        member(&mut t, "PaxHeaders/x", x.as_bytes(), b'x');
        // The ustar size field says 0; PAX says 600.
        t.extend(header("short", 0, b'0', "", false));
        t.extend_from_slice(&[1u8; 600]);
        pad(&mut t);
        member(&mut t, "next", b"zz", b'0');
        end(&mut t);
        let idx = walk_bytes(t).unwrap();
        assert_eq!(idx.members.len(), 2);
        assert_eq!(idx.members[0].path, "images/from-pax.rawzst");
        assert_eq!(idx.members[0].size, 600);
        assert_eq!(idx.members[1].path, "next");
        assert_eq!(idx.members[1].size, 2);
    }

    #[test]
    fn base256_size_member() {
        let mut t = Vec::new();
        t.extend(header("images/big", 1000, b'0', "", true));
        t.extend_from_slice(&[3u8; 1000]);
        pad(&mut t);
        end(&mut t);
        let idx = walk_bytes(t).unwrap();
        assert_eq!(idx.members[0].size, 1000);
    }

    #[test]
    fn truncation_and_past_end() {
        let mut t = Vec::new();
        member(&mut t, "a", &[1u8; 100], b'0');
        // No end marker at all.
        assert_eq!(code_of(&walk_bytes(t.clone()).unwrap_err()), E_TRUNCATED);
        // Half an end marker.
        let mut half = t.clone();
        half.extend_from_slice(&[0u8; 512]);
        assert_eq!(code_of(&walk_bytes(half).unwrap_err()), E_TRUNCATED);
        // Cut inside the padding.
        assert_eq!(
            code_of(&walk_bytes(t[..700].to_vec()).unwrap_err()),
            E_TRUNCATED
        );
        // Cut inside the data.
        assert_eq!(
            code_of(&walk_bytes(t[..550].to_vec()).unwrap_err()),
            E_MEMBER_PAST_END
        );
        // Header claims more than the file holds.
        let mut huge = Vec::new();
        huge.extend(header("a", (1 << 33) - 1, b'0', "", false));
        end(&mut huge);
        assert_eq!(code_of(&walk_bytes(huge).unwrap_err()), E_MEMBER_PAST_END);
        let mut huge256 = Vec::new();
        huge256.extend(header("a", u64::MAX - 10, b'0', "", true));
        end(&mut huge256);
        assert_eq!(
            code_of(&walk_bytes(huge256).unwrap_err()),
            E_MEMBER_PAST_END
        );
        // Empty file.
        assert_eq!(code_of(&walk_bytes(Vec::new()).unwrap_err()), E_TRUNCATED);
    }

    #[test]
    fn lone_zero_block_and_dangling_extended_header() {
        let mut t = Vec::new();
        t.extend_from_slice(&[0u8; 512]);
        member(&mut t, "a", b"x", b'0');
        end(&mut t);
        assert_eq!(code_of(&walk_bytes(t).unwrap_err()), E_BAD_HEADER);

        let mut t = Vec::new();
        member(&mut t, "././@LongLink", b"name", b'L');
        end(&mut t);
        assert_eq!(code_of(&walk_bytes(t).unwrap_err()), E_BAD_HEADER);
    }

    #[test]
    fn sparse_members_are_refused() {
        let mut t = Vec::new();
        member(&mut t, "images/s", b"abc", b'S');
        end(&mut t);
        assert_eq!(code_of(&walk_bytes(t).unwrap_err()), E_BAD_HEADER);
        let mut t = Vec::new();
        let x = pax_record("GNU.sparse.major", "1");
        member(&mut t, "PaxHeaders/x", x.as_bytes(), b'x');
        member(&mut t, "images/s", b"abc", b'0');
        end(&mut t);
        assert_eq!(code_of(&walk_bytes(t).unwrap_err()), E_BAD_HEADER);
    }

    #[test]
    fn oversized_extended_header_is_refused() {
        let mut t = Vec::new();
        t.extend(header(
            "PaxHeaders/x",
            MAX_EXTENDED_HEADER + 1,
            b'x',
            "",
            false,
        ));
        t.resize(t.len() + MAX_EXTENDED_HEADER as usize + 512, 0);
        end(&mut t);
        assert_eq!(code_of(&walk_bytes(t).unwrap_err()), E_BAD_HEADER);
    }

    /// Small deterministic PRNG (xorshift64*), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_byte_flips_never_panic() {
        let mut t = Vec::new();
        member(&mut t, "cosi-marker", b"", b'0');
        let x = pax_record("path", "images/p.rawzst");
        member(&mut t, "PaxHeaders/x", x.as_bytes(), b'x');
        member(&mut t, "x", &[5u8; 1300], b'0');
        member(&mut t, "././@LongLink", b"images/long-name", b'L');
        member(&mut t, "short", b"abc", b'0');
        end(&mut t);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            let mut m = t.clone();
            for _ in 0..(1 + rng.next() % 4) {
                let i = (rng.next() as usize) % m.len();
                m[i] ^= 1 << (rng.next() % 8);
            }
            // Half the time, fix the checksums so the parser goes deeper.
            if rng.next() % 2 == 0 {
                let mut off = 0;
                while off + 512 <= m.len() {
                    if !is_zero_block(&m[off..off + 512]) {
                        set_checksum(&mut m[off..off + 512]);
                    }
                    off += 512;
                }
            }
            let _ = walk_bytes(m);
        }
    }
}
