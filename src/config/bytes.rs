//! Byte counts written the way Trident writes them: a plain integer, or an integer with a
//! `K`, `M`, `G` or `T` suffix meaning powers of 1024 (`4G` = 4 × 1024³ bytes).

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A number of bytes. Parses `4096`, `64M`, `4G`, `1T`; displays the largest suffix that
/// is exact (`1073741824` displays as `1G`, `1536` stays `1536`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteCount(pub u64);

/// Why a byte count did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByteCountError(String);

impl fmt::Display for ByteCountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ByteCountError {}

impl ByteCount {
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// The shortest exact form: `0`, `512`, `1K`, `64M`, `4G`, `2T`.
    pub fn to_human(self) -> String {
        let n = self.0;
        if n == 0 {
            return "0".to_owned();
        }
        for (shift, suffix) in [(40u32, 'T'), (30, 'G'), (20, 'M'), (10, 'K')] {
            let unit = 1u64 << shift;
            if n % unit == 0 {
                return format!("{}{}", n / unit, suffix);
            }
        }
        n.to_string()
    }

    /// True when [`ByteCount::to_human`] needs a suffix (so it must be a YAML string).
    fn has_suffix(self) -> bool {
        self.0 != 0 && self.0 % 1024 == 0
    }
}

impl From<u64> for ByteCount {
    fn from(v: u64) -> Self {
        ByteCount(v)
    }
}

impl FromStr for ByteCount {
    type Err = ByteCountError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (digits, shift) = match t.chars().last() {
            Some('K') => (&t[..t.len() - 1], 10),
            Some('M') => (&t[..t.len() - 1], 20),
            Some('G') => (&t[..t.len() - 1], 30),
            Some('T') => (&t[..t.len() - 1], 40),
            _ => (t, 0),
        };
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(ByteCountError(format!(
                "invalid byte count '{s}': expected an integer with an optional K, M, G or T \
                 suffix (powers of 1024), e.g. 4096, 64M, 4G"
            )));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| ByteCountError(format!("byte count '{s}' is too large")))?;
        n.checked_mul(1u64 << shift)
            .map(ByteCount)
            .ok_or_else(|| ByteCountError(format!("byte count '{s}' is too large")))
    }
}

impl fmt::Display for ByteCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_human())
    }
}

impl Serialize for ByteCount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.has_suffix() {
            serializer.serialize_str(&self.to_human())
        } else {
            serializer.serialize_u64(self.0)
        }
    }
}

pub(crate) struct ByteCountVisitor;

impl de::Visitor<'_> for ByteCountVisitor {
    type Value = ByteCount;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a byte count such as 4096, 64M or 4G")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteCount, E> {
        Ok(ByteCount(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteCount, E> {
        u64::try_from(v)
            .map(ByteCount)
            .map_err(|_| E::custom(format!("byte count must not be negative, got {v}")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteCount, E> {
        v.parse().map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for ByteCount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ByteCountVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_suffixed() {
        assert_eq!("0".parse::<ByteCount>().unwrap().bytes(), 0);
        assert_eq!("512".parse::<ByteCount>().unwrap().bytes(), 512);
        assert_eq!("1K".parse::<ByteCount>().unwrap().bytes(), 1024);
        assert_eq!("64M".parse::<ByteCount>().unwrap().bytes(), 64 << 20);
        assert_eq!("4G".parse::<ByteCount>().unwrap().bytes(), 4 << 30);
        assert_eq!("2T".parse::<ByteCount>().unwrap().bytes(), 2 << 40);
        assert_eq!(" 8G ".parse::<ByteCount>().unwrap().bytes(), 8 << 30);
    }

    #[test]
    fn rejects_garbage_and_overflow() {
        for bad in [
            "",
            "G",
            "4g",
            "4GB",
            "4 G",
            "-1",
            "1.5G",
            "0x10",
            "4Gi",
            "18446744073709551616",
        ] {
            assert!(
                bad.parse::<ByteCount>().is_err(),
                "{bad:?} should not parse"
            );
        }
        // 2^24 T = 2^64 bytes overflows u64.
        assert!("16777216T".parse::<ByteCount>().is_err());
        assert!("16777215T".parse::<ByteCount>().is_ok());
    }

    #[test]
    fn displays_shortest_exact_form() {
        assert_eq!(ByteCount(0).to_string(), "0");
        assert_eq!(ByteCount(1).to_string(), "1");
        assert_eq!(ByteCount(1536).to_string(), "1536");
        assert_eq!(ByteCount(1024).to_string(), "1K");
        assert_eq!(ByteCount(1 << 30).to_string(), "1G");
        assert_eq!(ByteCount(1024 << 20).to_string(), "1G");
        assert_eq!(ByteCount(3 << 29).to_string(), "1536M");
        assert_eq!(ByteCount(5 << 40).to_string(), "5T");
    }

    #[test]
    fn display_parse_round_trip() {
        for n in [0u64, 1, 4095, 4096, 1 << 20, 3 << 29, 7 << 40, u64::MAX] {
            let b = ByteCount(n);
            assert_eq!(b.to_string().parse::<ByteCount>().unwrap(), b);
        }
    }

    #[test]
    fn yaml_accepts_integers_and_strings() {
        let b: ByteCount = serde_yaml::from_str("4096").unwrap();
        assert_eq!(b.bytes(), 4096);
        let b: ByteCount = serde_yaml::from_str("4G").unwrap();
        assert_eq!(b.bytes(), 4 << 30);
        assert!(serde_yaml::from_str::<ByteCount>("-5").is_err());
        assert!(serde_yaml::from_str::<ByteCount>("1.5").is_err());
        assert_eq!(
            serde_yaml::to_string(&ByteCount(4 << 30)).unwrap().trim(),
            "4G"
        );
        assert_eq!(
            serde_yaml::to_string(&ByteCount(100)).unwrap().trim(),
            "100"
        );
    }
}
