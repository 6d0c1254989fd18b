//! Hook scripts: `preServicing` and `postProvision` run in the servicing OS,
//! `postConfigure` inside a chroot of the target (with `/proc`, `/sys` and `/dev` bound).
//!
//! Each script gets `SERVICING_TYPE` (`clean-install`/`ab-update`/`runtime-update`),
//! `TARGET_ROOT` (the mounted target; `/` inside the chroot) and its
//! `environmentVariables`; stdin is null; its merged output is logged line by line; a
//! non-zero exit is a `servicing` error `script-failed` with the output's tail.

use anyhow::{Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::cmd::Cmd;
use crate::config::{HostConfiguration, Script, ScriptSource, ServicingType};
use crate::error::TridentError;

/// Lines of output kept for the error report.
const TAIL_LINES: usize = 20;

/// When a hook list runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPhase {
    /// Before servicing starts, in the servicing OS.
    PreServicing,
    /// After provisioning, in the servicing OS with `TARGET_ROOT` set.
    PostProvision,
    /// After configuration, inside a chroot of the target OS.
    PostConfigure,
}

impl HookPhase {
    /// The YAML key under `scripts`.
    pub fn key(self) -> &'static str {
        match self {
            HookPhase::PreServicing => "preServicing",
            HookPhase::PostProvision => "postProvision",
            HookPhase::PostConfigure => "postConfigure",
        }
    }

    fn scripts(self, hc: &HostConfiguration) -> &[Script] {
        match self {
            HookPhase::PreServicing => &hc.scripts.pre_servicing,
            HookPhase::PostProvision => &hc.scripts.post_provision,
            HookPhase::PostConfigure => &hc.scripts.post_configure,
        }
    }
}

/// What hooks need to know about the servicing.
#[derive(Debug, Clone)]
pub struct HookContext {
    pub servicing_type: ServicingType,
    /// Mounted target root (`TARGET_ROOT`); required for `PostConfigure`.
    pub target_root: Option<PathBuf>,
    /// Directory of the Host Configuration file, for relative script paths.
    pub config_dir: Option<PathBuf>,
}

/// `SERVICING_TYPE` value.
pub fn servicing_type_str(t: ServicingType) -> &'static str {
    match t {
        ServicingType::CleanInstall => "clean-install",
        ServicingType::AbUpdate => "ab-update",
        ServicingType::RuntimeUpdate => "runtime-update",
    }
}

/// Run the scripts of `phase` whose `runOn` selects `ctx.servicing_type`, in order; the
/// first failure stops.
pub fn run_hooks(phase: HookPhase, hc: &HostConfiguration, ctx: &HookContext) -> Result<()> {
    let scripts = phase.scripts(hc);
    let selected: Vec<(usize, &Script)> = scripts
        .iter()
        .enumerate()
        .filter(|(_, s)| s.should_run(ctx.servicing_type))
        .collect();
    if selected.is_empty() {
        return Ok(());
    }
    let _mounts = if phase == HookPhase::PostConfigure {
        let root = ctx.target_root.as_deref().ok_or_else(|| {
            TridentError::internal(
                "missing-target-root",
                "postConfigure scripts need the target root",
            )
        })?;
        Some(ChrootMounts::new(root).context("preparing the chroot for postConfigure scripts")?)
    } else {
        None
    };
    for (i, s) in selected {
        run_script(phase, i, s, ctx)
            .with_context(|| format!("running {} script '{}'", phase.key(), s.name))?;
    }
    Ok(())
}

fn run_script(phase: HookPhase, index: usize, s: &Script, ctx: &HookContext) -> Result<()> {
    let at = format!("scripts.{}[{index}]", phase.key());
    let chroot = (phase == HookPhase::PostConfigure)
        .then(|| ctx.target_root.clone())
        .flatten();
    // The script's text, or the path it runs from (in the OS that runs it).
    let content: Option<String> = match s.source() {
        Some(ScriptSource::Content(c)) => Some(c.to_string()),
        Some(ScriptSource::Path(p)) if p.is_relative() => {
            let dir = ctx.config_dir.as_deref().ok_or_else(|| {
                TridentError::invalid_input(
                    "relative-script-path",
                    format!(
                        "script path '{}' is relative and there is no configuration directory",
                        p.display()
                    ),
                )
                .at(format!("{at}.path"))
            })?;
            Some(
                fs::read_to_string(dir.join(p))
                    .with_context(|| format!("reading script {}", dir.join(p).display()))?,
            )
        }
        Some(ScriptSource::Path(_)) => None,
        None => {
            return Err(TridentError::invalid_input(
                "missing-script-source",
                format!("script '{}' needs exactly one of content and path", s.name),
            )
            .at(at)
            .into())
        }
    };
    // Temp file for inline content: in the target's /tmp for the chroot, else the host's.
    let temp = match (&content, &chroot) {
        (Some(c), Some(root)) => Some(TempScript::in_root(root, c)?),
        (Some(c), None) => Some(TempScript::on_host(c)?),
        _ => None,
    };
    let script_path: PathBuf = match (&temp, s.source()) {
        (Some(t), _) => t.run_path.clone(),
        (None, Some(ScriptSource::Path(p))) => p.to_path_buf(),
        _ => unreachable!("source checked above"),
    };
    let mut cmd = match &chroot {
        Some(root) => Cmd::new("chroot").arg(root).arg(s.interpreter()),
        None => Cmd::new(s.interpreter()),
    };
    cmd = cmd.arg(&script_path).args(&s.arguments);
    cmd = cmd.env("SERVICING_TYPE", servicing_type_str(ctx.servicing_type));
    match (&chroot, &ctx.target_root) {
        (Some(_), _) => cmd = cmd.env("TARGET_ROOT", "/"),
        (None, Some(root)) => cmd = cmd.env("TARGET_ROOT", root),
        (None, None) => {}
    }
    for (k, v) in &s.environment_variables {
        cmd = cmd.env(k, v);
    }
    tracing::info!(phase = phase.key(), script = %s.name, command = %cmd.render(), "running hook script");
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    let status = cmd.status_lines(|line| {
        tracing::info!(phase = phase.key(), script = %s.name, "{line}");
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_string());
    });
    drop(temp);
    let failure = match status {
        Ok(st) if st.success() => return Ok(()),
        Ok(st) => st.to_string(),
        Err(e) => format!("{e:#}"),
    };
    let tail: Vec<String> = tail.into();
    Err(TridentError::servicing(
        "script-failed",
        format!(
            "{} script '{}' failed ({failure}); last output:\n{}",
            phase.key(),
            s.name,
            tail.join("\n")
        ),
    )
    .at(at)
    .into())
}

/// A script's inline content in a file; removed on drop.
struct TempScript {
    host_path: PathBuf,
    /// The path the interpreter is given (inside the chroot for a target script).
    run_path: PathBuf,
}

impl TempScript {
    fn write(host_path: PathBuf, run_path: PathBuf, content: &str) -> Result<Self> {
        let mut f = fs::File::create(&host_path)
            .with_context(|| format!("creating {}", host_path.display()))?;
        f.write_all(content.as_bytes())?;
        f.set_permissions(fs::Permissions::from_mode(0o700))?;
        Ok(Self {
            host_path,
            run_path,
        })
    }

    fn on_host(content: &str) -> Result<Self> {
        let (file, path) = tempfile::Builder::new()
            .prefix("trident-hook-")
            .tempfile()
            .context("creating a temporary script file")?
            .keep()
            .context("keeping the temporary script file")?;
        drop(file);
        Self::write(path.clone(), path, content)
    }

    fn in_root(root: &Path, content: &str) -> Result<Self> {
        let tmp = root.join("tmp");
        if !tmp.exists() {
            fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))?;
        }
        let name = format!(
            "trident-hook-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        Self::write(tmp.join(&name), Path::new("/tmp").join(name), content)
    }
}

impl Drop for TempScript {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.host_path);
    }
}

/// `/proc`, `/sys` and `/dev` bound into a root; unmounted (lazily) on drop, in reverse.
pub struct ChrootMounts {
    mounted: Vec<PathBuf>,
}

impl ChrootMounts {
    pub fn new(root: &Path) -> Result<Self> {
        let mut me = Self {
            mounted: Vec::new(),
        };
        for dir in ["proc", "sys", "dev"] {
            let target = root.join(dir);
            fs::create_dir_all(&target)
                .with_context(|| format!("creating {}", target.display()))?;
            let src = Path::new("/").join(dir);
            mount(
                Some(&src),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .with_context(|| format!("binding {} to {}", src.display(), target.display()))?;
            me.mounted.push(target.clone());
            // Keep unmounts inside the chroot from propagating back to the host.
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None::<&str>,
            )
            .with_context(|| format!("making {} a slave mount", target.display()))?;
        }
        Ok(me)
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        while let Some(m) = self.mounted.pop() {
            if let Err(e) = umount2(&m, MntFlags::MNT_DETACH) {
                tracing::warn!(mount = %m.display(), error = %e, "could not unmount");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServicingTypeSelection as Sel;
    use std::collections::BTreeMap;

    fn script(name: &str, content: &str, run_on: Vec<Sel>) -> Script {
        Script {
            name: name.into(),
            run_on,
            content: Some(content.into()),
            ..Default::default()
        }
    }

    fn ctx(t: ServicingType, root: Option<&Path>) -> HookContext {
        HookContext {
            servicing_type: t,
            target_root: root.map(Path::to_path_buf),
            config_dir: None,
        }
    }

    #[test]
    fn env_args_and_run_on_filtering() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        let mut hc = HostConfiguration::default();
        let mut s = script(
            "env",
            &format!(
                "echo \"$SERVICING_TYPE $TARGET_ROOT $FOO $1 $2\" >> {}",
                out.display()
            ),
            vec![Sel::AbUpdate, Sel::CleanInstall],
        );
        s.environment_variables = BTreeMap::from([("FOO".into(), "bar baz".into())]);
        s.arguments = vec!["a1".into(), "a 2".into()];
        hc.scripts.post_provision = vec![
            s,
            script(
                "never",
                &format!("echo never >> {}", out.display()),
                vec![Sel::RuntimeUpdate],
            ),
        ];
        run_hooks(
            HookPhase::PostProvision,
            &hc,
            &ctx(ServicingType::CleanInstall, Some(Path::new("/mnt/t"))),
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            "clean-install /mnt/t bar baz a1 a 2\n"
        );
        // Nothing selected for runtime-update except "never".
        run_hooks(
            HookPhase::PostProvision,
            &hc,
            &ctx(ServicingType::RuntimeUpdate, None),
        )
        .unwrap();
        assert!(fs::read_to_string(&out).unwrap().ends_with("never\n"));
    }

    #[test]
    fn path_and_interpreter() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s.py");
        fs::write(&p, "import os, sys\nprint(os.environ['SERVICING_TYPE'], sys.argv[1])\nsys.exit(0 if sys.argv[1] == 'ok' else 9)\n").unwrap();
        let mut hc = HostConfiguration::default();
        hc.scripts.pre_servicing = vec![Script {
            name: "py".into(),
            run_on: vec![Sel::All],
            interpreter: Some("python3".into()),
            path: Some(p.clone()),
            arguments: vec!["ok".into()],
            ..Default::default()
        }];
        run_hooks(
            HookPhase::PreServicing,
            &hc,
            &ctx(ServicingType::AbUpdate, None),
        )
        .unwrap();
        hc.scripts.pre_servicing[0].arguments = vec!["bad".into()];
        let err = run_hooks(
            HookPhase::PreServicing,
            &hc,
            &ctx(ServicingType::AbUpdate, None),
        )
        .unwrap_err();
        let e = crate::error::find_trident_error(&err).unwrap();
        assert_eq!(e.code, "script-failed");
        assert!(
            e.message.contains("exit status: 9") && e.message.contains("ab-update bad"),
            "{}",
            e.message
        );
    }

    #[test]
    fn failure_reports_phase_status_and_tail() {
        let mut hc = HostConfiguration::default();
        hc.scripts.pre_servicing = vec![
            script("first", "echo fine", vec![Sel::All]),
            script(
                "boom",
                "i=0; while [ $i -lt 30 ]; do echo line$i; i=$((i+1)); done; echo oops >&2; exit 3",
                vec![Sel::All],
            ),
            script("after", "echo must-not-run; exit 1", vec![Sel::All]),
        ];
        let err = run_hooks(
            HookPhase::PreServicing,
            &hc,
            &ctx(ServicingType::CleanInstall, None),
        )
        .unwrap_err();
        let e = crate::error::find_trident_error(&err).unwrap();
        assert_eq!(e.category, crate::error::Category::Servicing);
        assert_eq!(e.code, "script-failed");
        assert_eq!(e.path.as_deref(), Some("scripts.preServicing[1]"));
        assert!(
            e.message
                .starts_with("preServicing script 'boom' failed (exit status: 3)"),
            "{}",
            e.message
        );
        assert!(e.message.ends_with("line29\noops"), "{}", e.message);
        assert!(
            !e.message.contains("line10\n"),
            "only the tail: {}",
            e.message
        );
        let missing = {
            let mut hc = HostConfiguration::default();
            let mut s = script("x", "true", vec![Sel::All]);
            s.interpreter = Some("/nonexistent/interp".into());
            hc.scripts.pre_servicing = vec![s];
            run_hooks(
                HookPhase::PreServicing,
                &hc,
                &ctx(ServicingType::CleanInstall, None),
            )
            .unwrap_err()
        };
        assert!(
            format!("{missing:#}").contains("script-failed"),
            "{missing:#}"
        );
    }
}
