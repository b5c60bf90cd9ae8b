//! The Kubernetes API as the agent reaches it: where (in-cluster, or a stand-in named by
//! `ENAWATCH_KUBE_API` in tests), with which token (re-read from its file, since the kubelet
//! rotates it) and which CA. Pod attribution reads through it and node events write through
//! it; each owns what it asks and what it does when the API refuses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::base::file::{read_bounded, read_bounded_text, ReadError, CA_LIMIT, SECRET_LIMIT};
use crate::outbound::{ClientError, ClientOptions};

/// Where and how to reach the API.
#[derive(Clone, Debug)]
pub struct ApiAccess {
    /// Base URL (`https://KUBERNETES_SERVICE_HOST:PORT`, or `ENAWATCH_KUBE_API` for tests).
    pub base: String,
    /// The service account token's file, read again for every list and after a 401: the
    /// kubelet rotates it, and the API stops accepting the old token once it expires.
    pub token_file: Option<PathBuf>,
    /// The cluster CA (PEM), if any.
    pub ca: Option<Vec<u8>>,
    /// This node's name.
    pub node: String,
}

const SA: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl ApiAccess {
    /// The in-cluster configuration; `Err` says why attribution cannot run.
    pub fn in_cluster() -> Result<Self, String> {
        let node = std::env::var("NODE_NAME")
            .map_err(|_| "NODE_NAME is not set (the DaemonSet sets it)".to_owned())?;
        let token_file = PathBuf::from(format!("{SA}/token"));
        if let Ok(base) = std::env::var("ENAWATCH_KUBE_API") {
            // A stand-in API (tests): the token file may be elsewhere, or absent.
            let token_file = std::env::var_os("ENAWATCH_KUBE_TOKEN_FILE").map_or(token_file, PathBuf::from);
            return Ok(Self { base, token_file: Some(token_file), ca: None, node });
        }
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .map_err(|_| "not running in a Kubernetes pod".to_owned())?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        read_token(&token_file).map_err(|e| {
            format!("no service account token ({e}); automountServiceAccountToken must be true")
        })?;
        let ca = read_bounded(Path::new(&format!("{SA}/ca.crt")), CA_LIMIT).ok();
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        Ok(Self { base: format!("https://{host}:{port}"), token_file: Some(token_file), ca, node })
    }

    /// The token as the file holds it now; `None` without a readable one (the request then
    /// goes without, and the API's answer says what is wrong).
    pub fn token(&self) -> Option<String> {
        read_token(self.token_file.as_ref()?).ok().filter(|t| !t.is_empty())
    }
}

/// Reads a token file, trimmed, refusing a FIFO or one longer than any token.
fn read_token(path: &Path) -> Result<String, ReadError> {
    Ok(read_bounded_text(path, SECRET_LIMIT)?.trim().to_owned())
}

impl ApiAccess {
    /// A client for this API: the cluster CA trusted, a short connect timeout.
    pub fn client(&self, timeout: Option<Duration>) -> Result<reqwest::Client, ClientError> {
        let mut options = ClientOptions::new().connect_timeout(Duration::from_secs(5));
        if let Some(ca) = &self.ca {
            options = options.extra_root_pem(ca.clone());
        }
        if let Some(timeout) = timeout {
            options = options.timeout(timeout);
        }
        options.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch file removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            Self(std::env::temp_dir().join(format!("enawatch-kube-{tag}-{}", std::process::id())))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn the_token_is_read_from_its_file_each_time() {
        let file = Scratch::new("token");
        let access =
            ApiAccess { base: String::new(), token_file: Some(file.0.clone()), ca: None, node: "n".into() };
        assert_eq!(access.token(), None, "no file, no token");
        std::fs::write(&file.0, "old\n").unwrap();
        assert_eq!(access.token().as_deref(), Some("old"));
        std::fs::write(&file.0, "new").unwrap();
        assert_eq!(access.token().as_deref(), Some("new"), "a rotated token is seen");
        std::fs::write(&file.0, vec![b'a'; 1 << 20]).unwrap();
        assert_eq!(access.token(), None, "a file longer than any token is not one");
        let none = ApiAccess { token_file: None, ..access };
        assert_eq!(none.token(), None);
    }
}
