//! Runtime updates: apply a Host Configuration whose only changes are `os.sysexts`,
//! `os.confexts` and `os.netplan` to the running OS, without staging or rebooting; and
//! `rollback --runtime`, which applies the spec from before the last runtime update the
//! same way.
//!
//! Every new or changed extension image is downloaded into a hidden temporary file next
//! to its destination and its SHA-384 checked before anything is put in place. Then the
//! images are renamed into place (replaced and dropped ones are kept as hidden backups),
//! netplan is written, `systemd-sysext refresh` (and `systemd-confext refresh` where it
//! exists) runs, and the engine checks what is actually merged: systemd-sysext exits 0
//! even when it could not merge anything. Any failure puts every file back from the
//! backups, refreshes again and records `revert-runtime` with the error.

use super::EngineContext;
use crate::cmd::{have_program, Cmd};
use crate::config::HostConfiguration;
use crate::config::{Extension, DEFAULT_CONFEXT_DIR, DEFAULT_SYSEXT_DIR};
use crate::configure::{write_in_target, write_netplan, NETPLAN_FILE};
use crate::datastore::Datastore;
use crate::error::{find_trident_error, TridentError};
use crate::status::{ServicingState, Transition};
use anyhow::{Context, Result};
use sha2::{Digest, Sha384};
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Suffix of a downloaded image before it is verified and put in place.
const NEW_SUFFIX: &str = ".trident-new";
/// Suffix of a replaced or dropped image kept until the update succeeded.
const OLD_SUFFIX: &str = ".trident-old";

/// System extension (`/usr`, `/opt`) or configuration extension (`/etc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExtensionKind {
    Sysext,
    Confext,
}

impl ExtensionKind {
    /// The systemd tool that merges this kind.
    pub fn tool(self) -> &'static str {
        match self {
            ExtensionKind::Sysext => "systemd-sysext",
            ExtensionKind::Confext => "systemd-confext",
        }
    }

    fn field(self) -> &'static str {
        match self {
            ExtensionKind::Sysext => "os.sysexts",
            ExtensionKind::Confext => "os.confexts",
        }
    }

    fn default_dir(self) -> &'static str {
        match self {
            ExtensionKind::Sysext => DEFAULT_SYSEXT_DIR,
            ExtensionKind::Confext => DEFAULT_CONFEXT_DIR,
        }
    }

    fn of(self, hc: &HostConfiguration) -> &[Extension] {
        match self {
            ExtensionKind::Sysext => &hc.os.sysexts,
            ExtensionKind::Confext => &hc.os.confexts,
        }
    }
}

impl std::fmt::Display for ExtensionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExtensionKind::Sysext => "sysext",
            ExtensionKind::Confext => "confext",
        })
    }
}

/// What merges extensions into the running OS. [`Systemd`] in production; tests of the
/// file handling use a stand-in (the real tools run in the container tier).
pub trait ExtensionTool {
    /// Whether this host can merge `kind` at all.
    fn available(&self, kind: ExtensionKind) -> bool;
    /// Re-merge the extensions of `kind` found under `root`.
    fn refresh(&self, kind: ExtensionKind, root: &Path) -> Result<()>;
    /// The names of the extensions of `kind` that are merged now.
    fn merged(&self, kind: ExtensionKind, root: &Path) -> Result<BTreeSet<String>>;
}

/// `systemd-sysext` / `systemd-confext` (`--root=` when the host root is not `/`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Systemd;

impl Systemd {
    fn cmd(kind: ExtensionKind, root: &Path) -> Cmd {
        if root != Path::new("/") {
            return Cmd::new(kind.tool()).arg(format!("--root={}", root.display()));
        }
        if in_private_mount_namespace() {
            // A unit with PrivateTmp= etc. runs in its own (slave) mount namespace: a
            // merge made there would never reach the host. Merge in PID 1's namespace.
            tracing::debug!("running {} in PID 1's mount namespace", kind.tool());
            return Cmd::new("nsenter").args(["--mount=/proc/1/ns/mnt", "--", kind.tool()]);
        }
        Cmd::new(kind.tool())
    }
}

/// Whether this process's mount namespace differs from PID 1's (a sandboxed unit).
fn in_private_mount_namespace() -> bool {
    match (
        fs::read_link("/proc/self/ns/mnt"),
        fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(a), Ok(b)) => a != b,
        // PID 1's namespace is not readable (not root, or no /proc): stay where we are.
        _ => false,
    }
}

impl ExtensionTool for Systemd {
    fn available(&self, kind: ExtensionKind) -> bool {
        have_program(kind.tool())
    }

    fn refresh(&self, kind: ExtensionKind, root: &Path) -> Result<()> {
        Self::cmd(kind, root).arg("refresh").run()
    }

    fn merged(&self, kind: ExtensionKind, root: &Path) -> Result<BTreeSet<String>> {
        if root == Path::new("/") {
            let out = Self::cmd(kind, root)
                .args(["status", "--json=short"])
                .output_string()?;
            return parse_status(&out)
                .with_context(|| format!("reading `{} status` output", kind.tool()));
        }
        // systemd 252's `status --root=` opens the marker without the root prefix:
        // read the marker the merge leaves in each hierarchy ourselves.
        merged_from_markers(kind, root)
    }
}

/// The names listed in `HIERARCHY/.systemd-sysext/extensions` (`.systemd-confext` for
/// confexts) under `root`: what `systemd-sysext status` reports. The marker only exists
/// inside a merged hierarchy (it lives in the overlay's top layer).
fn merged_from_markers(kind: ExtensionKind, root: &Path) -> Result<BTreeSet<String>> {
    let (hierarchies, marker): (&[&str], &str) = match kind {
        ExtensionKind::Sysext => (&["usr", "opt"], ".systemd-sysext/extensions"),
        ExtensionKind::Confext => (&["etc"], ".systemd-confext/extensions"),
    };
    let mut names = BTreeSet::new();
    for h in hierarchies {
        let file = root.join(h).join(marker);
        match fs::read_to_string(&file) {
            Ok(text) => names.extend(text.split_whitespace().map(str::to_string)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        }
    }
    Ok(names)
}

/// The extension names in `systemd-sysext status --json=short` output: one object per
/// hierarchy, `extensions` either `"none"` or a list of names.
fn parse_status(json: &str) -> Result<BTreeSet<String>> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).context("parsing JSON")?;
    let mut names = BTreeSet::new();
    for h in v.as_array().context("expected a JSON array")? {
        match h.get("extensions") {
            Some(serde_json::Value::Array(list)) => {
                names.extend(list.iter().filter_map(|n| n.as_str().map(str::to_string)))
            }
            Some(serde_json::Value::String(s)) if s == "none" => {}
            Some(serde_json::Value::String(s)) => {
                names.extend(s.split_whitespace().map(str::to_string))
            }
            _ => {}
        }
    }
    Ok(names)
}

/// One extension image of a spec: where it lives in the running OS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub kind: ExtensionKind,
    /// Absolute path in the running OS (not prefixed with the host root).
    pub path: PathBuf,
    /// The extension's name (the file name without `.raw`).
    pub name: String,
    pub url: String,
    pub sha384: String,
}

/// Where `e` goes: its `path`, else the kind's default directory plus the URL's last
/// path segment (`.raw` appended when missing).
fn placement(kind: ExtensionKind, e: &Extension) -> Result<Placement, TridentError> {
    let path = match &e.path {
        Some(p) => p.clone(),
        None => {
            let without_query = e.url.split(['?', '#']).next().unwrap_or_default();
            let last = without_query
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty() && *s != "." && *s != ".." && !s.contains(':'))
                .ok_or_else(|| {
                    TridentError::invalid_input(
                        "extension-name-unknown",
                        format!(
                            "cannot derive a file name from '{}'; set the extension's path",
                            e.url
                        ),
                    )
                    .at(kind.field())
                })?;
            let file = if last.ends_with(".raw") {
                last.to_string()
            } else {
                format!("{last}.raw")
            };
            Path::new(kind.default_dir()).join(file)
        }
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".raw"))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            TridentError::invalid_input(
                "invalid-extension-path",
                format!("'{}' is not a .raw file name", path.display()),
            )
            .at(kind.field())
        })?
        .to_string();
    Ok(Placement {
        kind,
        path,
        name,
        url: e.url.clone(),
        sha384: e.sha384.to_ascii_lowercase(),
    })
}

/// All extension placements of a spec, sysexts first.
fn placements(hc: &HostConfiguration) -> Result<Vec<Placement>, TridentError> {
    let mut out = Vec::new();
    for kind in [ExtensionKind::Sysext, ExtensionKind::Confext] {
        for e in kind.of(hc) {
            out.push(placement(kind, e)?);
        }
    }
    Ok(out)
}

/// What applying `new` over `old` changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeChanges {
    /// Images to download and put in place (new, or content changed).
    pub fetch: Vec<Placement>,
    /// Images of `old` that `new` no longer has at that path.
    pub remove: Vec<Placement>,
    /// Images that stay as they are.
    pub keep: Vec<Placement>,
    /// Whether `os.netplan` differs.
    pub netplan: bool,
}

impl RuntimeChanges {
    pub fn between(old: &HostConfiguration, new: &HostConfiguration) -> Result<Self> {
        let old_p = placements(old)?;
        let new_p = placements(new)?;
        let mut c = RuntimeChanges {
            netplan: old.os.netplan != new.os.netplan,
            ..Default::default()
        };
        for n in &new_p {
            if old_p.contains(n) {
                c.keep.push(n.clone());
            } else {
                c.fetch.push(n.clone());
            }
        }
        for o in &old_p {
            if !new_p.iter().any(|n| n.path == o.path) {
                c.remove.push(o.clone());
            }
        }
        Ok(c)
    }

    fn kind_changed(&self, kind: ExtensionKind) -> bool {
        self.fetch
            .iter()
            .chain(&self.remove)
            .any(|p| p.kind == kind)
    }
}

impl std::fmt::Display for RuntimeChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for p in &self.fetch {
            parts.push(format!(
                "place {} {} at {}",
                p.kind,
                p.name,
                p.path.display()
            ));
        }
        for p in &self.remove {
            parts.push(format!(
                "remove {} {} ({})",
                p.kind,
                p.name,
                p.path.display()
            ));
        }
        if self.netplan {
            parts.push("rewrite the netplan configuration".into());
        }
        if parts.is_empty() {
            parts.push("nothing to change".into());
        }
        f.write_str(&parts.join("; "))
    }
}

/// `trident update`/`stage` with a runtime-only change: apply it with the real systemd
/// tools. The host must be `provisioned`.
pub fn update(hc: &HostConfiguration, ctx: &EngineContext) -> Result<RuntimeChanges> {
    update_with(hc, ctx, &Systemd)
}

/// [`update`] with a given extension tool.
pub fn update_with(
    hc: &HostConfiguration,
    ctx: &EngineContext,
    tool: &dyn ExtensionTool,
) -> Result<RuntimeChanges> {
    let mut store = Datastore::open_existing(&ctx.datastore_path)?;
    recover_interrupted(&mut store, ctx, tool)?;
    let hs = store.host_status()?;
    expect_provisioned(hs.servicing_state, "apply a runtime update")?;
    if super::update::classify(&hs.spec, hc) != super::update::UpdateKind::RuntimeUpdate {
        return Err(TridentError::invalid_input(
            "not-a-runtime-update",
            "the Host Configuration changes more than os.sysexts/os.confexts/os.netplan",
        )
        .into());
    }
    let changes = RuntimeChanges::between(&hs.spec, hc)?;
    tracing::info!(%changes, "runtime update");
    store.transition(Transition::StageRuntimeUpdate { spec: hc.clone() })?;
    apply_recorded(
        &mut store,
        hc,
        &changes,
        ctx,
        tool,
        Transition::CommitRuntimeUpdate,
        "runtime-update-failed",
    )?;
    tracing::info!("runtime update applied");
    Ok(changes)
}

/// After the stage transition: apply `changes` towards `spec`; on success record
/// `commit` and drop the backups, on failure put every file back and record that.
fn apply_recorded(
    store: &mut Datastore,
    spec: &HostConfiguration,
    changes: &RuntimeChanges,
    ctx: &EngineContext,
    tool: &dyn ExtensionTool,
    commit: Transition,
    failed_code: &str,
) -> Result<()> {
    match apply(spec, changes, ctx, tool) {
        Ok(backups) => {
            store.transition(commit)?;
            remove_backups(&backups);
            Ok(())
        }
        Err(e) => {
            revert_record(store, &e, failed_code)?;
            Err(e)
        }
    }
}

/// What `rollback --runtime` does (or would do, with `--check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeRollbackPlan {
    pub changes: RuntimeChanges,
}

impl std::fmt::Display for RuntimeRollbackPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "revert the last runtime update: {}", self.changes)
    }
}

/// `rollback --runtime`: apply the spec from before the last runtime update (the
/// datastore's runtime rollback target). With `check`, only say what would happen.
pub fn rollback_runtime(ctx: &EngineContext, check: bool) -> Result<RuntimeRollbackPlan> {
    rollback_runtime_with(ctx, check, &Systemd)
}

/// [`rollback_runtime`] with a given extension tool.
pub fn rollback_runtime_with(
    ctx: &EngineContext,
    check: bool,
    tool: &dyn ExtensionTool,
) -> Result<RuntimeRollbackPlan> {
    let mut store = Datastore::open_existing(&ctx.datastore_path)?;
    if check {
        let state = store.host_status()?.servicing_state;
        if is_runtime_staged(state) {
            return Err(TridentError::servicing(
                "runtime-change-interrupted",
                format!("the host is {state}: a runtime change was interrupted; `rollback --runtime` puts the previous files back"),
            )
            .into());
        }
    } else if recover_interrupted(&mut store, ctx, tool)? {
        // The interrupted change was undone: that is the rollback.
        return Ok(RuntimeRollbackPlan {
            changes: RuntimeChanges::default(),
        });
    }
    let hs = store.host_status()?;
    expect_provisioned(hs.servicing_state, "roll back a runtime update")?;
    let target = store.runtime_rollback_target()?.ok_or_else(|| {
        anyhow::Error::new(TridentError::servicing(
            "no-runtime-rollback-target",
            "there is no runtime update to revert (none since the last A/B update, or it was already rolled back)",
        ))
    })?;
    if super::update::classify(&hs.spec, &target) == super::update::UpdateKind::AbUpdate {
        return Err(TridentError::internal(
            "runtime-rollback-target-invalid",
            "the runtime rollback target differs from the applied spec beyond sysexts/confexts/netplan",
        )
        .into());
    }
    let plan = RuntimeRollbackPlan {
        changes: RuntimeChanges::between(&hs.spec, &target)?,
    };
    if check {
        return Ok(plan);
    }
    tracing::info!(%plan, "runtime rollback");
    store.transition(Transition::StageManualRollbackRuntime {
        spec: target.clone(),
    })?;
    apply_recorded(
        &mut store,
        &target,
        &plan.changes,
        ctx,
        tool,
        Transition::CommitManualRollbackRuntime,
        "runtime-rollback-failed",
    )?;
    tracing::info!("runtime rollback applied");
    Ok(plan)
}

fn is_runtime_staged(state: ServicingState) -> bool {
    matches!(
        state,
        ServicingState::RuntimeUpdateStaged | ServicingState::ManualRollbackRuntimeStaged
    )
}

/// A run killed between `stage-runtime-update` (or `stage-manual-rollback-runtime`) and
/// its commit left the host in that state, maybe with hidden temporaries and backups:
/// put back the files of the previous spec (backups over replaced images, images only
/// the new spec has removed, netplan rewritten), refresh, and record `revert-runtime`.
/// Returns whether there was something to recover.
pub fn recover_interrupted(
    store: &mut Datastore,
    ctx: &EngineContext,
    tool: &dyn ExtensionTool,
) -> Result<bool> {
    let hs = store.host_status()?;
    if !is_runtime_staged(hs.servicing_state) {
        return Ok(false);
    }
    let previous = hs.previous_spec.clone().ok_or_else(|| {
        anyhow::Error::new(TridentError::internal(
            "missing-previous-spec",
            format!("the host is {} without a previous spec", hs.servicing_state),
        ))
    })?;
    tracing::warn!(state = %hs.servicing_state, "recovering an interrupted runtime change");
    let root = ctx.host_root.as_path();
    let old_p = placements(&previous)?;
    let new_p = placements(&hs.spec)?;
    for p in old_p.iter().chain(&new_p) {
        let path = ctx.host_path(&p.path);
        let _ = fs::remove_file(sibling(&path, NEW_SUFFIX));
        let backup = sibling(&path, OLD_SUFFIX);
        let touched = !(old_p.contains(p) && new_p.contains(p));
        if !touched {
            // Unchanged by the interrupted run: a backup there is stale.
            let _ = fs::remove_file(&backup);
        } else if backup.exists() {
            fs::rename(&backup, &path).with_context(|| format!("restoring {}", path.display()))?;
        } else if !old_p.iter().any(|o| o.path == p.path) && path.exists() {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    if previous.os.netplan != hs.spec.os.netplan {
        let file = ctx.host_path(NETPLAN_FILE);
        match &previous.os.netplan {
            Some(v) => write_netplan(root, v)?,
            None => {
                let _ = fs::remove_file(&file);
            }
        }
    }
    for kind in [ExtensionKind::Sysext, ExtensionKind::Confext] {
        if tool.available(kind) && (!kind.of(&previous).is_empty() || !kind.of(&hs.spec).is_empty())
        {
            if let Err(e) = tool.refresh(kind, root) {
                tracing::error!("refreshing {kind}s after recovering: {e:#}");
            }
        }
    }
    store.transition(Transition::RevertRuntime {
        error: TridentError::servicing(
            "runtime-change-interrupted",
            format!(
                "a runtime change was interrupted ({}); the previous extensions and netplan were put back",
                hs.servicing_state
            ),
        ),
    })?;
    Ok(true)
}

fn expect_provisioned(state: ServicingState, what: &str) -> Result<()> {
    if state != ServicingState::Provisioned {
        return Err(TridentError::servicing(
            "servicing-in-progress",
            format!("cannot {what} while the host is {state}"),
        )
        .into());
    }
    Ok(())
}

fn revert_record(store: &mut Datastore, e: &anyhow::Error, code: &str) -> Result<()> {
    let error =
        find_trident_error(e).unwrap_or_else(|| TridentError::servicing(code, format!("{e:#}")));
    tracing::error!(code = %error.code, "runtime change failed and was undone: {e:#}");
    store.transition(Transition::RevertRuntime { error })?;
    Ok(())
}

/// One step already done, to undo on failure.
enum Undo {
    /// A file put in place where nothing was: remove it.
    Placed(PathBuf),
    /// A file moved aside to `backup`: move it back to `path` (after removing what is
    /// at `path`).
    MovedAside { path: PathBuf, backup: PathBuf },
    /// The netplan file had this content (`None`: did not exist).
    Netplan(Option<Vec<u8>>),
}

/// Put the files of `new` in place, refresh, verify; on failure undo everything and
/// refresh again. Returns the backups, to remove once the change is committed.
fn apply(
    new: &HostConfiguration,
    changes: &RuntimeChanges,
    ctx: &EngineContext,
    tool: &dyn ExtensionTool,
) -> Result<Vec<PathBuf>> {
    let root = ctx.host_root.as_path();
    let mut downloads: Vec<(Placement, PathBuf)> = Vec::new();
    let result = download_all(changes, ctx, &mut downloads);
    if let Err(e) = result {
        for (_, tmp) in &downloads {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    let mut undo: Vec<Undo> = Vec::new();
    let result = swap_and_refresh(new, changes, &downloads, ctx, tool, &mut undo);
    match result {
        Ok(()) => Ok(undo
            .into_iter()
            .filter_map(|u| match u {
                Undo::MovedAside { backup, .. } => Some(backup),
                _ => None,
            })
            .collect()),
        Err(e) => {
            tracing::warn!("runtime change failed, putting every file back: {e:#}");
            for (_, tmp) in &downloads {
                let _ = fs::remove_file(tmp);
            }
            let mut undo_errors = Vec::new();
            for u in undo.into_iter().rev() {
                if let Err(ue) = undo_step(root, u) {
                    undo_errors.push(format!("{ue:#}"));
                }
            }
            for kind in [ExtensionKind::Sysext, ExtensionKind::Confext] {
                if changes.kind_changed(kind) && tool.available(kind) {
                    if let Err(re) = tool.refresh(kind, root) {
                        undo_errors.push(format!("refreshing {kind}s after the undo: {re:#}"));
                    }
                }
            }
            if !undo_errors.is_empty() {
                tracing::error!(
                    errors = %undo_errors.join("; "),
                    "undoing the runtime change was incomplete"
                );
                return Err(e.context(format!(
                    "undoing it was incomplete too: {}",
                    undo_errors.join("; ")
                )));
            }
            Err(e)
        }
    }
}

fn remove_backups(backups: &[PathBuf]) {
    for b in backups {
        if let Err(e) = fs::remove_file(b) {
            tracing::warn!(backup = %b.display(), "could not remove a backup: {e}");
        }
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{suffix}"))
}

fn download_all(
    changes: &RuntimeChanges,
    ctx: &EngineContext,
    out: &mut Vec<(Placement, PathBuf)>,
) -> Result<()> {
    for p in &changes.fetch {
        let dest = ctx.host_path(&p.path);
        if dest.is_file() && sha384_file(&dest)? == p.sha384 {
            tracing::info!(path = %dest.display(), "extension already in place");
            continue;
        }
        let tmp = sibling(&dest, NEW_SUFFIX);
        out.push((p.clone(), tmp.clone()));
        download(p, &tmp, ctx).with_context(|| format!("fetching {} {}", p.kind, p.name))?;
    }
    Ok(())
}

/// Stream `p.url` into `tmp`, hashing; the file is kept only when its SHA-384 matches.
fn download(p: &Placement, tmp: &Path, ctx: &EngineContext) -> Result<()> {
    if p.url.starts_with("oci://") {
        return Err(TridentError::unsupported(
            "extension-scheme-unsupported",
            format!(
                "'{}': extensions are fetched from file:// or http(s):// URLs",
                p.url
            ),
        )
        .into());
    }
    let dir = tmp.parent().context("extension path has no directory")?;
    super::ensure_dir(dir)?;
    let source = crate::cosi::open::open_source(&p.url, &ctx.source)?;
    let size = source.size()?;
    let mut reader = source.read_range(0, size)?;
    let mut file = fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut hasher = Sha384::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let what = format!("{} {}", p.kind, p.name);
    loop {
        ctx.cancelled()?;
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {}", source.describe()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .with_context(|| format!("writing {}", tmp.display()))?;
        done += n as u64;
        (ctx.progress)(&what, done, size);
    }
    if done != size {
        anyhow::bail!(
            "short read from {}: {done} of {size} bytes",
            source.describe()
        );
    }
    let got = hex::encode(hasher.finalize());
    if got != p.sha384 {
        return Err(TridentError::servicing(
            "extension-hash-mismatch",
            format!(
                "{} {} from {}: SHA-384 is {got}, the Host Configuration says {}",
                p.kind, p.name, p.url, p.sha384
            ),
        )
        .at(p.kind.field())
        .into());
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    tracing::info!(url = %p.url, tmp = %tmp.display(), bytes = done, "extension downloaded and verified");
    Ok(())
}

fn sha384_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha384::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

fn move_aside(path: &Path, undo: &mut Vec<Undo>) -> Result<()> {
    let backup = sibling(path, OLD_SUFFIX);
    fs::rename(path, &backup).with_context(|| format!("moving {} aside", path.display()))?;
    undo.push(Undo::MovedAside {
        path: path.to_path_buf(),
        backup,
    });
    Ok(())
}

fn swap_and_refresh(
    new: &HostConfiguration,
    changes: &RuntimeChanges,
    downloads: &[(Placement, PathBuf)],
    ctx: &EngineContext,
    tool: &dyn ExtensionTool,
    undo: &mut Vec<Undo>,
) -> Result<()> {
    let root = ctx.host_root.as_path();
    for p in &changes.remove {
        let path = ctx.host_path(&p.path);
        if path.symlink_metadata().is_ok() {
            move_aside(&path, undo)?;
            tracing::info!(path = %path.display(), "extension removed");
        } else {
            tracing::warn!(path = %path.display(), "extension to remove is already gone");
        }
    }
    for (p, tmp) in downloads {
        let dest = ctx.host_path(&p.path);
        if dest.symlink_metadata().is_ok() {
            move_aside(&dest, undo)?;
        }
        fs::rename(tmp, &dest).with_context(|| format!("putting {} in place", dest.display()))?;
        undo.push(Undo::Placed(dest.clone()));
        if let Some(d) = dest.parent() {
            fs::File::open(d).and_then(|f| f.sync_all()).ok();
        }
        tracing::info!(path = %dest.display(), "extension placed");
    }
    if changes.netplan {
        let file = ctx.host_path(NETPLAN_FILE);
        let before = match fs::read(&file) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        undo.push(Undo::Netplan(before));
        match &new.os.netplan {
            Some(v) => write_netplan(root, v)?,
            None => {
                fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?
            }
        }
        tracing::info!(path = %file.display(), "netplan configuration written");
        if root == Path::new("/") && have_program("netplan") {
            Cmd::new("netplan").arg("apply").run()?;
        } else {
            tracing::warn!("netplan not applied now (no netplan tool, or not the running root): it takes effect on the next boot");
        }
    }
    let all: Vec<&Placement> = changes.keep.iter().chain(&changes.fetch).collect();
    for kind in [ExtensionKind::Sysext, ExtensionKind::Confext] {
        if !changes.kind_changed(kind) {
            continue;
        }
        if !tool.available(kind) {
            tracing::warn!(
                tool = kind.tool(),
                "{}s placed but not merged: this systemd has no {}; they take effect when a {}-capable systemd runs",
                kind,
                kind.tool(),
                kind
            );
            continue;
        }
        tool.refresh(kind, root).map_err(|e| {
            TridentError::servicing(
                "extension-refresh-failed",
                format!("{} refresh failed: {e:#}", kind.tool()),
            )
        })?;
        let merged = tool.merged(kind, root)?;
        let missing: Vec<&str> = all
            .iter()
            .filter(|p| p.kind == kind && !merged.contains(&p.name))
            .map(|p| p.name.as_str())
            .collect();
        let lingering: Vec<&str> = changes
            .remove
            .iter()
            .filter(|p| p.kind == kind && merged.contains(&p.name))
            .filter(|p| !all.iter().any(|a| a.kind == kind && a.name == p.name))
            .map(|p| p.name.as_str())
            .collect();
        if !missing.is_empty() || !lingering.is_empty() {
            return Err(TridentError::servicing(
                "extension-merge-failed",
                format!(
                    "{} refresh did not produce the expected set: not merged [{}], still merged [{}] (merged now: [{}])",
                    kind.tool(),
                    missing.join(", "),
                    lingering.join(", "),
                    merged.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
            .into());
        }
        tracing::info!(merged = ?merged, "{}s merged", kind);
    }
    Ok(())
}

fn undo_step(root: &Path, u: Undo) -> Result<()> {
    match u {
        Undo::Placed(p) => fs::remove_file(&p).with_context(|| format!("removing {}", p.display())),
        Undo::MovedAside { path, backup } => {
            if path.symlink_metadata().is_ok() {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
            fs::rename(&backup, &path).with_context(|| format!("restoring {}", path.display()))
        }
        Undo::Netplan(before) => {
            let file = root.join(NETPLAN_FILE.trim_start_matches('/'));
            match before {
                Some(b) => write_in_target(root, NETPLAN_FILE, &b, Some(0o600))
                    .map(drop)
                    .with_context(|| format!("restoring {}", file.display())),
                None => match fs::remove_file(&file) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(e).with_context(|| format!("removing {}", file.display()))
                    }
                    _ => Ok(()),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(url: &str, path: Option<&str>) -> Extension {
        Extension {
            url: url.into(),
            sha384: "AB".repeat(48),
            path: path.map(PathBuf::from),
        }
    }

    #[test]
    fn placement_from_url_or_path() {
        let p = placement(
            ExtensionKind::Sysext,
            &ext("https://h/x/tools.raw?sig=1", None),
        )
        .unwrap();
        assert_eq!(p.path, Path::new("/var/lib/extensions/tools.raw"));
        assert_eq!(p.name, "tools");
        assert_eq!(p.sha384, "ab".repeat(48));
        let p = placement(ExtensionKind::Confext, &ext("file:///srv/cfg", None)).unwrap();
        assert_eq!(p.path, Path::new("/var/lib/confexts/cfg.raw"));
        let p = placement(
            ExtensionKind::Sysext,
            &ext("file:///srv/a.raw", Some("/etc/extensions/b.raw")),
        )
        .unwrap();
        assert_eq!(p.name, "b");
        let e = placement(ExtensionKind::Sysext, &ext("https://h/", None)).unwrap_err();
        assert_eq!(e.code, "extension-name-unknown");
    }

    #[test]
    fn parses_sysext_status() {
        let s = r#"[{"hierarchy":"/usr","extensions":["a","b"],"since":1},{"hierarchy":"/opt","extensions":"none","since":null}]"#;
        assert_eq!(
            parse_status(s).unwrap(),
            ["a", "b"].iter().map(|s| s.to_string()).collect()
        );
        assert!(
            parse_status(r#"[{"hierarchy":"/usr","extensions":"none","since":null}]"#)
                .unwrap()
                .is_empty()
        );
        assert!(parse_status("not json").is_err());
    }

    #[test]
    fn reads_merge_markers() {
        let d = tempfile::tempdir().unwrap();
        assert!(merged_from_markers(ExtensionKind::Sysext, d.path())
            .unwrap()
            .is_empty());
        fs::create_dir_all(d.path().join("usr/.systemd-sysext")).unwrap();
        fs::write(d.path().join("usr/.systemd-sysext/extensions"), "a b\n").unwrap();
        fs::create_dir_all(d.path().join("opt/.systemd-sysext")).unwrap();
        fs::write(d.path().join("opt/.systemd-sysext/extensions"), "c\n").unwrap();
        let got = merged_from_markers(ExtensionKind::Sysext, d.path()).unwrap();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(merged_from_markers(ExtensionKind::Confext, d.path())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn changes_between_specs() {
        let mut a = HostConfiguration::default();
        a.os.sysexts = vec![
            ext("file:///s/keep.raw", None),
            ext("file:///s/old.raw", None),
        ];
        let mut b = a.clone();
        b.os.sysexts[1] = ext("file:///s/new.raw", None);
        b.os.confexts = vec![ext("file:///s/c.raw", None)];
        let c = RuntimeChanges::between(&a, &b).unwrap();
        assert_eq!(c.keep.len(), 1);
        assert_eq!(
            c.fetch.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["new", "c"]
        );
        assert_eq!(c.remove.len(), 1);
        assert_eq!(c.remove[0].name, "old");
        assert!(!c.netplan);
        assert!(c.kind_changed(ExtensionKind::Confext));
    }
}
