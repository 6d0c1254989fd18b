//! The negative corpus: every file in `tests/invalid-configs/` is rejected with the error
//! named in its header (`# expect: CODE at YAML.PATH`, or `# expect: CODE` for errors
//! without a path), and the error points at a line of the document.

use std::path::{Path, PathBuf};

use trident::config;

struct Expect {
    code: String,
    path: Option<String>,
}

fn expectations(text: &str) -> Vec<Expect> {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("# expect:"))
        .map(|e| {
            let e = e.trim();
            match e.split_once(" at ") {
                Some((code, path)) => Expect {
                    code: code.trim().to_owned(),
                    path: Some(path.trim().to_owned()),
                },
                None => Expect {
                    code: e.to_owned(),
                    path: None,
                },
            }
        })
        .collect()
}

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid-configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn corpus_is_large_enough() {
    assert!(
        corpus().len() >= 45,
        "negative corpus has {} files",
        corpus().len()
    );
}

#[test]
fn every_invalid_config_is_rejected_as_expected() {
    let mut failures = Vec::new();
    for file in corpus() {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        let expects = expectations(&text);
        if expects.is_empty() {
            failures.push(format!("{name}: no '# expect:' header"));
            continue;
        }
        let errors = match config::parse_and_validate(&text) {
            Ok(_) => {
                failures.push(format!("{name}: accepted, but expected an error"));
                continue;
            }
            Err(e) => e.0,
        };
        for exp in &expects {
            let found = errors
                .iter()
                .find(|e| e.code == exp.code && e.path == exp.path);
            match found {
                None => failures.push(format!(
                    "{name}: expected {} at {:?}, got:\n  {}",
                    exp.code,
                    exp.path,
                    errors
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n  ")
                )),
                Some(e) => {
                    // Position is required whenever the path (or an ancestor) is written
                    // in the document; defaulted fields like trident.datastorePath may not be.
                    let locatable = match &e.path {
                        None => true,
                        Some(p) => config::PositionIndex::build(&text).locate(p).is_some(),
                    };
                    if locatable && (e.line.is_none() || e.column.is_none()) {
                        failures.push(format!("{name}: error has no line/column: {e}"));
                    }
                    if e.message.trim().is_empty() {
                        failures.push(format!("{name}: error has no message"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn validate_reports_all_errors_not_only_the_first() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid-configs");
    // Combine two independent mistakes in one document.
    let text = std::fs::read_to_string(dir.join("001-unknown-field-partition.yaml")).unwrap();
    assert!(config::parse(&text).is_err());
    let yaml = "\
storage:
  disks:
  - id: os
    device: /dev/sda
    partitions:
    - {id: esp, type: esp, size: 64M}
    - {id: root, type: root, size: 1000}
  filesystems:
  - {deviceId: esp, mountPoint: /boot/efi}
  - {deviceId: root, mountPoint: /}
  - {deviceId: nope, source: new, mountPoint: data}
os:
  users: [{name: a}, {name: a}]
";
    let errs = config::parse_and_validate(yaml).unwrap_err().0;
    let codes: Vec<&str> = errs.iter().map(|e| e.code.as_str()).collect();
    for want in [
        "invalid-partition-size",
        "unknown-block-device-id",
        "mount-point-not-absolute",
        "duplicate-username",
    ] {
        assert!(codes.contains(&want), "missing {want} in {codes:?}");
    }
    let size = errs
        .iter()
        .find(|e| e.code == "invalid-partition-size")
        .unwrap();
    assert_eq!(
        size.path.as_deref(),
        Some("storage.disks[0].partitions[1].size")
    );
    assert_eq!(size.line, Some(7));
    assert_eq!(
        size.category,
        trident::Category::InvalidInput,
        "bad sizes are the user's to fix"
    );
}
