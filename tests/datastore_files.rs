//! The datastore refuses files that are not its own, and never writes to them; the
//! datastore path is resolved with the documented precedence.

use rusqlite::Connection;
use sha2::{Digest, Sha384};
use std::path::{Path, PathBuf};
use trident::datastore::{resolve_path, Datastore, DEFAULT_PATH, LATEST_VERSION};
use trident::error::{find_trident_error, Category};
use trident::status::HostStatus;

/// SHA-384 of every file in `dir` (name -> digest): proves nothing was written or added.
fn snapshot(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            if !e.file_type().unwrap().is_file() {
                return None;
            }
            let data = std::fs::read(e.path()).unwrap();
            Some((
                e.file_name().to_string_lossy().into_owned(),
                hex::encode(Sha384::digest(&data)),
            ))
        })
        .collect();
    out.sort();
    out
}

/// Open `path` both ways; both must fail with `code` (category execution-environment),
/// naming the path, and leave the directory byte-for-byte as it was.
fn assert_refused(path: &Path, code: &str) {
    let dir = path.parent().unwrap();
    let before = snapshot(dir);
    for result in [Datastore::open(path), Datastore::open_existing(path)] {
        let err = result.unwrap_err();
        let te = find_trident_error(&err).unwrap_or_else(|| panic!("uncategorised: {err:#}"));
        assert_eq!(te.code, code, "{err:#}");
        assert_eq!(te.category, Category::ExecutionEnvironment);
        assert!(
            te.message.contains(&path.display().to_string()),
            "message must name the file: {}",
            te.message
        );
        assert_eq!(te.device.as_deref(), Some(path.to_str().unwrap()));
    }
    assert_eq!(snapshot(dir), before, "refused file was modified");
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("datastore.sqlite");
    // Pseudo-random garbage, bigger than a page.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..10_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&path, &data).unwrap();
    assert_refused(&path, "datastore-not-sqlite");
    // Short text files too.
    std::fs::write(&path, b"datastore = here\n").unwrap();
    assert_refused(&path, "datastore-not-sqlite");
}

#[test]
fn a_corrupted_datastore_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("datastore.sqlite");
    {
        let mut ds = Datastore::open(&path).unwrap();
        for i in 0..200 {
            ds.record(&format!("op-{i}"), &HostStatus::default())
                .unwrap();
        }
    } // closed: checkpointed into the main file, WAL removed
    assert!(!dir.path().join("datastore.sqlite-wal").exists());
    let mut bytes = std::fs::read(&path).unwrap();
    let page = 4096;
    assert!(bytes.len() > 4 * page);
    for b in &mut bytes[page..3 * page] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    assert_refused(&path, "datastore-corrupt");
}

#[test]
fn a_foreign_sqlite_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO photos (name) VALUES ('cat.jpg');",
        )
        .unwrap();
    }
    assert_refused(&path, "datastore-foreign");

    // Someone else's schema *with* our table names but no application id.
    let path2 = dir.path().join("lookalike.db");
    {
        let conn = Connection::open(&path2).unwrap();
        conn.execute_batch("CREATE TABLE history (id INTEGER); PRAGMA user_version = 1;")
            .unwrap();
    }
    assert_refused(&path2, "datastore-foreign");

    // Another application id, even with a tiny schema.
    let path3 = dir.path().join("other-app.db");
    {
        let conn = Connection::open(&path3).unwrap();
        conn.execute_batch("PRAGMA application_id = 1234; CREATE TABLE t (x);")
            .unwrap();
    }
    assert_refused(&path3, "datastore-foreign");
}

#[test]
fn a_datastore_from_a_newer_trident_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("datastore.sqlite");
    drop(Datastore::open(&path).unwrap());
    {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", LATEST_VERSION + 1)
            .unwrap();
        conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    assert_refused(&path, "datastore-too-new");
    let err = Datastore::open(&path).unwrap_err();
    let msg = find_trident_error(&err).unwrap().message;
    assert!(
        msg.contains(&format!("version {}", LATEST_VERSION + 1)),
        "{msg}"
    );
}

#[test]
fn a_directory_at_the_datastore_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("datastore.sqlite");
    std::fs::create_dir(&path).unwrap();
    let err = Datastore::open(&path).unwrap_err();
    assert_eq!(
        find_trident_error(&err).unwrap().code,
        "datastore-not-a-file"
    );
}

#[test]
fn a_datastore_reopens_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dirs/datastore.sqlite");
    let mut ds = Datastore::open(&path).unwrap();
    let e = ds.record("op", &HostStatus::default()).unwrap();
    drop(ds);
    let ds = Datastore::open_existing(&path).unwrap();
    assert_eq!(ds.history(None).unwrap(), vec![e]);
    assert_eq!(ds.schema_version().unwrap(), LATEST_VERSION);
}

#[test]
fn resolve_path_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("trident.conf");
    let flag = PathBuf::from("/flag/ds.sqlite");
    let hc = PathBuf::from("/hc/ds.sqlite");

    // No config file: default.
    assert_eq!(
        resolve_path(None, None, &conf).unwrap(),
        PathBuf::from(DEFAULT_PATH)
    );
    // A config file without the key: default.
    std::fs::write(&conf, "# nothing here\nother = 1\n").unwrap();
    assert_eq!(
        resolve_path(None, None, &conf).unwrap(),
        PathBuf::from(DEFAULT_PATH)
    );
    // Config file beats default.
    std::fs::write(&conf, "datastore = /conf/ds.sqlite\n").unwrap();
    assert_eq!(
        resolve_path(None, None, &conf).unwrap(),
        PathBuf::from("/conf/ds.sqlite")
    );
    // HC beats config file; flag beats both.
    assert_eq!(resolve_path(None, Some(&hc), &conf).unwrap(), hc);
    assert_eq!(resolve_path(Some(&flag), Some(&hc), &conf).unwrap(), flag);
    assert_eq!(resolve_path(Some(&flag), None, &conf).unwrap(), flag);

    // A malformed config file is an error naming the file and line, not a silent default.
    std::fs::write(&conf, "datastore: /colon/is/wrong\n").unwrap();
    let err = resolve_path(None, None, &conf).unwrap_err();
    let te = find_trident_error(&err).unwrap();
    assert_eq!(te.code, "invalid-agent-config");
    assert_eq!(te.line, Some(1));
    assert!(format!("{err:#}").contains(&conf.display().to_string()));
    // ... unless a higher-precedence source makes it irrelevant.
    assert_eq!(resolve_path(Some(&flag), None, &conf).unwrap(), flag);

    // An unreadable config (a directory) is an environment error.
    let conf_dir = dir.path().join("conf.d");
    std::fs::create_dir(&conf_dir).unwrap();
    let err = resolve_path(None, None, &conf_dir).unwrap_err();
    assert_eq!(
        find_trident_error(&err).unwrap().code,
        "agent-config-unreadable"
    );
}

#[test]
fn a_foreign_database_in_live_wal_mode_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    let wal = dir.path().join("busy.db-wal");
    // The owner keeps its connection open, so its last commits live only in the WAL.
    let owner = Connection::open(&path).unwrap();
    owner
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
        .unwrap();
    owner
        .execute_batch("PRAGMA wal_autocheckpoint = 0; CREATE TABLE jobs (id INTEGER); INSERT INTO jobs VALUES (1);")
        .unwrap();
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    let digest = |p: &Path| hex::encode(Sha384::digest(std::fs::read(p).unwrap()));
    let (main_before, wal_before) = (digest(&path), digest(&wal));
    let err = Datastore::open(&path).unwrap_err();
    assert_eq!(find_trident_error(&err).unwrap().code, "datastore-foreign");
    assert_eq!(digest(&path), main_before);
    assert_eq!(digest(&wal), wal_before);
    let n: i64 = owner
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}
