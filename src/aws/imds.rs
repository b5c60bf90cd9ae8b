//! The instance's identity from IMDSv2 (instance id, availability zone, region), for the
//! OTLP resource attributes. Off EC2 IMDS does not answer: callers give it a short time and
//! go on without.
//!
//! The endpoint is the credential chain's: `AWS_EC2_METADATA_SERVICE_ENDPOINT` (tests point
//! it at a local stand-in), off with `AWS_EC2_METADATA_DISABLED=true`.

use std::time::Duration;

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
    if env("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err("AWS_EC2_METADATA_DISABLED=true".into());
    }
    let endpoint =
        env("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|| "http://169.254.169.254".into());
    let base = reqwest::Url::parse(&endpoint).map_err(|e| format!("{endpoint:?} is not a URL ({e})"))?;
    let client = ClientOptions::new()
        .connect_timeout(timeout)
        .timeout(timeout)
        .no_redirects()
        .build()
        .map_err(|e| e.to_string())?;
    let join = |path: &str| base.join(path).map_err(|e| format!("{endpoint}{path}: {e}"));
    let token = client
        .put(join("/latest/api/token")?)
        .header("x-aws-ec2-metadata-token-ttl-seconds", "60")
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("token: {}", crate::outbound::describe(&e.without_url())))?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let get = |path: &'static str| {
        let (client, token) = (&client, token.trim());
        async move {
            let text = client
                .get(join(path)?)
                .header("x-aws-ec2-metadata-token", token)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| format!("{path}: {}", crate::outbound::describe(&e.without_url())))?
                .text()
                .await
                .map_err(|e| e.to_string())?;
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
