//! `trident`: settings of the agent installed on the target OS.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Default datastore location (on a volume shared by A and B).
pub const DEFAULT_DATASTORE_PATH: &str = "/var/lib/trident/datastore.sqlite";

/// Agent settings on the target OS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trident {
    /// Do not enable Trident on the target OS; the other fields are then ignored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable: bool,
    /// Trident's gRPC server on the target OS. This agent offers D-Bus instead
    /// (`io.trident.Trident1`); `true` is accepted with a warning.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable_grpc: bool,
    /// SQLite datastore; [`DEFAULT_DATASTORE_PATH`] when unset. Must end in `.sqlite` and
    /// lie on a writable mount that is not an A/B volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore_path: Option<PathBuf>,
    /// URL to report status to once the target OS network is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phonehome: Option<String>,
    /// URL to stream logs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logstream: Option<String>,
}

impl Trident {
    /// The datastore path, defaulted.
    pub fn datastore_path(&self) -> &Path {
        self.datastore_path
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_DATASTORE_PATH))
    }
}
