//! Enable and disable systemd units in a root directory without running systemd: what
//! `systemctl --root=DIR enable|disable` does, from the units' `[Install]` sections.

use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::fsutil;
use crate::error::TridentError;

/// Where unit files are looked up, in systemd's order.
pub const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];
const CONFIG_DIR: &str = "/etc/systemd/system";

/// The `[Install]` section of a unit file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InstallInfo {
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
    pub upheld_by: Vec<String>,
    pub alias: Vec<String>,
    pub also: Vec<String>,
    pub default_instance: Option<String>,
}

impl InstallInfo {
    pub fn is_empty(&self) -> bool {
        self.wanted_by.is_empty()
            && self.required_by.is_empty()
            && self.upheld_by.is_empty()
            && self.alias.is_empty()
            && self.also.is_empty()
    }
}

/// Parse the `[Install]` section of a unit file (continuation lines and comments handled;
/// an empty assignment resets the list, as in systemd).
pub fn parse_install(text: &str) -> InstallInfo {
    let mut info = InstallInfo::default();
    let mut in_install = false;
    let mut logical = Vec::new();
    let mut cur = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if cur.is_empty() && (line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if let Some(stripped) = line.strip_suffix('\\') {
            cur.push_str(stripped);
            cur.push(' ');
            continue;
        }
        cur.push_str(line);
        logical.push(std::mem::take(&mut cur));
    }
    if !cur.is_empty() {
        logical.push(cur);
    }
    for line in logical {
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let words = || v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let list = match k.trim() {
            "WantedBy" => &mut info.wanted_by,
            "RequiredBy" => &mut info.required_by,
            "UpheldBy" => &mut info.upheld_by,
            "Alias" => &mut info.alias,
            "Also" => &mut info.also,
            "DefaultInstance" => {
                let v = v.trim();
                info.default_instance = (!v.is_empty()).then(|| v.to_string());
                continue;
            }
            _ => continue,
        };
        if v.trim().is_empty() {
            list.clear();
        } else {
            list.extend(words());
        }
    }
    info
}

/// `sshd` → `sshd.service`; names with a unit suffix are kept.
pub fn unit_name(name: &str) -> String {
    const SUFFIXES: [&str; 11] = [
        ".service",
        ".socket",
        ".timer",
        ".target",
        ".path",
        ".mount",
        ".automount",
        ".swap",
        ".slice",
        ".scope",
        ".device",
    ];
    if SUFFIXES.iter().any(|s| name.ends_with(s)) {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}

/// `foo@bar.service` → `("foo@", Some("bar"), ".service")`.
fn split_instance(name: &str) -> Option<(&str, &str, &str)> {
    let at = name.find('@')?;
    let dot = name.rfind('.')?;
    (dot > at).then(|| (&name[..=at], &name[at + 1..dot], &name[dot..]))
}

fn template_of(name: &str) -> Option<String> {
    split_instance(name)
        .filter(|(_, inst, _)| !inst.is_empty())
        .map(|(p, _, s)| format!("{p}{s}"))
}

/// A unit file found in the root.
#[derive(Debug, Clone)]
pub struct UnitFile {
    /// In-root path of the file (what the symlinks point to).
    pub path: PathBuf,
    pub install: InstallInfo,
}

/// Find a unit's file (a template's file for an instance). A unit masked in
/// `/etc/systemd/system` (symlink to `/dev/null`) is an error.
pub fn find_unit(root: &Path, name: &str) -> Result<UnitFile> {
    let candidates: Vec<String> = std::iter::once(name.to_string())
        .chain(template_of(name))
        .collect();
    for cand in &candidates {
        for dir in UNIT_DIRS {
            let abs = PathBuf::from(dir).join(cand);
            let host = fsutil::target_path(root, &abs)?;
            let Ok(meta) = fs::symlink_metadata(&host) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let link = fs::read_link(&host)?;
                if link == Path::new("/dev/null") {
                    return Err(TridentError::invalid_input(
                        "service-masked",
                        format!(
                            "unit {name} is masked in the image ({} -> /dev/null)",
                            abs.display()
                        ),
                    )
                    .into());
                }
                // An alias symlink inside the unit directories: follow it in the root.
                let target = if link.is_absolute() {
                    link
                } else {
                    PathBuf::from(dir).join(link)
                };
                let host_target = fsutil::target_path(root, &target)?;
                if host_target.is_file() {
                    let text = fs::read_to_string(&host_target)
                        .with_context(|| format!("reading {}", host_target.display()))?;
                    return Ok(UnitFile {
                        path: abs,
                        install: parse_install(&text),
                    });
                }
                continue;
            }
            if meta.is_file() {
                let text = fs::read_to_string(&host)
                    .with_context(|| format!("reading {}", host.display()))?;
                return Ok(UnitFile {
                    path: abs,
                    install: parse_install(&text),
                });
            }
        }
    }
    Err(TridentError::invalid_input(
        "service-not-found",
        format!(
            "unit {name} does not exist in the target OS (looked in {})",
            UNIT_DIRS.join(", ")
        ),
    )
    .at("os.services")
    .into())
}

/// Expand the unit specifiers systemctl expands in `[Install]` values.
fn expand(value: &str, unit: &str) -> String {
    let (prefix, instance) = match split_instance(unit) {
        Some((p, i, _)) => (p.trim_end_matches('@').to_string(), i.to_string()),
        None => (
            unit.rsplit_once('.')
                .map(|(p, _)| p)
                .unwrap_or(unit)
                .to_string(),
            String::new(),
        ),
    };
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push_str(unit),
            Some('N') => out.push_str(unit.rsplit_once('.').map(|(p, _)| p).unwrap_or(unit)),
            Some('p') => out.push_str(&prefix),
            Some('i') | Some('I') => out.push_str(&instance),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The symlinks (in-root path → in-root target) that enabling `name` creates.
pub fn enable_links(root: &Path, name: &str) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut links = Vec::new();
    let mut seen = Vec::new();
    enable_links_inner(root, &unit_name(name), &mut links, &mut seen)?;
    Ok(links)
}

fn enable_links_inner(
    root: &Path,
    name: &str,
    links: &mut Vec<(PathBuf, PathBuf)>,
    seen: &mut Vec<String>,
) -> Result<()> {
    if seen.iter().any(|s| s == name) {
        return Ok(());
    }
    seen.push(name.to_string());
    let unit = find_unit(root, name)?;
    let info = &unit.install;
    // A bare template is enabled as its DefaultInstance.
    let mut name = name.to_string();
    if let Some((p, "", s)) = split_instance(&name) {
        match &info.default_instance {
            Some(inst) => name = format!("{p}{inst}{s}"),
            None if !info.is_empty() => {
                tracing::warn!(
                    unit = %name,
                    "template without DefaultInstance=; enable an instance (name@instance) instead"
                );
                return Ok(());
            }
            None => {}
        }
    }
    if info.is_empty() {
        tracing::warn!(unit = %name, "unit has no [Install] section; nothing to enable (static unit)");
    }
    let etc = PathBuf::from(CONFIG_DIR);
    for (deps, suffix) in [
        (&info.wanted_by, ".wants"),
        (&info.required_by, ".requires"),
        (&info.upheld_by, ".upholds"),
    ] {
        for t in deps {
            let t = expand(t, &name);
            links.push((
                etc.join(format!("{t}{suffix}")).join(&name),
                unit.path.clone(),
            ));
        }
    }
    for a in &info.alias {
        let a = expand(a, &name);
        if a != name {
            links.push((etc.join(a), unit.path.clone()));
        }
    }
    for also in &info.also {
        enable_links_inner(root, &expand(also, &name), links, seen)?;
    }
    Ok(())
}

/// Enable `name` in `root`: create the `[Install]` symlinks (replacing stale ones).
pub fn enable(root: &Path, name: &str) -> Result<()> {
    for (link, target) in enable_links(root, name)? {
        let host = fsutil::target_path(root, &link)?;
        if host == fsutil::target_path(root, &target)? {
            continue; // the unit file itself lives at the alias path
        }
        if let Some(dir) = host.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        match fs::read_link(&host) {
            Ok(existing) if existing == target => continue,
            Ok(_) => fs::remove_file(&host)?,
            Err(_) if host.exists() => fs::remove_file(&host)?,
            Err(_) => {}
        }
        symlink(&target, &host)
            .with_context(|| format!("linking {} -> {}", link.display(), target.display()))?;
        tracing::info!(link = %link.display(), target = %target.display(), "enabled");
    }
    Ok(())
}

/// Disable `name` in `root`: remove every symlink under `/etc/systemd/system` (and its
/// `.wants`/`.requires`/`.upholds` directories) named after the unit (or one of its
/// aliases) or pointing to its file, as `systemctl disable` does. `Also=` units are
/// disabled too.
pub fn disable(root: &Path, name: &str) -> Result<()> {
    let name = unit_name(name);
    let unit = find_unit(root, &name)?;
    let mut names = vec![name.clone()];
    names.extend(unit.install.alias.iter().map(|a| expand(a, &name)));
    let etc = fsutil::target_path(root, Path::new(CONFIG_DIR))?;
    // An instance shares its template's file: match it by name only, so disabling
    // `foo@a` leaves `foo@b` enabled (disabling `foo@` removes every instance).
    let target = template_of(&name).is_none().then_some(unit.path.as_path());
    remove_links(&etc, &names, target, true)?;
    for also in unit.install.also.clone() {
        let also = expand(&also, &name);
        if also != name {
            disable(root, &also)?;
        }
    }
    Ok(())
}

fn remove_links(dir: &Path, names: &[String], target: Option<&Path>, top: bool) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let ft = entry.file_type()?;
        let fname = entry.file_name().to_string_lossy().into_owned();
        if ft.is_dir() && top {
            if [".wants", ".requires", ".upholds"]
                .iter()
                .any(|s| fname.ends_with(s))
            {
                remove_links(&path, names, target, false)?;
            }
            continue;
        }
        if !ft.is_symlink() {
            continue;
        }
        let link = fs::read_link(&path)?;
        let points_to_unit = target.is_some_and(|t| link == t);
        let named =
            names.contains(&fname) || template_of(&fname).is_some_and(|t| names.contains(&t));
        if points_to_unit || named {
            if link == Path::new("/dev/null") {
                continue; // a mask is not an enablement
            }
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            tracing::info!(link = %path.display(), "disabled");
        }
    }
    Ok(())
}

/// Apply `os.services`: disable first, then enable (so enabling wins for a unit listed
/// twice, as with `systemctl disable a; systemctl enable a`).
pub fn configure_services(
    root: &Path,
    enable_list: &[String],
    disable_list: &[String],
) -> Result<()> {
    for (i, s) in disable_list.iter().enumerate() {
        disable(root, s).with_context(|| format!("disabling {s} (os.services.disable[{i}])"))?;
    }
    for (i, s) in enable_list.iter().enumerate() {
        enable(root, s).with_context(|| format!("enabling {s} (os.services.enable[{i}])"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(root: &Path, dir: &str, name: &str, text: &str) {
        let d = root.join(dir.trim_start_matches('/'));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(name), text).unwrap();
    }

    #[test]
    fn parses_install_section() {
        let info = parse_install(
            "[Unit]\nDescription=x\nWantedBy=not-here.target\n[Install]\n# c\n\
             WantedBy=multi-user.target \\\n  graphical.target\nRequiredBy=a.target\n\
             Alias=b.service\nAlso=c.socket\nDefaultInstance=tty1\n",
        );
        assert_eq!(info.wanted_by, ["multi-user.target", "graphical.target"]);
        assert_eq!(info.required_by, ["a.target"]);
        assert_eq!(info.alias, ["b.service"]);
        assert_eq!(info.also, ["c.socket"]);
        assert_eq!(info.default_instance.as_deref(), Some("tty1"));
    }

    #[test]
    fn enable_disable_roundtrip() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        unit(
            r,
            "/usr/lib/systemd/system",
            "foo.service",
            "[Install]\nWantedBy=multi-user.target\nAlias=bar.service\nAlso=foo.socket\n",
        );
        unit(
            r,
            "/usr/lib/systemd/system",
            "foo.socket",
            "[Install]\nWantedBy=sockets.target\n",
        );
        unit(
            r,
            "/usr/lib/systemd/system",
            "getty@.service",
            "[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n",
        );
        enable(r, "foo").unwrap();
        enable(r, "getty@.service").unwrap();
        enable(r, "getty@ttyS0.service").unwrap();
        let l = |p: &str| fs::read_link(r.join(p)).unwrap();
        assert_eq!(
            l("etc/systemd/system/multi-user.target.wants/foo.service"),
            Path::new("/usr/lib/systemd/system/foo.service")
        );
        assert_eq!(
            l("etc/systemd/system/bar.service"),
            Path::new("/usr/lib/systemd/system/foo.service")
        );
        assert_eq!(
            l("etc/systemd/system/sockets.target.wants/foo.socket"),
            Path::new("/usr/lib/systemd/system/foo.socket")
        );
        assert_eq!(
            l("etc/systemd/system/getty.target.wants/getty@tty1.service"),
            Path::new("/usr/lib/systemd/system/getty@.service")
        );
        assert_eq!(
            l("etc/systemd/system/getty.target.wants/getty@ttyS0.service"),
            Path::new("/usr/lib/systemd/system/getty@.service")
        );
        disable(r, "foo.service").unwrap();
        assert!(!r
            .join("etc/systemd/system/multi-user.target.wants/foo.service")
            .exists());
        assert!(fs::symlink_metadata(r.join("etc/systemd/system/bar.service")).is_err());
        assert!(
            fs::symlink_metadata(r.join("etc/systemd/system/sockets.target.wants/foo.socket"))
                .is_err()
        );
        disable(r, "getty@.service").unwrap();
        assert!(
            fs::read_dir(r.join("etc/systemd/system/getty.target.wants"))
                .unwrap()
                .next()
                .is_none()
        );
    }

    #[test]
    fn missing_and_masked_units_are_errors() {
        let t = tempfile::tempdir().unwrap();
        let err = enable(t.path(), "nope").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("service-not-found") && msg.contains("nope.service"),
            "{msg}"
        );
        fs::create_dir_all(t.path().join("etc/systemd/system")).unwrap();
        symlink("/dev/null", t.path().join("etc/systemd/system/m.service")).unwrap();
        let err = enable(t.path(), "m.service").unwrap_err();
        assert!(format!("{err:#}").contains("service-masked"));
    }
}
