//! Micro-benchmarks of the core, with no sockets and no runtime.
//!
//! What they measure: the CPU cost of the service's own work per
//! operation: fanning one comment out to N viewers' mailboxes and
//! draining them (`fanout/*`), encoding an SSE event (`sse/*`), parsing
//! a request head (`http/*`), and verifying a token per algorithm
//! (`jwt/*`).
//!
//! What they do not: syscalls, wake-up latency, scheduling, or the
//! network. Those are what the runtimes differ in, and the load
//! generator (`livecomment bench`) measures them end to end.
//!
//! Run: `cargo bench --bench core`. The keys under `benches/keys/` are
//! throwaway test keys, made with `openssl` for these benchmarks only.

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use livecomment_core::auth::{self, AuthConfig, Authenticator, Claims, KeySource};
use livecomment_core::comment::Comment;
use livecomment_core::hub::{Hub, HubConfig, Transport};
use livecomment_core::metrics::Metrics;
use livecomment_core::store::{LocalBroker, MemoryStore};
use livecomment_core::{http, sse};
use std::hint::black_box;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for viewers in [1usize, 100, 10_000] {
        let hub = Hub::new(
            HubConfig {
                history: 1000,
                viewer_queue: 1 << 20,
            },
            Box::new(MemoryStore),
            Box::new(LocalBroker),
            Arc::new(Metrics::default()),
        );
        let subscribed: Vec<_> = (0..viewers)
            .map(|_| hub.subscribe("hot", None, Transport::Sse).unwrap().0)
            .collect();
        let mut out = BytesMut::with_capacity(4096);
        group.throughput(Throughput::Elements(viewers as u64));
        group.bench_with_input(
            BenchmarkId::new("publish_and_drain", format!("{viewers}_viewers")),
            &viewers,
            |b, _| {
                b.iter(|| {
                    hub.publish("hot", "alice", Some("Alice"), "Goal! What a match", 0)
                        .unwrap();
                    for viewer in &subscribed {
                        out.clear();
                        viewer.mailbox().drain_into(&mut out, Waker::noop());
                    }
                })
            },
        );
    }
    group.finish();
}

fn sse_encoding(c: &mut Criterion) {
    let comment = Comment {
        id: 42,
        stream: "match-7".into(),
        author: "alice".into(),
        name: Some("Alice".into()),
        text: "Goal! \"What\" a match\nsecond line".into(),
        ts: 1_764_783_000_123,
    };
    c.bench_function("sse/encode_comment", |b| {
        b.iter(|| {
            let json = sse::comment_json(black_box(&comment));
            sse::comment_event(&json, comment.id)
        })
    });
}

fn http_parsing(c: &mut Criterion) {
    let head = b"POST /streams/match-7/comments HTTP/1.1\r\n\
        Host: 127.0.0.1:8080\r\n\
        User-Agent: bench/1.0\r\n\
        Authorization: Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.e30.sig\r\n\
        Content-Type: application/json\r\n\
        Content-Length: 16\r\n\
        Accept: */*\r\n\r\n";
    c.bench_function("http/parse_post_head", |b| {
        b.iter(|| http::parse_head(black_box(head), 8192, 64))
    });
}

fn jwt(c: &mut Criterion) {
    let claims = Claims {
        sub: "alice".into(),
        exp: auth::unix_now() + 3600,
        name: Some("Alice".into()),
        role: None,
    };
    let mut group = c.benchmark_group("jwt");
    for (alg, private, public) in [
        (Algorithm::HS256, None, None),
        (
            Algorithm::RS256,
            Some(include_bytes!("keys/rs256-private.pem").as_slice()),
            Some(include_bytes!("keys/rs256-public.pem").as_slice()),
        ),
        (
            Algorithm::ES256,
            Some(include_bytes!("keys/es256-private.pem").as_slice()),
            Some(include_bytes!("keys/es256-public.pem").as_slice()),
        ),
        (
            Algorithm::EdDSA,
            Some(include_bytes!("keys/ed25519-private.pem").as_slice()),
            Some(include_bytes!("keys/ed25519-public.pem").as_slice()),
        ),
    ] {
        let (token, key) = match (private, public) {
            (Some(private), Some(public)) => {
                let encoding = match alg {
                    Algorithm::RS256 => EncodingKey::from_rsa_pem(private),
                    Algorithm::ES256 => EncodingKey::from_ec_pem(private),
                    _ => EncodingKey::from_ed_pem(private),
                }
                .unwrap();
                let token = jsonwebtoken::encode(&Header::new(alg), &claims, &encoding).unwrap();
                let key = KeySource::PublicKeyPem {
                    alg,
                    pem: public.to_vec(),
                };
                (token, key)
            }
            _ => (
                auth::mint_hs256(b"bench-secret", &claims).unwrap(),
                KeySource::Secret(b"bench-secret".to_vec()),
            ),
        };
        let verifier = Authenticator::new(&AuthConfig {
            key,
            audience: None,
            issuer: None,
            leeway: Duration::ZERO,
        })
        .unwrap();
        group.bench_function(format!("verify/{alg:?}"), |b| {
            b.iter(|| verifier.verify(black_box(&token)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, fanout, sse_encoding, http_parsing, jwt);
criterion_main!(benches);
