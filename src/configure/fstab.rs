//! `/etc/fstab`: Trident's entries replace the image's entries for the same mount points
//! (swap: the same device); every other line of the image is kept as it was.

use anyhow::{Context, Result};
use std::path::Path;

use super::fsutil;
use super::FstabEntry;

/// Marker line written above Trident's entries (dropped and rewritten on every run).
pub const MARKER: &str = "# Mount points managed by Trident";

fn escape(s: &str) -> String {
    s.replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012")
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

impl FstabEntry {
    /// The fstab line (no newline), with whitespace in fields escaped as octal.
    pub fn to_line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            escape(&self.spec),
            escape(&self.mount_point.to_string_lossy()),
            escape(&self.fs_type),
            escape(if self.options.is_empty() {
                "defaults"
            } else {
                &self.options
            }),
            self.dump,
            self.pass
        )
    }

    fn is_swap(&self) -> bool {
        self.fs_type == "swap"
    }
}

/// Whether an existing fstab line is replaced by one of `managed`.
fn replaced(line: &str, managed: &[FstabEntry]) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 3 || fields[0].starts_with('#') {
        return false;
    }
    let (spec, mount, fstype) = (unescape(fields[0]), unescape(fields[1]), fields[2]);
    managed.iter().any(|m| {
        if m.is_swap() || fstype == "swap" {
            m.is_swap() && fstype == "swap" && m.spec == spec
        } else {
            Path::new(&mount) == m.mount_point
        }
    })
}

/// The merged fstab text: the image's lines without those Trident manages, then
/// Trident's entries under [`MARKER`].
pub fn merge(existing: &str, managed: &[FstabEntry]) -> String {
    let mut out = String::new();
    for line in existing.lines() {
        if line.trim() == MARKER || replaced(line, managed) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    if !managed.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(MARKER);
        out.push('\n');
        for m in managed {
            out.push_str(&m.to_line());
            out.push('\n');
        }
    }
    out
}

/// Rewrite `<root>/etc/fstab` (atomically). Nothing is written when `managed` is empty.
pub fn write_fstab(root: &Path, managed: &[FstabEntry]) -> Result<()> {
    if managed.is_empty() {
        tracing::debug!("no fstab entries to manage; leaving /etc/fstab as in the image");
        return Ok(());
    }
    let existing = fsutil::read_in_target(root, "/etc/fstab")?.unwrap_or_default();
    fsutil::write_in_target(
        root,
        "/etc/fstab",
        merge(&existing, managed).as_bytes(),
        None,
    )
    .context("writing /etc/fstab")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn e(spec: &str, mp: &str, t: &str, o: &str, pass: u32) -> FstabEntry {
        FstabEntry {
            spec: spec.into(),
            mount_point: PathBuf::from(mp),
            fs_type: t.into(),
            options: o.into(),
            dump: 0,
            pass,
        }
    }

    #[test]
    fn replaces_managed_keeps_others() {
        let image = "# /etc/fstab: static file system information.\n\
                     UUID=old-root / ext4 errors=remount-ro 0 1\n\
                     /dev/sdb1 none swap sw 0 0\n\
                     tmpfs /tmp tmpfs defaults 0 0\n\
                     UUID=olddata /srv/my\\040data ext4 defaults 0 2\n";
        let managed = vec![
            e("UUID=1111", "/", "ext4", "defaults", 1),
            e("PARTUUID=2222", "/boot/efi", "vfat", "umask=0077", 2),
            e("UUID=3333", "/srv/my data", "xfs", "", 2),
            e("/dev/sdb1", "none", "swap", "sw", 0),
        ];
        let got = merge(image, &managed);
        assert_eq!(
            got,
            "# /etc/fstab: static file system information.\n\
             tmpfs /tmp tmpfs defaults 0 0\n\
             \n\
             # Mount points managed by Trident\n\
             UUID=1111\t/\text4\tdefaults\t0\t1\n\
             PARTUUID=2222\t/boot/efi\tvfat\tumask=0077\t0\t2\n\
             UUID=3333\t/srv/my\\040data\txfs\tdefaults\t0\t2\n\
             /dev/sdb1\tnone\tswap\tsw\t0\t0\n"
        );
        assert_eq!(merge(&got, &managed), got, "idempotent");
    }

    #[test]
    fn writes_file_in_root() {
        let t = tempfile::tempdir().unwrap();
        write_fstab(t.path(), &[e("UUID=1", "/", "ext4", "defaults", 1)]).unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("etc/fstab")).unwrap(),
            "# Mount points managed by Trident\nUUID=1\t/\text4\tdefaults\t0\t1\n"
        );
    }
}
