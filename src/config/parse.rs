//! YAML → [`HostConfiguration`], with the YAML path and position of any error, and a
//! position index so that validation errors (found on the typed value) can point at a
//! line and column too.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use super::HostConfiguration;
use crate::error::{TridentError, TridentErrors};

pub(super) fn parse(yaml: &str) -> Result<HostConfiguration, TridentErrors> {
    if yaml
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---")
    {
        return Err(TridentErrors(vec![TridentError::invalid_input(
            "empty-host-configuration",
            "the Host Configuration is empty",
        )]));
    }
    // Syntax first: the typed pass below stops at the first type mismatch, which may come
    // before a syntax error further down and would hide its nature.
    if let Err(e) = serde_yaml::from_str::<serde_yaml::Value>(yaml) {
        let mut err = parse_error("", &e);
        if err.code != "duplicate-key" {
            err.code = "yaml-syntax".to_owned();
        }
        return Err(TridentErrors(vec![err]));
    }
    let de = serde_yaml::Deserializer::from_str(yaml);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        TridentErrors(vec![parse_error(&path, &inner)])
    })
}

fn parse_error(path: &str, err: &serde_yaml::Error) -> TridentError {
    let mut message = err.to_string();
    // serde_yaml appends " at line L column C"; the position is kept in fields instead.
    if let Some(loc) = err.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_owned();
        }
    }
    // serde_yaml prefixes the message with the path, which is kept in a field instead.
    if let Some((prefix, rest)) = message.split_once(": ") {
        if !prefix.is_empty() && path.starts_with(prefix) {
            message = rest.to_owned();
        }
    }
    let code = if message.contains("unknown field") {
        "unknown-field"
    } else if message.contains("missing field") {
        "missing-field"
    } else if message.contains("duplicate entry") {
        "duplicate-key"
    } else if message.contains("unknown variant") {
        "unknown-variant"
    } else if message.contains("invalid type") {
        "invalid-type"
    } else if path == "." || path.is_empty() {
        "yaml-syntax"
    } else {
        "invalid-value"
    };
    let mut e = TridentError::invalid_input(code, message);
    if !(path == "." || path.is_empty()) {
        e = e.at(path);
    }
    if let Some(loc) = err.location() {
        e = e.at_location(loc.line(), loc.column());
    }
    e
}

/// Map from YAML path (`storage.disks[0].partitions[1].id`) to the 1-based line and
/// column where that node (for mapping entries: its key) starts. Best effort: a document
/// the indexer cannot read yields an empty index.
#[derive(Debug, Clone, Default)]
pub struct PositionIndex {
    positions: HashMap<String, (usize, usize)>,
}

impl PositionIndex {
    pub fn build(yaml: &str) -> Self {
        let mut builder = IndexBuilder::default();
        let mut parser = Parser::new_from_str(yaml);
        if parser.load(&mut builder, false).is_err() {
            return PositionIndex::default();
        }
        PositionIndex {
            positions: builder.positions,
        }
    }

    /// Position of `path`, or of its nearest ancestor present in the document (a field
    /// left to its default has no position of its own).
    pub fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// Attach the position of the error's path, unless it already has one.
    pub fn attach(&self, e: TridentError) -> TridentError {
        if e.line.is_some() {
            return e;
        }
        match e.path.as_deref().and_then(|p| self.locate(p)) {
            Some((l, c)) => e.at_location(l, c),
            None => e,
        }
    }
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        expecting_key: bool,
        first_key: bool,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct IndexBuilder {
    stack: Vec<Frame>,
    positions: HashMap<String, (usize, usize)>,
}

impl IndexBuilder {
    /// Record the node starting now; returns its path, or `None` for a mapping key (keys
    /// are recorded under the path of their entry, so errors point at `key:`).
    fn node_path(&mut self, ev: &Event, mark: &Marker) -> Option<String> {
        let pos = (mark.line(), mark.col() + 1);
        let path = match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                p
            }
            Some(Frame::Map {
                path,
                key,
                expecting_key,
                first_key,
            }) if *expecting_key => {
                *expecting_key = false;
                let k = match ev {
                    Event::Scalar(s, ..) => s.clone(),
                    _ => "?".to_owned(),
                };
                let p = join(path, &k);
                *key = Some(k);
                self.positions.entry(p).or_insert(pos);
                // A block mapping starts at its first key (the parser's mark for the
                // mapping start can lie elsewhere on the line).
                if *first_key {
                    *first_key = false;
                    let own = path.clone();
                    self.positions.insert(own, pos);
                }
                return None;
            }
            Some(Frame::Map {
                path,
                key,
                expecting_key,
                ..
            }) => {
                *expecting_key = true;
                join(path, &key.take().unwrap_or_else(|| "?".to_owned()))
            }
        };
        self.positions.entry(path.clone()).or_insert(pos);
        Some(path)
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for IndexBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(..) | Event::Alias(_) => {
                self.node_path(&ev, &mark);
            }
            Event::MappingStart(..) => {
                // Mapping values are positioned at their key; sequence items and the
                // document root at their first key.
                let first_key = !matches!(self.stack.last(), Some(Frame::Map { .. }));
                // A complex key gets a placeholder path; its contents are not addressable.
                let path = self.node_path(&ev, &mark).unwrap_or_else(|| "?".to_owned());
                self.stack.push(Frame::Map {
                    path,
                    key: None,
                    expecting_key: true,
                    first_key,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.node_path(&ev, &mark).unwrap_or_else(|| "?".to_owned());
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
storage:
  disks:
  - id: os
    device: /dev/sda
    partitions:
    - id: esp
      type: esp
      size: 64M
    - {id: root, size: 8G}
  swap: [a, b]
os:
  hostname: h
";

    #[test]
    fn index_positions_keys_and_items() {
        let idx = PositionIndex::build(DOC);
        assert_eq!(idx.locate("storage"), Some((1, 1)));
        assert_eq!(idx.locate("storage.disks"), Some((2, 3)));
        assert_eq!(idx.locate("storage.disks[0]"), Some((3, 5)));
        assert_eq!(idx.locate("storage.disks[0].id"), Some((3, 5)));
        assert_eq!(idx.locate("storage.disks[0].device"), Some((4, 5)));
        assert_eq!(
            idx.locate("storage.disks[0].partitions[1].size"),
            Some((9, 18))
        );
        assert_eq!(idx.locate("storage.swap[1]"), Some((10, 13)));
        assert_eq!(idx.locate("os.hostname"), Some((12, 3)));
        // Missing leaf: nearest ancestor.
        assert_eq!(
            idx.locate("storage.disks[0].partitions[0].uuid"),
            Some((6, 7))
        );
        assert_eq!(idx.locate("nothing.here"), None);
    }

    #[test]
    fn index_of_broken_yaml_is_empty() {
        let idx = PositionIndex::build("a: [1, 2\n");
        assert_eq!(idx.locate("a"), None);
    }

    #[test]
    fn parse_error_has_path_and_location() {
        let errs = parse("storage:\n  disks:\n  - id: os\n    device: /dev/sda\n    bogus: 1\n")
            .unwrap_err();
        let e = &errs.0[0];
        assert_eq!(e.code, "unknown-field");
        assert_eq!(e.path.as_deref(), Some("storage.disks[0].bogus"));
        assert_eq!((e.line, e.column), (Some(5), Some(5)));
        assert!(!e.message.contains(" at line "), "{}", e.message);
        assert!(
            e.message.starts_with("unknown field `bogus`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn parse_error_codes() {
        let code = |y: &str| parse(y).unwrap_err().0[0].code.clone();
        assert_eq!(code(""), "empty-host-configuration");
        assert_eq!(code("# only a comment\n"), "empty-host-configuration");
        assert_eq!(code("os: {hostname: a\n"), "yaml-syntax");
        assert_eq!(code("os: [1]\n"), "invalid-type");
        assert_eq!(code("image: {url: x}\n"), "missing-field");
        assert_eq!(code("os: {selinux: {mode: strict}}\n"), "unknown-variant");
        assert_eq!(code("os: {users: 3}\n"), "invalid-type");
        assert_eq!(
            code("os: {hostname: a}\nos: {hostname: b}\n"),
            "duplicate-key"
        );
    }
}
