//! The OS package list, from the image's package database.
//!
//! - dpkg: `/var/lib/dpkg/status`, packages whose status is `install ok installed`.
//!   A Debian version `[epoch:]upstream[-revision]` maps to COSI `version`
//!   (`[epoch:]upstream`) and `release` (`revision`, empty for native packages);
//!   Debian architectures map to RPM names (`amd64` → `x86_64`, `arm64` → `aarch64`,
//!   `all` → `noarch`).
//! - rpm: `rpmdb.sqlite` (rpm ≥ 4.16), each row's header blob parsed for NAME,
//!   VERSION, RELEASE, EPOCH and ARCH.

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// One installed package, as COSI's `osPackages` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub release: String,
    pub arch: String,
}

/// Map a Debian architecture to the RPM `%{ARCH}` name COSI uses.
pub fn rpm_arch(deb: &str) -> String {
    match deb {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "all" => "noarch",
        "i386" => "i686",
        "armhf" => "armv7hl",
        "ppc64el" => "ppc64le",
        other => other,
    }
    .to_string()
}

/// Parse a dpkg `status` file; only installed packages, sorted by name.
pub fn parse_dpkg_status(text: &str) -> Result<Vec<Package>> {
    let mut out = Vec::new();
    for (i, stanza) in text.split("\n\n").enumerate() {
        let mut name = None;
        let mut status = None;
        let mut version = None;
        let mut arch = None;
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                continue; // continuation of a multi-line field
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k {
                "Package" => name = Some(v),
                "Status" => status = Some(v),
                "Version" => version = Some(v),
                "Architecture" => arch = Some(v),
                _ => {}
            }
        }
        let Some(name) = name else {
            if stanza.trim().is_empty() {
                continue;
            }
            bail!("dpkg status stanza {} has no Package field", i + 1);
        };
        if status.map(|s| s.split_whitespace().last()) != Some(Some("installed")) {
            continue;
        }
        let version = version.with_context(|| format!("dpkg package {name} has no Version"))?;
        let (ver, rel) = match version.rsplit_once('-') {
            Some((v, r)) => (v, r),
            None => (version, ""),
        };
        out.push(Package {
            name: name.to_string(),
            version: ver.to_string(),
            release: rel.to_string(),
            arch: rpm_arch(arch.unwrap_or("all")),
        });
    }
    out.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    Ok(out)
}

const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_ARCH: u32 = 1022;
const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;

/// Parse one RPM header blob (as stored in `rpmdb.sqlite`'s `Packages.blob`: index
/// count, data length, index entries, data store; all big-endian).
pub fn parse_rpm_header(blob: &[u8]) -> Result<Package> {
    let be = |o: usize| -> Result<u32> {
        Ok(u32::from_be_bytes(
            blob.get(o..o + 4)
                .context("rpm header truncated")?
                .try_into()
                .expect("4 bytes"),
        ))
    };
    let il = be(0)? as usize;
    let dl = be(4)? as usize;
    let store = 8 + il * 16;
    ensure!(
        il < 100_000 && blob.len() >= store + dl,
        "rpm header claims {il} entries and {dl} data bytes but has {} bytes",
        blob.len()
    );
    let data = &blob[store..store + dl];
    let mut fields: std::collections::HashMap<u32, String> = Default::default();
    for i in 0..il {
        let e = 8 + i * 16;
        let (tag, ty, off) = (be(e)?, be(e + 4)?, be(e + 8)? as usize);
        if ![TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH, TAG_ARCH].contains(&tag) {
            continue;
        }
        let v = match ty {
            TYPE_STRING => {
                let s = data.get(off..).context("rpm string offset out of range")?;
                let end = s
                    .iter()
                    .position(|&b| b == 0)
                    .context("unterminated rpm string")?;
                String::from_utf8_lossy(&s[..end]).into_owned()
            }
            TYPE_INT32 => {
                let b = data
                    .get(off..off + 4)
                    .context("rpm int offset out of range")?;
                u32::from_be_bytes(b.try_into().expect("4 bytes")).to_string()
            }
            _ => continue,
        };
        fields.insert(tag, v);
    }
    let get = |t: u32, what: &str| {
        fields
            .get(&t)
            .cloned()
            .with_context(|| format!("rpm header has no {what}"))
    };
    let mut version = get(TAG_VERSION, "VERSION")?;
    if let Some(e) = fields.get(&TAG_EPOCH) {
        version = format!("{e}:{version}");
    }
    Ok(Package {
        name: get(TAG_NAME, "NAME")?,
        version,
        release: get(TAG_RELEASE, "RELEASE")?,
        // gpg-pubkey pseudo-packages have no ARCH.
        arch: fields
            .get(&TAG_ARCH)
            .cloned()
            .unwrap_or_else(|| "noarch".into()),
    })
}

/// Read every package from an `rpmdb.sqlite` file.
pub fn read_rpmdb_sqlite(path: &std::path::Path) -> Result<Vec<Package>> {
    let db = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    let mut stmt = db
        .prepare("SELECT blob FROM Packages")
        .context("querying the rpm database")?;
    let rows = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .context("querying the rpm database")?;
    let mut out = Vec::new();
    for blob in rows {
        let p = parse_rpm_header(&blob.context("reading an rpm database row")?)?;
        if p.name != "gpg-pubkey" {
            out.push(p);
        }
    }
    out.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const STATUS: &str = "\
Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u4
Description: GNU C Library
 multi-line
 description: with colon

Package: base-files
Status: install ok installed
Architecture: amd64
Version: 12.4+deb12u5

Package: tzdata
Status: install ok installed
Architecture: all
Version: 1:2024a-0+deb12u1

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1

";

    #[test]
    fn dpkg_installed_only_and_version_split() {
        let p = parse_dpkg_status(STATUS).unwrap();
        let names: Vec<_> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["base-files", "libc6", "tzdata"]);
        assert_eq!(
            p[1],
            Package {
                name: "libc6".into(),
                version: "2.36".into(),
                release: "9+deb12u4".into(),
                arch: "x86_64".into()
            }
        );
        assert_eq!(
            (p[0].version.as_str(), p[0].release.as_str()),
            ("12.4+deb12u5", "")
        );
        assert_eq!(
            (
                p[2].version.as_str(),
                p[2].release.as_str(),
                p[2].arch.as_str()
            ),
            ("1:2024a", "0+deb12u1", "noarch")
        );
    }

    #[test]
    fn dpkg_errors() {
        assert!(parse_dpkg_status("Status: install ok installed\n\n").is_err());
        assert!(parse_dpkg_status("Package: x\nStatus: install ok installed\n\n").is_err());
        assert_eq!(parse_dpkg_status("").unwrap(), vec![]);
    }

    /// Build an RPM header blob: (tag, type, value).
    pub(crate) fn rpm_blob(entries: &[(u32, u32, &str)]) -> Vec<u8> {
        let mut index = Vec::new();
        let mut data = Vec::new();
        for (tag, ty, v) in entries {
            if *ty == TYPE_INT32 {
                while data.len() % 4 != 0 {
                    data.push(0);
                }
            }
            index.extend_from_slice(&tag.to_be_bytes());
            index.extend_from_slice(&ty.to_be_bytes());
            index.extend_from_slice(&(data.len() as u32).to_be_bytes());
            index.extend_from_slice(&1u32.to_be_bytes());
            if *ty == TYPE_INT32 {
                data.extend_from_slice(&v.parse::<u32>().unwrap().to_be_bytes());
            } else {
                data.extend_from_slice(v.as_bytes());
                data.push(0);
            }
        }
        let mut b = Vec::new();
        b.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend(index);
        b.extend(data);
        b
    }

    #[test]
    fn rpm_header_and_sqlite_db() {
        let blob = rpm_blob(&[
            (TAG_NAME, TYPE_STRING, "bash"),
            (TAG_VERSION, TYPE_STRING, "5.1.8"),
            (TAG_RELEASE, TYPE_STRING, "1.azl3"),
            (TAG_EPOCH, TYPE_INT32, "2"),
            (TAG_ARCH, TYPE_STRING, "x86_64"),
        ]);
        let p = parse_rpm_header(&blob).unwrap();
        assert_eq!(
            p,
            Package {
                name: "bash".into(),
                version: "2:5.1.8".into(),
                release: "1.azl3".into(),
                arch: "x86_64".into()
            }
        );
        assert!(parse_rpm_header(&blob[..blob.len() - 3]).is_err());
        let no_name = rpm_blob(&[(TAG_VERSION, TYPE_STRING, "1")]);
        assert!(format!("{:#}", parse_rpm_header(&no_name).unwrap_err()).contains("NAME"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rpmdb.sqlite");
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY, blob BLOB NOT NULL);")
            .unwrap();
        for b in [
            blob.clone(),
            rpm_blob(&[
                (TAG_NAME, TYPE_STRING, "gpg-pubkey"),
                (TAG_VERSION, TYPE_STRING, "1"),
                (TAG_RELEASE, TYPE_STRING, "1"),
            ]),
            rpm_blob(&[
                (TAG_NAME, TYPE_STRING, "azurelinux-release"),
                (TAG_VERSION, TYPE_STRING, "3.0"),
                (TAG_RELEASE, TYPE_STRING, "1"),
                (TAG_ARCH, TYPE_STRING, "noarch"),
            ]),
        ] {
            db.execute("INSERT INTO Packages (blob) VALUES (?1)", [b])
                .unwrap();
        }
        drop(db);
        let pkgs = read_rpmdb_sqlite(&path).unwrap();
        let names: Vec<_> = pkgs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["azurelinux-release", "bash"]);
    }
}
