//! `os.users`: accounts (native editing of passwd/shadow/group/gshadow), home
//! directories from `/etc/skel`, `~/.ssh/authorized_keys`, and the sshd drop-in that
//! carries each user's `sshMode` (as Microsoft Trident writes it).

use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::accounts::{add_member, login_defs, lowest_free, Kind, Table};
use super::fsutil;
use crate::config::{Password, SshMode, User};
use crate::error::TridentError;

pub const SSHD_CONFIG: &str = "/etc/ssh/sshd_config";
/// The drop-in Microsoft Trident writes (kept for compatibility with its hosts).
pub const SSHD_DROP_IN: &str = "/etc/ssh/sshd_config.d/global_user.conf";

/// Account defaults, from the target's `/etc/login.defs` and `/etc/default/useradd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    pub uid_min: u32,
    pub uid_max: u32,
    pub gid_min: u32,
    pub gid_max: u32,
    pub home_mode: u32,
    pub shell: String,
    pub pass_min_days: String,
    pub pass_max_days: String,
    pub pass_warn_age: String,
    /// Days since the epoch, for shadow's last-change field.
    pub today: u64,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            uid_min: 1000,
            uid_max: 60000,
            gid_min: 1000,
            gid_max: 60000,
            home_mode: 0o700,
            shell: "/bin/sh".into(),
            pass_min_days: "0".into(),
            pass_max_days: "99999".into(),
            pass_warn_age: "7".into(),
            today: (chrono::Utc::now().timestamp() / 86400) as u64,
        }
    }
}

impl Defaults {
    pub fn from_target(root: &Path) -> Result<Self> {
        let mut d = Defaults::default();
        if let Some(text) = fsutil::read_in_target(root, "/etc/login.defs")? {
            let num = |k: &str, v: &mut u32| {
                if let Some(n) = login_defs(&text, k).and_then(|s| s.parse().ok()) {
                    *v = n;
                }
            };
            num("UID_MIN", &mut d.uid_min);
            num("UID_MAX", &mut d.uid_max);
            num("GID_MIN", &mut d.gid_min);
            num("GID_MAX", &mut d.gid_max);
            let octal =
                |k: &str| login_defs(&text, k).and_then(|s| u32::from_str_radix(&s, 8).ok());
            if let Some(m) = octal("HOME_MODE") {
                d.home_mode = m;
            } else if let Some(umask) = octal("UMASK") {
                d.home_mode = 0o777 & !umask;
            }
            for (k, v) in [
                ("PASS_MIN_DAYS", &mut d.pass_min_days),
                ("PASS_MAX_DAYS", &mut d.pass_max_days),
                ("PASS_WARN_AGE", &mut d.pass_warn_age),
            ] {
                if let Some(s) = login_defs(&text, k) {
                    *v = s;
                }
            }
        }
        if let Some(text) = fsutil::read_in_target(root, "/etc/default/useradd")? {
            if let Some(shell) = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("SHELL="))
                .filter(|s| !s.is_empty())
            {
                d.shell = shell.to_string();
            }
        }
        Ok(d)
    }
}

/// The four account files of a root (shadow files are optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    pub passwd: Table,
    pub shadow: Option<Table>,
    pub group: Table,
    pub gshadow: Option<Table>,
}

impl Accounts {
    pub fn load(root: &Path) -> Result<Self> {
        let read = |kind: Kind| -> Result<Option<Table>> {
            fsutil::read_in_target(root, kind.path())?
                .map(|t| Table::parse(kind, &t))
                .transpose()
        };
        Ok(Self {
            passwd: read(Kind::Passwd)?.unwrap_or_else(|| Table::new(Kind::Passwd)),
            shadow: read(Kind::Shadow)?,
            group: read(Kind::Group)?.unwrap_or_else(|| Table::new(Kind::Group)),
            gshadow: read(Kind::Gshadow)?,
        })
    }

    /// Write the files back (atomically; existing modes and owners kept, new shadow
    /// files 0600).
    pub fn save(&self, root: &Path) -> Result<()> {
        fsutil::write_in_target(
            root,
            Kind::Passwd.path(),
            self.passwd.format().as_bytes(),
            None,
        )?;
        fsutil::write_in_target(
            root,
            Kind::Group.path(),
            self.group.format().as_bytes(),
            None,
        )?;
        for t in [&self.shadow, &self.gshadow].into_iter().flatten() {
            let exists = fsutil::target_path(root, Path::new(t.kind.path()))?.exists();
            let mode = (!exists).then_some(0o600);
            fsutil::write_in_target(root, t.kind.path(), t.format().as_bytes(), mode)?;
        }
        Ok(())
    }
}

/// What [`apply_user`] decided for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// The account was created (not found in the image).
    pub created: bool,
}

fn group_not_found(group: &str, user: &str, at: String) -> anyhow::Error {
    TridentError::invalid_input(
        "group-not-found",
        format!(
            "group '{group}' of user '{user}' does not exist in the target OS; Trident adds \
             users to existing groups only (create it in the image or with a script)"
        ),
    )
    .at(at)
    .into()
}

/// Add or update `user` in `acc` (pure: no file I/O). `at` is the user's YAML path.
pub fn apply_user(acc: &mut Accounts, user: &User, defs: &Defaults, at: &str) -> Result<Account> {
    let name = user.name.as_str();
    // Every group must exist before anything changes.
    let primary_gid = match &user.primary_group {
        Some(g) => Some(
            acc.group
                .get(g)
                .and_then(|f| f[2].parse::<u32>().ok())
                .ok_or_else(|| group_not_found(g, name, format!("{at}.primaryGroup")))?,
        ),
        None => None,
    };
    for (j, g) in user.secondary_groups.iter().enumerate() {
        if acc.group.get(g).is_none() {
            return Err(group_not_found(
                g,
                name,
                format!("{at}.secondaryGroups[{j}]"),
            ));
        }
    }

    let account = if let Some(existing) = acc.passwd.get(name).cloned() {
        let uid: u32 = existing[2]
            .parse()
            .with_context(|| format!("uid of {name} in /etc/passwd"))?;
        if let Some(want) = user.uid.filter(|w| *w != uid) {
            return Err(TridentError::invalid_input(
                "user-uid-mismatch",
                format!("user '{name}' exists in the image with uid {uid}, not {want}"),
            )
            .at(format!("{at}.uid"))
            .into());
        }
        let f = acc.passwd.get_mut(name).expect("present");
        if let Some(gid) = primary_gid {
            f[3] = gid.to_string();
        }
        if let Some(h) = &user.home_directory {
            f[5] = h.to_string_lossy().into_owned();
        }
        if let Some(c) = &user.startup_command {
            f[6] = c.clone();
        }
        let gid = f[3]
            .parse()
            .with_context(|| format!("gid of {name} in /etc/passwd"))?;
        Account {
            name: name.into(),
            uid,
            gid,
            home: PathBuf::from(&f[5]),
            created: false,
        }
    } else {
        let used = acc.passwd.ids();
        let uid = match user.uid {
            Some(u) => {
                if let Some(other) = acc.passwd.name_of_id(u) {
                    return Err(TridentError::invalid_input(
                        "uid-in-use",
                        format!("uid {u} for user '{name}' already belongs to '{other}'"),
                    )
                    .at(format!("{at}.uid"))
                    .into());
                }
                u
            }
            None => lowest_free(&used, defs.uid_min, defs.uid_max).ok_or_else(|| {
                TridentError::invalid_input(
                    "no-free-uid",
                    format!(
                        "no free uid in {}..{} for '{name}'",
                        defs.uid_min, defs.uid_max
                    ),
                )
                .at(at.to_string())
            })?,
        };
        let gid = match primary_gid {
            Some(g) => g,
            None => match acc.group.get(name) {
                // A group named after the user already exists: it becomes the primary.
                Some(f) => f[2]
                    .parse()
                    .with_context(|| format!("gid of group {name}"))?,
                None => {
                    let used = acc.group.ids();
                    let gid = if used.contains(&uid) {
                        lowest_free(&used, defs.gid_min, defs.gid_max).ok_or_else(|| {
                            TridentError::invalid_input(
                                "no-free-gid",
                                format!("no free gid for the group of '{name}'"),
                            )
                        })?
                    } else {
                        uid
                    };
                    acc.group.push(vec![
                        name.into(),
                        "x".into(),
                        gid.to_string(),
                        String::new(),
                    ]);
                    if let Some(gs) = &mut acc.gshadow {
                        gs.push(vec![name.into(), "!".into(), String::new(), String::new()]);
                    }
                    gid
                }
            },
        };
        let home = user.home_directory.clone().unwrap_or_else(|| {
            if name == "root" {
                PathBuf::from("/root")
            } else {
                PathBuf::from("/home").join(name)
            }
        });
        let shell = user
            .startup_command
            .clone()
            .unwrap_or_else(|| defs.shell.clone());
        acc.passwd.push(vec![
            name.into(),
            "x".into(),
            uid.to_string(),
            gid.to_string(),
            String::new(),
            home.to_string_lossy().into_owned(),
            shell,
        ]);
        Account {
            name: name.into(),
            uid,
            gid,
            home,
            created: true,
        }
    };

    // Password: new accounts are always locked; `password: {type: locked}` locks an
    // image account too (a `!` before the hash keeps it restorable).
    if let Some(sh) = &mut acc.shadow {
        match sh.get_mut(name) {
            Some(f) => {
                if user.password == Some(Password::Locked) && !f[1].starts_with('!') {
                    f[1] = format!("!{}", f[1]);
                }
            }
            None => sh.push(vec![
                name.into(),
                "!".into(),
                defs.today.to_string(),
                defs.pass_min_days.clone(),
                defs.pass_max_days.clone(),
                defs.pass_warn_age.clone(),
                String::new(),
                String::new(),
                String::new(),
            ]),
        }
    }
    for g in &user.secondary_groups {
        add_member(acc.group.get_mut(g).expect("checked above"), 3, name);
        if let Some(gs) = &mut acc.gshadow {
            if let Some(f) = gs.get_mut(g) {
                add_member(f, 3, name);
            }
        }
    }
    Ok(account)
}

/// The sshd drop-in for the managed users: `PermitRootLogin` when root is managed,
/// `DenyUsers` for users with `sshMode: block`.
pub fn render_sshd_drop_in(users: &[User]) -> String {
    let mut out = String::from("# Written by Trident from os.users[].sshMode.\n");
    if let Some(root) = users.iter().find(|u| u.name == "root") {
        let v = match root.ssh_mode {
            SshMode::Block => "no",
            SshMode::KeyOnly => "prohibit-password",
        };
        out.push_str(&format!("PermitRootLogin {v}\n"));
    }
    let deny: Vec<&str> = users
        .iter()
        .filter(|u| u.ssh_mode == SshMode::Block)
        .map(|u| u.name.as_str())
        .collect();
    if !deny.is_empty() {
        out.push_str(&format!("DenyUsers {}\n", deny.join(" ")));
    }
    out
}

/// Whether sshd_config already includes the drop-in (directly or by a glob over the dir).
fn includes_drop_in(config: &str) -> bool {
    config.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next().is_some_and(|k| k.eq_ignore_ascii_case("Include"))
            && w.any(|p| {
                p == SSHD_DROP_IN
                    || p == "/etc/ssh/sshd_config.d/*.conf"
                    || p == "sshd_config.d/*.conf"
                    || p == "/etc/ssh/sshd_config.d/*"
            })
    })
}

/// Write the drop-in and make sure sshd_config includes it (prepending an `Include`, as
/// sshd keeps the first value it reads).
pub fn configure_sshd(root: &Path, users: &[User]) -> Result<()> {
    let Some(config) = fsutil::read_in_target(root, SSHD_CONFIG)? else {
        let key_only: Vec<&str> = users
            .iter()
            .filter(|u| u.ssh_mode == SshMode::KeyOnly)
            .map(|u| u.name.as_str())
            .collect();
        if !key_only.is_empty() {
            return Err(TridentError::invalid_input(
                "sshd-not-installed",
                format!(
                    "users {} have sshMode key-only but the target OS has no {SSHD_CONFIG}",
                    key_only.join(", ")
                ),
            )
            .at("os.users")
            .into());
        }
        tracing::warn!("no {SSHD_CONFIG} in the target; skipping the sshd configuration");
        return Ok(());
    };
    if !includes_drop_in(&config) {
        let text = format!("# Trident Configuration Overrides\nInclude {SSHD_DROP_IN}\n\n{config}");
        fsutil::write_in_target(root, SSHD_CONFIG, text.as_bytes(), None)?;
    }
    fsutil::write_in_target(
        root,
        SSHD_DROP_IN,
        render_sshd_drop_in(users).as_bytes(),
        Some(0o644),
    )?;
    Ok(())
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    if fsutil::is_root() {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .with_context(|| format!("setting owner of {} to {uid}:{gid}", path.display()))?;
    }
    Ok(())
}

/// Copy `/etc/skel` (files, directories, symlinks; modes kept) into a new home.
fn copy_tree(from: &Path, to: &Path, uid: u32, gid: u32) -> Result<()> {
    for entry in fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = fs::symlink_metadata(&src)?;
        if meta.file_type().is_symlink() {
            symlink(fs::read_link(&src)?, &dst)?;
        } else if meta.is_dir() {
            fs::create_dir(&dst)?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            copy_tree(&src, &dst, uid, gid)?;
        } else if meta.is_file() {
            fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        } else {
            continue;
        }
        chown(&dst, uid, gid)?;
    }
    Ok(())
}

/// Create the home directory (from `/etc/skel`) when missing, and add the SSH keys.
pub fn set_up_home(root: &Path, a: &Account, keys: &[String], home_mode: u32) -> Result<()> {
    let home = fsutil::target_path(root, &a.home)?;
    if !home.exists() {
        if let Some(parent) = home.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::create_dir(&home).with_context(|| format!("creating {}", home.display()))?;
        fs::set_permissions(&home, fs::Permissions::from_mode(home_mode))?;
        let skel = fsutil::target_path(root, Path::new("/etc/skel"))?;
        if skel.is_dir() {
            copy_tree(&skel, &home, a.uid, a.gid).context("copying /etc/skel")?;
        }
        chown(&home, a.uid, a.gid)?;
    }
    if keys.is_empty() {
        return Ok(());
    }
    let ssh = home.join(".ssh");
    if !ssh.exists() {
        fs::create_dir(&ssh).with_context(|| format!("creating {}", ssh.display()))?;
    }
    fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700))?;
    chown(&ssh, a.uid, a.gid)?;
    let path = ssh.join("authorized_keys");
    let mut text = fs::read_to_string(&path).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for k in keys {
        let k = k.trim();
        if !text.lines().any(|l| l.trim() == k) {
            text.push_str(k);
            text.push('\n');
        }
    }
    fsutil::atomic_write(&path, text.as_bytes(), Some(0o600))?;
    chown(&path, a.uid, a.gid)?;
    Ok(())
}

/// Apply `os.users` to the root.
pub fn configure_users(root: &Path, users: &[User]) -> Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    let defs = Defaults::from_target(root)?;
    let mut acc = Accounts::load(root).context("reading the account files")?;
    let mut accounts = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let a = apply_user(&mut acc, u, &defs, &format!("os.users[{i}]"))
            .with_context(|| format!("configuring user {}", u.name))?;
        tracing::info!(user = %a.name, uid = a.uid, gid = a.gid, created = a.created, "user");
        accounts.push(a);
    }
    acc.save(root).context("writing the account files")?;
    for (u, a) in users.iter().zip(&accounts) {
        set_up_home(root, a, &u.ssh_public_keys, defs.home_mode)
            .with_context(|| format!("setting up the home of {}", u.name))?;
    }
    configure_sshd(root, users).context("configuring sshd")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/configure/etc");

    fn fixture_root() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let etc = t.path().join("etc");
        fs::create_dir_all(&etc).unwrap();
        copy_tree(Path::new(FIXTURES), &etc, 0, 0).unwrap();
        t
    }

    fn defs() -> Defaults {
        Defaults {
            today: 20000,
            ..Defaults::default()
        }
    }

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_from_login_defs() {
        let t = fixture_root();
        let d = Defaults::from_target(t.path()).unwrap();
        assert_eq!((d.uid_min, d.gid_max, d.home_mode), (1000, 60000, 0o700));
        assert_eq!(d.shell, "/bin/sh");
    }

    #[test]
    fn new_user_with_groups() {
        let t = fixture_root();
        let mut acc = Accounts::load(t.path()).unwrap();
        let mut u = user("alice");
        u.secondary_groups = vec!["sudo".into(), "docker".into()];
        u.startup_command = Some("/bin/bash".into());
        let a = apply_user(&mut acc, &u, &defs(), "os.users[0]").unwrap();
        assert_eq!((a.uid, a.gid, a.created), (1001, 1001, true));
        assert_eq!(a.home, Path::new("/home/alice"));
        let mut svc = user("svc");
        svc.uid = Some(1500);
        svc.primary_group = Some("users".into());
        svc.home_directory = Some("/srv/svc".into());
        apply_user(&mut acc, &svc, &defs(), "os.users[1]").unwrap();
        let fmt = |t: &Table| t.format();
        let tail = |s: String, n: usize| {
            s.lines()
                .rev()
                .take(n)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            tail(fmt(&acc.passwd), 3),
            "builder:x:1000:1000:Image Builder,,,:/home/builder:/bin/bash\n\
             alice:x:1001:1001::/home/alice:/bin/bash\n\
             svc:x:1500:100::/srv/svc:/bin/sh"
        );
        assert_eq!(
            tail(fmt(acc.shadow.as_ref().unwrap()), 2),
            "alice:!:20000:0:99999:7:::\nsvc:!:20000:0:99999:7:::"
        );
        let group = fmt(&acc.group);
        assert!(group.contains("\nsudo:x:27:builder,alice\n"), "{group}");
        assert!(group.contains("\ndocker:x:999:alice\n"), "{group}");
        assert!(
            group.ends_with("builder:x:1000:\nalice:x:1001:\n"),
            "{group}"
        );
        let gs = fmt(acc.gshadow.as_ref().unwrap());
        assert!(
            gs.contains("\nsudo:*::builder,alice\n") && gs.ends_with("alice:!::\n"),
            "{gs}"
        );
        // Applying again changes nothing.
        let before = acc.clone();
        apply_user(&mut acc, &u, &defs(), "os.users[0]").unwrap();
        assert_eq!(acc, before);
    }

    #[test]
    fn existing_user_updated_and_locked() {
        let t = fixture_root();
        let mut acc = Accounts::load(t.path()).unwrap();
        let mut b = user("builder");
        b.password = Some(Password::Locked);
        b.startup_command = Some("/bin/zsh".into());
        b.primary_group = Some("users".into());
        let a = apply_user(&mut acc, &b, &defs(), "os.users[0]").unwrap();
        assert_eq!((a.uid, a.gid, a.created), (1000, 100, false));
        assert_eq!(
            acc.passwd.get("builder").unwrap().join(":"),
            "builder:x:1000:100:Image Builder,,,:/home/builder:/bin/zsh"
        );
        assert!(acc.shadow.as_ref().unwrap().get("builder").unwrap()[1].starts_with("!$6$"));
        b.uid = Some(1234);
        let err = apply_user(&mut acc, &b, &defs(), "os.users[0]").unwrap_err();
        assert!(format!("{err:#}").contains("user-uid-mismatch"));
    }

    #[test]
    fn missing_groups_and_taken_uid_are_errors() {
        let t = fixture_root();
        let mut acc = Accounts::load(t.path()).unwrap();
        let before = acc.clone();
        let mut u = user("bob");
        u.secondary_groups = vec!["sudo".into(), "wheel".into()];
        let err = apply_user(&mut acc, &u, &defs(), "os.users[2]").unwrap_err();
        let e = crate::error::find_trident_error(&err).unwrap();
        assert_eq!(e.code, "group-not-found");
        assert_eq!(e.path.as_deref(), Some("os.users[2].secondaryGroups[1]"));
        assert!(e.message.contains("'wheel'"));
        assert_eq!(acc, before, "nothing changed on error");
        let mut u = user("bob");
        u.uid = Some(1000);
        let err = apply_user(&mut acc, &u, &defs(), "os.users[2]").unwrap_err();
        assert!(format!("{err:#}").contains("uid-in-use"));
    }

    #[test]
    fn full_users_step_on_root() {
        let t = fixture_root();
        let r = t.path();
        let mut alice = user("alice");
        alice.ssh_mode = SshMode::KeyOnly;
        alice.ssh_public_keys = vec!["ssh-ed25519 AAAAC3Nza alice@laptop".into()];
        let mut root_user = user("root");
        root_user.ssh_mode = SshMode::Block;
        let users = vec![alice, root_user, user("carol")];
        configure_users(r, &users).unwrap();
        let home = r.join("home/alice");
        assert_eq!(fs::metadata(&home).unwrap().mode() & 0o7777, 0o700);
        assert_eq!(
            fs::read_to_string(home.join(".bashrc")).unwrap(),
            "# ~/.bashrc from skel\n"
        );
        assert_eq!(
            fs::read_to_string(home.join(".config/app.conf")).unwrap(),
            "x\n"
        );
        let ak = home.join(".ssh/authorized_keys");
        assert_eq!(
            fs::read_to_string(&ak).unwrap(),
            "ssh-ed25519 AAAAC3Nza alice@laptop\n"
        );
        assert_eq!(fs::metadata(&ak).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(home.join(".ssh")).unwrap().mode() & 0o777,
            0o700
        );
        if fsutil::is_root() {
            assert_eq!(fs::metadata(&ak).unwrap().uid(), 1001);
            assert_eq!(fs::metadata(home.join(".bashrc")).unwrap().gid(), 1001);
        }
        assert_eq!(
            fs::read_to_string(r.join("etc/ssh/sshd_config.d/global_user.conf")).unwrap(),
            "# Written by Trident from os.users[].sshMode.\nPermitRootLogin no\nDenyUsers root carol\n"
        );
        let cfg = fs::read_to_string(r.join("etc/ssh/sshd_config")).unwrap();
        assert!(cfg.starts_with("# Trident Configuration Overrides\nInclude /etc/ssh/sshd_config.d/global_user.conf\n\n# Image"), "{cfg}");
        // Second run: same files (the Include is not prepended twice, keys not duplicated).
        configure_users(r, &users).unwrap();
        assert_eq!(
            fs::read_to_string(r.join("etc/ssh/sshd_config")).unwrap(),
            cfg
        );
        assert_eq!(
            fs::read_to_string(&ak).unwrap(),
            "ssh-ed25519 AAAAC3Nza alice@laptop\n"
        );
        assert_eq!(
            fs::read_to_string(r.join("etc/passwd"))
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("alice:"))
                .count(),
            1
        );
    }

    #[test]
    fn key_only_without_sshd_is_an_error() {
        let t = fixture_root();
        fs::remove_dir_all(t.path().join("etc/ssh")).unwrap();
        let mut u = user("alice");
        u.ssh_mode = SshMode::KeyOnly;
        let err = configure_users(t.path(), &[u]).unwrap_err();
        assert!(format!("{err:#}").contains("sshd-not-installed"));
    }
}
