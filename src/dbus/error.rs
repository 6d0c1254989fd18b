//! The D-Bus errors of `io.trident.Trident1` (`io.trident.Trident1.Error.*`).
//!
//! Every message starts with the category and stable code of the Trident error it
//! stands for (`invalid-input [duplicate-mount-point] at ...: ...`), one line per
//! error, so a client can both show it and act on the code.

use crate::error::{Category, TridentError, TridentErrors};

/// Error names are `io.trident.Trident1.Error.<Variant>`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "io.trident.Trident1.Error")]
pub enum Error {
    /// Transport-level failure (not sent by the service itself).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The Host Configuration or the options are wrong.
    InvalidInput(String),
    /// Another servicing operation is running.
    Busy(String),
    /// The host has not been provisioned by Trident (no datastore, or state
    /// `not-provisioned`) and the operation needs it.
    NotProvisioned(String),
    /// The caller may not call this method.
    Unauthorized(String),
    /// Anything else that went wrong; the message carries the category and code.
    Failed(String),
}

impl Error {
    /// The short name after the prefix (`InvalidInput`, ...), for logs.
    pub fn short_name(&self) -> &'static str {
        match self {
            Error::ZBus(_) => "ZBus",
            Error::InvalidInput(_) => "InvalidInput",
            Error::Busy(_) => "Busy",
            Error::NotProvisioned(_) => "NotProvisioned",
            Error::Unauthorized(_) => "Unauthorized",
            Error::Failed(_) => "Failed",
        }
    }

    /// `busy` error naming what runs and who asked for it.
    pub fn busy(operation: &str, caller: &str) -> Error {
        Error::Busy(format!(
            "busy [servicing-in-progress]: {operation} is running (requested by {caller}); \
             wait for it to complete or call Cancel()"
        ))
    }

    /// `unauthorized` error for `verb`.
    pub fn unauthorized(verb: &str, why: &str) -> Error {
        Error::Unauthorized(format!(
            "unauthorized [not-authorized]: not allowed to call {verb}: {why}"
        ))
    }
}

/// Map one categorised error onto its D-Bus error.
impl From<TridentError> for Error {
    fn from(e: TridentError) -> Error {
        from_errors(std::slice::from_ref(&e))
    }
}

impl From<TridentErrors> for Error {
    fn from(es: TridentErrors) -> Error {
        from_errors(&es.0)
    }
}

/// Map an `anyhow` chain: the categorised error inside picks the D-Bus error, the
/// whole chain is the message.
impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        match crate::error::find_trident_error(&e) {
            // The chain names the code (a TridentError displays as `category [code]: ..`).
            Some(te) => map_named(&te, format!("{e:#}")),
            None => Error::Failed(format!("internal [internal-error]: {e:#}")),
        }
    }
}

fn from_errors(errors: &[TridentError]) -> Error {
    let Some(first) = errors.first() else {
        return Error::Failed("internal [internal-error]: empty error list".into());
    };
    let text = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    map_named(first, text)
}

fn map_named(first: &TridentError, text: String) -> Error {
    if first.code == "not-provisioned" {
        return Error::NotProvisioned(text);
    }
    match first.category {
        Category::InvalidInput => Error::InvalidInput(text),
        Category::UnsupportedConfiguration
        | Category::ExecutionEnvironment
        | Category::Servicing
        | Category::HealthChecks
        | Category::Internal => Error::Failed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::DBusError;

    #[test]
    fn names_carry_the_prefix() {
        let e = Error::busy("stage", ":1.7");
        assert_eq!(e.name().as_str(), "io.trident.Trident1.Error.Busy");
        assert!(e.description().unwrap().contains("stage is running"));
    }

    #[test]
    fn every_validation_error_is_a_line_with_its_code() {
        let es = TridentErrors(vec![
            TridentError::invalid_input("duplicate-mount-point", "/ is used twice")
                .at("storage.filesystems[1].mountPoint")
                .at_location(9, 7),
            TridentError::invalid_input("unknown-block-device", "no disk os"),
        ]);
        let e = Error::from(es);
        assert_eq!(e.name().as_str(), "io.trident.Trident1.Error.InvalidInput");
        let text = e.description().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("[duplicate-mount-point]"));
        assert!(lines[0].contains("line 9, column 7"));
        assert!(lines[1].contains("[unknown-block-device]"));
    }

    #[test]
    fn categories_map_to_names() {
        let np = Error::from(TridentError::environment("not-provisioned", "no datastore"));
        assert_eq!(np.short_name(), "NotProvisioned");
        let f = Error::from(TridentError::unsupported("engine-not-available", "x"));
        assert_eq!(f.short_name(), "Failed");
        assert!(f
            .description()
            .unwrap()
            .starts_with("unsupported-configuration [engine-not-available]"));
        let chained = anyhow::Error::new(TridentError::servicing("hash-mismatch", "bad image"))
            .context("staging update");
        let e = Error::from(chained);
        assert_eq!(e.short_name(), "Failed");
        assert!(e.description().unwrap().contains("[hash-mismatch]"));
        let plain = Error::from(anyhow::anyhow!("boom"));
        assert!(plain
            .description()
            .unwrap()
            .contains("[internal-error]: boom"));
    }
}
