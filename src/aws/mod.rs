//! The AWS pieces the pushers share: Signature Version 4 and the credential chain (static,
//! web identity/IRSA, EKS Pod Identity, IMDSv2). The credentials themselves are plain data
//! here, so the signer and the chain that fetches them (and signs its STS call) do not
//! import each other.

pub mod credentials;
pub mod imds;
pub mod sigv4;

use std::fmt;

/// Temporary or long-lived AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `AKIA…` or `ASIA…`.
    pub access_key_id: String,
    /// The secret key.
    pub secret_access_key: String,
    /// The session token of temporary credentials.
    pub session_token: Option<String>,
    /// When temporary credentials expire, Unix milliseconds.
    pub expires_ms: Option<i64>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, expires_ms: {:?})", self.access_key_id, self.expires_ms)
    }
}
