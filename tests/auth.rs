//! Conformance: who may post.
//!
//! Every way a bearer token can be refused (401, the same body whatever
//! the reason), the optional audience/issuer/leeway settings, the
//! public-key algorithms (RS256, ES256, EdDSA) pinned by `--jwt-alg`,
//! and the `livecomment token` command with the data directory's
//! generated secret. Reading needs no token.

#[macro_use]
mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

/// Posts with `Authorization: <authorization>` (or none) to stream `s`.
fn post_with(server: &Server, authorization: Option<&str>) -> Response {
    let mut request = Request::post("/streams/s/comments").json(r#"{"text":"hi"}"#);
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    server.send(request)
}

/// Posts with a bearer `token`.
fn post_as(server: &Server, token: &str) -> Response {
    post_with(server, Some(&format!("Bearer {token}")))
}

/// Asserts a contract 401 and returns its body for comparison.
fn expect_refused(response: &Response, reason: &str) -> Vec<u8> {
    assert_eq!(response.status, 401, "{reason}: {response}");
    response.expect_error(401, "invalid_token");
    let challenge = response.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer "),
        "{reason}: challenge {challenge:?}"
    );
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{reason}: {challenge:?}"
    );
    response.body.clone()
}

/// Claims for `alice` with `extra` merged in (a `null` removes a claim).
fn alice_with(extra: Value) -> Value {
    let mut claims = claims("alice");
    for (key, value) in extra.as_object().unwrap() {
        match value {
            Value::Null => claims.as_object_mut().unwrap().remove(key),
            _ => claims
                .as_object_mut()
                .unwrap()
                .insert(key.clone(), value.clone()),
        };
    }
    claims
}

/// Starts a server pinned to `alg` with a fresh key pair's public key,
/// and returns it with that pair and a second, unrelated pair.
fn start_pinned(rt: &str, alg: Algorithm, dir: &TempDir) -> (Server, KeyPair, KeyPair) {
    let pinned = KeyPair::generate(alg, dir.path(), "pinned");
    let other = KeyPair::generate(alg, dir.path(), "other");
    let alg_name = format!("{alg:?}");
    let key_file = pinned.public_pem_file.to_str().unwrap().to_string();
    let args = [
        "--jwt-alg",
        alg_name.as_str(),
        "--jwt-public-key",
        key_file.as_str(),
    ];
    let server = Server::start_without_secret(rt, dir.path(), &args);
    (server, pinned, other)
}

/// With `alg` pinned: the pinned key's tokens are accepted, and tokens
/// from another key, HS256 tokens keyed with the public key (algorithm
/// confusion) and `none` tokens are refused.
fn check_pinned_algorithm(rt: &str, alg: Algorithm) {
    let dir = TempDir::new("keys");
    let (server, pinned, other) = start_pinned(rt, alg, &dir);

    let comment = post_as(&server, &pinned.sign(&claims("alice"))).expect_created();
    assert_eq!(comment["author"], "alice");

    expect_refused(
        &post_as(&server, &other.sign(&claims("alice"))),
        "another key",
    );
    let confused = hs256(
        std::str::from_utf8(&pinned.public_pem()).unwrap(),
        &claims("alice"),
    );
    expect_refused(
        &post_as(&server, &confused),
        "HS256 keyed with the public key",
    );
    expect_refused(
        &post_as(&server, &unsigned_token(&claims("alice"))),
        "alg none",
    );
}

conformance! {
    /// No `Authorization` header: 401 with the Bearer challenge.
    fn post_without_token_is_401_with_www_authenticate(rt) {
        let server = Server::start(rt, &[]);

        let response = post_with(&server, None);

        expect_refused(&response, "no token");
    }

    /// Every reason to refuse a token gives the same 401 and body, so
    /// the response tells an attacker nothing about why.
    fn every_refused_token_gets_the_same_401(rt) {
        let server = Server::start(rt, &[]);
        let secret = server.secret();
        let now = now_secs();
        let bearer = |token: String| format!("Bearer {token}");
        let signed_with = |extra| bearer(hs256(secret, &alice_with(extra)));
        let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
        let other_hmac = |alg| bearer(sign(alg, &key, &claims("alice")));

        let refused = [
            ("garbage", "Bearer garbage".to_string()),
            ("empty bearer", "Bearer ".to_string()),
            ("basic scheme", "Basic YWxpY2U6c2VjcmV0".to_string()),
            ("wrong secret", bearer(hs256("not-the-secret", &claims("alice")))),
            ("expired", signed_with(json!({ "exp": now - 120 }))),
            ("nbf later", signed_with(json!({ "nbf": now + 3600 }))),
            ("no sub", signed_with(json!({ "sub": null }))),
            ("no exp", signed_with(json!({ "exp": null }))),
            ("alg none", bearer(unsigned_token(&claims("alice")))),
            ("HS384", other_hmac(Algorithm::HS384)),
            ("HS512", other_hmac(Algorithm::HS512)),
        ];

        let first_body = expect_refused(&post_with(&server, None), "no token");
        for (reason, authorization) in &refused {
            let body = expect_refused(&post_with(&server, Some(authorization)), reason);
            assert_eq!(body, first_body, "{reason}: the body differs from the no-token body");
        }
    }

    /// The default leeway is 0 s: a token that expired seconds ago fails.
    fn token_expired_seconds_ago_is_refused_by_default(rt) {
        let server = Server::start(rt, &[]);
        let expired = alice_with(json!({ "exp": now_secs() - 5 }));

        let response = post_as(&server, &hs256(server.secret(), &expired));

        expect_refused(&response, "expired 5 s ago");
    }

    /// `--jwt-leeway 60s` tolerates a clock skew of up to 60 s, no more.
    fn leeway_tolerates_clock_skew_up_to_its_value(rt) {
        let server = Server::start(rt, &["--jwt-leeway", "60s"]);
        let now = now_secs();
        let token = |extra| hs256(server.secret(), &alice_with(extra));

        post_as(&server, &token(json!({ "exp": now - 20 }))).expect_created();
        post_as(&server, &token(json!({ "nbf": now + 20 }))).expect_created();
        expect_refused(&post_as(&server, &token(json!({ "exp": now - 120 }))), "exp - 120");
        expect_refused(&post_as(&server, &token(json!({ "nbf": now + 120 }))), "nbf + 120");
    }

    /// With `--jwt-audience` and `--jwt-issuer`, both claims are required
    /// and must match.
    fn audience_and_issuer_are_checked_when_configured(rt) {
        let args = ["--jwt-audience", "livecomment", "--jwt-issuer", "https://auth.test"];
        let server = Server::start(rt, &args);
        let token = |extra| hs256(server.secret(), &alice_with(extra));
        let good = json!({ "aud": "livecomment", "iss": "https://auth.test" });

        post_as(&server, &token(good)).expect_created();
        let refused = [
            ("wrong aud", json!({ "aud": "other", "iss": "https://auth.test" })),
            ("no aud", json!({ "iss": "https://auth.test" })),
            ("wrong iss", json!({ "aud": "livecomment", "iss": "https://evil.test" })),
            ("no iss", json!({ "aud": "livecomment" })),
        ];
        let mut not_refused = Vec::new();
        for (reason, extra) in refused {
            let response = post_as(&server, &token(extra));
            match response.status {
                401 => _ = expect_refused(&response, reason),
                _ => not_refused.push(reason),
            }
        }
        assert!(not_refused.is_empty(), "not refused with 401: {not_refused:?}");
    }

    /// Without `--jwt-audience`/`--jwt-issuer`, tokens carrying those
    /// claims are still accepted.
    fn audience_and_issuer_are_ignored_when_not_configured(rt) {
        let server = Server::start(rt, &[]);
        let extra = json!({ "aud": "anything", "iss": "https://anyone.test" });

        let response = post_as(&server, &hs256(server.secret(), &alice_with(extra)));

        response.expect_created();
    }

    /// RS256 pinned with a public key file.
    fn rs256_pinned_accepts_its_key_only(rt) {
        check_pinned_algorithm(rt, Algorithm::RS256);
    }

    /// ES256 pinned with a public key file.
    fn es256_pinned_accepts_its_key_only(rt) {
        check_pinned_algorithm(rt, Algorithm::ES256);
    }

    /// EdDSA (Ed25519) pinned with a public key file.
    fn eddsa_pinned_accepts_its_key_only(rt) {
        check_pinned_algorithm(rt, Algorithm::EdDSA);
    }

    /// With RS256 pinned, an HS256 token is refused even when signed with
    /// the secret the data directory holds.
    fn hs256_token_is_refused_when_rs256_is_pinned(rt) {
        let dir = TempDir::new("keys");
        let (server, _pinned, _other) = start_pinned(rt, Algorithm::RS256, &dir);
        let file_secret = std::fs::read_to_string(dir.path().join("jwt-secret"));
        let secrets = [Some("some-secret".to_string()), file_secret.ok()];

        for secret in secrets.iter().flatten() {
            let token = hs256(secret.trim(), &claims("alice"));
            expect_refused(&post_as(&server, &token), "HS256 while RS256 is pinned");
        }
    }

    /// `livecomment token` signs with the given secret, carrying the
    /// name, and the server accepts it.
    fn token_command_prints_a_token_the_server_accepts(rt) {
        let server = Server::start(rt, &[]);

        let args = ["token", "--sub", "alice", "--name", "Alice", "--jwt-secret", server.secret()];
        let token = token_from(&run_livecomment(&args, &[]));

        let comment = post_as(&server, &token).expect_created();
        assert_eq!(comment["author"], "alice");
        assert_eq!(comment["name"], "Alice");
    }

    /// The secret can also come from `LIVECOMMENT_JWT_SECRET`.
    fn token_command_reads_the_secret_from_the_environment(rt) {
        let server = Server::start(rt, &[]);
        let env = [("LIVECOMMENT_JWT_SECRET", server.secret())];

        let token = token_from(&run_livecomment(&["token", "--sub", "bob"], &env));

        assert_eq!(post_as(&server, &token).expect_created()["author"], "bob");
    }

    /// Without a secret, `serve` creates `DIR/jwt-secret` with mode 0600,
    /// and `token --data-dir DIR` signs with it.
    fn serve_generates_a_private_secret_that_the_token_command_uses(rt) {
        let dir = TempDir::new("data");
        let server = Server::start_without_secret(rt, dir.path(), &[]);

        let secret_file = dir.path().join("jwt-secret");
        let metadata = std::fs::metadata(&secret_file).expect("DIR/jwt-secret");
        let mode = metadata.permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "jwt-secret mode {:o}", mode & 0o777);
        let token = token_from_data_dir(&dir, "carol");

        assert_eq!(post_as(&server, &token).expect_created()["author"], "carol");
    }

    /// A restarted server keeps the generated secret, so tokens survive.
    fn generated_secret_is_reused_after_a_restart(rt) {
        let dir = TempDir::new("data");
        drop(Server::start_without_secret(rt, dir.path(), &[]));
        let secret_before = std::fs::read(dir.path().join("jwt-secret")).unwrap();
        let token = token_from_data_dir(&dir, "dave");

        let server = Server::start_without_secret(rt, dir.path(), &[]);

        assert_eq!(std::fs::read(dir.path().join("jwt-secret")).unwrap(), secret_before);
        post_as(&server, &token).expect_created();
    }

    /// Reading a stream needs no token: history, info and events.
    fn reading_needs_no_token(rt) {
        let server = Server::start(rt, &[]);

        assert_eq!(server.get("/streams/s/comments").status, 200);
        assert_eq!(server.get("/streams/s").status, 200);
        let events = server.sse("/streams/s/events");
        assert_eq!(events.head().status, 200);
    }
}

/// `--ttl` sets how long the printed token lives. (The CLI alone, so it
/// runs once rather than per runtime.)
#[test]
fn token_command_ttl_sets_the_expiry() {
    let secret = random_secret();
    let before = now_secs();

    let args = [
        "token",
        "--sub",
        "alice",
        "--ttl",
        "2m",
        "--jwt-secret",
        &secret,
    ];
    let token = token_from(&run_livecomment(&args, &[]));

    let exp = decode_claims(&token, &secret)["exp"]
        .as_u64()
        .expect("an exp claim");
    let after = now_secs();
    assert!(
        before + 120 <= exp && exp <= after + 120,
        "exp {exp} is not now + 2m"
    );
}

/// The single line a successful `livecomment token` printed.
fn token_from(output: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "token command failed: {stderr}");
    assert!(
        stdout.ends_with('\n'),
        "token output must end in a newline: {stdout:?}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "token output must be one line: {stdout:?}");
    lines[0].to_string()
}

/// A token for `sub` from `livecomment token --data-dir DIR`.
fn token_from_data_dir(dir: &TempDir, sub: &str) -> String {
    let data_dir = dir.path().to_str().unwrap();
    let args = ["token", "--sub", sub, "--data-dir", data_dir];
    token_from(&run_livecomment(&args, &[]))
}

/// The claims of an HS256 token, verified with `secret`.
fn decode_claims(token: &str, secret: &str) -> Value {
    let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("a valid HS256 token")
        .claims
}
