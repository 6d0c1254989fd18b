//! `http://` and `https://` sources: HEAD for the size, then `Range` GETs.
//!
//! Every range response must be `206 Partial Content` with a `Content-Range` that
//! matches the request; a `200` (the server ignored `Range`) is refused with
//! `http-range-unsupported` rather than trusted. A connection that drops mid-body, or a
//! transient failure (connect error, timeout, 5xx), is retried from the last byte
//! received, with exponential backoff, at most [`SourceOptions::retries`] times in a
//! row (the count resets whenever bytes arrive). Proxies come from `HTTP_PROXY`,
//! `HTTPS_PROXY` and `NO_PROXY`; extra CAs from [`SourceOptions::ca_file`].

use crate::cosi::source::{Source, SourceOptions};
use crate::error::TridentError;
use anyhow::{Context, Result};
use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use std::io::Read;
use std::time::Duration;

/// Build the HTTP client every remote source uses.
pub fn build_client(opts: &SourceOptions) -> Result<Client> {
    let mut b = Client::builder()
        .connect_timeout(opts.connect_timeout)
        .timeout(opts.read_timeout)
        .user_agent(concat!("trident/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &opts.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("reading CA file {}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("parsing CA file {} (PEM)", ca.display()))?;
        if certs.is_empty() {
            anyhow::bail!("CA file {} holds no PEM certificate", ca.display());
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().context("building the HTTP client")
}

/// The URL without its query string and credentials, for logs and messages (query
/// strings often carry access tokens).
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            if u.query().is_some() {
                u.set_query(Some("redacted"));
            }
            u.to_string()
        }
        Err(_) => url.to_string(),
    }
}

/// A file served over HTTP(S) with range support.
#[derive(Debug, Clone)]
pub struct HttpSource {
    url: String,
    name: String,
    client: Client,
    headers: HeaderMap,
    opts: SourceOptions,
    size: u64,
}

impl HttpSource {
    /// Open `url`: build a client from `opts` and find the size.
    pub fn open(url: &str, opts: &SourceOptions) -> Result<Self> {
        let client = build_client(opts)?;
        Self::with_client(url, client, HeaderMap::new(), opts, None)
    }

    /// Open with a prepared client and extra request headers (e.g. a registry bearer
    /// token). `size` skips the HEAD request when the caller already knows it.
    pub fn with_client(
        url: &str,
        client: Client,
        headers: HeaderMap,
        opts: &SourceOptions,
        size: Option<u64>,
    ) -> Result<Self> {
        let mut s = Self {
            url: url.to_string(),
            name: redact(url),
            client,
            headers,
            opts: opts.clone(),
            size: size.unwrap_or(0),
        };
        if size.is_none() {
            s.size = s.probe_size()?;
        }
        Ok(s)
    }

    /// Replace the name shown in messages (e.g. an `oci://` reference).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// HEAD for `Content-Length`; falls back to a one-byte range GET when the server
    /// refuses HEAD or does not give a length.
    fn probe_size(&self) -> Result<u64> {
        let head = with_retries(&self.opts, &self.name, "HEAD", || {
            self.client
                .head(&self.url)
                .headers(self.headers.clone())
                .send()
        })?;
        if head.status().is_success() {
            if let Some(len) = header_u64(&head, CONTENT_LENGTH) {
                return Ok(len);
            }
        } else if head.status() != StatusCode::METHOD_NOT_ALLOWED
            && head.status() != StatusCode::FORBIDDEN
        {
            return Err(status_error(&self.name, "HEAD", head.status()));
        }
        // Range probe: bytes=0-0 → 206 with "Content-Range: bytes 0-0/TOTAL".
        let resp = self.open_range_once(0, 1)?;
        let cr = content_range(&resp).ok_or_else(|| {
            range_error(
                &self.name,
                "the 206 response has no usable Content-Range".into(),
            )
        })?;
        cr.2.ok_or_else(|| {
            range_error(
                &self.name,
                "the server does not tell the total length".into(),
            )
        })
    }

    /// One range request for `[start, end)`; checks 206 and `Content-Range`.
    fn open_range_once(&self, start: u64, end: u64) -> Result<Response> {
        let range = format!("bytes={}-{}", start, end - 1);
        let resp = with_retries(&self.opts, &self.name, "GET", || {
            self.client
                .get(&self.url)
                .headers(self.headers.clone())
                .header(RANGE, HeaderValue::from_str(&range).expect("ASCII range"))
                .send()
        })?;
        let status = resp.status();
        if status == StatusCode::OK {
            return Err(anyhow::Error::new(TridentError::environment(
                "http-range-unsupported",
                format!(
                    "{} answered 200 to a Range request ({range}): the server does not \
                     support range requests, which Trident needs to stream images",
                    self.name
                ),
            )));
        }
        if status != StatusCode::PARTIAL_CONTENT {
            return Err(status_error(&self.name, &format!("GET {range}"), status));
        }
        match content_range(&resp) {
            Some((a, b, _)) if a == start && b + 1 == end => Ok(resp),
            other => Err(range_error(
                &self.name,
                format!(
                    "asked for {range}, the server sent Content-Range {:?}",
                    other.map(|(a, b, t)| format!("{a}-{b}/{t:?}"))
                ),
            )),
        }
    }
}

impl Source for HttpSource {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn read_range(&self, offset: u64, len: u64) -> Result<Box<dyn Read + Send>> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "range {offset}+{len} lies beyond the end of {} ({} bytes)",
                    self.name,
                    self.size
                )
            })?;
        let mut r = RangeReader {
            src: self.clone(),
            pos: offset,
            end,
            resp: None,
            failures: 0,
        };
        // Open eagerly so that 404, 200-for-a-range and friends surface as categorised
        // errors here rather than as I/O errors of the first read.
        if len > 0 {
            r.resp = Some(self.open_range_once(offset, end)?);
        }
        Ok(Box::new(r))
    }
}

/// Reads `[pos, end)`, reconnecting from `pos` after a dropped connection.
struct RangeReader {
    src: HttpSource,
    pos: u64,
    end: u64,
    resp: Option<Response>,
    /// Consecutive failures without progress.
    failures: u32,
}

impl RangeReader {
    fn retry_or_fail(&mut self, why: String) -> std::io::Result<()> {
        self.resp = None;
        self.failures += 1;
        if self.failures > self.src.opts.retries {
            return Err(std::io::Error::other(format!(
                "reading {} at byte {}: {why}; giving up after {} retries",
                self.src.name, self.pos, self.src.opts.retries
            )));
        }
        let delay = backoff(&self.src.opts, self.failures - 1);
        tracing::warn!(
            source = %self.src.name,
            at = self.pos,
            attempt = self.failures,
            delay_ms = delay.as_millis() as u64,
            "{why}; resuming"
        );
        std::thread::sleep(delay);
        Ok(())
    }
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.end || buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.resp.is_none() {
                match self.src.open_range_once(self.pos, self.end) {
                    Ok(r) => self.resp = Some(r),
                    Err(e) => {
                        // Non-transient answers (404, 200, bad Content-Range) were already
                        // retried inside or are final.
                        return Err(std::io::Error::other(format!("{e:#}")));
                    }
                }
            }
            let want = buf.len().min((self.end - self.pos) as usize);
            let resp = self.resp.as_mut().expect("response just opened");
            match resp.read(&mut buf[..want]) {
                Ok(0) => {
                    let why = format!("the connection ended {} bytes early", self.end - self.pos);
                    self.retry_or_fail(why)?;
                }
                Ok(n) => {
                    self.pos += n as u64;
                    self.failures = 0;
                    if self.pos == self.end {
                        self.resp = None;
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => self.retry_or_fail(format!("read error: {e}"))?,
            }
        }
    }
}

fn backoff(opts: &SourceOptions, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
    opts.initial_backoff
        .saturating_mul(factor)
        .min(opts.max_backoff)
}

/// Send a request, retrying connection errors, timeouts and 5xx answers with backoff.
/// Other answers (including 4xx) are returned for the caller to judge.
pub(crate) fn with_retries(
    opts: &SourceOptions,
    name: &str,
    what: &str,
    send: impl Fn() -> reqwest::Result<Response>,
) -> Result<Response> {
    let mut attempt = 0;
    loop {
        let outcome = send();
        let transient = match &outcome {
            Ok(r) if r.status().is_server_error() => format!("status {}", r.status()),
            Ok(_) => return Ok(outcome.expect("checked Ok")),
            Err(e) => format!("{e:#}"),
        };
        if attempt >= opts.retries {
            return match outcome {
                Ok(r) => Err(status_error(name, what, r.status())),
                Err(e) => Err(anyhow::Error::new(e))
                    .with_context(|| format!("{what} {name}: giving up after {attempt} retries")),
            };
        }
        let delay = backoff(opts, attempt);
        tracing::warn!(source = %name, attempt = attempt + 1, delay_ms = delay.as_millis() as u64,
            "{what} failed ({transient}); retrying");
        std::thread::sleep(delay);
        attempt += 1;
    }
}

/// A categorised error for an unexpected HTTP status, naming the URL and the status.
pub(crate) fn status_error(name: &str, what: &str, status: StatusCode) -> anyhow::Error {
    let msg = format!("{what} {name} failed with HTTP status {status}");
    let e = match status.as_u16() {
        404 => TridentError::invalid_input("http-not-found", msg),
        401 | 403 => TridentError::environment("http-unauthorized", msg),
        500..=599 => TridentError::servicing("http-server-error", msg),
        _ => TridentError::servicing("http-status", msg),
    };
    anyhow::Error::new(e)
}

fn range_error(name: &str, detail: String) -> anyhow::Error {
    anyhow::Error::new(TridentError::environment(
        "http-range-mismatch",
        format!("{name}: {detail}"),
    ))
}

fn header_u64(resp: &Response, name: reqwest::header::HeaderName) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Parse `Content-Range: bytes A-B/TOTAL` (TOTAL may be `*`).
fn content_range(resp: &Response) -> Option<(u64, u64, Option<u64>)> {
    parse_content_range(resp.headers().get(CONTENT_RANGE)?.to_str().ok()?)
}

fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    if b < a {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a, b, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(parse_content_range("bytes 0-0/10"), Some((0, 0, Some(10))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9, None)));
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn redacts_query_and_password() {
        assert_eq!(
            redact("https://u:p@h.example/a/b.cosi?sig=secret"),
            "https://h.example/a/b.cosi?redacted"
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let o = SourceOptions {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..Default::default()
        };
        assert_eq!(backoff(&o, 0), Duration::from_millis(100));
        assert_eq!(backoff(&o, 1), Duration::from_millis(200));
        assert_eq!(backoff(&o, 2), Duration::from_millis(350));
        assert_eq!(backoff(&o, 40), Duration::from_millis(350));
    }
}
