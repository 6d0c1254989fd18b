//! Static validation of a [`HostConfiguration`]: every rule runs and every error is
//! collected, so a user fixes a document in one round.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{
    is_sha384_hex, url_scheme, Check, Extension, HostConfiguration, ImageSha384, Script,
    SelinuxMode, ServicingTypeSelection, SshMode, User, Warning, CONFEXT_DIRS, DEFAULT_CONFEXT_DIR,
    DEFAULT_SYSEXT_DIR, SYSEXT_DIRS,
};
use crate::error::{TridentError, TridentErrors};

mod graph;
mod storage;

/// Collects errors and warnings.
#[derive(Default)]
pub(super) struct Ctx {
    errors: Vec<TridentError>,
    warnings: Vec<Warning>,
}

impl Ctx {
    fn invalid(&mut self, code: &str, path: impl AsRef<str>, message: impl Into<String>) {
        self.errors
            .push(TridentError::invalid_input(code, message).at(path.as_ref()));
    }

    fn unsupported(&mut self, code: &str, path: impl AsRef<str>, message: impl Into<String>) {
        self.errors
            .push(TridentError::unsupported(code, message).at(path.as_ref()));
    }

    fn warn(&mut self, code: &str, path: impl AsRef<str>, message: impl Into<String>) {
        self.warnings.push(Warning {
            code: code.to_owned(),
            path: path.as_ref().to_owned(),
            message: message.into(),
            line: None,
            column: None,
        });
    }
}

pub(super) fn validate(hc: &HostConfiguration) -> Result<Vec<Warning>, TridentErrors> {
    let mut cx = Ctx::default();
    let graph = storage::check(hc, &mut cx);
    check_image(hc, &mut cx);
    check_datastore(hc, &graph, &mut cx);
    check_scripts(hc, &mut cx);
    check_health(hc, &mut cx);
    check_os(hc, &graph, &mut cx);
    check_management_os(hc, &mut cx);
    if cx.errors.is_empty() {
        for w in &cx.warnings {
            tracing::debug!(code = %w.code, path = %w.path, "{}", w.message);
        }
        Ok(cx.warnings)
    } else {
        Err(TridentErrors(cx.errors))
    }
}

fn check_image(hc: &HostConfiguration, cx: &mut Ctx) {
    let Some(image) = &hc.image else { return };
    match url_scheme(&image.url) {
        Some("http" | "https" | "oci") => {}
        Some("file") => {
            if !image.url["file://".len()..].starts_with('/') {
                cx.invalid(
                    "invalid-image-url",
                    "image.url",
                    format!(
                        "file URL '{}' must name an absolute path (file:///...)",
                        image.url
                    ),
                );
            }
        }
        Some(other) => cx.unsupported(
            "unsupported-image-url-scheme",
            "image.url",
            format!(
                "image URL scheme '{other}' is not supported; use file://, http://, https:// \
                 or oci://"
            ),
        ),
        None => cx.invalid(
            "invalid-image-url",
            "image.url",
            format!(
                "'{}' is not a URL (expected e.g. https://host/os.cosi)",
                image.url
            ),
        ),
    }
    match &image.sha384 {
        ImageSha384::Ignored => cx.warn(
            "image-checksum-ignored",
            "image.sha384",
            "the image metadata checksum is not verified (sha384: ignored); any image at \
             the URL will be installed",
        ),
        ImageSha384::Checksum(c) if !is_sha384_hex(c) => cx.invalid(
            "invalid-sha384",
            "image.sha384",
            format!("'{c}' is not a SHA-384 digest: expected 96 hex digits or the word 'ignored'"),
        ),
        ImageSha384::Checksum(_) => {}
    }
}

fn check_datastore(hc: &HostConfiguration, graph: &graph::Graph, cx: &mut Ctx) {
    if hc.trident.disable {
        return;
    }
    if hc.trident.enable_grpc {
        cx.warn(
            "grpc-not-available",
            "trident.enableGrpc",
            "this agent has no gRPC server; it is controlled over D-Bus (io.trident.Trident1) \
             and the trident CLI",
        );
    }
    let path = hc.trident.datastore_path();
    let yaml_path = "trident.datastorePath";
    if !path.is_absolute() {
        cx.invalid(
            "path-not-absolute",
            yaml_path,
            format!("datastore path '{}' must be absolute", path.display()),
        );
        return;
    }
    if path.extension().and_then(|e| e.to_str()) != Some("sqlite") {
        cx.invalid(
            "invalid-datastore-path",
            yaml_path,
            format!("datastore path '{}' must end in .sqlite", path.display()),
        );
    }
    let st = &hc.storage;
    if st.filesystems.is_empty() {
        return;
    }
    let Some(fs) = st.filesystem_holding(path) else {
        cx.invalid(
            "datastore-not-on-mount",
            yaml_path,
            format!(
                "datastore path '{}' is not under any declared mount point",
                path.display()
            ),
        );
        return;
    };
    let mount = fs
        .mount_path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if fs.device_id.as_deref().is_some_and(|d| graph.is_ab(d)) {
        cx.invalid(
            "datastore-on-ab-volume",
            yaml_path,
            format!(
                "datastore path '{}' is on {mount}, an A/B volume; the datastore must be on a \
                 volume shared by both OS instances (e.g. a separate /var/lib/trident partition)",
                path.display()
            ),
        );
    }
    if fs.is_read_only() {
        cx.invalid(
            "datastore-on-read-only-mount",
            yaml_path,
            format!(
                "datastore path '{}' is on {mount}, which is mounted read-only",
                path.display()
            ),
        );
    }
    if fs.effective_type() == Some(super::FileSystemType::Tmpfs) {
        cx.invalid(
            "datastore-on-tmpfs",
            yaml_path,
            format!(
                "datastore path '{}' is on {mount}, a tmpfs; its history would be lost at reboot",
                path.display()
            ),
        );
    }
}

/// Rules shared by hook scripts and script health checks.
fn check_script(s: &Script, base: &str, cx: &mut Ctx) {
    if s.name.trim().is_empty() {
        cx.invalid(
            "missing-script-name",
            format!("{base}.name"),
            "the script needs a name (used in logs and status)",
        );
    }
    match (&s.content, &s.path) {
        (Some(_), Some(_)) => cx.invalid(
            "script-source-conflict",
            base,
            format!(
                "script '{}' has both content and path; give exactly one",
                s.name
            ),
        ),
        (None, None) => cx.invalid(
            "missing-script-source",
            base,
            format!(
                "script '{}' has neither content nor path; give exactly one",
                s.name
            ),
        ),
        (None, Some(p)) if !p.is_absolute() => cx.invalid(
            "path-not-absolute",
            format!("{base}.path"),
            format!("script path '{}' must be absolute", p.display()),
        ),
        _ => {}
    }
    if s.run_on.is_empty() {
        cx.invalid(
            "empty-run-on",
            format!("{base}.runOn"),
            format!(
                "script '{}' has an empty runOn and would never run; list the servicing \
                 types (clean-install, ab-update, runtime-update, all), or remove the script",
                s.name
            ),
        );
    }
    if let Some(i) = &s.interpreter {
        if i.as_os_str().is_empty() {
            cx.invalid(
                "invalid-interpreter",
                format!("{base}.interpreter"),
                "the interpreter must not be empty",
            );
        }
    }
    for key in s.environment_variables.keys() {
        let valid = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            cx.invalid(
                "invalid-environment-variable",
                format!("{base}.environmentVariables.{key}"),
                format!(
                    "'{key}' is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
                ),
            );
        }
    }
}

fn check_scripts(hc: &HostConfiguration, cx: &mut Ctx) {
    for (key, scripts) in hc.scripts.hooks() {
        for (i, s) in scripts.iter().enumerate() {
            check_script(s, &format!("scripts.{key}[{i}]"), cx);
        }
    }
}

fn check_health(hc: &HostConfiguration, cx: &mut Ctx) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, check) in hc.health.checks.iter().enumerate() {
        let base = format!("health.checks[{i}]");
        match check {
            Check::Script(s) => check_script(s, &base, cx),
            Check::SystemdCheck(c) => {
                if c.name.trim().is_empty() {
                    cx.invalid(
                        "missing-check-name",
                        format!("{base}.name"),
                        "the check needs a name",
                    );
                }
                if c.systemd_services.is_empty() {
                    cx.invalid(
                        "empty-systemd-services",
                        format!("{base}.systemdServices"),
                        format!("systemd check '{}' lists no services", c.name),
                    );
                }
                if c.systemd_services.iter().any(|s| s.trim().is_empty()) {
                    cx.invalid(
                        "empty-systemd-services",
                        format!("{base}.systemdServices"),
                        format!("systemd check '{}' lists an empty service name", c.name),
                    );
                }
                if c.timeout_seconds == 0 {
                    cx.invalid(
                        "invalid-timeout",
                        format!("{base}.timeoutSeconds"),
                        format!("systemd check '{}' needs a timeout above 0 seconds", c.name),
                    );
                }
                if c.run_on.is_empty() {
                    cx.invalid(
                        "empty-run-on",
                        format!("{base}.runOn"),
                        format!(
                            "health check '{}' has an empty runOn and would never run; list \
                             clean-install, ab-update or all",
                            c.name
                        ),
                    );
                }
            }
        }
        let run_on = check.run_on();
        if !run_on.is_empty()
            && run_on
                .iter()
                .all(|s| *s == ServicingTypeSelection::RuntimeUpdate)
        {
            cx.warn(
                "health-check-never-runs",
                format!("{base}.runOn"),
                format!(
                    "health check '{}' only selects runtime-update, but health checks run only \
                     for clean-install and ab-update; it will never run",
                    check.name()
                ),
            );
        }
        if !check.name().trim().is_empty() {
            if let Some(first) = names.insert(check.name(), i) {
                cx.invalid(
                    "duplicate-check-name",
                    format!("{base}.name"),
                    format!(
                        "health check name '{}' is already used by health.checks[{first}]",
                        check.name()
                    ),
                );
            }
        }
    }
}

fn valid_username(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= 32
        && (first.is_ascii_lowercase() || first == '_')
        && name
            .trim_end_matches('$')
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn check_users(users: &[User], base: &str, cx: &mut Ctx) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, u) in users.iter().enumerate() {
        let path = format!("{base}[{i}]");
        if !valid_username(&u.name) {
            cx.invalid(
                "invalid-username",
                format!("{path}.name"),
                format!(
                    "'{}' is not a valid user name (lower-case letters, digits, '_' and '-', \
                     starting with a letter or '_', at most 32 characters)",
                    u.name
                ),
            );
        }
        if let Some(first) = seen.insert(&u.name, i) {
            cx.invalid(
                "duplicate-username",
                format!("{path}.name"),
                format!("user '{}' is already declared at {base}[{first}]", u.name),
            );
        }
        if u.ssh_mode == SshMode::Block && !u.ssh_public_keys.is_empty() {
            cx.warn(
                "ssh-keys-with-ssh-blocked",
                format!("{path}.sshMode"),
                format!(
                    "user '{}' has SSH keys but sshMode is block (the default), so SSH login \
                     stays disabled; set sshMode: key-only to use the keys",
                    u.name
                ),
            );
        }
        if u.ssh_mode == SshMode::KeyOnly && u.ssh_public_keys.is_empty() {
            cx.warn(
                "ssh-key-only-without-keys",
                format!("{path}.sshPublicKeys"),
                format!("user '{}' allows key-only SSH but lists no keys", u.name),
            );
        }
        if let Some(h) = &u.home_directory {
            if !h.is_absolute() {
                cx.invalid(
                    "path-not-absolute",
                    format!("{path}.homeDirectory"),
                    format!("home directory '{}' must be absolute", h.display()),
                );
            }
        }
    }
}

fn check_netplan(netplan: &serde_yaml::Value, base: &str, cx: &mut Ctx) {
    let Some(map) = netplan.as_mapping() else {
        cx.invalid(
            "invalid-netplan",
            base,
            "netplan configuration must be a mapping",
        );
        return;
    };
    match map.get("version") {
        Some(v) if v.as_u64() == Some(2) => {}
        Some(v) => cx.invalid(
            "invalid-netplan-version",
            format!("{base}.version"),
            format!(
                "netplan version must be 2, got {}",
                serde_yaml::to_string(v).unwrap_or_default().trim()
            ),
        ),
        None => cx.invalid(
            "invalid-netplan-version",
            base,
            "netplan configuration needs 'version: 2'",
        ),
    }
    if let Some(r) = map.get("renderer").and_then(|r| r.as_str()) {
        if r == "NetworkManager" {
            cx.unsupported(
                "unsupported-netplan-renderer",
                format!("{base}.renderer"),
                "the NetworkManager renderer is not supported; use networkd",
            );
        }
    }
    for section in [
        "ethernets",
        "bridges",
        "bonds",
        "vlans",
        "wifis",
        "tunnels",
        "dummy-devices",
        "vrfs",
    ] {
        let Some(devices) = map.get(section).and_then(|d| d.as_mapping()) else {
            continue;
        };
        for id in devices.keys() {
            let name = id.as_str().unwrap_or("");
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_graphic())
                && !name.contains(['*', '?', '[', ']']);
            if !valid {
                cx.invalid(
                    "invalid-netplan-interface",
                    format!("{base}.{section}"),
                    format!(
                        "netplan interface id '{name}' is invalid (no spaces or glob characters; \
                         use match: to select interfaces by pattern)"
                    ),
                );
            }
        }
    }
}

fn check_extensions(
    exts: &[Extension],
    key: &str,
    default_dir: &str,
    dirs: &[&str],
    hc: &HostConfiguration,
    graph: &graph::Graph,
    cx: &mut Ctx,
) {
    let mut hashes: HashMap<String, usize> = HashMap::new();
    let mut paths: HashSet<&Path> = HashSet::new();
    for (i, e) in exts.iter().enumerate() {
        let base = format!("os.{key}[{i}]");
        if !matches!(url_scheme(&e.url), Some("file" | "http" | "https" | "oci")) {
            cx.invalid(
                "invalid-extension-url",
                format!("{base}.url"),
                format!("'{}' is not a file://, http(s):// or oci:// URL", e.url),
            );
        }
        if !is_sha384_hex(&e.sha384) {
            cx.invalid(
                "invalid-sha384",
                format!("{base}.sha384"),
                format!("'{}' is not a SHA-384 digest (96 hex digits)", e.sha384),
            );
        } else if let Some(first) = hashes.insert(e.sha384.to_ascii_lowercase(), i) {
            cx.invalid(
                "duplicate-extension",
                format!("{base}.sha384"),
                format!("the same image is already listed at os.{key}[{first}]"),
            );
        }
        let dir = match &e.path {
            None => Path::new(default_dir),
            Some(p) => {
                let ok_dir = p
                    .parent()
                    .is_some_and(|d| dirs.iter().any(|v| d == Path::new(v)));
                if p.extension().and_then(|x| x.to_str()) != Some("raw") || !ok_dir {
                    cx.invalid(
                        "invalid-extension-path",
                        format!("{base}.path"),
                        format!(
                            "'{}' must be a .raw file directly in one of {}",
                            p.display(),
                            dirs.join(", ")
                        ),
                    );
                }
                if !paths.insert(p) {
                    cx.invalid(
                        "duplicate-extension",
                        format!("{base}.path"),
                        format!("another image is already placed at {}", p.display()),
                    );
                }
                p.parent().unwrap_or(Path::new("/"))
            }
        };
        if hc.storage.ab_update.is_some() && !hc.storage.filesystems.is_empty() {
            let on_ab = hc
                .storage
                .filesystem_holding(dir)
                .and_then(|fs| fs.device_id.as_deref())
                .is_some_and(|d| graph.is_ab(d));
            if !on_ab {
                cx.invalid(
                    "extension-not-on-ab-volume",
                    format!("{base}.path"),
                    format!(
                        "{} is not on an A/B volume; with A/B updates, extension images must \
                         live on A/B volumes so each OS instance keeps its own",
                        dir.display()
                    ),
                );
            }
        }
    }
}

fn check_os(hc: &HostConfiguration, graph: &graph::Graph, cx: &mut Ctx) {
    let os = &hc.os;
    check_users(&os.users, "os.users", cx);
    if let Some(n) = &os.netplan {
        check_netplan(n, "os.netplan", cx);
    }
    if let Some(h) = &os.hostname {
        let valid = !h.is_empty()
            && h.len() <= 64
            && h.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid {
            cx.invalid(
                "invalid-hostname",
                "os.hostname",
                format!(
                    "'{h}' is not a valid hostname (letters, digits and '-', dot-separated, at \
                     most 64 characters)"
                ),
            );
        }
    }
    for (i, f) in os.additional_files.iter().enumerate() {
        let base = format!("os.additionalFiles[{i}]");
        if !f.destination.is_absolute() {
            cx.invalid(
                "path-not-absolute",
                format!("{base}.destination"),
                format!("destination '{}' must be absolute", f.destination.display()),
            );
        }
        match (&f.content, &f.source) {
            (Some(_), Some(_)) => cx.invalid(
                "file-source-conflict",
                base.clone(),
                format!(
                    "additional file {} has both content and source; give exactly one",
                    f.destination.display()
                ),
            ),
            (None, None) => cx.invalid(
                "missing-file-source",
                base.clone(),
                format!(
                    "additional file {} has neither content nor source; give exactly one",
                    f.destination.display()
                ),
            ),
            _ => {}
        }
        if let Some(p) = &f.permissions {
            if f.mode().is_none() {
                cx.invalid(
                    "invalid-file-permissions",
                    format!("{base}.permissions"),
                    format!(
                        "permissions '{p}' must be a quoted octal string starting with 0, such \
                         as '0644' (at most 07777)"
                    ),
                );
            }
        }
    }
    let enabled: HashSet<&str> = os.services.enable.iter().map(String::as_str).collect();
    for (i, s) in os.services.disable.iter().enumerate() {
        if enabled.contains(s.as_str()) {
            cx.invalid(
                "conflicting-service-state",
                format!("os.services.disable[{i}]"),
                format!("service '{s}' is listed in both enable and disable"),
            );
        }
    }
    let mut modules: HashMap<&str, usize> = HashMap::new();
    for (i, m) in os.modules.iter().enumerate() {
        if m.name.trim().is_empty() {
            cx.invalid(
                "invalid-module-name",
                format!("os.modules[{i}].name"),
                "module name is empty",
            );
        } else if let Some(first) = modules.insert(&m.name, i) {
            cx.invalid(
                "duplicate-module",
                format!("os.modules[{i}].name"),
                format!(
                    "module '{}' is already configured at os.modules[{first}]",
                    m.name
                ),
            );
        }
    }
    check_extensions(
        &os.sysexts,
        "sysexts",
        DEFAULT_SYSEXT_DIR,
        &SYSEXT_DIRS,
        hc,
        graph,
        cx,
    );
    check_extensions(
        &os.confexts,
        "confexts",
        DEFAULT_CONFEXT_DIR,
        &CONFEXT_DIRS,
        hc,
        graph,
        cx,
    );
    let selinux_on = matches!(
        os.selinux.mode,
        Some(SelinuxMode::Permissive | SelinuxMode::Enforcing)
    );
    if selinux_on && !(os.sysexts.is_empty() && os.confexts.is_empty()) {
        cx.warn(
            "selinux-with-extensions",
            "os.selinux.mode",
            "SELinux with sysexts/confexts is not supported; set the mode to disabled",
        );
    }
    let root_on_verity = hc
        .storage
        .root_filesystem()
        .and_then(|fs| fs.device_id.as_deref())
        .is_some_and(|d| graph.kind(d) == Some(graph::Kind::VerityDevice));
    if root_on_verity && selinux_on {
        cx.warn(
            "selinux-with-root-verity",
            "os.selinux.mode",
            "SELinux with root verity works only with UKI-based images",
        );
    }
}

fn check_management_os(hc: &HostConfiguration, cx: &mut Ctx) {
    check_users(&hc.management_os.users, "managementOs.users", cx);
    if let Some(n) = &hc.management_os.netplan {
        check_netplan(n, "managementOs.netplan", cx);
    }
}
