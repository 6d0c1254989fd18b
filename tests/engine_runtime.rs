//! Runtime updates (sysexts/confexts/netplan) and `rollback --runtime` on a temporary
//! host root, with a real datastore in `provisioned` state.
//!
//! The file handling (download, SHA-384 check before placing, atomic swap, backups,
//! undo) runs for real; merging is done by a stand-in [`ExtensionTool`] that behaves
//! like systemd-sysext (scans the extension directories, may silently skip an image and
//! still exit 0, or fail). `real_sysext_on_this_machine` runs the real tool; the real
//! merge into `/usr` is proven in the container tier (`tests/units_container.rs`).

use sha2::{Digest, Sha384};
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use trident::config::HostConfiguration;
use trident::datastore::Datastore;
use trident::engine::runtime::{self, ExtensionKind, ExtensionTool};
use trident::engine::EngineContext;
use trident::status::{AbVolume, ImageRef, ServicingState, Transition};

const BASIC: &str = "../shared/compat/host-configs/basic.yaml";

/// Behaves like `systemd-sysext`: `refresh` merges every `*.raw` in the kind's
/// directories except the refused names (and still succeeds), unless `fail` is set.
#[derive(Default)]
struct StandIn {
    refused: RefCell<BTreeSet<String>>,
    fail: Cell<bool>,
    confext: bool,
    refreshes: Cell<u32>,
    merged: RefCell<BTreeSet<String>>,
}

impl ExtensionTool for StandIn {
    fn available(&self, kind: ExtensionKind) -> bool {
        kind == ExtensionKind::Sysext || self.confext
    }
    fn refresh(&self, kind: ExtensionKind, root: &Path) -> anyhow::Result<()> {
        self.refreshes.set(self.refreshes.get() + 1);
        if self.fail.get() {
            anyhow::bail!("stand-in refresh failed (exit status 1)");
        }
        let dirs: &[&str] = match kind {
            ExtensionKind::Sysext => &trident::config::SYSEXT_DIRS,
            ExtensionKind::Confext => &trident::config::CONFEXT_DIRS,
        };
        let mut merged = BTreeSet::new();
        for d in dirs {
            let Ok(rd) = std::fs::read_dir(root.join(d.trim_start_matches('/'))) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(n) = name.strip_suffix(".raw") {
                    if !self.refused.borrow().contains(n) {
                        merged.insert(n.to_string());
                    }
                }
            }
        }
        *self.merged.borrow_mut() = merged;
        Ok(())
    }
    fn merged(&self, _kind: ExtensionKind, _root: &Path) -> anyhow::Result<BTreeSet<String>> {
        Ok(self.merged.borrow().clone())
    }
}

struct Host {
    _dir: tempfile::TempDir,
    root: PathBuf,
    src: PathBuf,
    ctx: EngineContext,
    base: HostConfiguration,
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha384::digest(data))
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let src = dir.path().join("src");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&src).unwrap();
        let ds = dir.path().join("datastore.sqlite");
        let base =
            trident::config::parse(&std::fs::read_to_string(BASIC).unwrap()).expect("basic.yaml");
        let mut store = Datastore::open(&ds).unwrap();
        store
            .transition(Transition::StageCleanInstall {
                spec: base.clone(),
                image: ImageRef {
                    url: "file:///img.cosi".into(),
                    sha384: "ab".repeat(48),
                },
                block_devices: Default::default(),
            })
            .unwrap();
        store.transition(Transition::FinalizeCleanInstall).unwrap();
        store
            .transition(Transition::CommitCleanInstall {
                booted: AbVolume::VolumeA,
            })
            .unwrap();
        let mut ctx = EngineContext::new(&ds);
        ctx.host_root = root.clone();
        ctx.work_dir = dir.path().join("work");
        Host {
            _dir: dir,
            root,
            src,
            ctx,
            base,
        }
    }

    /// A source image file with this content (`file` may name a subdirectory);
    /// returns its URL and SHA-384.
    fn image(&self, file: &str, content: &[u8]) -> (String, String) {
        let p = self.src.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        (format!("file://{}", p.display()), sha(content))
    }

    /// The base spec with these sysexts (url, sha) and optional netplan.
    fn spec(&self, sysexts: &[(String, String)], netplan: Option<&str>) -> HostConfiguration {
        let mut hc = self.base.clone();
        hc.os.sysexts = sysexts
            .iter()
            .map(|(url, sha384)| trident::config::Extension {
                url: url.clone(),
                sha384: sha384.clone(),
                path: None,
            })
            .collect();
        hc.os.netplan = netplan.map(|n| serde_yaml::from_str(n).unwrap());
        hc
    }

    fn ext(&self, name: &str) -> PathBuf {
        self.root.join("var/lib/extensions").join(name)
    }

    fn netplan(&self) -> PathBuf {
        self.root.join("etc/netplan/99-trident.yaml")
    }

    fn store(&self) -> Datastore {
        Datastore::open_existing(&self.ctx.datastore_path).unwrap()
    }

    /// Every file name in the extension directory (hidden temporaries/backups included).
    fn ext_dir_listing(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.root.join("var/lib/extensions"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn operations(&self) -> Vec<String> {
        let mut h: Vec<String> = self
            .store()
            .history(None)
            .unwrap()
            .into_iter()
            .map(|e| e.operation)
            .collect();
        h.reverse();
        h
    }
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn code(e: &anyhow::Error) -> String {
    trident::error::find_trident_error(e)
        .map(|t| t.code)
        .unwrap_or_else(|| format!("uncategorised: {e:#}"))
}

#[test]
fn update_places_verified_images_and_commits() {
    let h = Host::new();
    let a = h.image("a.raw", b"image a v1");
    let b = h.image("b", b"image b v1"); // no .raw in the URL: placed as b.raw
    let hc = h.spec(&[a, b], None);
    let tool = StandIn::default();
    let changes = runtime::update_with(&hc, &h.ctx, &tool).unwrap();
    assert_eq!(changes.fetch.len(), 2);
    assert_eq!(std::fs::read(h.ext("a.raw")).unwrap(), b"image a v1");
    assert_eq!(std::fs::read(h.ext("b.raw")).unwrap(), b"image b v1");
    assert_eq!(h.ext_dir_listing(), names(&["a.raw", "b.raw"]));
    assert_eq!(*tool.merged.borrow(), names(&["a", "b"]));
    assert_eq!(tool.refreshes.get(), 1);
    let hs = h.store().host_status().unwrap();
    assert_eq!(hs.servicing_state, ServicingState::Provisioned);
    assert_eq!(hs.spec, hc);
    assert!(hs.previous_spec.is_none() && hs.last_error.is_none());
    let ops = h.operations();
    assert_eq!(
        ops[ops.len() - 2..],
        ["stage-runtime-update", "commit-runtime-update"]
    );
    // The same spec again is not a runtime update.
    let e = runtime::update_with(&hc, &h.ctx, &tool).unwrap_err();
    assert_eq!(code(&e), "not-a-runtime-update");
}

#[test]
fn hash_mismatch_is_refused_before_anything_changes() {
    let h = Host::new();
    let a = h.image("a.raw", b"image a v1");
    let b = h.image("b.raw", b"image b v1");
    let tool = StandIn::default();
    let v1 = h.spec(&[a.clone(), b], Some("version: 2\n"));
    runtime::update_with(&v1, &h.ctx, &tool).unwrap();
    let netplan_before = std::fs::read(h.netplan()).unwrap();
    // v2: a changes (but the served bytes do not match the declared hash), b dropped,
    // c added, netplan changed.
    let (a_url, _) = h.image("a2.raw", b"image a v2 - tampered");
    let a_claimed = sha(b"image a v2");
    let c = h.image("c.raw", b"image c v1");
    let v2 = h.spec(
        &[(a_url.clone(), a_claimed.clone()), c],
        Some("version: 2\nethernets: {}\n"),
    );
    let e = runtime::update_with(&v2, &h.ctx, &tool).unwrap_err();
    assert_eq!(code(&e), "extension-hash-mismatch", "{e:#}");
    // Nothing moved: same files, same bytes, no temporaries, netplan untouched, no
    // refresh ran.
    assert_eq!(h.ext_dir_listing(), names(&["a.raw", "b.raw"]));
    assert_eq!(std::fs::read(h.ext("a.raw")).unwrap(), b"image a v1");
    assert_eq!(std::fs::read(h.ext("b.raw")).unwrap(), b"image b v1");
    assert_eq!(std::fs::read(h.netplan()).unwrap(), netplan_before);
    assert_eq!(tool.refreshes.get(), 1);
    let hs = h.store().host_status().unwrap();
    assert_eq!(hs.servicing_state, ServicingState::Provisioned);
    assert_eq!(hs.spec, v1);
    assert_eq!(
        hs.last_error.as_ref().map(|e| e.code.as_str()),
        Some("extension-hash-mismatch")
    );
    assert_eq!(h.operations().last().unwrap(), "revert-runtime");
    // The error names the declared digest.
    assert!(format!("{e:#}").contains(&a_claimed));
}

#[test]
fn merge_failure_after_exit_0_puts_every_file_back() {
    let h = Host::new();
    let a = h.image("a.raw", b"image a v1");
    let b = h.image("b.raw", b"image b v1");
    let tool = StandIn::default();
    let v1 = h.spec(&[a.clone(), b], None);
    runtime::update_with(&v1, &h.ctx, &tool).unwrap();
    // v2 replaces a's content in place, drops b, adds c and writes netplan; the tool
    // "refreshes" with exit 0 but skips c (like systemd-sysext skipping an image whose
    // extension-release does not match).
    let (a2_url, a2_sha) = h.image("v2/a.raw", b"image a v2");
    let c = h.image("c.raw", b"image c v1");
    let v2 = h.spec(&[(a2_url, a2_sha), c], Some("version: 2\n"));
    tool.refused.borrow_mut().insert("c".into());
    let e = runtime::update_with(&v2, &h.ctx, &tool).unwrap_err();
    assert_eq!(code(&e), "extension-merge-failed", "{e:#}");
    assert!(format!("{e:#}").contains("not merged [c]"), "{e:#}");
    assert_eq!(h.ext_dir_listing(), names(&["a.raw", "b.raw"]));
    assert_eq!(std::fs::read(h.ext("a.raw")).unwrap(), b"image a v1");
    assert_eq!(std::fs::read(h.ext("b.raw")).unwrap(), b"image b v1");
    assert!(!h.netplan().exists(), "netplan must be removed again");
    // Refreshed for the update and again after the undo: the old set is merged again.
    assert_eq!(tool.refreshes.get(), 3);
    assert_eq!(*tool.merged.borrow(), names(&["a", "b"]));
    let hs = h.store().host_status().unwrap();
    assert_eq!(hs.spec, v1);
    assert_eq!(hs.servicing_state, ServicingState::Provisioned);
    assert_eq!(
        hs.last_error.as_ref().map(|e| e.code.as_str()),
        Some("extension-merge-failed")
    );

    // A failing refresh (non-zero exit) is undone the same way.
    tool.refused.borrow_mut().clear();
    tool.fail.set(true);
    let e = runtime::update_with(&v2, &h.ctx, &tool).unwrap_err();
    assert_eq!(code(&e), "extension-refresh-failed", "{e:#}");
    assert!(format!("{e:#}").contains("exit status 1"), "{e:#}");
    assert_eq!(h.ext_dir_listing(), names(&["a.raw", "b.raw"]));
    assert_eq!(std::fs::read(h.ext("a.raw")).unwrap(), b"image a v1");
    assert_eq!(h.store().host_status().unwrap().spec, v1);
    assert_eq!(h.operations().last().unwrap(), "revert-runtime");
}

#[test]
fn removal_and_runtime_rollback() {
    let h = Host::new();
    let tool = StandIn::default();
    // Nothing to revert yet.
    let e = runtime::rollback_runtime_with(&h.ctx, true, &tool).unwrap_err();
    assert_eq!(code(&e), "no-runtime-rollback-target");

    let a = h.image("a.raw", b"image a v1");
    let b = h.image("b.raw", b"image b v1");
    let c = h.image("c.raw", b"image c v1");
    let v1 = h.spec(&[a.clone(), b.clone()], None);
    runtime::update_with(&v1, &h.ctx, &tool).unwrap();
    let v2 = h.spec(&[a.clone(), c], Some("version: 2\n"));
    let changes = runtime::update_with(&v2, &h.ctx, &tool).unwrap();
    assert_eq!(
        changes.keep.len(),
        1,
        "a is unchanged and not fetched again"
    );
    assert_eq!(h.ext_dir_listing(), names(&["a.raw", "c.raw"]));
    assert_eq!(*tool.merged.borrow(), names(&["a", "c"]));
    let netplan = std::fs::read_to_string(h.netplan()).unwrap();
    assert!(netplan.contains("network:") && netplan.contains("version: 2"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(h.netplan()).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // --check says what would happen and changes nothing.
    let plan = runtime::rollback_runtime_with(&h.ctx, true, &tool).unwrap();
    let text = plan.to_string();
    assert!(
        text.contains("place sysext b") && text.contains("remove sysext c"),
        "{text}"
    );
    assert!(text.contains("netplan"), "{text}");
    assert_eq!(h.ext_dir_listing(), names(&["a.raw", "c.raw"]));

    runtime::rollback_runtime_with(&h.ctx, false, &tool).unwrap();
    assert_eq!(h.ext_dir_listing(), names(&["a.raw", "b.raw"]));
    assert_eq!(std::fs::read(h.ext("b.raw")).unwrap(), b"image b v1");
    assert!(!h.netplan().exists());
    assert_eq!(*tool.merged.borrow(), names(&["a", "b"]));
    let hs = h.store().host_status().unwrap();
    assert_eq!(hs.spec, v1);
    assert_eq!(hs.servicing_state, ServicingState::Provisioned);
    let ops = h.operations();
    assert_eq!(
        ops[ops.len() - 2..],
        [
            "stage-manual-rollback-runtime",
            "commit-manual-rollback-runtime"
        ]
    );
    // Only one step back.
    let e = runtime::rollback_runtime_with(&h.ctx, false, &tool).unwrap_err();
    assert_eq!(code(&e), "no-runtime-rollback-target");
}

#[test]
fn confexts_are_placed_when_no_confext_tool_exists() {
    let h = Host::new();
    let tool = StandIn::default(); // like Debian 12: no systemd-confext
    let c = h.image("cfg.raw", b"confext");
    let mut hc = h.base.clone();
    hc.os.confexts = vec![trident::config::Extension {
        url: c.0,
        sha384: c.1,
        path: None,
    }];
    runtime::update_with(&hc, &h.ctx, &tool).unwrap();
    assert_eq!(
        std::fs::read(h.root.join("var/lib/confexts/cfg.raw")).unwrap(),
        b"confext"
    );
    assert_eq!(
        tool.refreshes.get(),
        0,
        "nothing to refresh without the tool"
    );
    assert_eq!(h.store().host_status().unwrap().spec, hc);
}

#[test]
fn stage_runs_runtime_updates_and_refuses_while_staged() {
    // `engine::stage` routes a runtime-only change to the runtime update with the real
    // systemd tools; a host that is not provisioned is refused first.
    let h = Host::new();
    {
        let mut store = h.store();
        let mut next = h.base.clone();
        next.image.as_mut().unwrap().url = "file:///img2.cosi".into();
        store
            .transition(Transition::StageAbUpdate {
                spec: next,
                image: ImageRef {
                    url: "file:///img2.cosi".into(),
                    sha384: "cd".repeat(48),
                },
            })
            .unwrap();
    }
    let a = h.image("a.raw", b"image a v1");
    let hc = h.spec(&[a], None);
    let e = trident::engine::stage(&hc, &h.ctx).unwrap_err();
    assert_eq!(code(&e), "servicing-in-progress", "{e:#}");
    assert!(h.ext_dir_listing().is_empty());
}

/// A squashfs sysext image `NAME.raw` (extension-release `ID=_any`) holding
/// `usr/share/trident-test/NAME`.
fn squashfs_sysext(dir: &Path, name: &str) -> Vec<u8> {
    let tree = dir.join(format!("tree-{name}"));
    let rel = tree.join("usr/lib/extension-release.d");
    std::fs::create_dir_all(&rel).unwrap();
    std::fs::write(rel.join(format!("extension-release.{name}")), "ID=_any\n").unwrap();
    std::fs::create_dir_all(tree.join("usr/share/trident-test")).unwrap();
    std::fs::write(tree.join("usr/share/trident-test").join(name), name).unwrap();
    let out = dir.join(format!("{name}.raw"));
    trident::cmd::Cmd::new("mksquashfs")
        .arg(&tree)
        .arg(&out)
        .args(["-noappend", "-quiet", "-no-progress", "-all-root"])
        .run()
        .unwrap();
    std::fs::read(&out).unwrap()
}

/// For the tests with the real systemd-sysext: a host whose root has the build
/// machine's os-release (so the sysext's extension-release matches) and a work
/// directory; `None` (test skipped, with a message) when not root or a tool is missing.
fn real_sysext_host(tools: &[&str]) -> Option<(Host, std::path::PathBuf)> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root");
        return None;
    }
    for tool in tools {
        if !trident::cmd::have_program(tool) {
            eprintln!("skipping: no {tool} (packages systemd, squashfs-tools, util-linux)");
            return None;
        }
    }
    let h = Host::new();
    std::fs::create_dir_all(h.root.join("usr/lib")).unwrap();
    std::fs::copy("/etc/os-release", h.root.join("usr/lib/os-release")).unwrap();
    let work = h.src.join("build");
    std::fs::create_dir_all(&work).unwrap();
    Some((h, work))
}

/// The real `systemd-sysext` on this machine with a real squashfs extension: it cannot
/// merge here (remounting `/run` fails) yet exits 0. The engine must notice and undo;
/// where the tool can merge, the image must really be merged.
#[test]
fn real_sysext_on_this_machine() {
    let Some((h, work)) = real_sysext_host(&["systemd-sysext", "mksquashfs"]) else {
        return;
    };
    let img = squashfs_sysext(&work, "rt");
    let a = h.image("rt.raw", &img);
    let hc = h.spec(&[a], None);
    match trident::engine::stage(&hc, &h.ctx) {
        Err(e) => {
            assert_eq!(code(&e), "extension-merge-failed", "{e:#}");
            assert!(format!("{e:#}").contains("not merged [rt]"), "{e:#}");
            assert!(h.ext_dir_listing().is_empty(), "{:?}", h.ext_dir_listing());
            let hs = h.store().host_status().unwrap();
            assert_eq!(hs.spec, h.base);
            assert_eq!(
                hs.last_error.map(|e| e.code),
                Some("extension-merge-failed".into())
            );
        }
        Ok(o) => {
            // A machine where systemd-sysext can merge: it must really be merged.
            let merged = h.root.join("usr/share/trident-test/rt");
            let seen = std::fs::read_to_string(&merged);
            let _ = trident::cmd::Cmd::new("systemd-sysext")
                .arg(format!("--root={}", h.root.display()))
                .arg("unmerge")
                .run();
            assert_eq!(seen.unwrap(), "rt", "{o:?}");
        }
    }
}

/// The real CLI and the real `systemd-sysext` really merging a squashfs sysext into
/// `HOST_ROOT/usr`, replacing it, refusing a bad one and rolling back. systemd-sysext
/// needs `/run` to be a mount point and the hierarchy's mount to propagate back from its
/// private namespace: the script runs in a private mount namespace with a tmpfs on
/// `/run` and the host root bind-mounted onto itself as a shared mount (all of it
/// vanishes with the namespace).
#[test]
fn real_sysext_merges_replaces_and_rolls_back_via_the_cli() {
    let Some((h, work)) = real_sysext_host(&["systemd-sysext", "mksquashfs", "unshare"]) else {
        return;
    };
    let one = h.image("rtone.raw", &squashfs_sysext(&work, "rtone"));
    let two = h.image("rttwo.raw", &squashfs_sysext(&work, "rttwo"));
    let bad = (one.0.replace("rtone", "rtbad"), two.1.clone());
    std::fs::copy(h.src.join("rtone.raw"), h.src.join("rtbad.raw")).unwrap();
    let write = |name: &str, hc: &HostConfiguration| {
        let p = h.src.join(name);
        std::fs::write(&p, serde_yaml::to_string(hc).unwrap()).unwrap();
        p
    };
    let v1 = write("v1.yaml", &h.spec(std::slice::from_ref(&one), None));
    let vbad = write("bad.yaml", &h.spec(&[one.clone(), bad], None));
    let v2 = write("v2.yaml", &h.spec(std::slice::from_ref(&two), None));
    let t = env!("CARGO_BIN_EXE_trident");
    let common = format!(
        "--datastore {} --host-root {} --work-dir {}",
        h.ctx.datastore_path.display(),
        h.root.display(),
        h.ctx.work_dir.display()
    );
    let r = h.root.display();
    let script = format!(
        r#"set -u
mount -t tmpfs tmpfs /run
mount --bind {r} {r}
mount --make-rshared {r}
step() {{ n=$1; shift; "$@" >/dev/null 2>{r}.err-$n; echo "rc-$n=$?"; echo "usr-$n=$(ls {r}/usr/share/trident-test 2>/dev/null | tr '\n' ' ')"; }}
step 1 {t} update {v1} {common}
step 2 {t} update {vbad} {common}
grep -o 'extension-hash-mismatch' {r}.err-2
step 3 {t} update {v2} {common}
echo "check=$({t} rollback --runtime --check {common} 2>/dev/null)"
echo "usr-check=$(ls {r}/usr/share/trident-test 2>/dev/null | tr '\n' ' ')"
step 4 {t} rollback --runtime {common}
systemd-sysext --root={r} unmerge >/dev/null 2>&1
echo "usr-end=$(ls {r}/usr/share/trident-test 2>/dev/null | tr '\n' ' ')"
"#,
        v1 = v1.display(),
        vbad = vbad.display(),
        v2 = v2.display(),
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let errs: String = (1..=4)
        .map(|n| {
            format!(
                "--- step {n}\n{}\n",
                std::fs::read_to_string(format!("{r}.err-{n}")).unwrap_or_default()
            )
        })
        .collect();
    let d = format!("{text}\n{}\n{errs}", String::from_utf8_lossy(&out.stderr));
    let has = |l: &str| text.lines().any(|x| x.trim_end() == l);
    assert!(has("rc-1=0") && has("usr-1=rtone"), "{d}");
    assert!(has("rc-2=6") && has("usr-2=rtone"), "{d}");
    assert!(has("extension-hash-mismatch"), "{d}");
    assert!(has("rc-3=0") && has("usr-3=rttwo"), "{d}");
    assert!(
        text.lines().any(|l| l
            .starts_with("check=would revert the last runtime update: place sysext rtone")
            && l.contains("remove sysext rttwo")),
        "{d}"
    );
    assert!(has("usr-check=rttwo"), "--check must change nothing\n{d}");
    assert!(has("rc-4=0") && has("usr-4=rtone"), "{d}");
    assert!(has("usr-end="), "{d}");
    assert_eq!(h.ext_dir_listing(), names(&["rtone.raw"]), "{d}");
    let hs = h.store().host_status().unwrap();
    assert_eq!(hs.servicing_state, ServicingState::Provisioned);
    assert_eq!(
        hs.spec
            .os
            .sysexts
            .iter()
            .map(|e| &e.url)
            .collect::<Vec<_>>(),
        [&one.0]
    );
    // The namespace is gone: nothing stays mounted on the host root.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&h.root.display().to_string()), "{mounts}");
}

#[test]
fn an_interrupted_runtime_update_is_put_back() {
    let h = Host::new();
    let tool = StandIn::default();
    let a = h.image("a.raw", b"image a v1");
    let k = h.image("k.raw", b"image k v1");
    let v1 = h.spec(&[a.clone(), k.clone()], None);
    runtime::update_with(&v1, &h.ctx, &tool).unwrap();
    // A run of v2 (a replaced, c added, netplan) killed after placing part of it.
    let (a2_url, a2_sha) = h.image("v2/a.raw", b"image a v2");
    let c = h.image("c.raw", b"image c v1");
    let v2 = h.spec(&[(a2_url, a2_sha), k, c], Some("version: 2\n"));
    h.store()
        .transition(Transition::StageRuntimeUpdate { spec: v2.clone() })
        .unwrap();
    std::fs::rename(h.ext("a.raw"), h.ext(".a.raw.trident-old")).unwrap();
    std::fs::write(h.ext("a.raw"), b"image a v2").unwrap();
    std::fs::write(h.ext("c.raw"), b"image c v1").unwrap();
    std::fs::write(h.ext(".k.raw.trident-old"), b"stale").unwrap();
    std::fs::write(h.ext(".d.raw.trident-new"), b"partial").unwrap();
    std::fs::create_dir_all(h.netplan().parent().unwrap()).unwrap();
    std::fs::write(h.netplan(), "network: {version: 2}\n").unwrap();

    // --check refuses to plan over an interrupted change.
    let e = runtime::rollback_runtime_with(&h.ctx, true, &tool).unwrap_err();
    assert_eq!(code(&e), "runtime-change-interrupted");
    // rollback --runtime puts the previous files back.
    runtime::rollback_runtime_with(&h.ctx, false, &tool).unwrap();
    let mut listing = h.ext_dir_listing();
    listing.remove(".d.raw.trident-new"); // not an image of either spec: left alone
    assert_eq!(listing, names(&["a.raw", "k.raw"]));
    assert_eq!(std::fs::read(h.ext("a.raw")).unwrap(), b"image a v1");
    assert_eq!(std::fs::read(h.ext("k.raw")).unwrap(), b"image k v1");
    assert!(!h.netplan().exists());
    assert_eq!(*tool.merged.borrow(), names(&["a", "k"]));
    let hs = h.store().host_status().unwrap();
    assert_eq!(hs.servicing_state, ServicingState::Provisioned);
    assert_eq!(hs.spec, v1);
    assert_eq!(
        hs.last_error.map(|e| e.code),
        Some("runtime-change-interrupted".into())
    );
    // And v2 can then be applied normally.
    runtime::update_with(&v2, &h.ctx, &tool).unwrap();
    assert_eq!(std::fs::read(h.ext("a.raw")).unwrap(), b"image a v2");
    assert_eq!(*tool.merged.borrow(), names(&["a", "c", "k"]));
}
