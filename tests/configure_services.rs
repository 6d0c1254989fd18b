//! `os.services` against the real thing: the symlinks our enable/disable creates in a
//! root directory must be exactly those `systemctl --root=DIR enable|disable` creates.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use trident::config::HostConfiguration;
use trident::config::ServicingType;
use trident::configure::{configure_target, ConfigureContext};

const UNITS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/configure/units"
);

/// A root with the fixture units: `local.service` in /etc/systemd/system, the others in
/// /usr/lib/systemd/system.
fn make_root(dir: &Path) {
    let lib = dir.join("usr/lib/systemd/system");
    let etc = dir.join("etc/systemd/system");
    fs::create_dir_all(&lib).unwrap();
    fs::create_dir_all(&etc).unwrap();
    for e in fs::read_dir(UNITS).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let to = if name == "local.service" { &etc } else { &lib };
        fs::copy(e.path(), to.join(name)).unwrap();
    }
}

/// Every symlink under /etc/systemd/system (relative path → link target).
fn links(root: &Path) -> BTreeMap<PathBuf, PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                out.insert(
                    p.strip_prefix(base).unwrap().into(),
                    fs::read_link(&p).unwrap(),
                );
            } else if m.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    let base = root.join("etc/systemd/system");
    walk(&base, &base, &mut out);
    out
}

fn systemctl(root: &Path, verb: &str, units: &[&str]) {
    let out = Command::new("systemctl")
        .arg(format!("--root={}", root.display()))
        .arg(verb)
        .args(units)
        .output()
        .expect("systemctl runs");
    assert!(
        out.status.success(),
        "systemctl {verb} {units:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn hc(enable: &[&str], disable: &[&str]) -> HostConfiguration {
    let mut hc = HostConfiguration::default();
    hc.os.services.enable = enable.iter().map(|s| s.to_string()).collect();
    hc.os.services.disable = disable.iter().map(|s| s.to_string()).collect();
    hc
}

fn ctx(root: &Path) -> ConfigureContext {
    ConfigureContext {
        target_root: root.to_path_buf(),
        servicing_type: ServicingType::CleanInstall,
        fstab: Vec::new(),
        carry_forward_from: None,
        config_dir: None,
    }
}

#[test]
fn enable_and_disable_match_systemctl() {
    if !trident::cmd::have_program("systemctl") {
        eprintln!("skipping: systemctl not installed");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (ours, theirs) = (t.path().join("ours"), t.path().join("theirs"));
    make_root(&ours);
    make_root(&theirs);
    let units = [
        "web.service",
        "agent@.service",
        "agent@extra.service",
        "backup.timer",
        "local.service",
        "static.service",
    ];
    configure_target(&hc(&units, &[]), &ctx(&ours)).unwrap();
    systemctl(&theirs, "enable", &units);
    let enabled = links(&theirs);
    assert!(enabled.len() >= 9, "systemctl created {enabled:#?}");
    assert_eq!(links(&ours), enabled);

    let off = ["web.service", "agent@extra.service", "backup.timer"];
    configure_target(&hc(&[], &off), &ctx(&ours)).unwrap();
    systemctl(&theirs, "disable", &off);
    assert_eq!(links(&ours), links(&theirs));
    assert!(links(&ours)
        .keys()
        .any(|k| k.ends_with("agent@main.service")));

    // Disabling the bare template removes its remaining instances.
    configure_target(&hc(&[], &["agent@.service"]), &ctx(&ours)).unwrap();
    systemctl(&theirs, "disable", &["agent@.service"]);
    assert_eq!(links(&ours), links(&theirs));
    assert!(!links(&ours)
        .keys()
        .any(|k| k.to_string_lossy().contains("agent@")));
}

#[test]
fn unknown_service_is_named_in_the_error() {
    let t = tempfile::tempdir().unwrap();
    make_root(t.path());
    let err = configure_target(&hc(&["web", "nosuch"], &[]), &ctx(t.path())).unwrap_err();
    let e = trident::error::find_trident_error(&err).unwrap();
    assert_eq!(e.code, "service-not-found");
    assert!(e.message.contains("nosuch.service"), "{}", e.message);
    assert!(
        format!("{err:#}").contains("os.services.enable[1]"),
        "{err:#}"
    );
}
