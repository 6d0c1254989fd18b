//! Open a COSI source from a URL or a path.

use crate::cosi::http::HttpSource;
use crate::cosi::oci::OciSource;
use crate::cosi::source::{FileSource, Source, SourceOptions};
use crate::error::TridentError;
use anyhow::{Context, Result};

/// Open `url_or_path`: `file:///abs/path` or a plain path, `http(s)://...`, or
/// `oci://registry/repo:tag` / `oci://registry/repo@sha256:...`.
pub fn open_source(url_or_path: &str, opts: &SourceOptions) -> Result<Box<dyn Source>> {
    let s = url_or_path.trim();
    if let Some(path) = s.strip_prefix("file://") {
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            // file://localhost/abs/path
            match path.split_once('/') {
                Some(("localhost", rest)) => format!("/{rest}"),
                _ => {
                    return Err(anyhow::Error::new(TridentError::invalid_input(
                        "source-url-invalid",
                        format!("'{s}': file:// URLs must name an absolute local path"),
                    )))
                }
            }
        };
        return Ok(Box::new(FileSource::new(&path)?));
    }
    if is_http(s) {
        return Ok(Box::new(HttpSource::open(s, opts).with_context(|| {
            format!("opening {}", crate::cosi::http::redact(s))
        })?));
    }
    if s.starts_with("oci://") {
        return Ok(Box::new(OciSource::open(s, opts)?));
    }
    if let Some((scheme, _)) = s.split_once("://") {
        return Err(anyhow::Error::new(TridentError::unsupported(
            "source-scheme-unsupported",
            format!("'{s}': unsupported URL scheme '{scheme}' (use file://, http(s):// or oci://)"),
        )));
    }
    Ok(Box::new(FileSource::new(s)?))
}

/// Whether [`open_source`] would fetch `url_or_path` over the network (http(s), oci).
pub fn is_remote(url_or_path: &str) -> bool {
    let s = url_or_path.trim();
    is_http(s) || s.starts_with("oci://")
}

fn is_http(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_paths_and_file_urls() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.cosi");
        std::fs::write(&p, b"hello").unwrap();
        let o = SourceOptions::default();
        for u in [p.display().to_string(), format!("file://{}", p.display())] {
            let s = open_source(&u, &o).unwrap();
            assert_eq!(s.size().unwrap(), 5);
            assert_eq!(s.read_exact_at(1, 3).unwrap(), b"ell");
        }
        let e = open_source("ftp://x/y", &o).err().unwrap();
        assert!(e.to_string().contains("source-scheme-unsupported"), "{e}");
        assert!(open_source("file://other/x", &o).is_err());
        assert!(open_source(&dir.path().join("missing").display().to_string(), &o).is_err());
    }

    #[test]
    fn remote_sources() {
        for u in [
            "https://h/a.cosi",
            "http://h/a",
            "oci://r/os:1",
            " https://h/x",
        ] {
            assert!(is_remote(u), "{u}");
        }
        for u in ["file:///a.cosi", "/srv/a.cosi", "a.cosi", "ftp://h/a"] {
            assert!(!is_remote(u), "{u}");
        }
    }
}
