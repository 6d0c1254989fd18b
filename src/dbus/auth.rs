//! Who may call a mutating method: the *caller* is identified from the message
//! header's sender, never from the daemon's own process.
//!
//! - On a bus: the caller's uid from `org.freedesktop.DBus.GetConnectionUnixUser`;
//!   uid 0 is allowed; anyone else is allowed only if polkit says so for the action
//!   `io.trident.Trident1.<verb>` with subject `system-bus-name` = the caller's
//!   unique name. No polkit on the bus (or any polkit error) → denied.
//! - On a peer-to-peer connection (tests, `--address` without a bus): the uid of the
//!   socket's peer; only root is allowed (there is no bus name to ask polkit about).

use std::collections::HashMap;

use zbus::message::{Flags, Header};
use zbus::zvariant::Value;
use zbus::Connection;

use super::error::Error;

/// Prefix of the polkit action ids: `io.trident.Trident1.stage`, ...
pub const POLKIT_ACTION_PREFIX: &str = "io.trident.Trident1.";

/// polkit's `CheckAuthorization` flag letting an authentication agent ask the user.
const POLKIT_ALLOW_USER_INTERACTION: u32 = 1;

/// The polkit action id for a verb (`stage` → `io.trident.Trident1.stage`).
pub fn action_id(verb: &str) -> String {
    format!("{POLKIT_ACTION_PREFIX}{verb}")
}

/// Authorize the sender of the message with `header` for `verb`.
pub async fn authorize(conn: &Connection, header: &Header<'_>, verb: &str) -> Result<(), Error> {
    match header.sender() {
        Some(sender) => authorize_bus_caller(conn, header, sender.as_str(), verb).await,
        None => authorize_peer(conn, verb).await,
    }
}

async fn authorize_peer(conn: &Connection, verb: &str) -> Result<(), Error> {
    let creds = conn
        .peer_creds()
        .await
        .map_err(|e| Error::unauthorized(verb, &format!("cannot read peer credentials: {e}")))?;
    match creds.unix_user_id() {
        Some(0) => Ok(()),
        Some(uid) => Err(Error::unauthorized(
            verb,
            &format!("peer uid {uid} is not root (no polkit on a peer-to-peer connection)"),
        )),
        None => Err(Error::unauthorized(verb, "peer uid unknown")),
    }
}

async fn authorize_bus_caller(
    conn: &Connection,
    header: &Header<'_>,
    sender: &str,
    verb: &str,
) -> Result<(), Error> {
    let dbus = zbus::fdo::DBusProxy::new(conn)
        .await
        .map_err(|e| Error::unauthorized(verb, &format!("cannot reach the bus: {e}")))?;
    let name = zbus::names::BusName::try_from(sender)
        .map_err(|e| Error::unauthorized(verb, &format!("bad sender name: {e}")))?;
    let uid = dbus
        .get_connection_unix_user(name)
        .await
        .map_err(|e| Error::unauthorized(verb, &format!("cannot identify {sender}: {e}")))?;
    if uid == 0 {
        tracing::debug!(sender, verb, "authorized: root");
        return Ok(());
    }
    let interactive = header
        .primary()
        .flags()
        .contains(Flags::AllowInteractiveAuth);
    match check_polkit(conn, sender, &action_id(verb), interactive).await {
        Ok(true) => {
            tracing::info!(sender, uid, verb, "authorized by polkit");
            Ok(())
        }
        Ok(false) => {
            tracing::warn!(sender, uid, verb, "refused by polkit");
            Err(Error::unauthorized(
                verb,
                &format!(
                    "uid {uid} is not root and polkit denied {}",
                    action_id(verb)
                ),
            ))
        }
        Err(e) => {
            tracing::warn!(sender, uid, verb, error = %e, "polkit unavailable: refusing");
            Err(Error::unauthorized(
                verb,
                &format!("uid {uid} is not root and polkit could not be asked ({e})"),
            ))
        }
    }
}

/// `org.freedesktop.PolicyKit1.Authority.CheckAuthorization` for the bus name
/// `sender`; `Ok(is_authorized)`.
async fn check_polkit(
    conn: &Connection,
    sender: &str,
    action: &str,
    interactive: bool,
) -> zbus::Result<bool> {
    let mut subject_details: HashMap<&str, Value<'_>> = HashMap::new();
    subject_details.insert("name", Value::from(sender));
    let subject = ("system-bus-name", subject_details);
    let details: HashMap<&str, &str> = HashMap::new();
    let flags = if interactive {
        POLKIT_ALLOW_USER_INTERACTION
    } else {
        0
    };
    let reply = conn
        .call_method(
            Some("org.freedesktop.PolicyKit1"),
            "/org/freedesktop/PolicyKit1/Authority",
            Some("org.freedesktop.PolicyKit1.Authority"),
            "CheckAuthorization",
            &(subject, action, details, flags, ""),
        )
        .await?;
    let (is_authorized, _is_challenge, _details): (bool, bool, HashMap<String, String>) =
        reply.body().deserialize()?;
    Ok(is_authorized)
}
