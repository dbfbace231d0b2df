//! The HS256 secret: from the flag, the environment, or the data
//! directory, where `serve` creates one when none is given.
//!
//! There is no built-in fallback secret: a server that silently signed
//! with a well-known key would accept anyone's tokens.

use anyhow::{Context, Result, bail};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "jwt-secret";

fn secret_path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// For `serve`: the given secret, else the data directory's, else a new
/// random one written there with mode 0600.
pub fn for_serve(given: Option<String>, data_dir: &Path) -> Result<Vec<u8>> {
    if let Some(secret) = given {
        return non_empty(secret.into_bytes());
    }
    let path = secret_path(data_dir);
    if path.exists() {
        return read(&path);
    }

    fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let secret = random_hex(32)?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(secret.as_bytes())?;
    tracing::info!(path = %path.display(), "generated a new JWT secret");
    Ok(secret.into_bytes())
}

/// For `token`: the given secret, else the data directory's.
pub fn for_token(given: Option<String>, data_dir: &Path) -> Result<Vec<u8>> {
    if let Some(secret) = given {
        return non_empty(secret.into_bytes());
    }
    let path = secret_path(data_dir);
    if !path.exists() {
        bail!(
            "no secret: pass --jwt-secret, set LIVECOMMENT_JWT_SECRET, or run `livecomment serve` \
             once so it creates {}",
            path.display()
        );
    }
    read(&path)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "the secret file is readable by others; chmod 600 it");
    }
    let secret =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    non_empty(secret.trim().as_bytes().to_vec())
}

fn non_empty(secret: Vec<u8>) -> Result<Vec<u8>> {
    if secret.is_empty() {
        bail!("the JWT secret is empty");
    }
    Ok(secret)
}

/// `bytes` random bytes from the kernel, hex-encoded.
fn random_hex(bytes: usize) -> Result<String> {
    let mut raw = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("cannot read /dev/urandom")?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}
