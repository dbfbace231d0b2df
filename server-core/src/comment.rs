//! Comments, stream names and the rules for comment text.

use crate::error::ApiError;
use serde::{Deserialize, Serialize};

/// Longest comment text, in Unicode scalar values, after trimming.
pub const MAX_TEXT_CHARS: usize = 500;
/// Longest stream name.
pub const MAX_STREAM_NAME: usize = 64;

/// One comment as stored and sent (CONTRACT.md, "Words").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    /// Per-stream sequence number, from 1, assigned by the service.
    pub id: u64,
    pub stream: String,
    /// The token's `sub`.
    pub author: String,
    /// The token's `name` claim, `null` when absent.
    pub name: Option<String>,
    /// Trimmed, validated text, otherwise verbatim.
    pub text: String,
    /// Server receive time, milliseconds since the Unix epoch.
    pub ts: u64,
}

/// Whether `name` is a valid stream name: `[A-Za-z0-9_.-]{1,64}`.
pub fn is_valid_stream_name(name: &str) -> bool {
    (1..=MAX_STREAM_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Trims and checks comment text: 1 to 500 scalar values, no control
/// characters except `\n` and `\t`.
pub fn validate_text(text: &str) -> Result<String, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ApiError::BadRequest("text is empty"));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::BadRequest("text is longer than 500 characters"));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ApiError::BadRequest("text contains control characters"));
    }
    Ok(text.to_owned())
}

/// The body of `POST /streams/{s}/comments`.
#[derive(Debug, Deserialize)]
pub struct PostBody {
    pub text: String,
}

/// Parses and validates a POST body into comment text.
pub fn parse_post_body(body: &[u8]) -> Result<String, ApiError> {
    let post: PostBody = serde_json::from_slice(body)
        .map_err(|_| ApiError::BadRequest("body must be a JSON object with a \"text\" string"))?;
    validate_text(&post.text)
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_follow_the_pattern() {
        assert!(is_valid_stream_name("match-7"));
        assert!(is_valid_stream_name("a.b_c-D9"));
        assert!(is_valid_stream_name(&"x".repeat(64)));
        assert!(!is_valid_stream_name(&"x".repeat(65)));
        assert!(!is_valid_stream_name(""));
        assert!(!is_valid_stream_name("a b"));
        assert!(!is_valid_stream_name("ä"));
        assert!(!is_valid_stream_name("a/b"));
    }

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(validate_text("  hi \n").unwrap(), "hi");
        assert!(validate_text("   ").is_err());
        assert!(validate_text(&"é".repeat(500)).is_ok());
        assert!(validate_text(&"é".repeat(501)).is_err());
        assert!(validate_text(&"😀".repeat(500)).is_ok());
    }

    #[test]
    fn newline_and_tab_pass_other_controls_do_not() {
        assert_eq!(validate_text("a\nb\tc").unwrap(), "a\nb\tc");
        assert!(validate_text("a\u{7}b").is_err());
        assert!(validate_text("a\rb").is_err());
        assert!(validate_text("a\u{85}b").is_err());
    }

    #[test]
    fn post_bodies_must_be_objects_with_text() {
        assert_eq!(parse_post_body(br#"{"text":" yo "}"#).unwrap(), "yo");
        assert!(parse_post_body(b"{").is_err());
        assert!(parse_post_body(br#"{"txt":"a"}"#).is_err());
        assert!(parse_post_body(br#"{"text":5}"#).is_err());
    }
}
