//! Host Configuration (placeholder: being written on the `config` branch).

use serde::{Deserialize, Serialize};

/// The desired state of a host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<serde_yaml::Value>,
}
