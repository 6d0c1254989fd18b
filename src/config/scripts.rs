//! `scripts` (hooks run during servicing) and `health.checks` (run before commit).

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Hook scripts, run in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scripts {
    /// Before servicing starts, in the servicing OS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_servicing: Vec<Script>,
    /// After provisioning, with the target root mounted at `$TARGET_ROOT`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_provision: Vec<Script>,
    /// After configuration, inside a chroot of the target OS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_configure: Vec<Script>,
}

impl Scripts {
    /// `(yaml key, scripts)` for each hook list.
    pub fn hooks(&self) -> [(&'static str, &[Script]); 3] {
        [
            ("preServicing", &self.pre_servicing),
            ("postProvision", &self.post_provision),
            ("postConfigure", &self.post_configure),
        ]
    }
}

/// Which servicing operations a script or check runs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServicingTypeSelection {
    CleanInstall,
    AbUpdate,
    RuntimeUpdate,
    All,
}

/// A servicing operation, as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServicingType {
    CleanInstall,
    AbUpdate,
    RuntimeUpdate,
}

/// Whether a `runOn` list selects `servicing`.
pub fn runs_on(run_on: &[ServicingTypeSelection], servicing: ServicingType) -> bool {
    run_on.iter().any(|s| {
        matches!(
            (s, servicing),
            (ServicingTypeSelection::All, _)
                | (
                    ServicingTypeSelection::CleanInstall,
                    ServicingType::CleanInstall
                )
                | (ServicingTypeSelection::AbUpdate, ServicingType::AbUpdate)
                | (
                    ServicingTypeSelection::RuntimeUpdate,
                    ServicingType::RuntimeUpdate
                )
        )
    })
}

/// A script: exactly one of `content` or `path`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Script {
    #[serde(default)]
    pub name: String,
    /// Must not be empty (validation rejects an empty list, which would never run).
    #[serde(default)]
    pub run_on: Vec<ServicingTypeSelection>,
    /// Interpreter binary; `/bin/sh` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Absolute path of a script file in the OS that runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arguments: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment_variables: BTreeMap<String, String>,
}

/// Where a script's text comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptSource<'a> {
    Content(&'a str),
    Path(&'a Path),
}

impl Script {
    /// The script's source; `None` unless exactly one of `content`/`path` is set.
    pub fn source(&self) -> Option<ScriptSource<'_>> {
        match (&self.content, &self.path) {
            (Some(c), None) => Some(ScriptSource::Content(c)),
            (None, Some(p)) => Some(ScriptSource::Path(p)),
            _ => None,
        }
    }

    pub fn interpreter(&self) -> &Path {
        self.interpreter.as_deref().unwrap_or(Path::new("/bin/sh"))
    }

    pub fn should_run(&self, servicing: ServicingType) -> bool {
        runs_on(&self.run_on, servicing)
    }
}

/// Health configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Health {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

/// A health check: a script, or a set of systemd services that must be active. A mapping
/// with `systemdServices` is a systemd check; any other mapping is a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Script(Script),
    SystemdCheck(SystemdCheck),
}

impl Check {
    pub fn name(&self) -> &str {
        match self {
            Check::Script(s) => &s.name,
            Check::SystemdCheck(c) => &c.name,
        }
    }

    pub fn run_on(&self) -> &[ServicingTypeSelection] {
        match self {
            Check::Script(s) => &s.run_on,
            Check::SystemdCheck(c) => &c.run_on,
        }
    }

    /// Health checks only ever run for clean installs and A/B updates.
    pub fn should_run(&self, servicing: ServicingType) -> bool {
        servicing != ServicingType::RuntimeUpdate && runs_on(self.run_on(), servicing)
    }
}

/// systemd services that must be in a successful state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SystemdCheck {
    #[serde(default)]
    pub name: String,
    pub systemd_services: Vec<String>,
    /// How long to wait for the services to become healthy, in seconds (> 0).
    pub timeout_seconds: u64,
    #[serde(default)]
    pub run_on: Vec<ServicingTypeSelection>,
}

/// Both kinds of check with all fields optional, so that an unknown key is reported with
/// its position before the kind is decided.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CheckRepr {
    #[serde(default)]
    name: String,
    #[serde(default)]
    run_on: Vec<ServicingTypeSelection>,
    #[serde(default)]
    interpreter: Option<PathBuf>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    arguments: Option<Vec<String>>,
    #[serde(default)]
    environment_variables: Option<BTreeMap<String, String>>,
    #[serde(default)]
    systemd_services: Option<Vec<String>>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
}

impl<'de> Deserialize<'de> for Check {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = CheckRepr::deserialize(d)?;
        if let Some(services) = r.systemd_services {
            let script_keys = [
                ("interpreter", r.interpreter.is_some()),
                ("content", r.content.is_some()),
                ("path", r.path.is_some()),
                ("arguments", r.arguments.is_some()),
                ("environmentVariables", r.environment_variables.is_some()),
            ];
            if let Some((key, _)) = script_keys.iter().find(|(_, set)| *set) {
                return Err(de::Error::custom(format!(
                    "`{key}` is not allowed in a systemd health check (one with \
                     `systemdServices`)"
                )));
            }
            let timeout_seconds = r
                .timeout_seconds
                .ok_or_else(|| de::Error::missing_field("timeoutSeconds"))?;
            Ok(Check::SystemdCheck(SystemdCheck {
                name: r.name,
                systemd_services: services,
                timeout_seconds,
                run_on: r.run_on,
            }))
        } else {
            if r.timeout_seconds.is_some() {
                return Err(de::Error::custom(
                    "`timeoutSeconds` is only allowed in a systemd health check (one with \
                     `systemdServices`)",
                ));
            }
            Ok(Check::Script(Script {
                name: r.name,
                run_on: r.run_on,
                interpreter: r.interpreter,
                content: r.content,
                path: r.path,
                arguments: r.arguments.unwrap_or_default(),
                environment_variables: r.environment_variables.unwrap_or_default(),
            }))
        }
    }
}

impl Serialize for Check {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Check::Script(script) => script.serialize(s),
            Check::SystemdCheck(check) => check.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_kind_is_decided_by_systemd_services() {
        let checks: Vec<Check> = serde_yaml::from_str(
            "- {name: a, runOn: [all], content: 'true'}\n\
             - {name: b, runOn: [ab-update], systemdServices: [sshd], timeoutSeconds: 5}\n",
        )
        .unwrap();
        assert!(matches!(&checks[0], Check::Script(s) if s.content.as_deref() == Some("true")));
        assert!(
            matches!(&checks[1], Check::SystemdCheck(c) if c.timeout_seconds == 5 && c.systemd_services == ["sshd"])
        );
        let back: Vec<Check> =
            serde_yaml::from_str(&serde_yaml::to_string(&checks).unwrap()).unwrap();
        assert_eq!(back, checks);
    }

    #[test]
    fn check_rejects_mixed_keys() {
        let e = serde_yaml::from_str::<Check>(
            "{name: b, systemdServices: [x], timeoutSeconds: 5, content: hi}",
        )
        .unwrap_err();
        assert!(e.to_string().contains("`content` is not allowed"), "{e}");
        let e =
            serde_yaml::from_str::<Check>("{name: b, content: hi, timeoutSeconds: 5}").unwrap_err();
        assert!(e.to_string().contains("timeoutSeconds"), "{e}");
        let e = serde_yaml::from_str::<Check>("{name: b, systemdServices: [x]}").unwrap_err();
        assert!(e.to_string().contains("timeoutSeconds"), "{e}");
        let e = serde_yaml::from_str::<Check>("{name: b, bogus: 1}").unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn run_on_selection() {
        let s = Script {
            run_on: vec![ServicingTypeSelection::CleanInstall],
            ..Default::default()
        };
        assert!(s.should_run(ServicingType::CleanInstall));
        assert!(!s.should_run(ServicingType::AbUpdate));
        let all = Script {
            run_on: vec![ServicingTypeSelection::All],
            ..Default::default()
        };
        assert!(all.should_run(ServicingType::RuntimeUpdate));
        assert!(!Script::default().should_run(ServicingType::CleanInstall));
        let c = Check::Script(all);
        assert!(!c.should_run(ServicingType::RuntimeUpdate));
        assert!(c.should_run(ServicingType::AbUpdate));
    }
}
