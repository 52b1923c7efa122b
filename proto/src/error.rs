//! The error body every API answers with: `{"error": "<message>", "code": "<CODE>"}`.

use serde::{Deserialize, Serialize};

/// Machine-readable error codes used across the agent and netctl APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    InvalidPort,
    ConnectionRefused,
    TooManyTunnels,
    TooManySessions,
    TooManyProcesses,
    StdinNotWritable,
    /// A process is not reading its stdin: the write gave up (409).
    StdinBlocked,
    IsDirectory,
    NotADirectory,
    PathTraversal,
    InvalidToken,
    InvalidPolicy,
    PayloadTooLarge,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "BAD_REQUEST",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::InvalidPort => "INVALID_PORT",
            Self::ConnectionRefused => "CONNECTION_REFUSED",
            Self::TooManyTunnels => "TOO_MANY_TUNNELS",
            Self::TooManySessions => "TOO_MANY_SESSIONS",
            Self::TooManyProcesses => "TOO_MANY_PROCESSES",
            Self::StdinNotWritable => "STDIN_NOT_WRITABLE",
            Self::StdinBlocked => "STDIN_BLOCKED",
            Self::IsDirectory => "IS_DIRECTORY",
            Self::NotADirectory => "NOT_A_DIRECTORY",
            Self::PathTraversal => "PATH_TRAVERSAL",
            Self::InvalidToken => "INVALID_TOKEN",
            Self::InvalidPolicy => "INVALID_POLICY",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
        }
    }

    /// The HTTP status that goes with the code.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::BadRequest
            | Self::InvalidPort
            | Self::StdinNotWritable
            | Self::IsDirectory
            | Self::NotADirectory
            | Self::InvalidPolicy => 400,
            Self::Unauthorized => 401,
            Self::Forbidden | Self::PathTraversal | Self::InvalidToken => 403,
            Self::NotFound => 404,
            Self::StdinBlocked => 409,
            Self::PayloadTooLarge => 413,
            Self::TooManyTunnels | Self::TooManySessions | Self::TooManyProcesses => 429,
            Self::ConnectionRefused => 502,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"error": "...", "code": "..."}`. `code` is optional on the wire so that
/// bodies from older peers still parse; an unknown code is kept as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: message.into(),
            code: Some(code.as_str().to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_spec() {
        let body = ErrorBody::new(ErrorCode::InvalidPort, "bad port");
        let json = serde_json::to_string(&body).unwrap();
        assert_eq!(json, r#"{"error":"bad port","code":"INVALID_PORT"}"#);
        let serde_code = serde_json::to_string(&ErrorCode::ConnectionRefused).unwrap();
        assert_eq!(serde_code, "\"CONNECTION_REFUSED\"");
    }

    #[test]
    fn parses_without_code() {
        let body: ErrorBody = serde_json::from_str(r#"{"error":"x"}"#).unwrap();
        assert_eq!(body.code, None);
    }
}
