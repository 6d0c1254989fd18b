//! Reading files out of a filesystem inside the disk image, without mounting it when
//! possible.
//!
//! - ext2/3/4: `debugfs` on `IMAGE?offset=N` (no root, no loop device). Symlinks are
//!   resolved here, inside the image's root (an absolute link never escapes to the
//!   host).
//! - anything else (xfs, btrfs): a read-only loop mount with offset and size limit
//!   (needs root), again resolving symlinks inside the mount.

use crate::cmd::Cmd;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// How many symlinks a lookup follows before giving up.
const MAX_LINKS: usize = 16;

/// Read-only file access to one filesystem of the image.
pub trait FsReader {
    /// The contents of the regular file at absolute `path` (inside this filesystem),
    /// or `None` when it does not exist.
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>>;
}

/// What a lookup of one path component found.
enum Node {
    Missing,
    File,
    Dir,
    Link(String),
}

/// Walk `path` component by component, following symlinks within the root.
/// Returns the resolved absolute path of a regular file.
fn resolve(path: &str, stat: &dyn Fn(&str) -> Result<Node>) -> Result<Option<String>> {
    let mut pending: Vec<String> = components(path).into_iter().rev().collect();
    let mut cur: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        cur.push(c);
        let full = format!("/{}", cur.join("/"));
        match stat(&full)? {
            Node::Missing => return Ok(None),
            Node::File => {
                if !pending.is_empty() {
                    return Ok(None); // a file used as a directory
                }
            }
            Node::Dir => {}
            Node::Link(target) => {
                links += 1;
                if links > MAX_LINKS {
                    bail!("too many levels of symbolic links resolving {path}");
                }
                cur.pop();
                if target.starts_with('/') {
                    cur.clear();
                }
                pending.extend(components(&target).into_iter().rev());
            }
        }
    }
    if cur.is_empty() {
        return Ok(None);
    }
    let full = format!("/{}", cur.join("/"));
    match stat(&full)? {
        Node::File => Ok(Some(full)),
        _ => Ok(None),
    }
}

fn components(p: &str) -> Vec<String> {
    p.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// An ext2/3/4 filesystem at `offset` of an image file, read with `debugfs`.
pub struct ExtReader {
    spec: String,
}

impl ExtReader {
    pub fn new(image: &Path, offset: u64) -> Result<Self> {
        let p = image.to_str().context("image path is not UTF-8")?;
        if p.contains('?') {
            bail!("debugfs cannot open an image whose path contains '?': {p}");
        }
        Ok(Self {
            spec: format!("{p}?offset={offset}"),
        })
    }

    fn debugfs(&self, request: &str) -> Result<Vec<u8>> {
        Cmd::new("debugfs")
            .args(["-R", request, &self.spec])
            .output()
            .with_context(|| format!("reading the ext filesystem at {}", self.spec))
    }

    fn stat(&self, path: &str) -> Result<Node> {
        if path.contains(['"', '\n']) {
            bail!("unsupported character in path {path:?}");
        }
        let out = self.debugfs(&format!("stat \"{path}\""))?;
        let text = String::from_utf8_lossy(&out);
        let Some(kind) = text
            .lines()
            .next()
            .and_then(|l| l.split("Type:").nth(1))
            .and_then(|t| t.split_whitespace().next())
        else {
            return Ok(Node::Missing);
        };
        Ok(match kind {
            "regular" => Node::File,
            "directory" => Node::Dir,
            "symlink" => {
                if let Some(dest) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Fast link dest: "))
                {
                    Node::Link(dest.trim().trim_matches('"').to_string())
                } else {
                    // A slow symlink: its data block holds the target.
                    let t = self.debugfs(&format!("cat \"{path}\""))?;
                    Node::Link(
                        String::from_utf8_lossy(&t)
                            .trim_end_matches('\0')
                            .to_string(),
                    )
                }
            }
            _ => Node::Missing,
        })
    }
}

impl FsReader for ExtReader {
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some(real) = resolve(path, &|p| self.stat(p))? else {
            return Ok(None);
        };
        Ok(Some(self.debugfs(&format!("cat \"{real}\""))?))
    }
}

/// A filesystem mounted read-only from a loop device over a region of the image.
/// Unmounted (and the loop device released, via `-o loop` autoclear) on drop.
pub struct LoopMountReader {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl LoopMountReader {
    pub fn new(image: &Path, offset: u64, size: u64, fs_type: &str) -> Result<Self> {
        if !nix::unistd::Uid::effective().is_root() {
            bail!("reading files from a {fs_type} filesystem needs a loop mount, which needs root");
        }
        let dir = tempfile::Builder::new()
            .prefix("trident-cosi-build.")
            .tempdir()
            .context("creating a mount point")?;
        Cmd::new("mount")
            .args([
                "-t",
                fs_type,
                "-o",
                &format!("ro,loop,offset={offset},sizelimit={size}"),
            ])
            .arg(image)
            .arg(dir.path())
            .run()
            .with_context(|| format!("mounting the {fs_type} filesystem at offset {offset}"))?;
        Ok(Self { dir, mounted: true })
    }

    fn stat(&self, path: &str) -> Result<Node> {
        let host: PathBuf = self.dir.path().join(path.trim_start_matches('/'));
        match std::fs::symlink_metadata(&host) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Node::Missing),
            Err(e) => Err(e).with_context(|| format!("inspecting {path} in the image")),
            Ok(m) if m.file_type().is_symlink() => Ok(Node::Link(
                std::fs::read_link(&host)
                    .with_context(|| format!("reading link {path}"))?
                    .to_string_lossy()
                    .into_owned(),
            )),
            Ok(m) if m.is_dir() => Ok(Node::Dir),
            Ok(m) if m.is_file() => Ok(Node::File),
            Ok(_) => Ok(Node::Missing),
        }
    }
}

impl FsReader for LoopMountReader {
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some(real) = resolve(path, &|p| self.stat(p))? else {
            return Ok(None);
        };
        let host = self.dir.path().join(real.trim_start_matches('/'));
        Ok(Some(
            std::fs::read(&host).with_context(|| format!("reading {real} in the image"))?,
        ))
    }
}

impl Drop for LoopMountReader {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = Cmd::new("umount").arg(self.dir.path()).run() {
                tracing::warn!("unmounting {}: {e:#}", self.dir.path().display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn fake(entries: &[(&str, &str)]) -> HashMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn stat_of<'a>(m: &'a HashMap<String, String>) -> impl Fn(&str) -> Result<Node> + 'a {
        move |p: &str| {
            Ok(match m.get(p).map(String::as_str) {
                None => Node::Missing,
                Some("F") => Node::File,
                Some("D") => Node::Dir,
                Some(l) => Node::Link(l.strip_prefix("L:").unwrap().to_string()),
            })
        }
    }

    #[test]
    fn resolves_relative_absolute_and_dotdot_links_inside_root() {
        let m = fake(&[
            ("/etc", "D"),
            ("/usr", "D"),
            ("/usr/lib", "D"),
            ("/usr/lib/os-release", "F"),
            ("/etc/os-release", "L:../usr/lib/os-release"),
            ("/etc/abs", "L:/usr/lib/os-release"),
            ("/lib", "L:usr/lib"),
            ("/etc/escape", "L:../../../../usr/lib/os-release"),
            ("/etc/loop", "L:/etc/loop"),
        ]);
        let st = stat_of(&m);
        let r = |p| resolve(p, &st);
        assert_eq!(
            r("/etc/os-release").unwrap().unwrap(),
            "/usr/lib/os-release"
        );
        assert_eq!(r("/etc/abs").unwrap().unwrap(), "/usr/lib/os-release");
        assert_eq!(
            r("/lib/os-release").unwrap().unwrap(),
            "/usr/lib/os-release"
        );
        // `..` at the root stays at the root, as in a chroot.
        assert_eq!(r("/etc/escape").unwrap().unwrap(), "/usr/lib/os-release");
        assert_eq!(r("/etc/missing").unwrap(), None);
        assert_eq!(r("/etc").unwrap(), None);
        assert!(r("/etc/loop").is_err());
    }

    #[test]
    fn debugfs_reads_files_through_symlinks() {
        if !crate::cmd::have_program("debugfs") {
            eprintln!("skipping: no debugfs");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/lib")).unwrap();
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("usr/lib/os-release"), "ID=fixture\n").unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", tree.join("etc/os-release")).unwrap();
        let long = format!("/usr/lib/{}/../os-release", "x".repeat(80));
        std::fs::create_dir_all(tree.join(format!("usr/lib/{}", "x".repeat(80)))).unwrap();
        std::os::unix::fs::symlink(&long, tree.join("etc/slow")).unwrap();
        let img = dir.path().join("d.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        Cmd::new("mke2fs")
            .args(["-q", "-t", "ext4", "-E", "offset=1048576", "-d"])
            .arg(&tree)
            .arg(&img)
            .arg("8M")
            .run()
            .unwrap();
        let r = ExtReader::new(&img, 1 << 20).unwrap();
        assert_eq!(
            r.read_file("/etc/os-release").unwrap().unwrap(),
            b"ID=fixture\n"
        );
        assert_eq!(r.read_file("/etc/slow").unwrap().unwrap(), b"ID=fixture\n");
        assert_eq!(r.read_file("/etc/none").unwrap(), None);
        // Not an ext filesystem at that offset: a clear error, not "missing".
        let bad = ExtReader::new(&img, 0).unwrap();
        assert!(bad.read_file("/etc/os-release").is_err());
    }
}
