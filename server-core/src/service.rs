//! The service: routes, handlers, and the state every connection shares.
//!
//! A request goes through two steps, so that refusals that do not need
//! the body happen before it is read (CONTRACT.md: 413 "refused before
//! reading it"):
//!
//! 1. [`Service::prepare`] looks at the head alone: route (404, 405),
//!    framing (411, 413), media type (415) and the token (401), and says
//!    how many body bytes to read.
//! 2. [`Service::handle`] gets the body and produces an [`Outcome`]: a
//!    response, or a viewer to stream events to.

use crate::auth::{Authenticator, Claims};
use crate::comment::{self, is_valid_stream_name};
use crate::config::Config;
use crate::error::ApiError;
use crate::http::{Head, Response, percent_decode, query_param};
use crate::hub::{Entry, Hub, HubConfig, Replay, Transport, Viewer};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::store::{Broker, LocalBroker, MemoryStore, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The largest `limit` a history request may ask for.
pub const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

/// Everything connections share. Built once, then only read, except for
/// the hub's and limiter's own locked state and the atomics below.
pub struct Service {
    config: Config,
    runtime: &'static str,
    auth: Authenticator,
    limiter: RateLimiter,
    hub: Hub,
    metrics: Arc<Metrics>,
    /// Set once by [`Service::begin_shutdown`]; read by every request.
    draining: AtomicBool,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Index,
    Health,
    Metrics,
    Stream(String),
    History(String),
    Post(String),
    Events(String),
    WebSocket(String),
    Delete(String, u64),
}

/// A request whose head has been accepted.
#[derive(Debug)]
pub struct Prepared {
    pub route: Route,
    /// Body bytes to read before [`Service::handle`].
    pub body_len: usize,
    /// The token's claims, for routes that need one.
    pub claims: Option<Claims>,
}

/// What a request turns into.
pub enum Outcome {
    Respond(Response),
    /// Stream events: send the replay, then live events from the viewer.
    Sse {
        viewer: Viewer,
        replay: Replay,
    },
    /// Switch to WebSocket: answer 101 with `accept`, send the replay,
    /// then live events; `claims` allow posting over the socket.
    WebSocket {
        viewer: Viewer,
        replay: Replay,
        claims: Option<Claims>,
        accept: String,
        stream: String,
    },
}

impl Service {
    /// A single-node service keeping history in memory.
    pub fn new(config: Config, auth: Authenticator, runtime: &'static str) -> Self {
        Self::with_seams(
            config,
            auth,
            runtime,
            Box::new(MemoryStore),
            Box::new(LocalBroker),
        )
    }

    /// A service with a given store and broker.
    pub fn with_seams(
        config: Config,
        auth: Authenticator,
        runtime: &'static str,
        store: Box<dyn Store>,
        broker: Box<dyn Broker>,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let hub_config = HubConfig {
            history: config.history,
            viewer_queue: config.viewer_queue,
        };
        Service {
            limiter: RateLimiter::new(config.rate_per_sec, config.rate_burst),
            hub: Hub::new(hub_config, store, broker, metrics.clone()),
            config,
            runtime,
            auth,
            metrics,
            draining: AtomicBool::new(false),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The runtime's name, as shown in `/metrics`.
    pub fn runtime(&self) -> &'static str {
        self.runtime
    }

    /// Starts draining: `/healthz` turns 503, new viewers are refused,
    /// responses close their connections, and every open event stream
    /// ends so its client reconnects elsewhere.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::Release);
        self.hub.close_all();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Step 1: everything decided by the head alone.
    pub fn prepare(&self, head: &Head) -> Result<Prepared, ApiError> {
        let route = route(&head.method, &head.path)?;
        if head.chunked {
            return Err(ApiError::LengthRequired);
        }
        let body_len = head.content_length.unwrap_or(0);
        if body_len > self.config.max_body {
            return Err(ApiError::TooLarge);
        }

        let claims = match &route {
            Route::Post(_) => {
                if head.content_length.is_none() {
                    return Err(ApiError::LengthRequired);
                }
                if !is_json(head.content_type.as_deref()) {
                    return Err(ApiError::UnsupportedMediaType);
                }
                Some(self.auth.verify_header(head.authorization.as_deref())?)
            }
            Route::Delete(..) => {
                let claims = self.auth.verify_header(head.authorization.as_deref())?;
                if !claims.is_moderator() {
                    return Err(ApiError::Forbidden("only moderators may delete comments"));
                }
                Some(claims)
            }
            _ => None,
        };
        Ok(Prepared {
            route,
            body_len,
            claims,
        })
    }

    /// Step 2: the request with its body.
    pub fn handle(&self, head: &Head, req: Prepared, body: &[u8]) -> Result<Outcome, ApiError> {
        let query = head.query.as_deref();
        let response = match req.route {
            Route::Index => Response::new(200)
                .header("Content-Type", "text/html; charset=utf-8")
                .body(crate::page::INDEX_HTML),
            Route::Health => self.health(),
            Route::Metrics => Response::new(200)
                .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                .body(self.metrics.render(self.runtime)),
            Route::Stream(name) => self.stream_info(&name),
            Route::History(name) => self.history(&name, query)?,
            Route::Post(name) => self.post(&name, req.claims, body)?,
            Route::Delete(name, id) => {
                self.hub.delete(&name, id)?;
                Response::new(204)
            }
            Route::Events(name) => return self.events(&name, head),
            Route::WebSocket(name) => return self.websocket(name, head),
        };
        Ok(Outcome::Respond(response))
    }

    fn health(&self) -> Response {
        if self.is_draining() {
            Response::error(&ApiError::Unavailable("draining"))
        } else if !self.hub.healthy() {
            Response::error(&ApiError::Unavailable("storage is failing"))
        } else {
            Response::text(200, "ok")
        }
    }

    fn stream_info(&self, name: &str) -> Response {
        let (last_id, viewers) = self.hub.info(name);
        #[derive(serde::Serialize)]
        struct Info<'a> {
            stream: &'a str,
            last_id: u64,
            viewers: usize,
        }
        let body = serde_json::to_vec(&Info {
            stream: name,
            last_id,
            viewers,
        })
        .unwrap_or_default();
        Response::json(200, body)
    }

    fn history(&self, name: &str, query: Option<&str>) -> Result<Response, ApiError> {
        let since = parse_u64(query_param(query, "since"))?.unwrap_or(0);
        let limit = match parse_u64(query_param(query, "limit"))? {
            None => DEFAULT_PAGE,
            Some(n) if (1..=MAX_PAGE as u64).contains(&n) => n as usize,
            Some(_) => return Err(ApiError::BadRequest("limit must be between 1 and 1000")),
        };
        let page = self.hub.history(name, since, limit);

        // The comments are already JSON: splice them in, do not re-encode.
        let mut body =
            Vec::with_capacity(64 + page.comments.iter().map(|c| c.len() + 1).sum::<usize>());
        body.extend_from_slice(b"{\"stream\":");
        body.extend_from_slice(serde_json::Value::from(name).to_string().as_bytes());
        body.extend_from_slice(b",\"comments\":[");
        for (i, c) in page.comments.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(c);
        }
        body.extend_from_slice(
            format!(
                "],\"first_id\":{},\"last_id\":{}}}",
                page.first_id, page.last_id
            )
            .as_bytes(),
        );
        Ok(Response::json(200, body))
    }

    fn post(&self, name: &str, claims: Option<Claims>, body: &[u8]) -> Result<Response, ApiError> {
        let claims = claims.ok_or(ApiError::InvalidToken)?;
        let text = comment::parse_post_body(body)?;
        let entry = self.publish(name, &claims, &text)?;
        let location = format!("/streams/{name}/comments/{}", entry.id);
        Ok(Response::json(201, entry.json.to_vec()).header("Location", &location))
    }

    /// Publishes validated `text` as `claims`' user, after the user's
    /// rate limit; shared by HTTP POST and WebSocket posts.
    pub fn publish(&self, stream: &str, claims: &Claims, text: &str) -> Result<Entry, ApiError> {
        self.limiter
            .check(&claims.sub, Instant::now())
            .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
        let ts = comment::unix_millis();
        self.hub
            .publish(stream, &claims.sub, claims.name.as_deref(), text, ts)
    }

    /// Whether a token checked at connect time is still unexpired, for
    /// long-lived WebSocket sessions that post later.
    pub fn still_valid(&self, claims: &Claims) -> bool {
        claims.exp + self.auth.leeway_secs() > crate::auth::unix_now()
    }

    fn websocket(&self, name: String, head: &Head) -> Result<Outcome, ApiError> {
        if self.is_draining() {
            return Err(ApiError::Unavailable("draining"));
        }
        let key = match (&head.websocket_key, head.upgrade_websocket) {
            (Some(key), true) => key,
            _ => return Err(ApiError::BadRequest("expected a WebSocket upgrade")),
        };
        if head.websocket_version.as_deref() != Some("13") {
            return Err(ApiError::BadRequest(
                "only WebSocket version 13 is supported",
            ));
        }
        // Browsers cannot set headers on a WebSocket: the token may come
        // in the query instead. Without one, the socket is read-only.
        let token = query_param(head.query.as_deref(), "access_token");
        let claims = match (token, &head.authorization) {
            (Some(token), _) => Some(self.auth.verify(&token)?),
            (None, Some(header)) => Some(self.auth.verify_header(Some(header))?),
            (None, None) => None,
        };
        let resume = parse_u64(query_param(head.query.as_deref(), "since"))?;
        let (viewer, replay) = self.hub.subscribe(&name, resume, Transport::WebSocket)?;
        Ok(Outcome::WebSocket {
            viewer,
            replay,
            claims,
            accept: crate::ws::accept_key(key),
            stream: name,
        })
    }

    fn events(&self, name: &str, head: &Head) -> Result<Outcome, ApiError> {
        if self.is_draining() {
            return Err(ApiError::Unavailable("draining"));
        }
        let resume = resume_point(head)?;
        let (viewer, replay) = self.hub.subscribe(name, resume, Transport::Sse)?;
        Ok(Outcome::Sse { viewer, replay })
    }
}

/// The resume point: `Last-Event-ID` wins over `?since=`, because a
/// reconnecting `EventSource` sends the header while its URL still
/// carries the `since` it first connected with.
pub fn resume_point(head: &Head) -> Result<Option<u64>, ApiError> {
    if let Some(id) = &head.last_event_id {
        return parse_u64(Some(id.clone()));
    }
    parse_u64(query_param(head.query.as_deref(), "since"))
}

fn parse_u64(value: Option<String>) -> Result<Option<u64>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            ApiError::BadRequest("since, limit and Last-Event-ID must be non-negative integers")
        }),
    }
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// Maps a method and path to a route: 404 for unknown paths and bad
/// stream names, 405 (with `Allow`) for a known path and wrong method.
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let get = |r: Route| match method {
        "GET" | "HEAD" => Ok(r),
        _ => Err(ApiError::MethodNotAllowed("GET, HEAD")),
    };

    match segments.as_slice() {
        [""] => get(Route::Index),
        ["healthz"] => get(Route::Health),
        ["metrics"] => get(Route::Metrics),
        ["streams", s, rest @ ..] => {
            let name = percent_decode(s);
            if !is_valid_stream_name(&name) {
                return Err(ApiError::NotFound);
            }
            match rest {
                [] => get(Route::Stream(name)),
                ["events"] => match method {
                    "GET" => Ok(Route::Events(name)),
                    _ => Err(ApiError::MethodNotAllowed("GET")),
                },
                ["ws"] => match method {
                    "GET" => Ok(Route::WebSocket(name)),
                    _ => Err(ApiError::MethodNotAllowed("GET")),
                },
                ["comments"] => match method {
                    "POST" => Ok(Route::Post(name)),
                    "GET" | "HEAD" => Ok(Route::History(name)),
                    _ => Err(ApiError::MethodNotAllowed("GET, HEAD, POST")),
                },
                ["comments", id] => {
                    let id = id.parse().map_err(|_| ApiError::NotFound)?;
                    match method {
                        "DELETE" => Ok(Route::Delete(name, id)),
                        _ => Err(ApiError::MethodNotAllowed("DELETE")),
                    }
                }
                _ => Err(ApiError::NotFound),
            }
        }
        _ => Err(ApiError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_paths_and_methods() {
        assert_eq!(route("GET", "/"), Ok(Route::Index));
        assert_eq!(
            route("POST", "/streams/a/comments"),
            Ok(Route::Post("a".into()))
        );
        assert_eq!(
            route("GET", "/streams/a/events"),
            Ok(Route::Events("a".into()))
        );
        assert_eq!(
            route("DELETE", "/streams/a/comments/7"),
            Ok(Route::Delete("a".into(), 7))
        );
        assert_eq!(route("GET", "/nope"), Err(ApiError::NotFound));
        assert_eq!(route("GET", "/streams/a%20b"), Err(ApiError::NotFound));
        assert_eq!(
            route("PUT", "/streams/a/comments"),
            Err(ApiError::MethodNotAllowed("GET, HEAD, POST"))
        );
        assert_eq!(
            route("GET", "/streams/a/comments/x"),
            Err(ApiError::NotFound)
        );
    }

    #[test]
    fn content_types_with_parameters_are_json() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("Application/JSON; charset=utf-8")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(None));
    }

    #[test]
    fn last_event_id_wins_over_since() {
        let head = Head {
            query: Some("since=3".into()),
            last_event_id: Some("9".into()),
            ..Head::default()
        };
        assert_eq!(resume_point(&head), Ok(Some(9)));
        let head = Head {
            query: Some("since=x".into()),
            ..Head::default()
        };
        assert!(resume_point(&head).is_err());
    }
}
