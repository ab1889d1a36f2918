//! `kafka.security`: how the processor protects its connections and proves who it is, typed.
//!
//! ```text
//!   tls ──────────► ssl.ca.location, ssl.certificate.location, ssl.key.location,
//!                   ssl.key.password, ssl.endpoint.identification.algorithm (https unless off)
//!   sasl ─────────► sasl.mechanisms (SCRAM-SHA-256 | SCRAM-SHA-512 | PLAIN), sasl.username,
//!                   sasl.password
//!   oauth ────────► sasl.mechanisms=OAUTHBEARER, sasl.oauthbearer.method=oidc (librdkafka fetches
//!                   and refreshes the token by the client-credentials grant), client id and
//!                   secret, token endpoint, scope
//!   security.protocol: SSL (tls only), SASL_SSL (tls + sasl|oauth), SASL_PLAINTEXT (sasl|oauth
//!                   without tls; refused for oauth and for PLAIN, which would send the secret
//!                   in the clear)
//! ```
//!
//! The typed section owns these librdkafka properties: `kafka.properties` may not set any of
//! them too (validation names both keys).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Secret;

/// `kafka.security`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// TLS to the brokers; `tls: {}` turns it on with the system's CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// SASL with a username and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslConfig>,
    /// SASL/OAUTHBEARER with tokens from an OAuth2 provider (client-credentials grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthConfig>,
}

/// TLS settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) that signed the brokers' certificates; absent: the system's CAs.
    /// Relative paths here are taken from the config file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM file of this client's certificate (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<PathBuf>,
    /// PEM file of this client's private key (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The private key's password, if it is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_password: Option<Secret>,
    /// Whether the broker's certificate must name the host connected to. On by default; turn it
    /// off only for a test cluster.
    #[serde(default = "default_true")]
    pub verify_hostname: bool,
}

/// A SASL mechanism that takes a username and password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SaslMechanism {
    /// SCRAM-SHA-256.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// SCRAM-SHA-512.
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
    /// PLAIN: the password itself goes to the broker, so only over TLS.
    #[serde(rename = "plain")]
    Plain,
}

impl SaslMechanism {
    fn librdkafka_name(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

/// SASL with a username and password.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// `scram-sha-256`, `scram-sha-512` or `plain`.
    pub mechanism: SaslMechanism,
    /// The user (the principal is `User:<username>`).
    pub username: String,
    /// The password.
    pub password: Secret,
}

/// OAuth2 client credentials, for SASL/OAUTHBEARER (and the registry's bearer token).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// The client id at the provider.
    pub client_id: String,
    /// The client secret.
    pub client_secret: Secret,
    /// The provider's token endpoint, e.g.
    /// `https://idp.example/realms/kafka/protocol/openid-connect/token`.
    pub token_endpoint: String,
    /// Space-separated scopes to ask for, e.g. `kafka`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

fn default_true() -> bool {
    true
}

impl TlsConfig {
    /// Resolves relative paths against `base`.
    pub(crate) fn with_base_dir(mut self, base: &std::path::Path) -> TlsConfig {
        for file in [&mut self.ca, &mut self.certificate, &mut self.key]
            .into_iter()
            .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        self
    }
}

impl SecurityConfig {
    /// Whether no security setting is present (plaintext).
    pub fn is_unset(&self) -> bool {
        !self.is_set()
    }

    /// Whether any security setting is present.
    pub fn is_set(&self) -> bool {
        self.tls.is_some() || self.sasl.is_some() || self.oauth.is_some()
    }

    /// `security.protocol` for these settings.
    pub fn protocol(&self) -> &'static str {
        match (
            self.tls.is_some(),
            self.sasl.is_some() || self.oauth.is_some(),
        ) {
            (false, false) => "PLAINTEXT",
            (true, false) => "SSL",
            (false, true) => "SASL_PLAINTEXT",
            (true, true) => "SASL_SSL",
        }
    }

    /// How the connection is secured and who it authenticates as, for logs: e.g.
    /// `SASL_SSL/OAUTHBEARER as client autoglm-sync`. Never a secret.
    pub fn describe(&self) -> String {
        let protocol = self.protocol();
        match (&self.sasl, &self.oauth, &self.tls) {
            (Some(sasl), _, _) => format!(
                "{protocol}/{} as user {}",
                sasl.mechanism.librdkafka_name(),
                sasl.username
            ),
            (None, Some(oauth), _) => {
                format!("{protocol}/OAUTHBEARER as client {}", oauth.client_id)
            }
            (None, None, Some(tls)) if tls.certificate.is_some() => {
                format!("{protocol} with a client certificate")
            }
            _ => protocol.to_owned(),
        }
    }

    /// The librdkafka properties these settings stand for, secrets included: hand them to the
    /// client only, never to a log.
    pub fn librdkafka_properties(&self) -> Vec<(&'static str, String)> {
        if !self.is_set() {
            return Vec::new();
        }
        let mut properties = vec![("security.protocol", self.protocol().to_owned())];
        if let Some(tls) = &self.tls {
            let path = |p: &PathBuf| p.display().to_string();
            if let Some(ca) = &tls.ca {
                properties.push(("ssl.ca.location", path(ca)));
            }
            if let Some(certificate) = &tls.certificate {
                properties.push(("ssl.certificate.location", path(certificate)));
            }
            if let Some(key) = &tls.key {
                properties.push(("ssl.key.location", path(key)));
            }
            if let Some(password) = &tls.key_password {
                properties.push(("ssl.key.password", password.expose().to_owned()));
            }
            let identification = if tls.verify_hostname { "https" } else { "none" };
            properties.push((
                "ssl.endpoint.identification.algorithm",
                identification.to_owned(),
            ));
        }
        if let Some(sasl) = &self.sasl {
            properties.push((
                "sasl.mechanisms",
                sasl.mechanism.librdkafka_name().to_owned(),
            ));
            properties.push(("sasl.username", sasl.username.clone()));
            properties.push(("sasl.password", sasl.password.expose().to_owned()));
        }
        if let Some(oauth) = &self.oauth {
            properties.push(("sasl.mechanisms", "OAUTHBEARER".to_owned()));
            properties.push(("sasl.oauthbearer.method", "oidc".to_owned()));
            properties.push(("sasl.oauthbearer.client.id", oauth.client_id.clone()));
            properties.push((
                "sasl.oauthbearer.client.secret",
                oauth.client_secret.expose().to_owned(),
            ));
            properties.push((
                "sasl.oauthbearer.token.endpoint.url",
                oauth.token_endpoint.clone(),
            ));
            if let Some(scope) = &oauth.scope {
                properties.push(("sasl.oauthbearer.scope", scope.clone()));
            }
        }
        properties
    }

    /// Problems with these settings, as `(key under kafka.security, reason)`.
    /// Relative file paths are taken from `base_dir` (the config file's folder).
    pub(crate) fn problems(&self, base_dir: &std::path::Path) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.sasl.is_some() && self.oauth.is_some() {
            problems.push((
                "oauth".to_owned(),
                "set either `sasl` or `oauth`, not both: a connection authenticates one way"
                    .to_owned(),
            ));
        }
        if let Some(tls) = &self.tls {
            if tls.certificate.is_some() != tls.key.is_some() {
                problems.push((
                    "tls".to_owned(),
                    "mutual TLS needs both `certificate` and `key`".to_owned(),
                ));
            }
            for (key, file) in [
                ("tls.ca", &tls.ca),
                ("tls.certificate", &tls.certificate),
                ("tls.key", &tls.key),
            ] {
                if let Some(file) = file
                    && let Err(e) = std::fs::metadata(base_dir.join(file))
                {
                    problems.push((
                        key.to_owned(),
                        format!("cannot read {}: {e}", file.display()),
                    ));
                }
            }
        } else {
            if self.oauth.is_some() {
                problems.push((
                    "oauth".to_owned(),
                    "needs `tls`: a bearer token sent without TLS can be replayed by anyone who \
                     sees it"
                        .to_owned(),
                ));
            }
            if self
                .sasl
                .as_ref()
                .is_some_and(|s| s.mechanism == SaslMechanism::Plain)
            {
                problems.push((
                    "sasl.mechanism".to_owned(),
                    "`plain` needs `tls`: PLAIN sends the password itself".to_owned(),
                ));
            }
        }
        if let Some(oauth) = &self.oauth {
            match url::Url::parse(&oauth.token_endpoint) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                Ok(_) => problems.push((
                    "oauth.token_endpoint".to_owned(),
                    "must be an http or https URL".to_owned(),
                )),
                Err(e) => problems.push((
                    "oauth.token_endpoint".to_owned(),
                    format!("{:?} is not a URL: {e}", oauth.token_endpoint),
                )),
            }
        }
        problems
    }
}

/// Whether `key` is a librdkafka property that `kafka.security` owns once it is set.
pub(crate) fn owned_by_security(key: &str) -> bool {
    key == "security.protocol" || key.starts_with("ssl.") || key.starts_with("sasl.")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn security(yaml: &str) -> SecurityConfig {
        serde_yaml::from_str(yaml).expect("security yaml")
    }

    fn property<'a>(properties: &'a [(&str, String)], key: &str) -> Option<&'a str> {
        properties
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn scram_over_tls_is_sasl_ssl_with_hostname_verification() {
        let s = security(
            "tls: { ca: /ca.pem }\nsasl: { mechanism: scram-sha-512, username: u, password: p }",
        );
        let p = s.librdkafka_properties();
        assert_eq!(property(&p, "security.protocol"), Some("SASL_SSL"));
        assert_eq!(property(&p, "sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(property(&p, "sasl.password"), Some("p"));
        assert_eq!(property(&p, "ssl.ca.location"), Some("/ca.pem"));
        assert_eq!(
            property(&p, "ssl.endpoint.identification.algorithm"),
            Some("https")
        );
        assert!(!format!("{s:?}").contains("\"p\""), "{s:?}");
    }

    #[test]
    fn oauth_is_oidc_client_credentials() {
        let s = security(
            "tls: {}\noauth: { client_id: c, client_secret: s, token_endpoint: 'https://idp/token', scope: kafka }",
        );
        let p = s.librdkafka_properties();
        assert_eq!(property(&p, "sasl.mechanisms"), Some("OAUTHBEARER"));
        assert_eq!(property(&p, "sasl.oauthbearer.method"), Some("oidc"));
        assert_eq!(property(&p, "sasl.oauthbearer.client.id"), Some("c"));
        assert_eq!(property(&p, "sasl.oauthbearer.scope"), Some("kafka"));
        assert!(
            s.problems(Path::new("/")).is_empty(),
            "{:?}",
            s.problems(Path::new("/"))
        );
    }

    #[test]
    fn mtls_alone_is_ssl_and_needs_both_halves() {
        let s = security("tls: { certificate: /c.pem }");
        assert_eq!(s.protocol(), "SSL");
        let problems = s.problems(Path::new("/"));
        assert!(
            problems
                .iter()
                .any(|(k, r)| k == "tls" && r.contains("both")),
            "{problems:?}"
        );
    }

    #[test]
    fn secrets_in_the_clear_and_two_mechanisms_are_refused() {
        let s = security(
            "sasl: { mechanism: plain, username: u, password: p }\noauth: { client_id: c, client_secret: s, token_endpoint: 'ftp://x' }",
        );
        let keys: Vec<String> = s
            .problems(Path::new("/"))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for key in ["oauth", "sasl.mechanism", "oauth.token_endpoint"] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
        let hostname_off = security("tls: { verify_hostname: false }");
        assert_eq!(
            property(
                &hostname_off.librdkafka_properties(),
                "ssl.endpoint.identification.algorithm"
            ),
            Some("none")
        );
    }
}
