//! Trident partition type names ↔ GPT partition type GUIDs (x86-64).
//!
//! Names follow Microsoft Trident's Host Configuration API (`PartitionType`), GUIDs the
//! UAPI Discoverable Partitions Specification (DPS). A GUID string is accepted too and
//! passed through, so any type can be expressed.

use crate::error::TridentError;
use std::fmt;
use std::str::FromStr;
use uuid::{uuid, Uuid};

/// A partition type: one of Trident's named types, or any other GPT type GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionType {
    /// EFI System Partition.
    Esp,
    /// Root partition (x86-64).
    Root,
    /// Root verity hash partition (x86-64).
    RootVerity,
    /// `/usr` partition (x86-64).
    Usr,
    /// `/usr` verity hash partition (x86-64).
    UsrVerity,
    /// `/home`.
    Home,
    /// `/var`.
    Var,
    /// `/srv` (server data).
    Srv,
    /// `/var/tmp` (temporary data).
    Tmp,
    /// Swap.
    Swap,
    /// Extended Boot Loader Partition (`/boot`).
    Xbootldr,
    /// Generic Linux filesystem data.
    LinuxGeneric,
    /// Any other type, given as a GUID.
    Guid(Uuid),
}

/// Named types with their GUIDs (x86-64 variants where the DPS is per-architecture).
const NAMED: &[(PartitionType, &str, Uuid)] = &[
    (
        PartitionType::Esp,
        "esp",
        uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
    ),
    (
        PartitionType::Root,
        "root",
        uuid!("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
    ),
    (
        PartitionType::RootVerity,
        "root-verity",
        uuid!("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"),
    ),
    (
        PartitionType::Usr,
        "usr",
        uuid!("8484680c-9521-48c6-9c11-b0720656f69e"),
    ),
    (
        PartitionType::UsrVerity,
        "usr-verity",
        uuid!("77ff5f63-e7b6-4633-acf4-1565b864c0e6"),
    ),
    (
        PartitionType::Home,
        "home",
        uuid!("933ac7e1-2eb4-4f13-b844-0e14e2aef915"),
    ),
    (
        PartitionType::Var,
        "var",
        uuid!("4d21b016-b534-45c2-a9fb-5c16e091fd2d"),
    ),
    (
        PartitionType::Srv,
        "srv",
        uuid!("3b8f8425-20e0-4f3b-907f-1a25a76f98e8"),
    ),
    (
        PartitionType::Tmp,
        "tmp",
        uuid!("7ec6f557-3bc5-4aca-b293-16ef5df639d1"),
    ),
    (
        PartitionType::Swap,
        "swap",
        uuid!("0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"),
    ),
    (
        PartitionType::Xbootldr,
        "xbootldr",
        uuid!("bc13c2ff-59e6-4262-a352-b275fd6f7172"),
    ),
    (
        PartitionType::LinuxGeneric,
        "linux-generic",
        uuid!("0fc63daf-8483-4772-8e79-3d69d8477de4"),
    ),
];

impl PartitionType {
    /// Every named type, in documentation order.
    pub fn named() -> impl Iterator<Item = PartitionType> {
        NAMED.iter().map(|(t, _, _)| *t)
    }

    /// The GPT partition type GUID.
    pub fn guid(self) -> Uuid {
        match self {
            PartitionType::Guid(g) => g,
            named => NAMED
                .iter()
                .find(|(t, _, _)| *t == named)
                .map(|(_, _, g)| *g)
                .expect("every named type is in the table"),
        }
    }

    /// The Trident name, or `None` for a bare GUID.
    pub fn name(self) -> Option<&'static str> {
        NAMED
            .iter()
            .find(|(t, _, _)| *t == self)
            .map(|(_, n, _)| *n)
    }

    /// Reverse lookup: the named type with this GUID, else `Guid(guid)`.
    pub fn from_guid(guid: Uuid) -> Self {
        NAMED
            .iter()
            .find(|(_, _, g)| *g == guid)
            .map(|(t, _, _)| *t)
            .unwrap_or(PartitionType::Guid(guid))
    }

    /// Parse a Trident name (`root`, `linux-generic`, ...) or a GUID string.
    pub fn parse(s: &str) -> Result<Self, TridentError> {
        if let Some((t, _, _)) = NAMED.iter().find(|(_, n, _)| *n == s) {
            return Ok(*t);
        }
        match Uuid::try_parse(s) {
            // A GUID of a named type resolves to the name, so comparisons are simple.
            Ok(g) => Ok(Self::from_guid(g)),
            Err(_) => {
                let names: Vec<&str> = NAMED.iter().map(|(_, n, _)| *n).collect();
                Err(TridentError::invalid_input(
                    "unknown-partition-type",
                    format!(
                        "unknown partition type {s:?}: expected one of {} or a GUID",
                        names.join(", ")
                    ),
                ))
            }
        }
    }
}

impl FromStr for PartitionType {
    type Err = TridentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Serialized as its Trident name, or the GUID string for other types.
impl serde::Serialize for PartitionType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PartitionType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

impl fmt::Display for PartitionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "{}", self.guid()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_dps_guids() {
        let cases = [
            ("esp", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            ("root", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
            ("root-verity", "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5"),
            ("usr", "8484680C-9521-48C6-9C11-B0720656F69E"),
            ("usr-verity", "77FF5F63-E7B6-4633-ACF4-1565B864C0E6"),
            ("home", "933AC7E1-2EB4-4F13-B844-0E14E2AEF915"),
            ("var", "4D21B016-B534-45C2-A9FB-5C16E091FD2D"),
            ("srv", "3B8F8425-20E0-4F3B-907F-1A25A76F98E8"),
            ("tmp", "7EC6F557-3BC5-4ACA-B293-16EF5DF639D1"),
            ("swap", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"),
            ("xbootldr", "BC13C2FF-59E6-4262-A352-B275FD6F7172"),
            ("linux-generic", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        ];
        assert_eq!(cases.len(), PartitionType::named().count());
        for (name, guid) in cases {
            let t: PartitionType = name.parse().unwrap();
            assert_eq!(t.guid(), Uuid::parse_str(guid).unwrap(), "{name}");
            assert_eq!(t.to_string(), name);
            // Reverse lookup, including from an upper-case GUID string.
            assert_eq!(PartitionType::from_guid(t.guid()), t);
            assert_eq!(PartitionType::parse(guid).unwrap(), t);
        }
    }

    #[test]
    fn guid_passthrough() {
        let g = "a19d880f-05fc-4d3b-a006-743f0f84911e"; // Linux RAID
        let t = PartitionType::parse(g).unwrap();
        assert_eq!(t, PartitionType::Guid(Uuid::parse_str(g).unwrap()));
        assert_eq!(t.name(), None);
        assert_eq!(t.to_string(), g);
    }

    #[test]
    fn serde_as_name_or_guid() {
        let t: Vec<PartitionType> =
            serde_yaml::from_str("[root, esp, a19d880f-05fc-4d3b-a006-743f0f84911e]").unwrap();
        assert_eq!(t[0], PartitionType::Root);
        assert_eq!(t[1], PartitionType::Esp);
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"["root","esp","a19d880f-05fc-4d3b-a006-743f0f84911e"]"#
        );
        let e = serde_yaml::from_str::<PartitionType>("rooot").unwrap_err();
        assert!(e.to_string().contains("unknown partition type"), "{e}");
    }

    #[test]
    fn unknown_name_is_clear_error() {
        let e = PartitionType::parse("boot").unwrap_err();
        assert_eq!(e.code, "unknown-partition-type");
        assert!(e.message.contains("\"boot\""), "{}", e.message);
        assert!(e.message.contains("linux-generic"), "{}", e.message);
        assert!(
            PartitionType::parse("Root").is_err(),
            "names are case-sensitive"
        );
    }
}
