//! File helpers over a target root: paths resolved inside the root (symlinks in parent
//! directories never lead out of it) and crash-consistent writes.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Resolve the absolute in-target path `abs` to a host path under `root`. Symlinks in
/// the parent directories are followed *inside* the root (an absolute link target is
/// taken relative to `root`, `..` never climbs above it); the last component is not
/// followed, so a write replaces a symlink instead of writing through it.
pub fn target_path(root: &Path, abs: &Path) -> Result<PathBuf> {
    if !abs.is_absolute() {
        bail!("path '{}' must be absolute", abs.display());
    }
    let comps: Vec<Component> = abs.components().collect();
    let Some((last, parents)) = comps.split_last() else {
        return Ok(root.to_path_buf());
    };
    let mut cur = PathBuf::from("/");
    let mut pending: Vec<PathBuf> = parents.iter().rev().map(|c| c.as_os_str().into()).collect();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.to_str() {
            Some("/") | Some(".") => continue,
            Some("..") => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let next = cur.join(&c);
        let host = root.join(next.strip_prefix("/").expect("absolute"));
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    bail!("too many symlinks resolving '{}'", abs.display());
                }
                let link = fs::read_link(&host)
                    .with_context(|| format!("reading link {}", host.display()))?;
                if link.is_absolute() {
                    cur = PathBuf::from("/");
                }
                pending.extend(link.components().rev().map(|c| c.as_os_str().into()));
            }
            _ => cur = next,
        }
    }
    match last {
        Component::Normal(name) => Ok(root.join(cur.strip_prefix("/").expect("abs")).join(name)),
        _ => bail!("path '{}' does not name a file", abs.display()),
    }
}

/// Write `data` to `path` crash-consistently: temp file in the same directory, fsync,
/// rename over `path`, fsync the directory. `mode` sets the permission bits; when `None`
/// an existing file's mode and ownership are kept (0644 for a new file).
pub fn atomic_write(path: &Path, data: &[u8], mode: Option<u32>) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let existing = fs::metadata(path).ok().filter(|m| m.is_file());
    let mode = mode
        .or_else(|| existing.as_ref().map(|m| m.mode() & 0o7777))
        .unwrap_or(0o644);
    let tmp = dir.join(format!(
        ".{}.trident-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(data)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode of {}", tmp.display()))?;
        if let Some(m) = &existing {
            if is_root() {
                std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))
                    .with_context(|| format!("setting owner of {}", tmp.display()))?;
            }
        }
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing directory {}", dir.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Write a file inside the target root, creating its parent directories (0755).
pub fn write_in_target(root: &Path, abs: &str, data: &[u8], mode: Option<u32>) -> Result<PathBuf> {
    let path = target_path(root, Path::new(abs))?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    atomic_write(&path, data, mode).with_context(|| format!("writing {abs} in the target"))?;
    Ok(path)
}

/// Read a file inside the target root; `None` when it does not exist.
pub fn read_in_target(root: &Path, abs: &str) -> Result<Option<String>> {
    let path = target_path(root, Path::new(abs))?;
    match fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {abs} in the target")),
    }
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_in_parents_stay_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("usr/etc")).unwrap();
        symlink("/usr/etc", root.join("etc")).unwrap();
        symlink("../../../../../tmp", root.join("usr/escape")).unwrap();
        assert_eq!(
            target_path(root, Path::new("/etc/hostname")).unwrap(),
            root.join("usr/etc/hostname")
        );
        assert_eq!(
            target_path(root, Path::new("/usr/escape/x")).unwrap(),
            root.join("tmp/x")
        );
        assert!(target_path(root, Path::new("relative")).is_err());
    }

    #[test]
    fn atomic_write_replaces_and_keeps_mode() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        atomic_write(&p, b"new", None).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        atomic_write(&p, b"x", Some(0o640)).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(
            fs::read_dir(t.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
