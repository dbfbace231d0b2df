//! The page served at `GET /`: watch a stream and post to it.
//!
//! One HTML file with inline script and style, embedded at compile time,
//! so the binary needs no build step and no files beside it.

/// The demo page.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
