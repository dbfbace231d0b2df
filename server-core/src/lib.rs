//! # livecomment-core
//!
//! Every rule of the live-comment service, and no runtime. This crate
//! parses HTTP, checks tokens, validates and numbers comments, keeps
//! history, fans events out to viewers and frames them as Server-Sent
//! Events, but it never touches a socket, a timer or a thread: the
//! runtime crates (`livecomment-tokio`, …) do the I/O and drive a
//! [`Connection`] state machine. That is what lets one service run
//! unchanged on schedulers as different as tokio, may coroutines,
//! glommio, a bare mio loop and plain threads.
//!
//! ## Map
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | limits and settings, with the contract's defaults |
//! | [`error`] | [`ApiError`]: every refusal, mapped to one status in one place |
//! | [`http`] | request heads (`httparse`) and response bytes |
//! | [`auth`] | JWT verification (`jsonwebtoken`), one algorithm pinned |
//! | [`comment`] | comments, stream names, text rules |
//! | [`ratelimit`] | per-user token buckets |
//! | [`hub`] | streams, history, ids, viewers' mailboxes, fan-out, eviction |
//! | [`store`] | the store and broker seams (memory and local today) |
//! | [`sse`] | Server-Sent Events framing |
//! | [`ws`] | WebSocket framing (`tungstenite`'s protocol layer over our buffers) |
//! | [`metrics`] | counters and Prometheus text |
//! | [`service`] | routes and handlers; the state connections share |
//! | [`conn`] | the per-connection state machine the glue drives |
//! | [`runtime`] | the [`Runtime`] trait each scheduler implements |
//! | [`net`] | listener set-up (backlog, `SO_REUSEPORT`) |
//! | [`page`] | the demo page at `/` |
//!
//! ## What to know first
//!
//! - **Sans-I/O.** A [`Connection`] is fed bytes ([`Connection::received`])
//!   and hands back bytes ([`Connection::output`]); the glue's loop is
//!   spelled out in [`conn`].
//! - **Wake-ups are `std::task::Waker`s.** A viewer's connection
//!   registers one with its mailbox; a publisher calls it when the
//!   mailbox goes from empty to non-empty. Every scheduler can make one.
//! - **Encode once, write many.** A comment is serialised once into
//!   shared bytes; a woken viewer drains everything queued into one
//!   buffer and the glue writes it with one call.
//!
//! ## Limitations
//!
//! - History lives in memory ([`store::MemoryStore`]): a restart loses
//!   it. The durable store and the Redis broker are later work; their
//!   seams are [`store::Store`] and [`store::Broker`].
//! - Request bodies must carry `Content-Length`; chunked request bodies
//!   are refused with 411.

pub mod auth;
pub mod comment;
pub mod config;
pub mod conn;
pub mod error;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod net;
pub mod page;
pub mod ratelimit;
pub mod runtime;
pub mod service;
pub mod sse;
pub mod store;
pub mod ws;

pub use config::Config;
pub use conn::Connection;
pub use error::ApiError;
pub use runtime::{ConnectionLimit, Runtime, RuntimeOptions};
pub use service::Service;
