//! Typed, categorised errors.
//!
//! Every error someone can act on is a [`TridentError`]: a [`Category`] (who can fix
//! it), a stable kebab-case `code`, a sentence for a tired operator, and where known the
//! YAML path (`storage.filesystems[2].mountPoint`), its line/column, and the device
//! involved. Fallible steps elsewhere use `anyhow` context chains; the top level finds
//! the `TridentError` inside a chain with [`find_trident_error`] to pick the exit code,
//! the D-Bus error name and the datastore's `lastError`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Who can fix the problem. Stable strings; part of the CLI/D-Bus contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// The Host Configuration or image given by the user is wrong.
    InvalidInput,
    /// Valid, but this build of Trident cannot do it (yet).
    UnsupportedConfiguration,
    /// The machine is not in a state that allows the operation (missing tool, mounted
    /// disk, no datastore, ...).
    ExecutionEnvironment,
    /// A servicing step failed while running (I/O error, hash mismatch, ...).
    Servicing,
    /// A health check failed.
    HealthChecks,
    /// A bug in Trident.
    Internal,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::InvalidInput => "invalid-input",
            Category::UnsupportedConfiguration => "unsupported-configuration",
            Category::ExecutionEnvironment => "execution-environment",
            Category::Servicing => "servicing",
            Category::HealthChecks => "health-checks",
            Category::Internal => "internal",
        }
    }

    /// The category named by [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Category> {
        [
            Category::InvalidInput,
            Category::UnsupportedConfiguration,
            Category::ExecutionEnvironment,
            Category::Servicing,
            Category::HealthChecks,
            Category::Internal,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }

    /// Process exit code for this category (documented in `docs/cli.md`).
    pub fn exit_code(self) -> i32 {
        match self {
            Category::InvalidInput => 3,
            Category::UnsupportedConfiguration => 4,
            Category::ExecutionEnvironment => 5,
            Category::Servicing => 6,
            Category::HealthChecks => 7,
            Category::Internal => 8,
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A categorised error with a stable code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TridentError {
    pub category: Category,
    /// Stable kebab-case code, e.g. `duplicate-block-device-id`.
    pub code: String,
    /// One sentence an operator understands.
    pub message: String,
    /// YAML path of the offending field, e.g. `storage.filesystems[2].mountPoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// 1-based line and column in the YAML document, where the parser knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// Block device (or file) involved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl TridentError {
    pub fn new(category: Category, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            category,
            code: code.into(),
            message: message.into(),
            path: None,
            line: None,
            column: None,
            device: None,
        }
    }

    pub fn invalid_input(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Category::InvalidInput, code, message)
    }
    pub fn unsupported(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Category::UnsupportedConfiguration, code, message)
    }
    pub fn environment(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Category::ExecutionEnvironment, code, message)
    }
    pub fn servicing(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Category::Servicing, code, message)
    }
    pub fn internal(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Category::Internal, code, message)
    }

    /// Attach the YAML path of the offending field.
    pub fn at(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }
    /// Attach a 1-based line and column.
    pub fn at_location(mut self, line: usize, column: usize) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self
    }
    /// Attach the device or file involved.
    pub fn on_device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }
}

impl fmt::Display for TridentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.category, self.code)?;
        if let Some(path) = &self.path {
            write!(f, " at {path}")?;
        }
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, " (line {l}, column {c})")?;
        }
        if let Some(dev) = &self.device {
            write!(f, " on {dev}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for TridentError {}

/// Several errors found in one pass (e.g. every validation error in a document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TridentErrors(pub Vec<TridentError>);

impl fmt::Display for TridentErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TridentErrors {}

/// Find the first categorised error in an `anyhow` chain.
pub fn find_trident_error(err: &anyhow::Error) -> Option<TridentError> {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<TridentError>() {
            return Some(e.clone());
        }
        if let Some(es) = cause.downcast_ref::<TridentErrors>() {
            if let Some(first) = es.0.first() {
                return Some(first.clone());
            }
        }
    }
    None
}

/// The category of an `anyhow` chain (`internal` when nothing in it is categorised).
pub fn category_of(err: &anyhow::Error) -> Category {
    find_trident_error(err)
        .map(|e| e.category)
        .unwrap_or(Category::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_category_code_path_location() {
        let e = TridentError::invalid_input("duplicate-mount-point", "mount point / is used twice")
            .at("storage.filesystems[2].mountPoint")
            .at_location(14, 5);
        assert_eq!(
            e.to_string(),
            "invalid-input [duplicate-mount-point] at storage.filesystems[2].mountPoint \
             (line 14, column 5): mount point / is used twice"
        );
    }

    #[test]
    fn found_in_anyhow_chain() {
        let e = anyhow::Error::new(TridentError::servicing("hash-mismatch", "bad"))
            .context("streaming root image")
            .context("staging update");
        let found = find_trident_error(&e).unwrap();
        assert_eq!(found.code, "hash-mismatch");
        assert_eq!(category_of(&e), Category::Servicing);
        assert_eq!(Category::Servicing.exit_code(), 6);
    }
}
