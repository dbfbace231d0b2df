//! Stateless JWT checks (CONTRACT.md, "Auth").
//!
//! An [`Authenticator`] is built once at start-up from an [`AuthConfig`]
//! and shared read-only by every connection. It pins one algorithm: a
//! token whose header names any other (including `none`, which
//! `jsonwebtoken` cannot even parse) is refused. `exp` and `sub` are
//! required, `nbf` is honoured, `aud`/`iss` are checked when configured,
//! and the clock leeway is capped at 60 s.
//!
//! Every refusal is the same [`ApiError::InvalidToken`], so the response
//! never tells a caller which check failed; the reason is logged at
//! `debug` for the operator (never the token itself).

use crate::error::ApiError;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest display name a token may carry.
pub const MAX_NAME_CHARS: usize = 64;
/// The largest clock leeway the service allows.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);

/// The claims the service reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user: becomes a comment's `author`.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Optional display name: becomes a comment's `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Optional role; `"moderator"` may delete comments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

impl Claims {
    pub fn is_moderator(&self) -> bool {
        self.role.as_deref() == Some("moderator")
    }
}

/// Which key verifies tokens.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// HS256 with a shared secret.
    Secret(Vec<u8>),
    /// RS256, ES256 or EdDSA with a PEM public key.
    PublicKeyPem { alg: Algorithm, pem: Vec<u8> },
}

/// How tokens are checked.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub key: KeySource,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub leeway: Duration,
}

/// Why an [`Authenticator`] could not be built.
#[derive(Debug)]
pub struct AuthSetupError(pub String);

impl std::fmt::Display for AuthSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthSetupError {}

impl From<jsonwebtoken::errors::Error> for AuthSetupError {
    fn from(err: jsonwebtoken::errors::Error) -> Self {
        AuthSetupError(format!("cannot use the key: {err}"))
    }
}

/// Verifies bearer tokens. Cheap to share: immutable after start-up.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        install_crypto_provider();
        if config.leeway > MAX_LEEWAY {
            return Err(AuthSetupError("JWT leeway must be at most 60 s".into()));
        }

        let (alg, key) = match &config.key {
            KeySource::Secret(secret) if secret.is_empty() => {
                return Err(AuthSetupError("the JWT secret is empty".into()));
            }
            KeySource::Secret(secret) => (Algorithm::HS256, DecodingKey::from_secret(secret)?),
            KeySource::PublicKeyPem { alg, pem } => (*alg, public_key(*alg, pem)?),
        };

        let mut validation = Validation::new(alg);
        // A configured audience or issuer must also be present: without
        // this, `jsonwebtoken` only checks the claims a token happens to
        // carry.
        let mut required = vec!["exp", "sub"];
        required.extend(config.audience.as_ref().map(|_| "aud"));
        required.extend(config.issuer.as_ref().map(|_| "iss"));
        validation.set_required_spec_claims(&required);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = config.leeway.as_secs();
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Authenticator { key, validation })
    }

    /// The configured clock leeway, in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.validation.leeway
    }

    /// Checks an `Authorization` header value (`Bearer <token>`).
    pub fn verify_header(&self, header: Option<&str>) -> Result<Claims, ApiError> {
        let token = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(ApiError::InvalidToken)?;
        self.verify(token)
    }

    /// Checks a bare token.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|err| {
                tracing::debug!(reason = %err, "token refused");
                ApiError::InvalidToken
            })?;
        let claims = data.claims;
        let name_too_long = claims
            .name
            .as_ref()
            .is_some_and(|n| n.chars().count() > MAX_NAME_CHARS);
        if claims.sub.is_empty() || name_too_long {
            tracing::debug!("token refused: empty sub or name too long");
            return Err(ApiError::InvalidToken);
        }
        Ok(claims)
    }
}

fn public_key(alg: Algorithm, pem: &[u8]) -> Result<DecodingKey, AuthSetupError> {
    let key = match alg {
        Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
        Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        other => {
            return Err(AuthSetupError(format!(
                "{other:?} is not supported with a public key: use RS256, ES256 or EdDSA"
            )));
        }
    };
    key.map_err(|err| AuthSetupError(format!("cannot read the {alg:?} public key: {err}")))
}

/// Makes RustCrypto `jsonwebtoken`'s provider, explicitly, so the choice
/// never depends on which features other crates in the build enable.
fn install_crypto_provider() {
    // An error only means a provider is installed already.
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

/// Signs an HS256 token for `livecomment token` and for tests.
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, AuthSetupError> {
    install_crypto_provider();
    let key = EncodingKey::from_secret(secret)
        .map_err(|err| AuthSetupError(format!("cannot use the secret: {err}")))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key)
        .map_err(|err| AuthSetupError(format!("cannot sign the token: {err}")))
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig {
            key: KeySource::Secret(SECRET.to_vec()),
            audience: None,
            issuer: None,
            leeway: Duration::ZERO,
        })
        .unwrap()
    }

    fn claims(exp_offset: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            exp: (unix_now() as i64 + exp_offset) as u64,
            name: Some("Alice".into()),
            role: None,
        }
    }

    #[test]
    fn a_minted_token_verifies() {
        let token = mint_hs256(SECRET, &claims(60)).unwrap();
        let got = auth()
            .verify_header(Some(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(got.sub, "alice");
        assert_eq!(got.name.as_deref(), Some("Alice"));
    }

    #[test]
    fn expired_wrong_secret_and_missing_header_are_all_invalid_token() {
        let expired = mint_hs256(SECRET, &claims(-120)).unwrap();
        let wrong = mint_hs256(b"other", &claims(60)).unwrap();
        let a = auth();
        assert_eq!(a.verify(&expired), Err(ApiError::InvalidToken));
        assert_eq!(a.verify(&wrong), Err(ApiError::InvalidToken));
        assert_eq!(a.verify_header(None), Err(ApiError::InvalidToken));
        assert_eq!(
            a.verify_header(Some("Basic abc")),
            Err(ApiError::InvalidToken)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        // {"alg":"none"} . {"sub":"alice","exp":9999999999} . (no signature)
        let token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(auth().verify(token), Err(ApiError::InvalidToken));
    }

    #[test]
    fn a_configured_audience_must_be_present() {
        let a = Authenticator::new(&AuthConfig {
            key: KeySource::Secret(SECRET.to_vec()),
            audience: Some("live".into()),
            issuer: None,
            leeway: Duration::ZERO,
        })
        .unwrap();
        let token = mint_hs256(SECRET, &claims(60)).unwrap();
        assert_eq!(a.verify(&token), Err(ApiError::InvalidToken));
    }

    #[test]
    fn leeway_over_a_minute_is_a_setup_error() {
        let config = AuthConfig {
            key: KeySource::Secret(SECRET.to_vec()),
            audience: None,
            issuer: None,
            leeway: Duration::from_secs(61),
        };
        assert!(Authenticator::new(&config).is_err());
    }
}
