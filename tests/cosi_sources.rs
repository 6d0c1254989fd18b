//! Remote sources against real servers on loopback: nginx (HTTP, HTTPS, no-range),
//! Debian's docker-registry (OCI push + pull), a connection-cutting proxy, and tiny
//! servers for the misbehaviours real servers will not produce on demand.

mod support;

use sha2::Digest;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::*;
use trident::cosi::oci;
use trident::cosi::open::open_source;
use trident::cosi::source::{Source, SourceOptions};
use trident::cosi::stream::{stream_image, StreamJob};

fn fast_opts() -> SourceOptions {
    SourceOptions {
        retries: 4,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

/// A COSI-like file: a real tar (made with `tar`) holding metadata.json and a
/// zstd-compressed image; returns (path, raw image, offset and length of the
/// compressed member inside the tar).
struct Cosi {
    path: std::path::PathBuf,
    bytes: Vec<u8>,
    raw: Vec<u8>,
    offset: u64,
    comp_len: u64,
    sha: String,
}

fn make_cosi(dir: &Path, len: usize) -> Cosi {
    let raw = sample(len, 11);
    let comp = zstd::encode_all(&raw[..], 3).unwrap();
    let stage = dir.join("stage");
    std::fs::create_dir_all(stage.join("images")).unwrap();
    std::fs::write(stage.join("cosi-marker"), b"").unwrap();
    std::fs::write(stage.join("metadata.json"), b"{\"version\":\"1.0\"}").unwrap();
    std::fs::write(stage.join("images/root.rawzst"), &comp).unwrap();
    let path = dir.join("image.cosi");
    trident::cmd::Cmd::new("tar")
        .args(["--format=posix", "-cf"])
        .arg(&path)
        .arg("-C")
        .arg(&stage)
        .args(["cosi-marker", "metadata.json", "images/root.rawzst"])
        .run()
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // The member's data is 512-aligned inside the tar: find it.
    let offset = (0..bytes.len())
        .step_by(512)
        .find(|&o| bytes[o..].starts_with(&comp[..64.min(comp.len())]))
        .expect("compressed member in tar") as u64;
    assert_eq!(
        &bytes[offset as usize..offset as usize + comp.len()],
        &comp[..]
    );
    Cosi {
        path,
        bytes,
        raw,
        offset,
        comp_len: comp.len() as u64,
        sha: sha384_hex(&comp),
    }
}

fn stream_to_file(src: &dyn Source, c: &Cosi, out: &Path) -> anyhow::Result<()> {
    let job = StreamJob {
        name: "images/root.rawzst".into(),
        source: src,
        offset: c.offset,
        compressed_size: c.comp_len,
        sha384: c.sha.clone(),
        uncompressed_size: c.raw.len() as u64,
        target: out.to_path_buf(),
        skip_zero_blocks: false,
        max_window_log: None,
    };
    stream_image(&job, &|_| {}, &AtomicBool::new(false))?;
    assert_eq!(std::fs::read(out).unwrap(), c.raw);
    Ok(())
}

fn check_ranges(src: &dyn Source, bytes: &[u8]) {
    assert_eq!(src.size().unwrap(), bytes.len() as u64);
    let n = bytes.len() as u64;
    for (off, len) in [(0, 512), (1, 1), (n / 3, 100_000), (n - 7, 7), (0, n)] {
        assert_eq!(
            src.read_exact_at(off, len).unwrap(),
            &bytes[off as usize..(off + len) as usize],
            "range {off}+{len}"
        );
    }
    assert!(src.read_range(n - 2, 5).is_err(), "past the end");
}

#[test]
fn nginx_http_https_norange_404_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let c = make_cosi(dir.path(), 24 << 20);
    std::fs::copy(&c.path, www.join("image.cosi")).unwrap();
    let certs = make_certs(dir.path());
    let Some(ng) = start_nginx(dir.path(), &www, &certs) else {
        return;
    };
    let opts = fast_opts();

    // Plain HTTP: ranges equal the file's bytes, and the pipeline verifies the image.
    let url = format!("http://127.0.0.1:{}/image.cosi", ng.plain);
    let src = open_source(&url, &opts).unwrap();
    check_ranges(src.as_ref(), &c.bytes);
    stream_to_file(src.as_ref(), &c, &dir.path().join("out-http")).unwrap();

    // HTTPS with the test CA; refused without it.
    let surl = format!("https://127.0.0.1:{}/image.cosi", ng.tls);
    let tls_opts = SourceOptions {
        ca_file: Some(certs.ca.clone()),
        ..fast_opts()
    };
    let src = open_source(&surl, &tls_opts).unwrap();
    check_ranges(src.as_ref(), &c.bytes);
    let no_ca = SourceOptions {
        retries: 0,
        ..fast_opts()
    };
    let e = open_source(&surl, &no_ca)
        .err()
        .expect("untrusted certificate");
    assert!(
        format!("{e:#}").to_lowercase().contains("certificate"),
        "{e:#}"
    );

    // A server that ignores Range: refused, never trusted.
    let nurl = format!("http://127.0.0.1:{}/image.cosi", ng.no_range);
    let e = match open_source(&nurl, &opts) {
        Ok(s) => s.read_range(10, 100).err().unwrap(),
        Err(e) => e,
    };
    assert_eq!(code_of(&e), "http-range-unsupported", "{e:#}");

    // 404 names the URL and the status.
    let murl = format!("http://127.0.0.1:{}/missing.cosi", ng.plain);
    let e = open_source(&murl, &opts).err().unwrap();
    assert_eq!(code_of(&e), "http-not-found", "{e:#}");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("404") && msg.contains("/missing.cosi"),
        "{msg}"
    );

    // Connections cut mid-body: the reader resumes and the hash still matches.
    let proxy = cutting_proxy(ng.plain, |n| if n < 3 { 3 << 20 } else { usize::MAX });
    let purl = format!("http://127.0.0.1:{}/image.cosi", proxy.port);
    let src = open_source(&purl, &opts).unwrap();
    stream_to_file(src.as_ref(), &c, &dir.path().join("out-resumed")).unwrap();
    assert!(
        proxy.connections.load(Ordering::SeqCst) >= 4,
        "the proxy cut connections and the reader reconnected"
    );

    // The server goes away mid-body and never comes back: after the retries, a clear
    // error, not a silently short image.
    let strict = SourceOptions {
        retries: 2,
        ..fast_opts()
    };
    let proxy = cutting_proxy(ng.plain, |n| if n == 0 { 1 << 20 } else { 0 });
    let purl = format!("http://127.0.0.1:{}/image.cosi", proxy.port);
    let src = open_source(&purl, &strict).unwrap();
    let e = stream_to_file(src.as_ref(), &c, &dir.path().join("out-cut")).unwrap_err();
    assert_eq!(code_of(&e), "image-source-failed", "{e:#}");
    assert!(format!("{e:#}").contains("giving up"), "{e:#}");
}

#[test]
fn server_error_mid_stream() {
    let data = sample(4 << 20, 3);
    let d2 = data.clone();
    let (port, count) = tiny_server(move |req, n| {
        if req.method == "HEAD" {
            return Reply::new(200, d2.clone());
        }
        if n == 1 {
            // First range GET: a correct 206 whose body stops half-way.
            let mut r = range_reply(req, &d2);
            r.cut_at = Some(r.body.len() / 2);
            return r;
        }
        Reply::new(500, b"boom".to_vec())
    });
    let url = format!("http://127.0.0.1:{port}/x.cosi");
    let src = open_source(&url, &fast_opts()).unwrap();
    let mut r = src.read_range(0, data.len() as u64).unwrap();
    let mut buf = Vec::new();
    let e = r.read_to_end(&mut buf).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("500") && msg.contains(&url), "{msg}");
    assert!(msg.contains("http-server-error"), "{msg}");
    assert!(buf.len() < data.len());
    assert_eq!(
        &buf[..],
        &data[..buf.len()],
        "what was delivered is correct"
    );
    assert!(count.load(Ordering::SeqCst) >= 3, "retried");
}

#[test]
fn wrong_content_range_is_refused() {
    let data = sample(1 << 20, 5);
    let (port, _) = tiny_server(move |req, _| {
        if req.method == "HEAD" {
            return Reply::new(200, data.clone());
        }
        Reply::new(206, data[..10].to_vec()).header("Content-Range", "bytes 0-9/1048576")
    });
    let src = open_source(&format!("http://127.0.0.1:{port}/x"), &fast_opts()).unwrap();
    let e = src.read_range(100, 10).err().unwrap();
    assert_eq!(code_of(&e), "http-range-mismatch", "{e:#}");
}

/// A tiny fake registry: 401 with `challenge` until a request carries the token,
/// then the given manifests (by tag or digest) and one blob (with ranges).
fn fake_registry(
    manifests: Vec<(String, Vec<u8>, &'static str)>,
    blob: (String, Vec<u8>),
    challenge: &'static str,
) -> u16 {
    let (port, _) = tiny_server(move |req, _| {
        if req.header("authorization") != Some("Bearer t0ken") {
            let mut r = Reply::new(401, b"{}".to_vec());
            if !challenge.is_empty() {
                r = r.header("WWW-Authenticate", challenge);
            }
            return r;
        }
        for (reference, body, mt) in &manifests {
            if req.path == format!("/v2/test/cosi/manifests/{reference}") {
                return Reply::new(200, body.clone()).header("Content-Type", mt);
            }
        }
        if req.path == format!("/v2/test/cosi/blobs/{}", blob.0) {
            return range_reply(req, &blob.1);
        }
        Reply::new(404, b"{}".to_vec())
    });
    port
}

fn manifest_for(digest: &str, size: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": format!("sha256:{}", hex::encode(sha2::Sha256::digest(b"{}"))), "size": 2},
        "layers": [{"mediaType": oci::COSI_LAYER_MEDIA_TYPE, "digest": digest, "size": size}]
    }))
    .unwrap()
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

#[test]
fn oci_bearer_index_and_digest_checks() {
    let blob = sample(2 << 20, 9);
    let bd = sha256(&blob);
    let m = manifest_for(&bd, blob.len());
    let md = sha256(&m);
    // A manifest served under a digest it does not hash to.
    let forged = sha256(b"forged");
    let idx_mt = "application/vnd.oci.image.index.v1+json";
    let man_mt = "application/vnd.oci.image.manifest.v1+json";
    // A blob served with wrong bytes under the digest of the real blob.
    let mut bad_blob = blob.clone();
    bad_blob[12345] ^= 1;
    let bad_m = manifest_for(&bd, blob.len());
    let manifests = vec![
        ("v1".to_string(), fake_index(&md, m.len()), idx_mt),
        (md.clone(), m.clone(), man_mt),
        (forged.clone(), m.clone(), man_mt),
        ("badblob".to_string(), bad_m, man_mt),
    ];
    // 401 without a challenge → clear error.
    let port = fake_registry(manifests.clone(), (bd.clone(), blob.clone()), "");
    let e = open_source(
        &format!("oci://127.0.0.1:{port}/test/cosi:v1"),
        &fast_opts(),
    )
    .err()
    .unwrap();
    assert_eq!(code_of(&e), "oci-unauthorized", "{e:#}");

    // With a Bearer challenge whose realm is a token endpoint on a tiny server.
    let (tok_port, _) = tiny_server(|_, _| Reply::new(200, br#"{"token":"t0ken"}"#.to_vec()));
    let realm: &'static str = Box::leak(
        format!(r#"Bearer realm="http://127.0.0.1:{tok_port}/token",service="fake""#)
            .into_boxed_str(),
    );
    let port = fake_registry(manifests.clone(), (bd.clone(), blob.clone()), realm);
    let src = open_source(
        &format!("oci://127.0.0.1:{port}/test/cosi:v1"),
        &fast_opts(),
    )
    .unwrap();
    check_ranges(src.as_ref(), &blob);
    let src = open_source(
        &format!("oci://127.0.0.1:{port}/test/cosi@{md}"),
        &fast_opts(),
    )
    .unwrap();
    assert_eq!(src.read_exact_at(0, blob.len() as u64).unwrap(), blob);

    let e = open_source(
        &format!("oci://127.0.0.1:{port}/test/cosi@{forged}"),
        &fast_opts(),
    )
    .err()
    .unwrap();
    assert_eq!(code_of(&e), "oci-digest-mismatch", "{e:#}");

    let port = fake_registry(manifests, (bd.clone(), bad_blob), realm);
    let src = open_source(
        &format!("oci://127.0.0.1:{port}/test/cosi:badblob"),
        &fast_opts(),
    )
    .unwrap();
    let e = src.read_exact_at(0, blob.len() as u64).unwrap_err();
    assert!(format!("{e:#}").contains("oci-digest-mismatch"), "{e:#}");
}

fn fake_index(md: &str, len: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": sha256(b"other"), "size": 5,
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
             "size": len, "platform": {"architecture": "amd64", "os": "linux"}}
        ]
    }))
    .unwrap()
}

#[test]
fn real_registry_push_pull_stream_and_layer_count() {
    let dir = tempfile::tempdir().unwrap();
    let Some(reg) = start_registry(dir.path()) else {
        return;
    };
    let c = make_cosi(dir.path(), 16 << 20);
    let opts = fast_opts();
    let reference = format!("oci://127.0.0.1:{}/test/cosi:v1", reg.port);
    let digest = oci::push(&c.path, &reference, &opts).unwrap();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );

    // By tag and by the digest push returned.
    for r in [
        reference.clone(),
        format!("oci://127.0.0.1:{}/test/cosi@{digest}", reg.port),
    ] {
        let src = open_source(&r, &opts).unwrap();
        check_ranges(src.as_ref(), &c.bytes);
        stream_to_file(src.as_ref(), &c, &dir.path().join("out-oci")).unwrap();
    }
    // Pushing again is idempotent (blobs already present) and yields the same digest.
    assert_eq!(oci::push(&c.path, &reference, &opts).unwrap(), digest);

    // A pinned digest the registry does not have → a clear not-found.
    let missing = format!("oci://127.0.0.1:{}/test/cosi@{}", reg.port, sha256(b"nope"));
    let e = open_source(&missing, &opts).err().unwrap();
    assert_eq!(code_of(&e), "http-not-found", "{e:#}");

    // Two layers → refused.
    let other = dir.path().join("second.bin");
    std::fs::write(&other, b"second layer").unwrap();
    let two = format!("oci://127.0.0.1:{}/test/cosi:two", reg.port);
    oci::push_artifact(&[&c.path, &other], &two, &opts).unwrap();
    let e = open_source(&two, &opts).err().unwrap();
    assert_eq!(code_of(&e), "oci-layer-count", "{e:#}");
}
