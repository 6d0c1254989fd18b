//! Pure parsers and writers for `/etc/passwd`, `/etc/shadow`, `/etc/group` and
//! `/etc/gshadow`. Lines that are not entries (comments, blank lines, NIS `+`/`-` lines)
//! are kept verbatim, so `format(parse(text)) == text` for a file ending in a newline.

use anyhow::{bail, Result};

/// One line of an account file: an entry's colon-separated fields, or a line kept as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Entry(Vec<String>),
    Other(String),
}

/// An account file: its kind (for the field count) and its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub kind: Kind,
    pub lines: Vec<Line>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Passwd,
    Shadow,
    Group,
    Gshadow,
}

impl Kind {
    pub fn fields(self) -> usize {
        match self {
            Kind::Passwd => 7,
            Kind::Shadow => 9,
            Kind::Group | Kind::Gshadow => 4,
        }
    }
    pub fn path(self) -> &'static str {
        match self {
            Kind::Passwd => "/etc/passwd",
            Kind::Shadow => "/etc/shadow",
            Kind::Group => "/etc/group",
            Kind::Gshadow => "/etc/gshadow",
        }
    }
}

impl Table {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            lines: Vec::new(),
        }
    }

    /// Parse a file; an entry with the wrong number of fields is an error naming the line.
    pub fn parse(kind: Kind, text: &str) -> Result<Self> {
        let mut lines = Vec::new();
        for (i, l) in text.lines().enumerate() {
            let t = l.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with('+') || t.starts_with('-') {
                lines.push(Line::Other(l.to_string()));
                continue;
            }
            let fields: Vec<String> = l.split(':').map(str::to_string).collect();
            if fields.len() != kind.fields() || fields[0].is_empty() {
                bail!(
                    "{} line {}: expected {} colon-separated fields, found {}: '{l}'",
                    kind.path(),
                    i + 1,
                    kind.fields(),
                    fields.len()
                );
            }
            lines.push(Line::Entry(fields));
        }
        Ok(Self { kind, lines })
    }

    pub fn format(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            match l {
                Line::Entry(f) => out.push_str(&f.join(":")),
                Line::Other(s) => out.push_str(s),
            }
            out.push('\n');
        }
        out
    }

    pub fn entries(&self) -> impl Iterator<Item = &Vec<String>> {
        self.lines.iter().filter_map(|l| match l {
            Line::Entry(f) => Some(f),
            Line::Other(_) => None,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Vec<String>> {
        self.entries().find(|f| f[0] == name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Vec<String>> {
        self.lines.iter_mut().find_map(|l| match l {
            Line::Entry(f) if f[0] == name => Some(f),
            _ => None,
        })
    }

    /// Append an entry (its field count must match the file kind).
    pub fn push(&mut self, fields: Vec<String>) {
        assert_eq!(
            fields.len(),
            self.kind.fields(),
            "field count for {:?}",
            self.kind
        );
        self.lines.push(Line::Entry(fields));
    }

    /// Numeric ids in field 2 (uid in passwd, gid in group).
    pub fn ids(&self) -> Vec<u32> {
        self.entries().filter_map(|f| f[2].parse().ok()).collect()
    }

    pub fn name_of_id(&self, id: u32) -> Option<&str> {
        self.entries()
            .find(|f| f[2].parse() == Ok(id))
            .map(|f| f[0].as_str())
    }
}

/// Add `member` to a comma-separated member list (field `idx`) unless already there.
pub fn add_member(fields: &mut [String], idx: usize, member: &str) -> bool {
    let mut members: Vec<&str> = fields[idx].split(',').filter(|m| !m.is_empty()).collect();
    if members.contains(&member) {
        return false;
    }
    members.push(member);
    fields[idx] = members.join(",");
    true
}

/// The lowest id in `min..=max` not in `used`.
pub fn lowest_free(used: &[u32], min: u32, max: u32) -> Option<u32> {
    (min..=max).find(|id| !used.contains(id))
}

/// `KEY value` settings of `/etc/login.defs`.
pub fn login_defs(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(key)).then(|| w.next().map(str::to_string))?
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/configure/etc");

    #[test]
    fn fixtures_round_trip() {
        for kind in [Kind::Passwd, Kind::Shadow, Kind::Group, Kind::Gshadow] {
            let path = format!("{FIXTURES}{}", kind.path().trim_start_matches("/etc"));
            let text = std::fs::read_to_string(&path).unwrap();
            let t = Table::parse(kind, &text).unwrap();
            assert!(t.entries().count() > 5, "{path}");
            assert_eq!(t.format(), text, "{path} round trip");
        }
    }

    #[test]
    fn lookups_and_errors() {
        let t = Table::parse(
            Kind::Passwd,
            "root:x:0:0:root:/root:/bin/bash\n# note\n\nu:x:1000:1000::/home/u:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(t.get("u").unwrap()[5], "/home/u");
        assert_eq!(t.ids(), [0, 1000]);
        assert_eq!(t.name_of_id(1000), Some("u"));
        assert_eq!(lowest_free(&t.ids(), 1000, 60000), Some(1001));
        let err = Table::parse(Kind::Group, "ok:x:1:\nbroken:x\n").unwrap_err();
        assert!(err.to_string().contains("/etc/group line 2"), "{err}");
        let mut g = vec!["wheel".into(), "x".into(), "10".into(), "a".into()];
        assert!(add_member(&mut g, 3, "b"));
        assert!(!add_member(&mut g, 3, "a"));
        assert_eq!(g[3], "a,b");
        assert_eq!(
            login_defs("# UID_MIN 5\nUID_MIN\t\t 2000\nUMASK 022\n", "UID_MIN").as_deref(),
            Some("2000")
        );
    }
}
