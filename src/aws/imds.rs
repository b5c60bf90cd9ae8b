//! The instance's identity from IMDSv2 (instance id, availability zone, region), for the
//! OTLP resource attributes. Off EC2 IMDS does not answer: callers give it a short time and
//! go on without.
//!
//! The endpoint is the credential chain's: `AWS_EC2_METADATA_SERVICE_ENDPOINT` (tests point
//! it at a local stand-in), off with `AWS_EC2_METADATA_DISABLED=true`.

use std::time::Duration;

use super::credentials::{imds_endpoint, ImdsSession};
use crate::outbound::ClientOptions;

/// What IMDS says about the instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// `i-…`.
    pub instance_id: String,
    /// e.g. `us-west-2a`.
    pub availability_zone: String,
    /// e.g. `us-west-2`.
    pub region: String,
}

/// Asks IMDSv2 (a token, then three reads), each request within `timeout`.
pub(crate) async fn identity(env: fn(&str) -> Option<String>, timeout: Duration) -> Result<Identity, String> {
    let endpoint = imds_endpoint(&env)?.ok_or("AWS_EC2_METADATA_DISABLED=true")?;
    let client = ClientOptions::new()
        .connect_timeout(timeout)
        .timeout(timeout)
        .no_redirects()
        .build()
        .map_err(|e| e.to_string())?;
    let session = ImdsSession::open(&client, &endpoint, 60).await?;
    let get = |path: &'static str| {
        let session = &session;
        async move {
            let text = session.get(path, path).await?;
            let text = text.trim();
            if text.is_empty() || text.len() > 256 {
                return Err(format!("{path}: unexpected answer"));
            }
            Ok::<String, String>(text.to_owned())
        }
    };
    Ok(Identity {
        instance_id: get("/latest/meta-data/instance-id").await?,
        availability_zone: get("/latest/meta-data/placement/availability-zone").await?,
        region: get("/latest/meta-data/placement/region").await?,
    })
}
