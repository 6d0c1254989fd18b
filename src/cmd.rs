//! The one wrapper for external tools: names the binary, renders a copy-pasteable
//! command line, sets stdin to null, captures output and reports stderr's tail on
//! failure.

use anyhow::{bail, Context, Result};
use std::ffi::{OsStr, OsString};
use std::process::{Command, Stdio};

/// A command to run. Build with [`Cmd::new`], add arguments, then [`Cmd::run`] or
/// [`Cmd::output`].
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<std::path::PathBuf>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            cwd: None,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    pub fn current_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Shell-quoted command line for logs and error messages.
    pub fn render(&self) -> String {
        std::iter::once(&self.program)
            .chain(self.args.iter())
            .map(|s| shell_quote(&s.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args).stdin(Stdio::null());
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        c
    }

    /// Run, check the exit status, return stdout.
    pub fn output(&self) -> Result<Vec<u8>> {
        tracing::debug!(command = %self.render(), "running");
        let out = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("starting `{}`", self.render()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            bail!(
                "`{}` failed ({}): {}",
                self.render(),
                out.status,
                tail(&stderr, 20)
            );
        }
        Ok(out.stdout)
    }

    /// Run, check the exit status, return stdout as a string.
    pub fn output_string(&self) -> Result<String> {
        let out = self.output()?;
        String::from_utf8(out)
            .with_context(|| format!("output of `{}` is not UTF-8", self.render()))
    }

    /// Run with stdout and stderr merged into one pipe, calling `on_line` for each line
    /// as it arrives, and return the exit status *without* checking it (for callers that
    /// report a failure themselves, like hook scripts). Reading ends when every holder of
    /// the pipe is gone, so a background child that keeps it open delays the return.
    pub fn status_lines(&self, mut on_line: impl FnMut(&str)) -> Result<std::process::ExitStatus> {
        use std::io::BufRead;
        tracing::debug!(command = %self.render(), "running");
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("creating a pipe")?;
        let w2 = w.try_clone().context("duplicating a pipe")?;
        let mut child = {
            let mut c = self.command();
            c.stdout(Stdio::from(w)).stderr(Stdio::from(w2));
            c.spawn()
                .with_context(|| format!("starting `{}`", self.render()))?
            // `c` (holding the write ends) is dropped here, so EOF arrives with the child.
        };
        let reader = std::io::BufReader::new(std::fs::File::from(r));
        for line in reader.split(b'\n') {
            let line = line.with_context(|| format!("reading output of `{}`", self.render()))?;
            on_line(String::from_utf8_lossy(&line).trim_end_matches('\r'));
        }
        child
            .wait()
            .with_context(|| format!("waiting for `{}`", self.render()))
    }

    /// Run and check the exit status.
    pub fn run(&self) -> Result<()> {
        self.output().map(|_| ())
    }
}

/// Quote a word for a POSIX shell when it needs quoting.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The last `n` non-empty lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Whether a program is on `PATH`.
pub fn have_program(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_quoted() {
        let c = Cmd::new("mkfs.ext4").args(["-L", "my root", "/dev/loop0p2"]);
        assert_eq!(c.render(), "mkfs.ext4 -L 'my root' /dev/loop0p2");
    }

    #[test]
    fn failure_reports_stderr_tail() {
        let err = Cmd::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .run()
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("boom"), "{msg}");
        assert!(msg.contains("sh -c"), "{msg}");
    }

    #[test]
    fn status_lines_merges_streams_and_returns_status() {
        let mut lines = Vec::new();
        let status = Cmd::new("sh")
            .args(["-c", "echo one; echo two >&2; echo three; exit 4"])
            .status_lines(|l| lines.push(l.to_string()))
            .unwrap();
        assert_eq!(status.code(), Some(4));
        assert_eq!(lines, ["one", "two", "three"]);
    }

    #[test]
    fn output_captured() {
        let out = Cmd::new("echo").arg("hi").output_string().unwrap();
        assert_eq!(out, "hi\n");
    }
}
