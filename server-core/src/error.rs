//! The one error type of the request path, and its one mapping to HTTP.
//!
//! Every refusal in the core is an [`ApiError`]. Each variant maps to
//! exactly one status and one stable `error` code (CONTRACT.md, "Errors"),
//! in [`ApiError::status`] and [`ApiError::code`]; nothing else in the
//! crate picks a status for an error.

use std::fmt;

/// A request the service refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Malformed request line, headers, JSON, text or query.
    BadRequest(&'static str),
    /// Missing or refused token. The message is the same whatever the
    /// reason, so a caller learns nothing about why.
    InvalidToken,
    /// A valid token without the right to do this.
    Forbidden(&'static str),
    /// Unknown path, bad stream name or unknown comment.
    NotFound,
    /// Known path, wrong method; carries the `Allow` header's value.
    MethodNotAllowed(&'static str),
    /// Request head or body did not arrive in time.
    Timeout,
    /// A POST without a `Content-Length`.
    LengthRequired,
    /// A body larger than the configured limit.
    TooLarge,
    /// A POST body that is not `application/json`.
    UnsupportedMediaType,
    /// The user's posting bucket is empty; retry after this many seconds.
    RateLimited { retry_after: u64 },
    /// Request head over the size or header-count limit.
    HeadersTooLarge,
    /// Connection limit reached, draining, or storage failing.
    Unavailable(&'static str),
}

impl ApiError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::InvalidToken => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Timeout => 408,
            ApiError::LengthRequired => 411,
            ApiError::TooLarge => 413,
            ApiError::UnsupportedMediaType => 415,
            ApiError::RateLimited { .. } => 429,
            ApiError::HeadersTooLarge => 431,
            ApiError::Unavailable(_) => 503,
        }
    }

    /// The stable machine-readable code, also used as the metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::InvalidToken => "invalid_token",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Timeout => "timeout",
            ApiError::LengthRequired => "length_required",
            ApiError::TooLarge => "too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::HeadersTooLarge => "headers_too_large",
            ApiError::Unavailable(_) => "unavailable",
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> &'static str {
        match self {
            ApiError::BadRequest(why) | ApiError::Forbidden(why) | ApiError::Unavailable(why) => {
                why
            }
            ApiError::InvalidToken => "missing or invalid bearer token",
            ApiError::NotFound => "no such resource",
            ApiError::MethodNotAllowed(_) => "method not allowed on this resource",
            ApiError::Timeout => "request not received in time",
            ApiError::LengthRequired => "a POST needs a Content-Length",
            ApiError::TooLarge => "request body too large",
            ApiError::UnsupportedMediaType => "the body must be application/json",
            ApiError::RateLimited { .. } => "posting too fast; slow down",
            ApiError::HeadersTooLarge => "request head too large or too many headers",
        }
    }

    /// The JSON body: `{"error":"<code>","message":"<text>"}`.
    pub fn body(&self) -> String {
        #[derive(serde::Serialize)]
        struct Body {
            error: &'static str,
            message: &'static str,
        }
        let body = Body {
            error: self.code(),
            message: self.message(),
        };
        serde_json::to_string(&body).unwrap_or_default()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.code())
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_body_is_json_with_code_and_message() {
        let body = ApiError::RateLimited { retry_after: 1 }.body();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "rate_limited");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}
