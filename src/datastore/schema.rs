//! Datastore schema: recognising our file, and migrating it.
//!
//! A Trident datastore is an SQLite database whose header carries
//! `PRAGMA application_id` = [`APPLICATION_ID`] and `PRAGMA user_version` = the schema
//! version (index into [`MIGRATIONS`] + 1). Anything else is refused without being
//! written to: a file that is not SQLite, an SQLite database of another program, or a
//! datastore written by a newer Trident (schema version above [`LATEST_VERSION`]).

use crate::error::TridentError;
use anyhow::{Context, Result};
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};
use std::io::Read;
use std::path::Path;

/// `PRAGMA application_id` of a Trident datastore: "TRID" in ASCII.
pub const APPLICATION_ID: i32 = 0x5452_4944;

/// Schema migrations, in order; migration `i` takes `user_version` from `i` to `i + 1`.
/// Never edit a released entry: append a new one (`ALTER TABLE ...`) for the next version.
pub const MIGRATIONS: &[&str] = &[
    // v1: current Host Status (one row) + append-only history.
    r#"
    CREATE TABLE history (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        timestamp    TEXT NOT NULL,          -- UTC, RFC 3339
        operation    TEXT NOT NULL,          -- transition name, e.g. stage-ab-update
        state_before TEXT NOT NULL,          -- servicing state before
        state_after  TEXT NOT NULL,          -- servicing state after
        host_status  TEXT NOT NULL           -- full Host Status after, JSON
    );
    CREATE TRIGGER history_refuse_update BEFORE UPDATE ON history
    BEGIN SELECT RAISE(ABORT, 'datastore history is append-only'); END;
    CREATE TRIGGER history_refuse_delete BEFORE DELETE ON history
    BEGIN SELECT RAISE(ABORT, 'datastore history is append-only'); END;
    CREATE TABLE host_status (
        id              INTEGER PRIMARY KEY CHECK (id = 1),
        servicing_state TEXT NOT NULL,
        host_status     TEXT NOT NULL,       -- JSON
        updated         TEXT NOT NULL,       -- UTC, RFC 3339
        history_id      INTEGER NOT NULL REFERENCES history(id)
    );
    "#,
];

/// The schema version this build writes.
pub const LATEST_VERSION: i32 = MIGRATIONS.len() as i32;

/// What an existing file turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// A Trident datastore at this schema version (<= LATEST_VERSION).
    Ours(i32),
    /// An SQLite database with nothing in it (a zero-length file, or one left by an
    /// initialisation that was interrupted before its first commit): safe to initialise.
    Empty,
}

fn refuse(code: &str, path: &Path, message: String) -> anyhow::Error {
    anyhow::Error::new(
        TridentError::environment(code, message).on_device(path.display().to_string()),
    )
}

/// Inspect an existing file without writing to it (the check connection is read-only,
/// so it never checkpoints or recovers anything into the file).
pub fn inspect(path: &Path) -> Result<Existing> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading metadata of {}", path.display()))?;
    if !meta.is_file() {
        return Err(refuse(
            "datastore-not-a-file",
            path,
            format!("datastore path {} is not a regular file", path.display()),
        ));
    }
    // A foreign non-SQLite file has no WAL beside it; with one, page 1 may live only in
    // the WAL, so leave the judgement to SQLite.
    let has_wal = wal_path(path).exists();
    if meta.len() > 0 && !has_wal {
        let mut header = [0u8; 16];
        let mut file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let n = read_up_to(&mut file, &mut header)
            .with_context(|| format!("reading {}", path.display()))?;
        if n < header.len() || &header != b"SQLite format 3\0" {
            return Err(refuse(
                "datastore-not-sqlite",
                path,
                format!(
                    "{} is not an SQLite database, so it is not a Trident datastore; \
                     it was left untouched (move it away or choose another datastore path)",
                    path.display()
                ),
            ));
        }
    }
    // Without a WAL the main file is the whole truth: read it as `immutable`, which
    // creates no -wal/-shm files and takes no locks. With one, a plain read-only
    // connection reads through it (and never checkpoints into the main file).
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = if has_wal {
        Connection::open_with_flags(path, flags)
    } else {
        Connection::open_with_flags(
            format!("file:{}?immutable=1", uri_escape(path)),
            flags | OpenFlags::SQLITE_OPEN_URI,
        )
    }
    .map_err(|e| sqlite_refusal(path, e))?;
    let read = |conn: &Connection| -> rusqlite::Result<(i32, i32, i64)> {
        let app: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
        let version: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let objects: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
        Ok((app, version, objects))
    };
    let (app, version, objects) = read(&conn).map_err(|e| sqlite_refusal(path, e))?;
    if app == APPLICATION_ID {
        // Cheap for a datastore's size; finds damage before anything writes to it.
        let check: String = conn
            .pragma_query_value(None, "quick_check", |r| r.get(0))
            .map_err(|e| sqlite_refusal(path, e))?;
        if check != "ok" {
            return Err(refuse(
                "datastore-corrupt",
                path,
                format!(
                    "datastore {} failed its integrity check ({check}); it was left untouched",
                    path.display()
                ),
            ));
        }
    }
    drop(conn);

    if app == APPLICATION_ID {
        if version > LATEST_VERSION {
            return Err(refuse(
                "datastore-too-new",
                path,
                format!(
                    "datastore {} has schema version {version}, newer than the {LATEST_VERSION} \
                     this Trident {} understands; it was left untouched (upgrade Trident)",
                    path.display(),
                    crate::VERSION
                ),
            ));
        }
        return Ok(Existing::Ours(version));
    }
    if app == 0 && version == 0 && objects == 0 {
        return Ok(Existing::Empty);
    }
    Err(refuse(
        "datastore-foreign",
        path,
        format!(
            "{} is an SQLite database of another program (application_id {app:#x}, \
             user_version {version}, {objects} schema objects), not a Trident datastore; \
             it was left untouched",
            path.display()
        ),
    ))
}

/// Map an SQLite failure while inspecting a file to a clear refusal.
fn sqlite_refusal(path: &Path, e: rusqlite::Error) -> anyhow::Error {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => refuse(
            "datastore-not-sqlite",
            path,
            format!(
                "{} is not an SQLite database, so it is not a Trident datastore; it was left untouched",
                path.display()
            ),
        ),
        Some(ErrorCode::DatabaseCorrupt) => refuse(
            "datastore-corrupt",
            path,
            format!("datastore {} is corrupt ({e}); it was left untouched", path.display()),
        ),
        _ => anyhow::Error::new(e).context(format!("inspecting datastore {}", path.display())),
    }
}

/// Bring an open read-write connection to [`LATEST_VERSION`], in one transaction.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    migrate_with(conn, path, MIGRATIONS)
}

/// [`migrate`] over an explicit list (tests rehearse the next version with it).
pub fn migrate_with(conn: &mut Connection, path: &Path, migrations: &[&str]) -> Result<()> {
    let latest = migrations.len() as i32;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context("starting the migration transaction")?;
    // Re-read under the write lock: another process may have migrated meanwhile.
    let app: i32 = tx.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let version: i32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if app != APPLICATION_ID && (app != 0 || version != 0) {
        return Err(refuse(
            "datastore-foreign",
            path,
            format!(
                "{} changed into a foreign database while being opened",
                path.display()
            ),
        ));
    }
    if version > latest {
        return Err(refuse(
            "datastore-too-new",
            path,
            format!(
                "datastore {} has schema version {version}, newer than {latest}",
                path.display()
            ),
        ));
    }
    if version == latest && app == APPLICATION_ID {
        return Ok(());
    }
    for (i, sql) in migrations.iter().enumerate().skip(version as usize) {
        let to = i as i32 + 1;
        tx.execute_batch(sql)
            .with_context(|| format!("migrating datastore schema from version {i} to {to}"))?;
        tx.pragma_update(None, "user_version", to)?;
        tracing::info!(path = %path.display(), from = i, to, "migrated datastore schema");
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.commit().context("committing the schema migration")?;
    Ok(())
}

/// The write-ahead log beside a database file.
pub fn wal_path(path: &Path) -> std::path::PathBuf {
    let mut os = path.as_os_str().to_owned();
    os.push("-wal");
    os.into()
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Percent-encode a path for an SQLite `file:` URI.
fn uri_escape(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1_datastore_migrates_to_a_rehearsed_v2_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ds.sqlite");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path).unwrap();
        conn.execute(
            "INSERT INTO history (timestamp, operation, state_before, state_after, host_status) \
             VALUES ('t', 'op', 'not-provisioned', 'provisioned', '{}')",
            [],
        )
        .unwrap();
        let v2: Vec<&str> = MIGRATIONS
            .iter()
            .copied()
            .chain(["ALTER TABLE history ADD COLUMN note TEXT NOT NULL DEFAULT ''"])
            .collect();
        migrate_with(&mut conn, &path, &v2).unwrap();
        let version: i32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, LATEST_VERSION + 1);
        let (op, note): (String, String) = conn
            .query_row("SELECT operation, note FROM history", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((op.as_str(), note.as_str()), ("op", ""));
        // Idempotent, and the older list now refuses the newer file.
        migrate_with(&mut conn, &path, &v2).unwrap();
        let err = migrate(&mut conn, &path).unwrap_err();
        assert_eq!(
            crate::error::find_trident_error(&err).unwrap().code,
            "datastore-too-new"
        );
        // The append-only triggers survive the migration.
        assert!(conn.execute("DELETE FROM history", []).is_err());
    }

    #[test]
    fn a_failed_migration_leaves_the_old_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ds.sqlite");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path).unwrap();
        let broken: Vec<&str> = MIGRATIONS
            .iter()
            .copied()
            .chain(["CREATE TABLE extra (x); ALTER TABLE nowhere ADD COLUMN y"])
            .collect();
        assert!(migrate_with(&mut conn, &path, &broken).is_err());
        let version: i32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, LATEST_VERSION);
        let extra: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'extra'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(extra, 0, "the half-applied migration was rolled back");
    }

    #[test]
    fn uri_escape_keeps_paths_unambiguous() {
        assert_eq!(
            uri_escape(Path::new("/var/lib/a b?#%.sqlite")),
            "/var/lib/a%20b%3F%23%25.sqlite"
        );
    }
}
