//! `/etc/fstab` of the image: which partition mounts where.

/// One fstab line that mounts something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    pub spec: String,
    pub mount_point: String,
    pub fs_type: String,
}

/// How an fstab `spec` names a block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRef {
    FsUuid(String),
    FsLabel(String),
    PartUuid(String),
    PartLabel(String),
    /// A path like `/dev/sda2` (cannot be mapped to the image's partitions).
    Path(String),
}

/// Decode `\040`-style octal escapes fstab uses for spaces and tabs.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            // `\400`..`\777` are not bytes: kept literally.
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse fstab text. Comments, blank lines and malformed lines (fewer than 3 fields)
/// are skipped.
pub fn parse(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(FstabEntry {
                spec: unescape(f.next()?),
                mount_point: unescape(f.next()?),
                fs_type: f.next()?.to_string(),
            })
        })
        .collect()
}

/// Interpret an fstab spec; `None` for pseudo filesystems (`tmpfs`, `proc`, ...).
pub fn device_ref(spec: &str) -> Option<DeviceRef> {
    let unq = |v: &str| v.trim_matches('"').to_string();
    if let Some((k, v)) = spec.split_once('=') {
        return match k {
            "UUID" => Some(DeviceRef::FsUuid(unq(v))),
            "LABEL" => Some(DeviceRef::FsLabel(unq(v))),
            "PARTUUID" => Some(DeviceRef::PartUuid(unq(v))),
            "PARTLABEL" => Some(DeviceRef::PartLabel(unq(v))),
            _ => None,
        };
    }
    let by = |dir: &str| {
        spec.strip_prefix(dir)
            .map(|v| unescape(&v.replace("\\x2f", "/")))
    };
    if let Some(v) = by("/dev/disk/by-uuid/") {
        return Some(DeviceRef::FsUuid(v));
    }
    if let Some(v) = by("/dev/disk/by-label/") {
        return Some(DeviceRef::FsLabel(v));
    }
    if let Some(v) = by("/dev/disk/by-partuuid/") {
        return Some(DeviceRef::PartUuid(v));
    }
    if let Some(v) = by("/dev/disk/by-partlabel/") {
        return Some(DeviceRef::PartLabel(v));
    }
    if spec.starts_with("/dev/") {
        return Some(DeviceRef::Path(spec.to_string()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_refs() {
        let e = parse(
            "# static\n\nUUID=abc / ext4 defaults 0 1\n  PARTLABEL=esp\t/boot/efi vfat umask=0077 0 2\n/dev/disk/by-partuuid/1234 /my\\040data xfs defaults\ntmpfs /tmp tmpfs defaults 0 0\nbroken-line\n",
        );
        assert_eq!(e.len(), 4);
        assert_eq!(
            e[0],
            FstabEntry {
                spec: "UUID=abc".into(),
                mount_point: "/".into(),
                fs_type: "ext4".into()
            }
        );
        assert_eq!(e[2].mount_point, "/my data");
        assert_eq!(
            device_ref(&e[0].spec),
            Some(DeviceRef::FsUuid("abc".into()))
        );
        assert_eq!(
            device_ref(&e[1].spec),
            Some(DeviceRef::PartLabel("esp".into()))
        );
        assert_eq!(
            device_ref(&e[2].spec),
            Some(DeviceRef::PartUuid("1234".into()))
        );
        assert_eq!(device_ref("tmpfs"), None);
        assert_eq!(
            device_ref("LABEL=\"my root\""),
            Some(DeviceRef::FsLabel("my root".into()))
        );
        assert_eq!(
            device_ref("/dev/sda1"),
            Some(DeviceRef::Path("/dev/sda1".into()))
        );
        assert_eq!(
            device_ref("/dev/disk/by-label/a\\x2fb"),
            Some(DeviceRef::FsLabel("a/b".into()))
        );
        assert_eq!(device_ref("server:/export"), None);
    }

    #[test]
    fn out_of_range_octal_escape_is_kept_literally() {
        let e = parse("UUID=a /x\\777y\\011z ext4\n");
        assert_eq!(e[0].mount_point, "/x\\777y\tz");
    }
}
