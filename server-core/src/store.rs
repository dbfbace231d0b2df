//! The seams behind the hub: where comments are kept, and who numbers
//! them.
//!
//! - A [`Store`] makes an accepted comment durable before the poster
//!   gets its 201, and gives the history back at start-up. Today the
//!   only store is [`MemoryStore`]: the hub's retained window *is* the
//!   history, and nothing survives a restart. An embedded durable log
//!   slots in here without touching the hub or the contract.
//! - A [`Broker`] assigns each comment its per-stream id. Alone, a node
//!   numbers its own comments ([`LocalBroker`]); in a cluster the broker
//!   (Redis) assigns ids so every node agrees, and carries comments
//!   between nodes, which then enter through [`crate::hub::Hub::publish`]
//!   with their id already set.
//!
//! Both are called with the stream's lock held, so ids and store order
//! always match the order viewers see.

use crate::comment::Comment;
use std::fmt;

/// A store or broker that cannot do its job right now: the request is
/// refused with 503 and nothing is published.
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

/// Where accepted comments are kept.
pub trait Store: Send + Sync + 'static {
    /// Keeps `comment` before it is acknowledged.
    fn append(&self, comment: &Comment) -> Result<(), Unavailable>;
    /// Forgets a comment a moderator deleted.
    fn delete(&self, stream: &str, id: u64) -> Result<(), Unavailable>;
    /// Whether the store can take writes (`/healthz` reports it).
    fn healthy(&self) -> bool {
        true
    }
}

/// Keeps nothing beyond the hub's in-memory history.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn append(&self, _comment: &Comment) -> Result<(), Unavailable> {
        Ok(())
    }
    fn delete(&self, _stream: &str, _id: u64) -> Result<(), Unavailable> {
        Ok(())
    }
}

/// Numbers comments.
pub trait Broker: Send + Sync + 'static {
    /// The id of the next comment on `stream`, whose newest id here is
    /// `last_id`.
    fn next_id(&self, stream: &str, last_id: u64) -> Result<u64, Unavailable>;
}

/// A single node numbering its own streams: `last_id + 1`.
#[derive(Debug, Default)]
pub struct LocalBroker;

impl Broker for LocalBroker {
    fn next_id(&self, _stream: &str, last_id: u64) -> Result<u64, Unavailable> {
        Ok(last_id + 1)
    }
}
