//! The AWS pieces the pushers share: Signature Version 4 and the credential chain (static,
//! web identity/IRSA, EKS Pod Identity, IMDSv2).

pub mod credentials;
pub mod sigv4;
