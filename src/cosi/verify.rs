//! `trident cosi verify`: check every image of a COSI file — SHA-384 over the
//! compressed bytes, a clean zstd decode, and the decompressed length — without writing
//! anything. Decoded bytes are discarded; memory stays bounded (one zstd window).

use super::reader::{Cosi, ImageMember};
use crate::error::TridentError;
use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha384};
use std::collections::BTreeSet;
use std::io::{self, Read};

/// One verified member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedImage {
    pub path: String,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub sha384: String,
}

/// Every distinct image member the metadata references: filesystem images, their
/// verity hash images, and GPT regions.
fn members(cosi: &Cosi) -> Vec<&ImageMember> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let all = cosi
        .images()
        .iter()
        .flat_map(|i| std::iter::once(&i.image).chain(i.verity.as_ref().map(|v| &v.image)))
        .chain(cosi.regions().iter().map(|r| &r.image));
    for m in all {
        if seen.insert(m.path.clone()) {
            out.push(m);
        }
    }
    out
}

/// Reads through, hashing and counting what passes.
struct HashingReader<R> {
    inner: R,
    hasher: Sha384,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Verify every image; `progress(done, total)` in compressed bytes.
pub fn verify(cosi: &Cosi, progress: &dyn Fn(u64, u64)) -> Result<Vec<VerifiedImage>> {
    let members = members(cosi);
    let total: u64 = members.iter().map(|m| m.compressed_size).sum();
    let mut done = 0;
    let mut out = Vec::new();
    for m in members {
        out.push(verify_member(cosi, m).with_context(|| format!("verifying {}", m.path))?);
        done += m.compressed_size;
        progress(done, total);
    }
    Ok(out)
}

fn verify_member(cosi: &Cosi, m: &ImageMember) -> Result<VerifiedImage> {
    let bad = |code: &str, msg: String| {
        anyhow::Error::new(
            TridentError::invalid_input(code, msg).on_device(cosi.source().describe()),
        )
    };
    let mut hashing = HashingReader {
        inner: cosi.read_image(m)?,
        hasher: Sha384::new(),
        count: 0,
    };
    let decoded = {
        let mut decoder =
            zstd::stream::read::Decoder::new(&mut hashing).context("starting the zstd decoder")?;
        decoder
            .window_log_max(cosi.max_window_log())
            .context("limiting the zstd window")?;
        // One byte more than promised is enough to know it is too long (zstd bomb).
        let mut limited = decoder.take(m.uncompressed_size + 1);
        io::copy(&mut limited, &mut io::sink()).map_err(|e| {
            bad(
                "image-decode-failed",
                format!("image '{}' is not a valid zstd stream: {e}", m.path),
            )
        })?
    };
    // Whatever the decoder did not need still belongs to the member and its hash.
    io::copy(&mut hashing, &mut io::sink()).context("reading the rest of the member")?;
    if hashing.count != m.compressed_size {
        return Err(bad(
            "image-truncated",
            format!(
                "image '{}': read {} compressed bytes, expected {}",
                m.path, hashing.count, m.compressed_size
            ),
        ));
    }
    let sha = hex::encode(hashing.hasher.finalize());
    if let Some(expected) = &m.sha384 {
        if !expected.eq_ignore_ascii_case(&sha) {
            return Err(bad(
                "image-hash-mismatch",
                format!(
                    "image '{}' is corrupt: SHA-384 of its compressed bytes is {sha}, the metadata says {expected}",
                    m.path
                ),
            ));
        }
    }
    if decoded != m.uncompressed_size {
        return Err(bad(
            "image-size-mismatch",
            format!(
                "image '{}' decompresses to {}{} bytes, the metadata says {}",
                m.path,
                if decoded > m.uncompressed_size {
                    "more than "
                } else {
                    ""
                },
                decoded.min(m.uncompressed_size),
                m.uncompressed_size
            ),
        ));
    }
    Ok(VerifiedImage {
        path: m.path.clone(),
        compressed_size: m.compressed_size,
        uncompressed_size: m.uncompressed_size,
        sha384: sha,
    })
}
