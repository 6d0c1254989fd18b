//! Whether `trident-stage.service` waits for the network (`docs/units.md`, "Network").
//!
//! The packaged unit orders itself only after `network.target`. Waiting for
//! `network-online.target` is right when the image comes over HTTP(S) or from an OCI
//! registry, and wrong when it is a local file: on a host whose network never comes
//! online (an offline site, a machine updated from local media) every stage would start
//! only after the wait-online service gives up (120 s with systemd-networkd). So on
//! every boot and `daemon-reload` the generator reads the image URL of what the unit
//! would stage — the host's configuration and a persistent D-Bus request — and adds
//! `Wants=`/`After=network-online.target` unless every one of them is local. A file it
//! cannot read or parse counts as remote: waiting too long is safe, starting too early
//! is not. (A request that arrives later over D-Bus finds the network up in practice;
//! the HTTP source retries a failed connection in any case.)

use super::decide::Marker;
use std::path::Path;

/// What the unit may stage from, relative to the root (the unit's `--request` /
/// `--config` paths that survive a reboot).
pub const STAGE_SOURCES: [&str; 2] = [
    "etc/trident/config.yaml",
    "var/lib/trident/requests/stage.yaml",
];

/// The drop-in body that makes staging wait for the network.
pub const NETWORK_DROPIN: &str = "# The image to stage comes over the network.\n[Unit]\nWants=network-online.target\nAfter=network-online.target\n";

/// `image.url` of a Host Configuration document; `Ok(None)` when it has none.
pub fn image_url(yaml: &str) -> Result<Option<String>, String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
    match doc.get("image").and_then(|i| i.get("url")) {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(serde_yaml::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("image.url is not a string: {other:?}")),
    }
}

/// Read the image URL of one stage source.
pub fn read_source(path: &Path) -> Marker<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => match image_url(&text) {
            Ok(url) => Marker::Present(url),
            Err(e) => Marker::Invalid(format!("{}: {e}", path.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Marker::Absent,
        Err(e) => Marker::Invalid(format!("{}: {e}", path.display())),
    }
}

/// A local image: a `file:` URL or a plain absolute path.
pub fn is_local(url: &str) -> bool {
    let url = url.trim();
    url.starts_with('/')
        || url
            .split_once(':')
            .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("file"))
}

/// Whether staging must wait for the network, and why (for the kernel log).
pub fn stage_needs_network(sources: &[(&str, Marker<Option<String>>)]) -> (bool, String) {
    for (name, m) in sources {
        match m {
            Marker::Invalid(e) => {
                return (
                    true,
                    format!("cannot read the image URL ({e}): assuming remote"),
                )
            }
            Marker::Present(Some(url)) if !is_local(url) => {
                return (true, format!("{name} stages from {url}"))
            }
            _ => {}
        }
    }
    (false, "no configured image comes over the network".into())
}
