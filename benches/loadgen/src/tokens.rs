//! Keys and tokens: the harness is its own identity provider.
//!
//! A run picks a random HS256 secret and passes it to every server with
//! `--jwt-secret`; for the cpu-hog scenario it generates an RSA key pair
//! once, writes the public half to a PEM file for `--jwt-public-key`, and
//! signs RS256 tokens with the private half. Tokens are minted up front,
//! one per benchmark user, and reused: the server still verifies the
//! signature of every post.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::Serialize;

/// How long minted tokens stay valid: longer than any run.
const TOKEN_TTL_SECS: u64 = 6 * 3600;

/// RSA modulus size for the RS256 key pair.
const RSA_BITS: usize = 2048;

/// The secret and keys of one run.
pub struct Credentials {
    /// HS256 secret, 64 hex digits from the OS random source.
    pub secret: String,
    rsa: Option<RsaPair>,
}

struct RsaPair {
    private_pem: String,
    public_pem_path: PathBuf,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    name: &'a str,
    exp: u64,
}

impl Credentials {
    pub fn new() -> Result<Credentials> {
        Ok(Credentials {
            secret: random_hex(32)?,
            rsa: None,
        })
    }

    /// Generates the RS256 key pair on first use and returns the path of
    /// its public key PEM, written into `dir`.
    pub fn rsa_public_key(&mut self, dir: &Path) -> Result<PathBuf> {
        if let Some(pair) = &self.rsa {
            return Ok(pair.public_pem_path.clone());
        }
        let pair = RsaPair::generate(dir)?;
        let path = pair.public_pem_path.clone();
        self.rsa = Some(pair);
        Ok(path)
    }

    /// HS256 tokens for users `bench-0` … `bench-{n-1}`.
    pub fn hs256_tokens(&self, n: usize) -> Result<Vec<String>> {
        let key = EncodingKey::from_secret(self.secret.as_bytes()).context("HS256 key")?;
        mint(Algorithm::HS256, &key, n)
    }

    /// RS256 tokens for users `bench-0` … `bench-{n-1}`; the key pair must
    /// exist ([`Credentials::rsa_public_key`]).
    pub fn rs256_tokens(&self, n: usize) -> Result<Vec<String>> {
        let pair = self.rsa.as_ref().context("no RSA key pair generated yet")?;
        let key = EncodingKey::from_rsa_pem(pair.private_pem.as_bytes())
            .context("loading the generated RSA private key")?;
        mint(Algorithm::RS256, &key, n)
    }
}

impl RsaPair {
    fn generate(dir: &Path) -> Result<RsaPair> {
        let private =
            rsa::PrivateKey::new(&mut getrandom::SysRng, RSA_BITS).context("generating RSA key")?;
        let private_pem = private
            .to_pkcs8_pem(LineEnding::LF)
            .context("encoding RSA private key")?
            .to_string();
        let public_pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .context("encoding RSA public key")?;

        fs::create_dir_all(dir)?;
        let public_pem_path = dir.join("jwt-rs256-public.pem");
        fs::write(&public_pem_path, public_pem)
            .with_context(|| format!("writing {}", public_pem_path.display()))?;
        Ok(RsaPair {
            private_pem,
            public_pem_path,
        })
    }
}

fn mint(alg: Algorithm, key: &EncodingKey, n: usize) -> Result<Vec<String>> {
    let exp = unix_secs() + TOKEN_TTL_SECS;
    (0..n)
        .map(|i| {
            let sub = format!("bench-{i}");
            let claims = Claims {
                sub: &sub,
                name: "Bench",
                exp,
            };
            jsonwebtoken::encode(&Header::new(alg), &claims, key).context("signing a token")
        })
        .collect()
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `bytes` random bytes from the OS, as lowercase hex.
fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
