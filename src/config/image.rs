//! `image`: the COSI image to deploy.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The COSI image: where to get it and the SHA-384 of its `metadata.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OsImage {
    /// `file://`, `http://`, `https://` or `oci://` URL.
    pub url: String,
    pub sha384: ImageSha384,
}

/// SHA-384 of the image metadata, or `ignored` to skip the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSha384 {
    Ignored,
    /// Lower- or upper-case hex as written; validation requires 96 hex digits.
    Checksum(String),
}

impl ImageSha384 {
    /// The checksum in lower case, or `None` when ignored.
    pub fn expected(&self) -> Option<String> {
        match self {
            ImageSha384::Ignored => None,
            ImageSha384::Checksum(c) => Some(c.to_ascii_lowercase()),
        }
    }
}

impl fmt::Display for ImageSha384 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSha384::Ignored => f.write_str("ignored"),
            ImageSha384::Checksum(c) => f.write_str(c),
        }
    }
}

impl Serialize for ImageSha384 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ImageSha384 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ImageSha384;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("96 hex digits or `ignored`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ImageSha384, E> {
                Ok(if v == "ignored" {
                    ImageSha384::Ignored
                } else {
                    ImageSha384::Checksum(v.to_owned())
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// Whether `s` is a SHA-384 digest in hex (96 hex digits).
pub fn is_sha384_hex(s: &str) -> bool {
    s.len() == 96 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The URL scheme (`file`, `https`, ...), if `url` has one.
pub fn url_scheme(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    let valid = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (valid && !rest.is_empty()).then_some(scheme)
}
