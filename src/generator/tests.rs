//! Table-driven tests: inputs laid out in a temp root, the real reading code, the pure
//! decision, and the written output tree (twice, to prove idempotence).

use super::decide::{decide, Decision};
use super::*;
use std::collections::BTreeMap;
use std::fs;

const TRIAL_AB: &str = r#"{"version":1,"operation":"ab-update","updateId":"u1","volume":"b","loaderEntry":"trident-b.conf"}"#;
const TRIAL_CI: &str = r#"{"version":1,"operation":"clean-install","updateId":"i1","volume":"a"}"#;
const PENDING: &str = r#"{"version":1,"operation":"ab-update","updateId":"u1","trialVolume":"b"}"#;
const CHECKS: &str = r#"{"version":1,"checks":[{"name":"sample-commit-script"},{"name":"systemd-networkd","timeoutSeconds":10}]}"#;

struct Case {
    name: &'static str,
    cmdline: &'static str,
    files: &'static [(&'static str, &'static str)],
    /// LoaderEntrySelected value, if set.
    entry: Option<&'static str>,
    /// Expected output tree: path -> symlink target or file content fragment.
    expect: &'static [(&'static str, &'static str)],
    /// Expected kind of decision.
    kind: &'static str,
}

fn efi_var(value: &str) -> Vec<u8> {
    let mut b = 7u32.to_le_bytes().to_vec();
    for u in value.encode_utf16().chain([0]) {
        b.extend_from_slice(&u.to_le_bytes());
    }
    b
}

/// Path → link target or file content, for every non-directory under `dir`.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let ft = fs::symlink_metadata(&p).unwrap().file_type();
            if ft.is_symlink() {
                out.insert(
                    rel,
                    fs::read_link(&p).unwrap().to_string_lossy().into_owned(),
                );
            } else if ft.is_dir() {
                walk(base, &p, out);
            } else {
                out.insert(rel, fs::read_to_string(&p).unwrap());
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

fn kind(d: &Decision) -> &'static str {
    match d {
        Decision::Nothing { .. } => "nothing",
        Decision::Error { .. } => "error",
        Decision::Trial { .. } => "trial",
        Decision::RecordRollback { .. } => "record-rollback",
        Decision::Install { .. } => "install",
    }
}

const U: &str = "/usr/lib/systemd/system/";

fn cases() -> Vec<Case> {
    vec![
        Case { name: "normal boot", cmdline: "root=/dev/vda2 ro", files: &[], entry: None, expect: &[], kind: "nothing" },
        Case {
            name: "trial boot of an A/B update",
            cmdline: "root=/dev/vda3",
            files: &[("etc/trident/boot/trial", TRIAL_AB), ("etc/trident/boot/health-checks", CHECKS)],
            entry: Some("trident-b+2.conf"),
            expect: &[
                ("boot-complete.target.requires/trident-health.target", "trident-health.target"),
                ("multi-user.target.wants/trident-commit.service", "trident-commit.service"),
                ("trident-health.target.requires/trident-health-check@sample\\x2dcommit\\x2dscript.service", "trident-health-check@.service"),
                ("trident-health.target.requires/trident-health-check@systemd\\x2dnetworkd.service", "trident-health-check@.service"),
                ("trident-health-check@systemd\\x2dnetworkd.service.d/50-trident-generator.conf", "TimeoutStartSec=25\n"),
            ],
            kind: "trial",
        },
        Case {
            name: "trial without a check list and without EFI variables",
            cmdline: "",
            files: &[("etc/trident/boot/trial", TRIAL_AB)],
            entry: None,
            expect: &[
                ("boot-complete.target.requires/trident-health.target", "trident-health.target"),
                ("multi-user.target.wants/trident-commit.service", "trident-commit.service"),
            ],
            kind: "trial",
        },
        Case {
            name: "clean-install trial does not reboot on failure",
            cmdline: "",
            files: &[("etc/trident/boot/trial", TRIAL_CI)],
            entry: None,
            expect: &[
                ("boot-complete.target.requires/trident-health.target", "trident-health.target"),
                ("multi-user.target.wants/trident-commit.service", "trident-commit.service"),
                ("trident-rollback.service.d/50-trident-generator.conf", "SuccessAction=none\nFailureAction=none\n"),
            ],
            kind: "trial",
        },
        Case {
            name: "firmware booted another entry than the trial",
            cmdline: "",
            files: &[("etc/trident/boot/trial", TRIAL_AB)],
            entry: Some("trident-a.conf"),
            expect: &[],
            kind: "error",
        },
        Case {
            name: "fallback boot after a failed trial",
            cmdline: "",
            files: &[("etc/trident/boot/pending", PENDING)],
            entry: Some("trident-a.conf"),
            expect: &[("multi-user.target.wants/trident-record-rollback.service", "trident-record-rollback.service")],
            kind: "record-rollback",
        },
        Case {
            name: "both markers is inconsistent",
            cmdline: "",
            files: &[("etc/trident/boot/trial", TRIAL_AB), ("etc/trident/boot/pending", PENDING)],
            entry: None,
            expect: &[],
            kind: "error",
        },
        Case {
            name: "corrupt trial marker",
            cmdline: "",
            files: &[("etc/trident/boot/trial", "{\"version\":1,")],
            entry: None,
            expect: &[],
            kind: "error",
        },
        Case {
            name: "unknown operation",
            cmdline: "",
            files: &[("etc/trident/boot/trial", r#"{"version":1,"operation":"teleport","updateId":"x","volume":"b"}"#)],
            entry: None,
            expect: &[],
            kind: "error",
        },
        Case {
            name: "newer marker version",
            cmdline: "",
            files: &[("etc/trident/boot/trial", r#"{"version":2,"operation":"ab-update","updateId":"x","volume":"b"}"#)],
            entry: None,
            expect: &[],
            kind: "error",
        },
        Case {
            name: "corrupt check list",
            cmdline: "",
            files: &[("etc/trident/boot/trial", TRIAL_AB), ("etc/trident/boot/health-checks", "[]")],
            entry: None,
            expect: &[],
            kind: "error",
        },
        Case {
            name: "duplicate check names",
            cmdline: "",
            files: &[
                ("etc/trident/boot/trial", TRIAL_AB),
                ("etc/trident/boot/health-checks", r#"{"version":1,"checks":[{"name":"x"},{"name":"x"}]}"#),
            ],
            entry: None,
            expect: &[],
            kind: "error",
        },
        Case {
            name: "switched off on the command line",
            cmdline: "quiet trident.generator=0",
            files: &[("etc/trident/boot/trial", TRIAL_AB)],
            entry: None,
            expect: &[],
            kind: "nothing",
        },
        Case {
            name: "initrd",
            cmdline: "",
            files: &[("etc/trident/boot/trial", TRIAL_AB), ("etc/initrd-release", "")],
            entry: None,
            expect: &[],
            kind: "nothing",
        },
        Case {
            name: "installer from the command line with a quoted location",
            cmdline: "console=ttyS0 trident.install=\"/run/media/hc 100%.yaml\"",
            files: &[],
            entry: None,
            expect: &[
                ("multi-user.target.wants/trident-install.service", "trident-install.service"),
                ("trident-install.service.d/50-trident-generator.conf", "Environment=\"TRIDENT_INSTALL_CONFIG=/run/media/hc 100%%.yaml\"\n"),
            ],
            kind: "install",
        },
        Case {
            name: "installer from the marker, default location",
            cmdline: "",
            files: &[("etc/trident/boot/install", "\n")],
            entry: None,
            expect: &[
                ("multi-user.target.wants/trident-install.service", "trident-install.service"),
                ("trident-install.service.d/50-trident-generator.conf", "TRIDENT_INSTALL_CONFIG=/etc/trident/config.yaml\""),
            ],
            kind: "install",
        },
        Case {
            name: "installer marker overruled by trident.install=0",
            cmdline: "trident.install=0",
            files: &[("etc/trident/boot/install", "http://10.0.0.1/hc.yaml\n")],
            entry: None,
            expect: &[],
            kind: "nothing",
        },
    ]
}

fn run_case(c: &Case) -> (Decision, BTreeMap<String, String>) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let efivars = tmp.path().join("efivars");
    fs::create_dir_all(&efivars).unwrap();
    for (p, content) in c.files {
        let p = root.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
    if let Some(e) = c.entry {
        fs::write(
            efivars.join(format!("LoaderEntrySelected-{LOADER_GUID}")),
            efi_var(e),
        )
        .unwrap();
    }
    let src = Sources {
        root,
        efivars,
        cmdline: CmdlineSource::Text(c.cmdline.into()),
        in_initrd_env: false,
        kmsg: tmp.path().join("kmsg"),
    };
    let inputs = read_inputs(&src).unwrap();
    let d = decide(&inputs);
    let out = tmp.path().join("out");
    fs::create_dir_all(&out).unwrap();
    output::write_output(&d, &out).unwrap();
    let first = tree(&out);
    output::write_output(&d, &out).unwrap();
    assert_eq!(
        first,
        tree(&out),
        "{}: second run changed the output",
        c.name
    );
    (d, first)
}

#[test]
fn table() {
    for c in cases() {
        let (d, t) = run_case(&c);
        assert_eq!(kind(&d), c.kind, "{}: decision {d:?}", c.name);
        assert_eq!(t.len(), c.expect.len(), "{}: output {t:#?}", c.name);
        for (path, want) in c.expect {
            let got = t
                .get(*path)
                .unwrap_or_else(|| panic!("{}: missing {path} in {t:#?}", c.name));
            if got.starts_with('/') {
                assert_eq!(got, &format!("{U}{want}"), "{}: {path}", c.name);
            } else {
                assert!(
                    got.contains(want),
                    "{}: {path} = {got:?}, want {want:?}",
                    c.name
                );
            }
        }
    }
}

#[test]
fn efi_variable_format() {
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("LoaderEntrySelected-{LOADER_GUID}");
    fs::write(tmp.path().join(&name), efi_var("trident-b+1-1.conf")).unwrap();
    assert_eq!(
        read_efi_string(tmp.path(), "LoaderEntrySelected", LOADER_GUID),
        Ok(Some("trident-b+1-1.conf".into()))
    );
    fs::write(tmp.path().join(&name), [7, 0, 0, 0, b'a']).unwrap();
    assert!(read_efi_string(tmp.path(), "LoaderEntrySelected", LOADER_GUID).is_err());
    assert_eq!(
        read_efi_string(
            &tmp.path().join("absent"),
            "LoaderEntrySelected",
            LOADER_GUID
        ),
        Ok(None)
    );
}

#[test]
fn unreadable_efi_variable_is_an_error_on_a_trial() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir_all(root.join("etc/trident/boot")).unwrap();
    fs::write(root.join(markers::TRIAL_MARKER), TRIAL_AB).unwrap();
    let efivars = tmp.path().join("efivars");
    fs::create_dir_all(&efivars).unwrap();
    fs::write(
        efivars.join(format!("LoaderEntrySelected-{LOADER_GUID}")),
        [1, 2],
    )
    .unwrap();
    let src = Sources {
        root,
        efivars,
        cmdline: CmdlineSource::Text(String::new()),
        in_initrd_env: false,
        kmsg: tmp.path().join("k"),
    };
    assert_eq!(kind(&decide(&read_inputs(&src).unwrap())), "error");
}

#[test]
fn cmdline_parsing() {
    let a = decide::parse_cmdline("a b=1  c=\"x y\" \"d=e f\" trident.install");
    assert_eq!(
        a,
        vec![
            ("a".into(), None),
            ("b".into(), Some("1".into())),
            ("c".into(), Some("x y".into())),
            ("d".into(), Some("e f".into())),
            ("trident.install".into(), None),
        ]
    );
}
