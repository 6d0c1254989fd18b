//! Test helpers: free ports, servers started and stopped by pid, loop devices and
//! tmpfs mounts that clean up on drop, a few tiny HTTP servers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trident::cmd::{have_program, Cmd};

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "server exited early ({st}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server did not listen on {port}");
}

/// A server process we started; killed by its pid on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Self-signed CA + server certificate for 127.0.0.1/localhost, made with openssl.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn make_certs(dir: &Path) -> Certs {
    let p = |n: &str| dir.join(n);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    Cmd::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem"))
        .args(["-days", "2", "-subj", "/CN=trident-test-ca"])
        .run()
        .unwrap();
    Cmd::new("openssl")
        .arg("req")
        .args(ec)
        .arg("-keyout")
        .arg(p("srv.key"))
        .arg("-out")
        .arg(p("srv.csr"))
        .args(["-subj", "/CN=localhost"])
        .run()
        .unwrap();
    std::fs::write(
        p("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    Cmd::new("openssl")
        .args(["x509", "-req", "-in"])
        .arg(p("srv.csr"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .args(["-CAcreateserial", "-days", "2", "-out"])
        .arg(p("srv.pem"))
        .arg("-extfile")
        .arg(p("ext"))
        .run()
        .unwrap();
    Certs {
        ca: p("ca.pem"),
        cert: p("srv.pem"),
        key: p("srv.key"),
    }
}

/// nginx serving `root` on three loopback ports: plain, no-range (`max_ranges 0`) and
/// HTTPS.
pub struct Nginx {
    _server: Server,
    pub plain: u16,
    pub no_range: u16,
    pub tls: u16,
}

pub fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

pub fn start_nginx(dir: &Path, root: &Path, certs: &Certs) -> Option<Nginx> {
    let Some(bin) = nginx_binary() else {
        eprintln!("skipping: nginx is not installed (Debian package `nginx`)");
        return None;
    };
    let (plain, no_range, tls) = (free_port(), free_port(), free_port());
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  default_type application/octet-stream;
  sendfile on;
  server {{ listen 127.0.0.1:{plain}; root {root}; }}
  server {{ listen 127.0.0.1:{no_range}; root {root}; max_ranges 0; }}
  server {{ listen 127.0.0.1:{tls} ssl; root {root};
           ssl_certificate {cert}; ssl_certificate_key {key}; }}
}}
"#,
        root = root.display(),
        cert = certs.cert.display(),
        key = certs.key.display(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let log = dir.join("stderr.log");
    let mut child = Command::new(bin)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    for p in [plain, no_range, tls] {
        wait_for_port(p, &mut child, &log);
    }
    Some(Nginx {
        _server: Server { child, port: plain },
        plain,
        no_range,
        tls,
    })
}

/// Debian's `docker-registry` (distribution 2.8) on a loopback port, storage in `dir`.
pub fn start_registry(dir: &Path) -> Option<Server> {
    if !have_program("docker-registry") {
        eprintln!("skipping: docker-registry is not installed (Debian package `docker-registry`)");
        return None;
    }
    let port = free_port();
    let conf = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
         delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.join("data").display()
    );
    let conf_path = dir.join("registry.yml");
    std::fs::write(&conf_path, conf).unwrap();
    let log = dir.join("registry.log");
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child, &log);
    Some(Server { child, port })
}

/// A TCP proxy to `upstream` that cuts connection number `n` (0-based) after relaying
/// `limit(n)` response bytes. Runs until the process ends (threads are detached;
/// the listener only accepts on loopback).
pub struct CuttingProxy {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
}

pub fn cutting_proxy(
    upstream: u16,
    limit: impl Fn(usize) -> usize + Send + Sync + 'static,
) -> CuttingProxy {
    let limit = Arc::new(limit);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let limit = limit(n);
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                });
                let mut server = server;
                let mut client = client;
                let mut sent = 0usize;
                let mut buf = vec![0u8; 16 << 10];
                while let Ok(k) = server.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    let k2 = k.min(limit - sent);
                    if client.write_all(&buf[..k2]).is_err() {
                        break;
                    }
                    sent += k2;
                    if sent >= limit {
                        break;
                    }
                }
                let _ = client.shutdown(std::net::Shutdown::Both);
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    CuttingProxy { port, connections }
}

/// One parsed HTTP request (enough for the tiny servers here).
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// `Range: bytes=A-B` → (A, B inclusive).
    pub fn range(&self) -> Option<(u64, u64)> {
        let r = self.header("range")?.strip_prefix("bytes=")?;
        let (a, b) = r.split_once('-')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    }
}

pub fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut r = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Some(Request {
        method,
        path,
        headers,
    })
}

/// What a tiny server answers: status, headers, body, and whether to cut the body
/// after some bytes.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send only this many body bytes, then close (while announcing the full length).
    pub cut_at: Option<usize>,
    /// Send the body at about this many bytes per second (a slow link).
    pub rate: Option<usize>,
}

impl Reply {
    pub fn new(status: u16, body: Vec<u8>) -> Self {
        Self {
            status,
            headers: vec![],
            body,
            cut_at: None,
            rate: None,
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// Serve a range of `data` as a proper 206 (or the whole thing for no Range).
pub fn range_reply(req: &Request, data: &[u8]) -> Reply {
    match req.range() {
        Some((a, b)) => {
            let b = b.min(data.len() as u64 - 1);
            Reply::new(206, data[a as usize..=b as usize].to_vec())
                .header("Content-Range", &format!("bytes {a}-{b}/{}", data.len()))
        }
        None => Reply::new(200, data.to_vec()),
    }
}

/// A tiny one-connection-per-request HTTP/1.1 server on loopback; `handler` gets the
/// request and the request number. Lives until the test process ends.
pub fn tiny_server(
    handler: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static,
) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let n = c.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            std::thread::spawn(move || {
                let Some(req) = read_request(&mut stream) else {
                    return;
                };
                let reply = handler(&req, n);
                let mut head = format!(
                    "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    reply.status,
                    reply.body.len()
                );
                for (k, v) in &reply.headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let _ = stream.write_all(head.as_bytes());
                if req.method != "HEAD" {
                    let end = reply
                        .cut_at
                        .unwrap_or(reply.body.len())
                        .min(reply.body.len());
                    let body = &reply.body[..end];
                    match reply.rate {
                        None => {
                            let _ = stream.write_all(body);
                        }
                        Some(rate) => {
                            // 20 slices a second.
                            let slice = (rate / 20).max(1);
                            for chunk in body.chunks(slice) {
                                if stream.write_all(chunk).is_err() {
                                    break;
                                }
                                std::thread::sleep(std::time::Duration::from_millis(50));
                            }
                        }
                    }
                }
                let _ = stream.flush();
                let _ = stream.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, count)
}

/// A loop device over a file we created; detached on drop (even after a panic).
pub struct LoopDev {
    pub dev: PathBuf,
}

impl LoopDev {
    pub fn attach(file: &Path) -> Self {
        let out = Cmd::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output_string()
            .unwrap();
        Self {
            dev: PathBuf::from(out.trim()),
        }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if let Err(e) = Cmd::new("losetup").arg("-d").arg(&self.dev).run() {
            eprintln!("detaching {}: {e:#}", self.dev.display());
        }
    }
}

/// A small tmpfs mounted on a temp dir; unmounted on drop.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Cmd::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .run()
            .unwrap();
        Self { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = Cmd::new("umount").arg(self.dir.path()).run() {
            eprintln!("unmounting {}: {e:#}", self.dir.path().display());
        }
    }
}

/// Deterministic, partly compressible test data.
pub fn sample(len: usize, seed: u32) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = seed | 1;
    for (i, b) in v.iter_mut().enumerate() {
        if (i / 200_000) % 4 == 0 {
            continue;
        }
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = if (i / 50_000) % 2 == 0 {
            (x & 0x3f) as u8
        } else {
            x as u8
        };
    }
    v
}

pub fn sha384_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha384::digest(data))
}

pub fn code_of(e: &anyhow::Error) -> String {
    trident::error::find_trident_error(e)
        .map(|t| t.code)
        .unwrap_or_else(|| format!("<uncategorised: {e:#}>"))
}
