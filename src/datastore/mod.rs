//! SQLite datastore: the current Host Status plus an append-only history.
//!
//! One file (default [`DEFAULT_PATH`], on a volume shared by A and B) holds:
//! - `host_status`: one row, the current [`HostStatus`] as JSON;
//! - `history`: one row per change (id, UTC timestamp, operation, state before/after,
//!   full Host Status JSON). Triggers refuse `UPDATE` and `DELETE` on it.
//!
//! Every change is one `IMMEDIATE` transaction that appends the history row and
//! updates the current row, so both always agree. The database runs in WAL mode with
//! `synchronous=FULL`: a change [`Datastore::record`] returned from survives a crash or
//! power cut. Schema versions and migrations live in [`schema`]; a file that is not a
//! Trident datastore (or is from a newer Trident) is refused and never written to.
//! See `docs/datastore.md`.

// `TridentError` is returned by value on purpose (it is what callers record and
// report); its size is irrelevant next to the I/O around every call.
#![allow(clippy::result_large_err)]

use crate::config::HostConfiguration;
use crate::error::TridentError;
use crate::status::{AbVolume, HostStatus, ImageRef, ServicingState, Transition};
use anyhow::{Context, Result};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod path;
pub mod schema;

pub use path::{parse_config, read_config, resolve_path, AgentConfig, CONFIG_FILE, DEFAULT_PATH};
pub use schema::{APPLICATION_ID, LATEST_VERSION};

/// How long a writer waits for another process's transaction before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// One row of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// Increasing, never reused.
    pub id: i64,
    /// UTC, RFC 3339 with microseconds (`2026-11-25T20:40:01.123456Z`).
    pub timestamp: String,
    /// What happened: a transition name (`stage-ab-update`, ...) or another verb.
    pub operation: String,
    pub state_before: ServicingState,
    pub state_after: ServicingState,
    /// The full Host Status after the change.
    pub host_status: HostStatus,
}

/// An earlier A/B point the host was provisioned at (see [`Datastore::rollback_chain`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackPoint {
    /// The last history row recorded while this OS was active and provisioned.
    pub history_id: i64,
    pub timestamp: String,
    /// The volume that OS was installed on.
    pub volume: AbVolume,
    /// Its spec (including runtime updates applied while it was active).
    pub spec: HostConfiguration,
    pub image: Option<ImageRef>,
}

/// An open datastore.
pub struct Datastore {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Datastore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datastore")
            .field("path", &self.path)
            .finish()
    }
}

impl Datastore {
    /// Open the datastore at `path`, creating it (mode 0600, parent directories
    /// included) with the current schema when missing, migrating an older schema.
    pub fn open(path: &Path) -> Result<Datastore> {
        Self::open_inner(path, true)
            .with_context(|| format!("opening datastore {}", path.display()))
    }

    /// Open an existing datastore; a missing file is an `execution-environment`
    /// `not-provisioned` error (this host was not installed or updated by Trident).
    pub fn open_existing(path: &Path) -> Result<Datastore> {
        Self::open_inner(path, false)
            .with_context(|| format!("opening datastore {}", path.display()))
    }

    fn open_inner(path: &Path, create: bool) -> Result<Datastore> {
        let exists = match std::fs::symlink_metadata(path) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e).context("reading datastore metadata"),
        };
        if exists {
            schema::inspect(path)?;
        } else if create {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating directory {}", parent.display()))?;
            }
            // Create it ourselves so the (secret-bearing) Host Status is not world-readable.
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
            match created {
                Ok(_) => {}
                // Another process created it meanwhile: judge it like any existing file.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    schema::inspect(path)?;
                }
                Err(e) => return Err(e).context("creating the datastore file"),
            }
        } else {
            return Err(anyhow::Error::new(
                TridentError::environment(
                    "not-provisioned",
                    format!(
                        "no datastore at {}: this host has not been provisioned by Trident \
                         (or its datastore path is configured elsewhere)",
                        path.display()
                    ),
                )
                .on_device(path.display().to_string()),
            ));
        }

        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .context("connecting")?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            anyhow::bail!("the filesystem does not support WAL mode (journal_mode is {mode})");
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        schema::migrate(&mut conn, path)?;
        Ok(Datastore {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The file this datastore lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<i32> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Run SQLite's full `integrity_check`; `Ok(())` when it reports `ok`.
    pub fn integrity_check(&self) -> Result<()> {
        let mut stmt = self.conn.prepare("PRAGMA integrity_check")?;
        let lines: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if lines != ["ok"] {
            return Err(anyhow::Error::new(
                TridentError::environment(
                    "datastore-corrupt",
                    format!(
                        "datastore {} failed its integrity check: {}",
                        self.path.display(),
                        lines.join("; ")
                    ),
                )
                .on_device(self.path.display().to_string()),
            ));
        }
        Ok(())
    }

    /// Copy the WAL into the main file and truncate it (`wal_checkpoint(TRUNCATE)`),
    /// e.g. before the volume holding the datastore is unmounted or snapshotted.
    /// SQLite also checkpoints by itself every ~1000 pages and on the last close.
    pub fn checkpoint(&self) -> Result<()> {
        let (busy, _, _): (i64, i64, i64) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .context("checkpointing the datastore")?;
        anyhow::ensure!(
            busy == 0,
            "checkpointing the datastore: a reader kept it busy"
        );
        Ok(())
    }

    /// The current Host Status (`not-provisioned` defaults when nothing was recorded).
    pub fn host_status(&self) -> Result<HostStatus> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT host_status FROM host_status WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .context("reading the current Host Status")?;
        match json {
            None => Ok(HostStatus::default()),
            Some(j) => parse_status(&j).context("reading the current Host Status"),
        }
    }

    /// Append a history row for `operation` and make `new` the current Host Status, in
    /// one transaction. Durable when this returns.
    pub fn record(&mut self, operation: &str, new: &HostStatus) -> Result<HistoryEntry> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("starting a datastore transaction")?;
        let before = current_state(&tx)?;
        let entry = append(&tx, operation, before, new)?;
        tx.commit().context("committing to the datastore")?;
        Ok(entry)
    }

    /// Load the current Host Status, apply `transition` and record it, all under one
    /// write lock (so two processes cannot both move the state from the same source).
    /// A refused transition records nothing and returns the [`TridentError`].
    pub fn transition(&mut self, transition: Transition) -> Result<HistoryEntry> {
        self.transition_with(transition, |_| {})
    }

    /// [`Datastore::transition`], then `observe` updates what this host observed
    /// (e.g. its block device paths, which differ between the installer and the
    /// installed OS) in the same record. It cannot change the servicing state.
    pub fn transition_with(
        &mut self,
        transition: Transition,
        observe: impl FnOnce(&mut HostStatus),
    ) -> Result<HistoryEntry> {
        let operation = transition.name();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("starting a datastore transaction")?;
        let mut status: HostStatus = tx
            .query_row(
                "SELECT host_status FROM host_status WHERE id = 1",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .map(|j| parse_status(&j))
            .transpose()?
            .unwrap_or_default();
        let before = status.servicing_state;
        status.apply(transition).map_err(anyhow::Error::new)?;
        let after = (status.servicing_state, status.active_volume);
        observe(&mut status);
        anyhow::ensure!(
            (status.servicing_state, status.active_volume) == after,
            "internal: a datastore observation changed the servicing state"
        );
        let entry = append(&tx, operation, before, &status)?;
        tx.commit().context("committing to the datastore")?;
        tracing::info!(
            operation,
            from = %before,
            to = %status.servicing_state,
            history_id = entry.id,
            "servicing state changed"
        );
        Ok(entry)
    }

    /// The newest `limit` history rows (all with `None`), newest first.
    pub fn history(&self, limit: Option<usize>) -> Result<Vec<HistoryEntry>> {
        let limit = limit.map(|l| l.min(i64::MAX as usize) as i64).unwrap_or(-1);
        let mut stmt = self.conn.prepare(
            "SELECT id, timestamp, operation, state_before, state_after, host_status \
             FROM history ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, timestamp, operation, before, after, json) = row?;
            out.push(HistoryEntry {
                id,
                timestamp,
                operation,
                state_before: parse_state(&before)?,
                state_after: parse_state(&after)?,
                host_status: parse_status(&json)
                    .with_context(|| format!("reading history row {id}"))?,
            });
        }
        Ok(out)
    }

    /// Earlier A/B points from history, newest first.
    ///
    /// History is cut into *epochs* by the active volume recorded in each row (a commit
    /// of an install, A/B update or A/B rollback starts a new epoch; fallbacks and
    /// runtime updates do not). Each earlier epoch with a `provisioned` row yields one
    /// [`RollbackPoint`]: its newest `provisioned` Host Status. The current epoch is
    /// left out. Only the first point can still be on disk (on the inactive volume);
    /// [`Datastore::ab_rollback_target`] says whether it is.
    pub fn rollback_chain(&self) -> Result<Vec<RollbackPoint>> {
        Ok(self.scan_epochs()?.0)
    }

    /// What `rollback --ab` restores: the first [`rollback_chain`](Self::rollback_chain)
    /// point, if it lives on the current inactive volume and nothing was staged into
    /// that volume since (a stage, even cancelled or fallen back, overwrote it).
    pub fn ab_rollback_target(&self) -> Result<Option<RollbackPoint>> {
        let (chain, dirty) = self.scan_epochs()?;
        let inactive = self.host_status()?.inactive_volume();
        Ok(chain
            .into_iter()
            .next()
            .filter(|p| !dirty && Some(p.volume) == inactive))
    }

    /// What `rollback --runtime` restores: the spec from before the last committed
    /// runtime update of the current epoch, unless a runtime rollback already undid it.
    pub fn runtime_rollback_target(&self) -> Result<Option<HostConfiguration>> {
        let current = self.host_status()?.active_volume;
        let history = self.history(None)?;
        let mut found_commit = false;
        for e in &history {
            if e.host_status.active_volume != current {
                return Ok(None);
            }
            if !found_commit {
                match e.operation.as_str() {
                    "commit-runtime-update" => found_commit = true,
                    "commit-manual-rollback-runtime" => return Ok(None),
                    _ => {}
                }
            } else if e.state_after == ServicingState::Provisioned {
                return Ok(Some(e.host_status.spec.clone()));
            }
        }
        Ok(None)
    }

    /// Returns the chain and whether the current epoch staged into the inactive volume.
    fn scan_epochs(&self) -> Result<(Vec<RollbackPoint>, bool)> {
        let history = self.history(None)?;
        let current = self.host_status()?.active_volume;
        let mut chain: Vec<RollbackPoint> = Vec::new();
        let mut epoch = current;
        let mut in_current = true;
        let mut dirty = false;
        let mut taken = false;
        for e in &history {
            let volume = e.host_status.active_volume;
            if volume != epoch {
                epoch = volume;
                in_current = false;
                taken = false;
            }
            if in_current {
                if e.operation == "stage-ab-update" {
                    dirty = true;
                }
                continue;
            }
            if let (false, Some(v), ServicingState::Provisioned) = (taken, volume, e.state_after) {
                chain.push(RollbackPoint {
                    history_id: e.id,
                    timestamp: e.timestamp.clone(),
                    volume: v,
                    spec: e.host_status.spec.clone(),
                    image: e.host_status.image.clone(),
                });
                taken = true;
            }
        }
        Ok((chain, dirty))
    }

    /// Write a consistent copy to `dest` (SQLite backup API, so concurrent writers are
    /// fine), atomically: a temporary file beside `dest`, fsync, rename, fsync of the
    /// directory. The copy is a self-contained file (rollback-journal mode until next
    /// opened). An existing `dest` is replaced only when it is a Trident datastore.
    /// Install uses this to persist the datastore into the target.
    pub fn copy_to(&self, dest: &Path) -> Result<()> {
        self.copy_inner(dest).with_context(|| {
            format!(
                "copying datastore {} to {}",
                self.path.display(),
                dest.display()
            )
        })
    }

    fn copy_inner(&self, dest: &Path) -> Result<()> {
        if dest.exists() {
            schema::inspect(dest)?;
        }
        let dir = match dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(p) => p.to_path_buf(),
            None => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = dest
            .file_name()
            .context("destination has no file name")?
            .to_string_lossy()
            .into_owned();
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        for stale in [tmp.clone(), schema::wal_path(&tmp)] {
            match std::fs::remove_file(&stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", stale.display())),
            }
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let result = (|| -> Result<()> {
            let mut out = Connection::open(&tmp)?;
            {
                let backup = rusqlite::backup::Backup::new(&self.conn, &mut out)?;
                backup.run_to_completion(256, Duration::from_millis(5), None)?;
            }
            let mode: String =
                out.pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))?;
            anyhow::ensure!(
                mode.eq_ignore_ascii_case("delete"),
                "copy stuck in {mode} mode"
            );
            let check: String = out.pragma_query_value(None, "integrity_check", |r| r.get(0))?;
            anyhow::ensure!(
                check == "ok",
                "the copy failed its integrity check: {check}"
            );
            out.close().map_err(|(_, e)| e)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, dest)
                .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
            std::fs::File::open(&dir)?.sync_all()?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

fn current_state(tx: &rusqlite::Transaction<'_>) -> Result<ServicingState> {
    let state: Option<String> = tx
        .query_row(
            "SELECT servicing_state FROM host_status WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    state
        .map(|s| parse_state(&s))
        .transpose()
        .map(|s| s.unwrap_or(ServicingState::NotProvisioned))
}

fn append(
    tx: &rusqlite::Transaction<'_>,
    operation: &str,
    before: ServicingState,
    new: &HostStatus,
) -> Result<HistoryEntry> {
    anyhow::ensure!(
        !operation.trim().is_empty(),
        "a datastore record needs an operation name"
    );
    let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let after = new.servicing_state;
    let json = new.to_json();
    tx.execute(
        "INSERT INTO history (timestamp, operation, state_before, state_after, host_status) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![timestamp, operation, before.as_str(), after.as_str(), json],
    )
    .context("appending to the history")?;
    let id = tx.last_insert_rowid();
    tx.execute(
        "INSERT INTO host_status (id, servicing_state, host_status, updated, history_id) \
         VALUES (1, ?1, ?2, ?3, ?4) \
         ON CONFLICT(id) DO UPDATE SET servicing_state = excluded.servicing_state, \
         host_status = excluded.host_status, updated = excluded.updated, \
         history_id = excluded.history_id",
        params![after.as_str(), json, timestamp, id],
    )
    .context("updating the current Host Status")?;
    Ok(HistoryEntry {
        id,
        timestamp,
        operation: operation.to_string(),
        state_before: before,
        state_after: after,
        host_status: new.clone(),
    })
}

fn parse_state(s: &str) -> Result<ServicingState> {
    ServicingState::parse(s)
        .with_context(|| format!("unknown servicing state `{s}` in the datastore"))
}

fn parse_status(json: &str) -> Result<HostStatus> {
    serde_json::from_str(json).context("parsing a Host Status stored in the datastore")
}

#[cfg(test)]
mod tests;
