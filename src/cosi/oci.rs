//! `oci://` sources: a COSI file stored as a one-layer OCI artifact in a registry
//! (OCI distribution API), and `trident cosi push`, which publishes one.
//!
//! References: `oci://registry[:port]/repo[/more]:tag` or
//! `oci://registry[:port]/repo@sha256:<hex>` (no tag means `latest`).
//!
//! Pulling: anonymous bearer token from the `WWW-Authenticate` challenge when the
//! registry answers 401; the manifest (or an image index, resolved to `linux/amd64`)
//! must list exactly one layer, which is the COSI file; reads are HTTP range reads on
//! that blob. A reference pinned by digest has the manifest's bytes checked against it;
//! a read of the whole blob has the blob checked against the layer digest.
//!
//! Registries on loopback (`localhost`, `127.0.0.1`, `[::1]`) are spoken to over plain
//! HTTP when [`SourceOptions::oci_insecure_loopback`] is set (the default); all others
//! over HTTPS.

use crate::cosi::http::{build_client, status_error, with_retries, HttpSource};
use crate::cosi::source::{Source, SourceOptions};
use crate::error::TridentError;
use anyhow::{bail, Context, Result};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;

/// `artifactType` of a COSI pushed by Trident (and media type of its one layer).
pub const COSI_ARTIFACT_TYPE: &str = "application/vnd.microsoft.azurelinux.cosi.v1";
/// Media type of the layer holding the COSI file.
pub const COSI_LAYER_MEDIA_TYPE: &str = "application/vnd.microsoft.azurelinux.cosi.v1.tar";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The architecture an image index is resolved to.
pub const ARCH: &str = "amd64";

/// A parsed `oci://` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`.
    pub registry: String,
    pub repository: String,
    /// A tag, or `sha256:<hex>` when pinned by digest.
    pub reference: String,
    pub pinned: bool,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            anyhow::Error::new(TridentError::invalid_input(
                "oci-reference-invalid",
                format!("'{s}' is not a valid oci:// reference: {why}"),
            ))
        };
        let rest = s
            .strip_prefix("oci://")
            .ok_or_else(|| bad("it must start with oci://"))?;
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("expected oci://registry/repository[:tag|@digest]"))?;
        if registry.is_empty() {
            return Err(bad("the registry is empty"));
        }
        let (repository, reference, pinned) = if let Some((repo, digest)) = path.split_once('@') {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| bad("only sha256 digests are supported"))?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("the digest must be sha256: followed by 64 hex digits"));
            }
            (repo.to_string(), digest.to_ascii_lowercase(), true)
        } else {
            // A ':' after the last '/' separates the tag.
            let last = path.rfind('/').map(|i| i + 1).unwrap_or(0);
            match path[last..].rfind(':') {
                Some(i) => (
                    path[..last + i].to_string(),
                    path[last + i + 1..].to_string(),
                    false,
                ),
                None => (path.to_string(), "latest".to_string(), false),
            }
        };
        let repo_ok = !repository.is_empty()
            && repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !repo_ok {
            return Err(bad("the repository must be lowercase path components"));
        }
        if reference.is_empty() {
            return Err(bad("the tag is empty"));
        }
        Ok(Self {
            registry: registry.to_string(),
            repository,
            reference,
            pinned,
        })
    }

    fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
            _ => self.registry.as_str(),
        };
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.pinned { '@' } else { ':' };
        write!(
            f,
            "oci://{}/{}{sep}{}",
            self.registry, self.repository, self.reference
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestOrIndex {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// A registry session for one repository: base URL, client and bearer token.
struct Registry {
    base: String,
    reference: Reference,
    client: Client,
    opts: SourceOptions,
    scope: &'static str,
    token: Mutex<Option<String>>,
}

impl Registry {
    fn new(reference: &Reference, opts: &SourceOptions, scope: &'static str) -> Result<Self> {
        let scheme = if reference.is_loopback() && opts.oci_insecure_loopback {
            "http"
        } else {
            "https"
        };
        Ok(Self {
            base: format!("{scheme}://{}", reference.registry),
            reference: reference.clone(),
            client: build_client(opts)?,
            opts: opts.clone(),
            scope,
            token: Mutex::new(None),
        })
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.reference.repository)
    }

    fn auth_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = self
            .token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                h.insert(AUTHORIZATION, v);
            }
        }
        h
    }

    /// Send a request; on 401 obtain an anonymous token from the challenge and retry
    /// once.
    fn send(&self, what: &str, build: impl Fn(&Client) -> RequestBuilder) -> Result<Response> {
        let attempt = || {
            with_retries(&self.opts, &self.reference.to_string(), what, || {
                build(&self.client).headers(self.auth_headers()).send()
            })
        };
        let resp = attempt()?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let token = self.fetch_token(&challenge)?;
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token);
        let resp = attempt()?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(self.unauthorized(&format!(
                "the registry refused the anonymous token for {what}"
            )));
        }
        Ok(resp)
    }

    fn unauthorized(&self, why: &str) -> anyhow::Error {
        anyhow::Error::new(TridentError::environment(
            "oci-unauthorized",
            format!(
                "{}: {why}; Trident pulls anonymously (bearer token from the registry's \
                 WWW-Authenticate challenge) and has no credentials to offer",
                self.reference
            ),
        ))
    }

    fn fetch_token(&self, challenge: &str) -> Result<String> {
        let params = parse_bearer_challenge(challenge).ok_or_else(|| {
            self.unauthorized(&format!(
                "the registry answered 401 without a usable Bearer challenge \
                 (WWW-Authenticate: '{challenge}')"
            ))
        })?;
        let realm = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| self.unauthorized("the Bearer challenge has no realm"))?;
        let mut url = reqwest::Url::parse(&realm)
            .with_context(|| format!("parsing token realm '{realm}'"))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some((_, s)) = params.iter().find(|(k, _)| k == "service") {
                q.append_pair("service", s);
            }
            let scope = params
                .iter()
                .find(|(k, _)| k == "scope")
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| {
                    format!("repository:{}:{}", self.reference.repository, self.scope)
                });
            q.append_pair("scope", &scope);
        }
        let resp = with_retries(&self.opts, url.as_str(), "GET token", || {
            self.client.get(url.clone()).send()
        })?;
        if !resp.status().is_success() {
            return Err(self.unauthorized(&format!(
                "the token endpoint {} answered {}",
                crate::cosi::http::redact(url.as_str()),
                resp.status()
            )));
        }
        #[derive(Deserialize)]
        struct Tok {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Tok = resp.json().context("parsing the registry token response")?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.unauthorized("the token endpoint returned no token"))
    }

    /// Fetch a manifest or index by tag or digest: `(bytes, content type)`.
    fn get_manifest(&self, reference: &str) -> Result<(Vec<u8>, Option<String>)> {
        let url = self.url(&format!("manifests/{reference}"));
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let resp = self.send("GET manifest", |c| c.get(&url).header(ACCEPT, &accept))?;
        if !resp.status().is_success() {
            return Err(status_error(&url, "GET manifest", resp.status()));
        }
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let bytes = resp
            .bytes()
            .with_context(|| format!("reading manifest {url}"))?;
        const MAX_MANIFEST: usize = 4 << 20;
        if bytes.len() > MAX_MANIFEST {
            bail!("manifest {url} is larger than {MAX_MANIFEST} bytes");
        }
        if reference.starts_with("sha256:") {
            check_digest(&self.reference, "manifest", reference, &bytes)?;
        }
        Ok((bytes.to_vec(), ct))
    }

    /// Resolve the reference to the single COSI layer.
    fn resolve_layer(&self) -> Result<Descriptor> {
        let (bytes, ct) = self.get_manifest(&self.reference.reference)?;
        let mut doc: ManifestOrIndex = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing the manifest of {}", self.reference))?;
        let is_index = |d: &ManifestOrIndex, ct: &Option<String>| {
            d.manifests.is_some()
                || [d.media_type.as_deref(), ct.as_deref()]
                    .iter()
                    .any(|m| matches!(m, Some(OCI_INDEX) | Some(DOCKER_LIST)))
        };
        if is_index(&doc, &ct) {
            let entries = doc.manifests.take().unwrap_or_default();
            let chosen = entries
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.architecture == ARCH && p.os == "linux")
                })
                .or_else(|| match entries.as_slice() {
                    [only] if only.platform.is_none() => Some(only),
                    _ => None,
                })
                .ok_or_else(|| {
                    anyhow::Error::new(TridentError::invalid_input(
                        "oci-no-matching-platform",
                        format!(
                            "the image index of {} has no manifest for linux/{ARCH}",
                            self.reference
                        ),
                    ))
                })?;
            let (bytes, _) = self.get_manifest(&chosen.digest)?;
            doc = serde_json::from_slice(&bytes).with_context(|| {
                format!("parsing manifest {} of {}", chosen.digest, self.reference)
            })?;
        }
        let layers = doc.layers.unwrap_or_default();
        if layers.len() != 1 {
            return Err(anyhow::Error::new(TridentError::invalid_input(
                "oci-layer-count",
                format!(
                    "{} has {} layers; a COSI artifact must have exactly one layer holding \
                     the COSI file",
                    self.reference,
                    layers.len()
                ),
            )));
        }
        let layer = layers.into_iter().next().expect("one layer");
        if !layer.digest.starts_with("sha256:") {
            bail!(
                "layer digest '{}' of {} is not a sha256 digest",
                layer.digest,
                self.reference
            );
        }
        Ok(layer)
    }
}

fn check_digest(reference: &Reference, what: &str, expected: &str, bytes: &[u8]) -> Result<()> {
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    if actual != expected {
        return Err(anyhow::Error::new(TridentError::servicing(
            "oci-digest-mismatch",
            format!("the {what} of {reference} has digest {actual}, expected {expected}"),
        )));
    }
    Ok(())
}

/// Parse `Bearer realm="...",service="...",scope="..."` into key/value pairs.
fn parse_bearer_challenge(h: &str) -> Option<Vec<(String, String)>> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut out = Vec::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.push((k, v));
        s = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(out)
}

/// A COSI file in an OCI registry.
pub struct OciSource {
    name: String,
    blob: HttpSource,
    digest: String,
}

impl OciSource {
    /// Resolve `oci://...` to its single layer and prepare range reads on the blob.
    pub fn open(reference: &str, opts: &SourceOptions) -> Result<Self> {
        let r = Reference::parse(reference)?;
        let reg = Registry::new(&r, opts, "pull")?;
        let layer = reg
            .resolve_layer()
            .with_context(|| format!("resolving {r}"))?;
        let url = reg.url(&format!("blobs/{}", layer.digest));
        tracing::info!(reference = %r, digest = %layer.digest, size = layer.size, "resolved OCI artifact");
        let blob = HttpSource::with_client(
            &url,
            reg.client.clone(),
            reg.auth_headers(),
            opts,
            Some(layer.size),
        )?
        .named(format!("{r} (blob {})", layer.digest));
        Ok(Self {
            name: r.to_string(),
            blob,
            digest: layer.digest,
        })
    }

    /// The layer (COSI file) digest, `sha256:<hex>`.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

impl Source for OciSource {
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn size(&self) -> Result<u64> {
        self.blob.size()
    }
    fn read_range(&self, offset: u64, len: u64) -> Result<Box<dyn Read + Send>> {
        let inner = self.blob.read_range(offset, len)?;
        if offset == 0 && len == self.blob.size()? {
            return Ok(Box::new(DigestReader {
                inner,
                hasher: Sha256::new(),
                expected: self.digest.clone(),
                name: self.name.clone(),
                done: false,
            }));
        }
        Ok(inner)
    }
}

/// Checks the blob digest when the whole blob has been read.
struct DigestReader {
    inner: Box<dyn Read + Send>,
    hasher: Sha256,
    expected: String,
    name: String,
    done: bool,
}

impl Read for DigestReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
        } else if !buf.is_empty() && !self.done {
            self.done = true;
            let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
            if actual != self.expected {
                return Err(std::io::Error::other(TridentError::servicing(
                    "oci-digest-mismatch",
                    format!(
                        "the blob of {} has digest {actual}, expected {}",
                        self.name, self.expected
                    ),
                )));
            }
        }
        Ok(n)
    }
}

/// Publish `file` (a COSI) as a one-layer OCI artifact at `reference`
/// (`oci://registry/repo:tag`). Returns the manifest digest (`sha256:<hex>`).
pub fn push(file: &Path, reference: &str, opts: &SourceOptions) -> Result<String> {
    push_artifact(&[file], reference, opts)
}

/// Publish files as the layers of one OCI artifact (the COSI layer media type for
/// each). [`push`] is the one-layer case; more layers exist for tests of the puller.
pub fn push_artifact(files: &[&Path], reference: &str, opts: &SourceOptions) -> Result<String> {
    let r = Reference::parse(reference)?;
    if r.pinned {
        bail!("push needs a tag, not a digest: {r}");
    }
    let reg = Registry::new(&r, opts, "pull,push")?;
    let empty = b"{}";
    let config_digest = upload_blob(&reg, BlobData::Bytes(empty))
        .with_context(|| format!("uploading the config blob to {r}"))?;
    let mut layers = Vec::new();
    for f in files {
        let digest = upload_blob(&reg, BlobData::File(f))
            .with_context(|| format!("uploading {} to {r}", f.display()))?;
        let size = std::fs::metadata(f)
            .with_context(|| format!("reading size of {}", f.display()))?
            .len();
        let title = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        layers.push(Descriptor {
            media_type: COSI_LAYER_MEDIA_TYPE.into(),
            digest,
            size,
            platform: None,
            annotations: Some([("org.opencontainers.image.title".to_string(), title)].into()),
            data: None,
        });
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": COSI_ARTIFACT_TYPE,
        "config": Descriptor {
            media_type: OCI_EMPTY.into(),
            digest: config_digest,
            size: empty.len() as u64,
            platform: None,
            annotations: None,
            data: Some("e30=".into()),
        },
        "layers": layers,
    });
    let body = serde_json::to_vec(&manifest).context("serializing the manifest")?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
    let url = reg.url(&format!("manifests/{}", r.reference));
    let resp = reg.send("PUT manifest", |c| {
        c.put(&url)
            .header(CONTENT_TYPE, OCI_MANIFEST)
            .body(body.clone())
    })?;
    if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        return Err(status_error(&url, "PUT manifest", status))
            .with_context(|| format!("registry said: {}", text.trim()));
    }
    if let Some(got) = resp
        .headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
    {
        if got != digest {
            bail!("the registry stored the manifest of {r} as {got}, expected {digest}");
        }
    }
    tracing::info!(reference = %r, %digest, "pushed COSI artifact");
    Ok(digest)
}

enum BlobData<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// Upload one blob (monolithic: POST to start, PUT with the digest); skips blobs the
/// registry already has. Returns the digest.
fn upload_blob(reg: &Registry, data: BlobData) -> Result<String> {
    let (digest, len) = match &data {
        BlobData::Bytes(b) => (
            format!("sha256:{}", hex::encode(Sha256::digest(b))),
            b.len() as u64,
        ),
        BlobData::File(p) => {
            let mut f =
                std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            let mut h = Sha256::new();
            let n = std::io::copy(&mut f, &mut h)
                .with_context(|| format!("hashing {}", p.display()))?;
            (format!("sha256:{}", hex::encode(h.finalize())), n)
        }
    };
    let blob_url = reg.url(&format!("blobs/{digest}"));
    let head = reg.send("HEAD blob", |c| c.head(&blob_url))?;
    if head.status().is_success() {
        tracing::debug!(%digest, "blob already in the registry");
        return Ok(digest);
    }
    let start_url = reg.url("blobs/uploads/");
    let resp = reg.send("POST blob upload", |c| {
        c.post(&start_url).header("Content-Length", "0")
    })?;
    if resp.status() != StatusCode::ACCEPTED {
        return Err(status_error(&start_url, "POST blob upload", resp.status()));
    }
    let location = resp
        .headers()
        .get("Location")
        .and_then(|v| v.to_str().ok())
        .context("the registry gave no upload Location")?;
    let mut put_url = reqwest::Url::parse(&reg.base)
        .and_then(|b| b.join(location))
        .with_context(|| format!("parsing upload location '{location}'"))?;
    put_url.query_pairs_mut().append_pair("digest", &digest);
    // The body is not replayable from a file handle, so this request is sent once
    // (no retries) with the token obtained above.
    let body = match data {
        BlobData::Bytes(b) => reqwest::blocking::Body::from(b.to_vec()),
        BlobData::File(p) => {
            let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            reqwest::blocking::Body::sized(f, len)
        }
    };
    let resp = reg
        .client
        .put(put_url.clone())
        .headers(reg.auth_headers())
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .send()
        .with_context(|| format!("uploading blob {digest}"))?;
    if resp.status() != StatusCode::CREATED {
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        return Err(status_error(&blob_url, "PUT blob", status))
            .with_context(|| format!("registry said: {}", text.trim()));
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r = Reference::parse("oci://127.0.0.1:5000/os/cosi:v1.2").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "os/cosi");
        assert_eq!(r.reference, "v1.2");
        assert!(!r.pinned && r.is_loopback());
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("oci://reg.example/x@{d}")).unwrap();
        assert!(r.pinned && !r.is_loopback());
        assert_eq!(r.reference, d);
        assert_eq!(r.to_string(), format!("oci://reg.example/x@{d}"));
        assert_eq!(Reference::parse("oci://h/r").unwrap().reference, "latest");
        for bad in [
            "http://h/r",
            "oci://h",
            "oci:///r",
            "oci://h/R",
            "oci://h/r@md5:00",
            "oci://h/r:",
        ] {
            let e = Reference::parse(bad).unwrap_err();
            assert!(
                e.to_string().contains("oci-reference-invalid"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn parses_challenge() {
        let p = parse_bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[1].1, "registry.example");
        assert_eq!(p[2].1, "repository:a/b:pull");
        assert!(parse_bearer_challenge(r#"Basic realm="x""#).is_none());
        assert!(parse_bearer_challenge("").is_none());
    }
}
