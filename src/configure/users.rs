//! `os.users`: accounts, home directories, SSH keys and the sshd drop-in.

use anyhow::Result;
use std::path::Path;

use crate::config::User;

pub fn configure_users(root: &Path, users: &[User]) -> Result<()> {
    let _ = root;
    anyhow::ensure!(users.is_empty(), "os.users is not implemented yet");
    Ok(())
}
