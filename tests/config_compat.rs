//! Every Host Configuration sample from Microsoft Trident (`../shared/compat/host-configs`)
//! parses and validates without errors, and survives a serialize/parse round trip.

use std::path::{Path, PathBuf};

use trident::config::{self, HostConfiguration};

fn samples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/compat/host-configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "expected the Trident samples in {}",
        dir.display()
    );
    files
}

#[test]
fn every_sample_parses_and_validates() {
    let mut failures = Vec::new();
    for path in samples() {
        match config::load_and_validate(&path) {
            // The samples are canonical: a warning on them would be a false alarm.
            Ok((_, warnings)) => {
                for w in warnings {
                    failures.push(format!("{}: unexpected {w}", path.display()));
                }
            }
            Err(errs) => failures.push(format!("{}:\n{errs}", path.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "samples rejected:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_sample_round_trips() {
    for path in samples() {
        let yaml = std::fs::read_to_string(&path).unwrap();
        let hc = config::parse(&yaml).unwrap();
        let out = hc.to_yaml().unwrap();
        let again: HostConfiguration = config::parse(&out).unwrap_or_else(|e| {
            panic!("{}: re-parsing serialized form: {e}\n{out}", path.display())
        });
        assert_eq!(
            hc,
            again,
            "{}: round trip changed the value\n{out}",
            path.display()
        );
        // Serializing is stable.
        assert_eq!(out, again.to_yaml().unwrap());
    }
}

#[test]
fn samples_expose_what_the_engine_needs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/compat/host-configs");
    let (base, _) = config::load_and_validate(&dir.join("base.yaml")).unwrap();
    let pairs = base.storage.ab_volume_pairs();
    assert_eq!(pairs.len(), 1);
    assert_eq!(
        (pairs[0].volume_a_id.as_str(), pairs[0].volume_b_id.as_str()),
        ("root-a", "root-b")
    );
    assert_eq!(
        base.trident.datastore_path(),
        Path::new("/var/lib/trident/datastore.sqlite")
    );
    let root_a = base.storage.partition("root-a").unwrap();
    assert_eq!(root_a.partition_type.as_name(), Some("root"));
    assert_eq!(root_a.size.fixed_bytes(), Some(8 << 30));
    assert_eq!(
        base.storage.esp_filesystem().unwrap().device_id.as_deref(),
        Some("esp")
    );
    assert_eq!(base.storage.swap[0].device_id, "swap");
    assert_eq!(base.health.checks.len(), 2);
    assert_eq!(base.os.additional_files[0].mode(), Some(0o755));
    let (verity, _) = config::load_and_validate(&dir.join("verity.yaml")).unwrap();
    assert_eq!(verity.storage.verity[0].name, "root");
    assert!(verity.storage.root_filesystem().unwrap().is_read_only());
}
