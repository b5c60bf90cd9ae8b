//! AWS Signature Version 4 for one HTTP request: what Amazon Managed Service for Prometheus
//! (service `aps`) and STS `AssumeRole` (service `sts`) require.
//!
//! Written here rather than taken from `aws-sigv4`: the algorithm is a hundred lines of
//! SHA-256 and HMAC, which the TLS stack's `ring` already provides, while the AWS crates add
//! about thirty crates to every build. tests/remote_write.rs has botocore recompute every
//! signature the agent sends; the unit tests below hold vectors botocore produced.

use std::fmt::Write as _;

use ring::{digest, hmac};

use super::Credentials;
use crate::base::time::civil_from_days;

/// `YYYYMMDDTHHMMSSZ` and `YYYYMMDD` for Unix milliseconds.
pub(crate) fn amz_date(ms: i64) -> (String, String) {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (year, month, day) = civil_from_days(days);
    let secs = ms_of_day / 1000;
    let date = format!("{year:04}{month:02}{day:02}");
    (format!("{date}T{:02}{:02}{:02}Z", secs / 3600, secs / 60 % 60, secs % 60), date)
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Hex SHA-256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hmac(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// Percent-encodes everything but RFC 3986's unreserved characters (and `/` when
/// `keep_slash`), uppercase hex, as SigV4 canonicalisation requires.
pub(crate) fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Where and when a request is signed.
pub struct Scope<'a> {
    /// e.g. `us-east-1`.
    pub region: &'a str,
    /// `aps`, `sts`.
    pub service: &'a str,
    /// Signing time, Unix milliseconds.
    pub now_ms: i64,
}

/// Signs a request: returns the headers to add (`x-amz-date`, `x-amz-security-token` with
/// temporary credentials, `authorization`). `headers` are the other headers sent and signed
/// (`host` is added from the URL, as the HTTP client sends it).
pub fn sign(
    method: &str,
    url: &reqwest::Url,
    headers: &[(&str, &str)],
    payload: &[u8],
    credentials: &Credentials,
    scope: &Scope<'_>,
) -> Vec<(&'static str, String)> {
    let (amz_date, date) = amz_date(scope.now_ms);
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let mut signed: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    signed.push(("host".into(), host));
    signed.push(("x-amz-date".into(), amz_date.clone()));
    if let Some(token) = &credentials.session_token {
        signed.push(("x-amz-security-token".into(), token.clone()));
    }
    signed.sort();

    // The path as sent is already percent-encoded once; services other than S3 sign it
    // encoded a second time.
    let path = if url.path().is_empty() { "/" } else { url.path() };
    let mut query: Vec<(String, String)> =
        url.query_pairs().map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false))).collect();
    query.sort();
    let query: Vec<String> = query.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let names: Vec<&str> = signed.iter().map(|(k, _)| k.as_str()).collect();
    let signed_headers = names.join(";");
    let mut canonical = format!("{method}\n{}\n{}\n", uri_encode(path, true), query.join("&"));
    for (k, v) in &signed {
        let _ = writeln!(canonical, "{k}:{v}");
    }
    let _ = write!(canonical, "\n{signed_headers}\n{}", sha256_hex(payload));

    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign =
        format!("AWS4-HMAC-SHA256\n{amz_date}\n{credential_scope}\n{}", sha256_hex(canonical.as_bytes()));
    let k_date = hmac(format!("AWS4{}", credentials.secret_access_key).as_bytes(), date.as_bytes());
    let k_region = hmac(k_date.as_ref(), scope.region.as_bytes());
    let k_service = hmac(k_region.as_ref(), scope.service.as_bytes());
    let k_signing = hmac(k_service.as_ref(), b"aws4_request");
    let signature = hex(hmac(k_signing.as_ref(), string_to_sign.as_bytes()).as_ref());

    let mut out = vec![("x-amz-date", amz_date)];
    if let Some(token) = &credentials.session_token {
        out.push(("x-amz-security-token", token.clone()));
    }
    out.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{credential_scope}, SignedHeaders={signed_headers}, \
             Signature={signature}",
            credentials.access_key_id
        ),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(Into::into),
            expires_ms: None,
        }
    }

    /// 2015-08-30T12:36:00Z, the time of AWS's SigV4 test suite.
    const SUITE_TIME: i64 = 1_440_938_160_000;

    #[test]
    fn dates() {
        assert_eq!(amz_date(SUITE_TIME), ("20150830T123600Z".into(), "20150830".into()));
        assert_eq!(amz_date(951_782_400_000).1, "20000229");
    }

    #[test]
    fn aws_test_suite_get_vanilla() {
        // aws-sig-v4-test-suite/get-vanilla.
        let url = reqwest::Url::parse("https://example.amazonaws.com/").unwrap();
        let scope = Scope { region: "us-east-1", service: "service", now_ms: SUITE_TIME };
        let headers = sign("GET", &url, &[], b"", &credentials(None), &scope);
        assert_eq!(
            headers.last().unwrap().1,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn a_remote_write_request_signs_as_botocore_does() {
        // Vector from botocore 1.43.11 (SigV4Auth, the same request and time):
        // a POST with a body, a port, a session token and the Remote Write headers.
        let url = reqwest::Url::parse("http://127.0.0.1:9090/workspaces/ws-1/api/v1/remote_write").unwrap();
        let scope = Scope { region: "us-west-2", service: "aps", now_ms: SUITE_TIME };
        let headers = [
            ("Content-Encoding", "snappy"),
            ("Content-Type", "application/x-protobuf"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ];
        let signed = sign("POST", &url, &headers, b"payload", &credentials(Some("TOKEN/+=")), &scope);
        assert_eq!(signed[1], ("x-amz-security-token", "TOKEN/+=".to_owned()));
        assert_eq!(signed[2].1, BOTOCORE_REMOTE_WRITE);
    }

    const BOTOCORE_REMOTE_WRITE: &str = "AWS4-HMAC-SHA256 \
        Credential=AKIDEXAMPLE/20150830/us-west-2/aps/aws4_request, \
        SignedHeaders=content-encoding;content-type;host;x-amz-date;x-amz-security-token;x-prometheus-remote-write-version, \
        Signature=8b33d6a92625912bb7d035cb7343094fa64212a58161249c7df03e3ffc908996";

    #[test]
    fn paths_and_queries_are_canonicalised() {
        assert_eq!(uri_encode("/a b/ü~", true), "/a%20b/%C3%BC~");
        assert_eq!(uri_encode("a/b=c", false), "a%2Fb%3Dc");
    }
}
