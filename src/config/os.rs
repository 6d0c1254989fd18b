//! `os` (the target OS) and `managementOs` (the servicing OS during a clean install).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Configuration of the target OS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Os {
    /// Netplan configuration, kept as free-form YAML (`version` must be 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netplan: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "Selinux::is_default")]
    pub selinux: Selinux,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_files: Vec<AdditionalFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<Module>,
    #[serde(default, skip_serializing_if = "Services::is_empty")]
    pub services: Services,
    #[serde(default, skip_serializing_if = "KernelCommandLine::is_empty")]
    pub kernel_command_line: KernelCommandLine,
    /// systemd system extension images to merge on the target OS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysexts: Vec<Extension>,
    /// systemd configuration extension images to merge on the target OS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub confexts: Vec<Extension>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uefi_fallback: Option<UefiFallbackMode>,
}

/// SELinux settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selinux {
    /// `null`/absent leaves the image's setting alone.
    #[serde(default)]
    pub mode: Option<SelinuxMode>,
}

impl Selinux {
    fn is_default(&self) -> bool {
        self.mode.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelinuxMode {
    Disabled,
    Permissive,
    Enforcing,
}

/// UEFI fallback (`\EFI\BOOT`) handling. Earlier Trident releases spelled the modes
/// `rollback`, `rollforward` and `none`; those are accepted as aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UefiFallbackMode {
    /// Fallback boots the servicing OS until the update is committed.
    #[serde(alias = "rollback")]
    Conservative,
    /// Fallback boots the new OS from finalize on.
    #[serde(alias = "rollforward")]
    Optimistic,
    /// No fallback boot files.
    #[serde(alias = "none")]
    Disabled,
}

/// A user account on the target OS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct User {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_directory: Option<PathBuf>,
    /// Only `{type: locked}` exists: Trident never sets passwords.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Password>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_group: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secondary_groups: Vec<String>,
    #[serde(default)]
    pub ssh_mode: SshMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_public_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_command: Option<String>,
}

/// Password configuration: only a locked password is supported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Password {
    #[default]
    Locked,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SshMode {
    /// No SSH login for this user (the default).
    #[default]
    Block,
    /// SSH login with keys only.
    KeyOnly,
}

/// A file to write into the target OS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdditionalFile {
    pub destination: PathBuf,
    /// Inline content; conflicts with `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A file on the servicing host to copy; conflicts with `content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// Octal string such as `'0644'` (quoted: an unquoted 0644 is a decimal integer in YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
}

impl AdditionalFile {
    /// The permission bits, when `permissions` is a valid octal string.
    pub fn mode(&self) -> Option<u32> {
        let p = self.permissions.as_deref()?;
        if !p.starts_with('0') {
            return None;
        }
        u32::from_str_radix(p, 8).ok().filter(|m| *m <= 0o7777)
    }
}

/// A kernel module setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Module {
    pub name: String,
    #[serde(default)]
    pub load_mode: LoadMode,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadMode {
    Always,
    Auto,
    Disable,
    #[default]
    Inherit,
}

/// systemd services to enable or disable at boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Services {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enable: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable: Vec<String>,
}

impl Services {
    fn is_empty(&self) -> bool {
        self.enable.is_empty() && self.disable.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelCommandLine {
    #[serde(default)]
    pub extra_command_line: Vec<String>,
}

impl KernelCommandLine {
    fn is_empty(&self) -> bool {
        self.extra_command_line.is_empty()
    }
}

/// A sysext/confext image (a Discoverable Disk Image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Extension {
    pub url: String,
    /// SHA-384 of the whole image file (96 hex digits).
    pub sha384: String,
    /// Absolute `.raw` path in the target OS; default directory when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// Default directory for sysexts without a `path`.
pub const DEFAULT_SYSEXT_DIR: &str = "/var/lib/extensions";
/// Default directory for confexts without a `path`.
pub const DEFAULT_CONFEXT_DIR: &str = "/var/lib/confexts";
/// Directories a sysext may be placed in.
pub const SYSEXT_DIRS: [&str; 3] = ["/etc/extensions", "/var/lib/extensions", "/.extra/sysext"];
/// Directories a confext may be placed in.
pub const CONFEXT_DIRS: [&str; 3] = [
    "/var/lib/confexts",
    "/usr/lib/confexts",
    "/usr/local/lib/confexts",
];

/// Configuration of the servicing (management) OS; used by clean installs only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManagementOs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netplan: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
}
