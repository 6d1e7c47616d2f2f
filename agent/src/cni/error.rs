//! The CNI error result: `{"cniVersion", "code", "msg", "details"}` with the spec's codes.

use serde::Serialize;

/// The spec's well-known error codes (SPEC.md, "Error"), and the one reference plugins give
/// every other failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    Io = 5,
    Decoding = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    NotAvailable = 50,
    /// libcni's `ErrInternal`: what the reference plugins answer for any other failure.
    Internal = 999,
}

/// A failed command, as the runtime is told.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
}

#[derive(Serialize)]
struct ErrorResult<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    code: u32,
    msg: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    details: &'a str,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error result, in `version`'s terms (every supported version has the same shape).
    pub fn to_json(&self, version: &str) -> String {
        serde_json::to_string(&ErrorResult {
            cni_version: version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| format!(r#"{{"code":{},"msg":"error"}}"#, self.code as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_the_specs_json() {
        let error = CniError::new(
            ErrorCode::InvalidConfig,
            "invalid network config",
            "no name",
        );
        let json: serde_json::Value = serde_json::from_str(&error.to_json("1.1.0")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"cniVersion": "1.1.0", "code": 7, "msg": "invalid network config", "details": "no name"})
        );
        let bare = CniError::new(ErrorCode::NotAvailable, "agent down", "");
        assert!(!bare.to_json("1.1.0").contains("details"));
        assert_eq!(ErrorCode::Internal as u32, 999);
    }
}
