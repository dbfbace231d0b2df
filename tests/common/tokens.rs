//! JWTs for the tests: valid ones, and each way of being invalid.
//!
//! Tokens are signed with `jsonwebtoken` like a real issuer would; the
//! `none` token is built by hand because the library refuses to make
//! one. Key pairs for RS256, ES256 and EdDSA are made by the `openssl`
//! command at test time, so no key material lives in the repository.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::now_secs;

/// `{"sub": sub, "exp": in one hour}`: the smallest valid claim set.
pub fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "exp": now_secs() + 3600 })
}

/// Signs `claims` with `alg` and `key`.
pub fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("signing a token")
}

/// Signs `claims` with HS256 and `secret`.
pub fn hs256(secret: &str, claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    sign(Algorithm::HS256, &key, claims)
}

/// A token with `{"alg":"none"}` and an empty signature.
pub fn unsigned_token(claims: &Value) -> String {
    let header = base64url(br#"{"alg":"none"}"#);
    let payload = base64url(claims.to_string().as_bytes());
    format!("{header}.{payload}.")
}

/// Base64url without padding, as JWTs use.
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let mut word = [0u8; 3];
        word[..group.len()].copy_from_slice(group);
        let bits = u32::from_be_bytes([0, word[0], word[1], word[2]]);
        for i in 0..=group.len() {
            let index = (bits >> (18 - 6 * i)) & 0x3f;
            out.push(ALPHABET[index as usize] as char);
        }
    }
    out
}

/// 32 hex digits from the standard library's per-process random keys.
pub fn random_secret() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let nanos = nanos.unwrap().as_nanos();
    let mut out = String::new();
    for _ in 0..2 {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        out += &format!("{:016x}", hasher.finish());
    }
    out
}

/// A private key to sign with, and its public key in a PEM file.
pub struct KeyPair {
    pub alg: Algorithm,
    pub private_pem: Vec<u8>,
    pub public_pem_file: PathBuf,
}

impl KeyPair {
    /// Makes a key pair for `alg` (RS256, ES256 or EdDSA) with `openssl`,
    /// writing `NAME.key` and `NAME.pub` into `dir`.
    pub fn generate(alg: Algorithm, dir: &Path, name: &str) -> KeyPair {
        let private_file = dir.join(format!("{name}.key"));
        let public_pem_file = dir.join(format!("{name}.pub"));
        let private = private_file.to_str().unwrap();
        let public = public_pem_file.to_str().unwrap();

        let algorithm_options: &[&str] = match alg {
            Algorithm::RS256 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Algorithm::ES256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Algorithm::EdDSA => &["-algorithm", "ed25519"],
            other => panic!("no key pair for {other:?}"),
        };
        openssl(&[&["genpkey"], algorithm_options, &["-out", private]].concat());
        openssl(&["pkey", "-in", private, "-pubout", "-out", public]);

        let private_pem = std::fs::read(&private_file).unwrap();
        KeyPair {
            alg,
            private_pem,
            public_pem_file,
        }
    }

    /// The public key's PEM text.
    pub fn public_pem(&self) -> Vec<u8> {
        std::fs::read(&self.public_pem_file).unwrap()
    }

    /// Signs `claims` with the private key.
    pub fn sign(&self, claims: &Value) -> String {
        let key = match self.alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&self.private_pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&self.private_pem),
            _ => EncodingKey::from_ed_pem(&self.private_pem),
        };
        sign(self.alg, &key.expect("loading the private key"), claims)
    }
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("running openssl");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "openssl {args:?} failed: {stderr}");
}
