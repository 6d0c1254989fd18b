//! `os.additionalFiles`: files written into the target.

use anyhow::{Context, Result};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::fsutil;
use crate::config::AdditionalFile;
use crate::error::TridentError;

/// Write each additional file: inline `content` (mode 0644 by default) or a copy of
/// `source` (its own mode by default; a relative source is taken from `config_dir`).
/// Parent directories are created (0755).
pub fn write_additional_files(
    root: &Path,
    files: &[AdditionalFile],
    config_dir: Option<&Path>,
) -> Result<()> {
    for (i, f) in files.iter().enumerate() {
        let at = format!("os.additionalFiles[{i}]");
        let dest = f.destination.to_string_lossy().into_owned();
        let mode = match &f.permissions {
            Some(p) => Some(f.mode().ok_or_else(|| {
                TridentError::invalid_input(
                    "invalid-permissions",
                    format!("permissions '{p}' of {dest} are not an octal mode like '0644'"),
                )
                .at(format!("{at}.permissions"))
            })?),
            None => None,
        };
        let (data, mode) = match (&f.content, &f.source) {
            (Some(c), None) => (c.clone().into_bytes(), mode.unwrap_or(0o644)),
            (None, Some(src)) => {
                let src = if src.is_absolute() {
                    src.clone()
                } else {
                    config_dir
                        .ok_or_else(|| {
                            TridentError::invalid_input(
                                "relative-source-without-config-dir",
                                format!(
                                    "source '{}' is relative but the Host Configuration has no \
                                     directory to resolve it against",
                                    src.display()
                                ),
                            )
                            .at(format!("{at}.source"))
                        })?
                        .join(src)
                };
                let meta = std::fs::metadata(&src).map_err(|e| {
                    TridentError::invalid_input(
                        "additional-file-source-missing",
                        format!("cannot read source {} for {dest}: {e}", src.display()),
                    )
                    .at(format!("{at}.source"))
                })?;
                let data =
                    std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
                (data, mode.unwrap_or(meta.mode() & 0o7777))
            }
            _ => {
                return Err(TridentError::invalid_input(
                    "additional-file-source-conflict",
                    format!("{dest}: give exactly one of content and source"),
                )
                .at(at)
                .into())
            }
        };
        fsutil::write_in_target(root, &dest, &data, Some(mode))
            .with_context(|| format!("writing additional file {dest}"))?;
        tracing::info!(file = %dest, mode = format!("{mode:04o}"), "wrote additional file");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    #[test]
    fn content_and_source() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let cfg = t.path().join("cfg");
        fs::create_dir_all(&cfg).unwrap();
        fs::write(cfg.join("motd"), "hello\n").unwrap();
        fs::set_permissions(cfg.join("motd"), fs::Permissions::from_mode(0o640)).unwrap();
        let files = vec![
            AdditionalFile {
                destination: "/etc/deep/dir/a.conf".into(),
                content: Some("a=1\n".into()),
                ..Default::default()
            },
            AdditionalFile {
                destination: "/usr/local/bin/run".into(),
                content: Some("#!/bin/sh\n".into()),
                permissions: Some("0755".into()),
                ..Default::default()
            },
            AdditionalFile {
                destination: "/etc/motd".into(),
                source: Some(PathBuf::from("motd")),
                ..Default::default()
            },
        ];
        write_additional_files(&root, &files, Some(&cfg)).unwrap();
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(
            fs::read_to_string(root.join("etc/deep/dir/a.conf")).unwrap(),
            "a=1\n"
        );
        assert_eq!(mode("etc/deep/dir/a.conf"), 0o644);
        assert_eq!(mode("usr/local/bin/run"), 0o755);
        assert_eq!(
            fs::read_to_string(root.join("etc/motd")).unwrap(),
            "hello\n"
        );
        assert_eq!(mode("etc/motd"), 0o640);
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let t = tempfile::tempdir().unwrap();
        let missing = vec![AdditionalFile {
            destination: "/etc/x".into(),
            source: Some("/nonexistent/src".into()),
            ..Default::default()
        }];
        let err = write_additional_files(t.path(), &missing, None).unwrap_err();
        assert!(
            format!("{err:#}").contains("additional-file-source-missing"),
            "{err:#}"
        );
        let relative = vec![AdditionalFile {
            destination: "/etc/x".into(),
            source: Some("rel".into()),
            ..Default::default()
        }];
        let err = write_additional_files(t.path(), &relative, None).unwrap_err();
        assert!(format!("{err:#}").contains("relative-source-without-config-dir"));
        let perms = vec![AdditionalFile {
            destination: "/etc/x".into(),
            content: Some(String::new()),
            permissions: Some("644".into()),
            ..Default::default()
        }];
        let err = write_additional_files(t.path(), &perms, None).unwrap_err();
        assert!(format!("{err:#}").contains("invalid-permissions"));
    }
}
