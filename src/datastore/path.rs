//! Where the datastore lives, and the agent configuration file that may say so.
//!
//! Precedence (first that is set wins): the `--datastore` flag, the Host
//! Configuration's datastore path, the `datastore` key of the agent configuration file
//! ([`CONFIG_FILE`]), then [`DEFAULT_PATH`].
//!
//! The configuration file is a list of `key = value` lines; blank lines and lines
//! starting with `#` are ignored; a value may be wrapped in double quotes. Known key:
//! `datastore` (an absolute path). Unknown keys are warned about and ignored, so a file
//! written for a newer Trident still works; a malformed line or a repeated key is an
//! error naming its line.

use crate::error::TridentError;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Where the datastore lives unless configured otherwise (on a volume shared by A and B).
pub const DEFAULT_PATH: &str = "/var/lib/trident/datastore.sqlite";

/// The agent configuration file.
pub const CONFIG_FILE: &str = "/etc/trident/trident.conf";

/// Settings read from the agent configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentConfig {
    /// `datastore = /path/to/datastore.sqlite`
    pub datastore: Option<PathBuf>,
}

/// Decide the datastore path: `flag` > `hc_path` > `conf_file`'s `datastore` key >
/// [`DEFAULT_PATH`]. A missing configuration file is fine; an unreadable or malformed
/// one is an error (silently falling back could split the host's history in two).
pub fn resolve_path(
    flag: Option<&Path>,
    hc_path: Option<&Path>,
    conf_file: &Path,
) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = hc_path {
        return Ok(p.to_path_buf());
    }
    if let Some(config) = read_config(conf_file)? {
        if let Some(p) = config.datastore {
            return Ok(p);
        }
    }
    Ok(PathBuf::from(DEFAULT_PATH))
}

/// Read the agent configuration file; `None` when it does not exist.
pub fn read_config(conf_file: &Path) -> Result<Option<AgentConfig>> {
    let text = match std::fs::read_to_string(conf_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(anyhow::Error::new(
                TridentError::environment(
                    "agent-config-unreadable",
                    format!(
                        "cannot read agent configuration {}: {e}",
                        conf_file.display()
                    ),
                )
                .on_device(conf_file.display().to_string()),
            ))
        }
    };
    parse_config(&text)
        .map(Some)
        .with_context(|| format!("reading agent configuration {}", conf_file.display()))
}

/// Parse the text of an agent configuration file.
pub fn parse_config(text: &str) -> Result<AgentConfig, TridentError> {
    let mut config = AgentConfig::default();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |msg: String| {
            TridentError::invalid_input("invalid-agent-config", msg).at_location(line_no, 1)
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad(format!(
                "line {line_no}: expected `key = value`, found `{line}`"
            )));
        };
        let key = key.trim();
        let mut value = value.trim();
        if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
            value = &value[1..value.len() - 1];
        }
        match key {
            "datastore" => {
                if config.datastore.is_some() {
                    return Err(bad(format!("line {line_no}: `datastore` is set twice")));
                }
                let path = PathBuf::from(value);
                if value.is_empty() || !path.is_absolute() {
                    return Err(bad(format!(
                        "line {line_no}: `datastore` must be an absolute path, found `{value}`"
                    )));
                }
                config.datastore = Some(path);
            }
            "" => return Err(bad(format!("line {line_no}: missing key before `=`"))),
            other => tracing::warn!(
                key = other,
                line = line_no,
                "ignoring unknown agent configuration key"
            ),
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Category;

    #[test]
    fn parses_comments_quotes_and_unknown_keys() {
        let c =
            parse_config("# Trident agent\n\n  datastore = \"/srv/ds.sqlite\"  \nfuture-key = 1\n")
                .unwrap();
        assert_eq!(c.datastore, Some(PathBuf::from("/srv/ds.sqlite")));
        assert_eq!(parse_config("").unwrap(), AgentConfig::default());
    }

    #[test]
    fn malformed_lines_name_their_line() {
        for (text, line, needle) in [
            ("# x\ndatastore /a\n", 2, "key = value"),
            ("datastore = a/relative\n", 1, "absolute"),
            ("datastore =\n", 1, "absolute"),
            ("datastore = /a\ndatastore = /b\n", 2, "twice"),
            ("= /a\n", 1, "missing key"),
        ] {
            let e = parse_config(text).unwrap_err();
            assert_eq!(e.category, Category::InvalidInput, "{text}");
            assert_eq!(e.code, "invalid-agent-config");
            assert_eq!(e.line, Some(line), "{text}");
            assert!(e.message.contains(needle), "{}", e.message);
        }
    }
}
