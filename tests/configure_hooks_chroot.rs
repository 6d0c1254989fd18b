//! `postConfigure` scripts run inside a chroot of the target, with /proc, /sys and /dev
//! bound in and unbound afterwards (needs root; skipped otherwise).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use trident::config::{HostConfiguration, Script, ServicingType, ServicingTypeSelection};
use trident::configure::{run_hooks, HookContext, HookPhase};

/// A minimal root with `/bin/sh` and the libraries `ldd` lists for it.
fn minimal_root(root: &Path) {
    let sh = fs::canonicalize("/bin/sh").unwrap();
    let mut files = vec![sh.clone()];
    let ldd = Command::new("ldd").arg(&sh).output().expect("ldd runs");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(p) = path {
            files.push(p);
        }
    }
    for f in files {
        let dest = root.join(f.strip_prefix("/").unwrap());
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(&f, &dest).unwrap();
    }
    let bin_sh = root.join("bin/sh");
    if !bin_sh.exists() {
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::copy(&sh, &bin_sh).unwrap();
    }
}

fn mounted_under(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&root))
        .collect()
}

fn script(name: &str, content: &str) -> Script {
    Script {
        name: name.into(),
        run_on: vec![ServicingTypeSelection::All],
        content: Some(content.into()),
        environment_variables: [("FOO".to_string(), "bar".to_string())].into(),
        ..Default::default()
    }
}

#[test]
fn post_configure_runs_in_chroot() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    minimal_root(&root);
    let mut hc = HostConfiguration::default();
    hc.scripts.post_configure = vec![script(
        "inside",
        "{ echo \"type=$SERVICING_TYPE root=$TARGET_ROOT foo=$FOO\"\n\
         [ -r /proc/self/status ] && echo proc\n\
         [ -c /dev/null ] && echo dev\n\
         [ -d /sys/kernel ] && echo sys\n\
         } > /marker\n",
    )];
    let ctx = HookContext {
        servicing_type: ServicingType::AbUpdate,
        target_root: Some(root.clone()),
        config_dir: None,
    };
    run_hooks(HookPhase::PostConfigure, &hc, &ctx).unwrap();
    assert_eq!(
        fs::read_to_string(root.join("marker")).unwrap(),
        "type=ab-update root=/ foo=bar\nproc\ndev\nsys\n"
    );
    assert!(
        mounted_under(&root).is_empty(),
        "{:?}",
        mounted_under(&root)
    );
    assert_eq!(
        fs::read_dir(root.join("tmp")).unwrap().count(),
        0,
        "temp script removed"
    );

    // A failing script: reported with its output, and the mounts are still undone.
    hc.scripts.post_configure = vec![script("fails", "echo about-to-fail; exit 5")];
    let err = run_hooks(HookPhase::PostConfigure, &hc, &ctx).unwrap_err();
    let e = trident::error::find_trident_error(&err).unwrap();
    assert_eq!(e.code, "script-failed");
    assert!(
        e.message
            .contains("postConfigure script 'fails' failed (exit status: 5)"),
        "{}",
        e.message
    );
    assert!(e.message.ends_with("about-to-fail"), "{}", e.message);
    assert!(
        mounted_under(&root).is_empty(),
        "{:?}",
        mounted_under(&root)
    );
}
