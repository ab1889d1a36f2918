//! The Schema Registry calls that `schema_registry_converter` does not make: is a local schema
//! compatible with what a subject already holds, under the subject's compatibility level?
//!
//! ```text
//!  GET  /subjects/{s}/versions                     404 + 40401 ─► NewSubject (nothing to check)
//!  GET  /config/{s}?defaultToGlobal=true           ─► level (BACKWARD, FULL_TRANSITIVE, NONE, …)
//!  POST /compatibility/subjects/{s}/versions/latest?verbose=true
//!        └─► is_compatible [+ messages]
//!            incompatible, no messages (Apicurio 3 never sends any)
//!              └─► GET /subjects/{s}/versions/{v} for the versions the level compares,
//!                  reasons from a local Avro resolution check (marked as such)
//! ```
//!
//! Nothing is registered. Only the Confluent API is used, so this works against Confluent Schema
//! Registry, Apicurio (`/apis/ccompat/v7`), Karapace and Redpanda alike.
//!
//! Failure behaviour: every failed request is a [`CodecError::Registry`] naming the method, the
//! URL (credentials stripped) and what failed — no answer (transient), or the registry's status
//! and message (fatal: a wrong URL, credentials or schema do not fix themselves). A 404 means
//! "subject not found" only when the body carries Confluent error code 40401, so a base URL that
//! misses `/apis/ccompat/v7` is an error, never an empty registry.

use std::fmt;
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use autoglm_core::chain;
use reqwest::{Method, StatusCode};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use serde_json::{Value as Json, json};

use crate::CodecError;
use crate::registry_auth::{BearerMiddleware, BearerTokens, ClientCredentials, RegistryTls};

/// Confluent error code: subject not found.
const SUBJECT_NOT_FOUND: i64 = 40401;
/// Confluent error code: version not found.
const VERSION_NOT_FOUND: i64 = 40402;
/// Confluent error code: no subject-level compatibility (older registries without
/// `defaultToGlobal`).
const SUBJECT_LEVEL_NOT_CONFIGURED: i64 = 40408;

/// A client for a Confluent-compatible Schema Registry API, with the configured basic auth.
/// Also the one place that builds the [`SrSettings`] the encoders and decoders use, so both
/// speak to the registry with the same address, timeout and credentials.
#[derive(Clone)]
pub struct RegistryClient {
    /// Base URL without a trailing `/`.
    base: String,
    /// `base` without credentials, for messages.
    shown: String,
    username: Option<String>,
    password: Option<String>,
    timeout: Duration,
    http: reqwest::Client,
    tls: RegistryTls,
    bearer: Option<BearerTokens>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.shown)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "****"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What the registry says about a local schema for a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compatibility {
    /// Nothing is registered under the subject: the first registration starts its history.
    NewSubject,
    /// The registry accepts the schema under the subject's level.
    Compatible {
        /// The subject's compatibility level (`BACKWARD`, `NONE`, …), as the registry names it.
        level: String,
        /// The subject's latest version.
        latest: u32,
    },
    /// The registry rejects the schema.
    Incompatible {
        /// The subject's compatibility level.
        level: String,
        /// The subject's latest version.
        latest: u32,
        /// Why: the registry's messages, or, when it gives none, the findings of a local Avro
        /// resolution check (each prefixed `local check:`). Never empty.
        reasons: Vec<String>,
    },
}

impl Compatibility {
    /// Whether registering the schema would be refused.
    pub fn is_incompatible(&self) -> bool {
        matches!(self, Compatibility::Incompatible { .. })
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compatibility::NewSubject => {
                f.write_str("new subject (nothing registered, nothing to check)")
            }
            Compatibility::Compatible { level, latest } if level.eq_ignore_ascii_case("NONE") => {
                write!(
                    f,
                    "compatible (level NONE: the registry accepts any schema; latest version {latest})"
                )
            }
            Compatibility::Compatible { level, latest } => {
                write!(f, "compatible ({level}, latest version {latest})")
            }
            Compatibility::Incompatible {
                level,
                latest,
                reasons,
            } => write!(
                f,
                "INCOMPATIBLE ({level}, latest version {latest}): {}",
                reasons.join("; ")
            ),
        }
    }
}

/// An HTTP answer: status and JSON body (`Null` when the body is empty or not JSON).
struct Answer {
    status: StatusCode,
    body: Json,
}

impl Answer {
    fn error_code(&self) -> Option<i64> {
        self.body.get("error_code").and_then(Json::as_i64)
    }
}

impl RegistryClient {
    /// A client for the Confluent-compatible API at `url` (e.g.
    /// `http://127.0.0.1:38081/apis/ccompat/v7`); every request may take at most `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<RegistryClient, CodecError> {
        let unusable =
            |source: Box<dyn std::error::Error + Send + Sync>| CodecError::RegistrySettings {
                url: without_credentials(url),
                source,
            };
        let parsed = reqwest::Url::parse(url).map_err(|e| unusable(Box::new(e)))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(unusable("the scheme must be http or https".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| unusable(Box::new(e)))?;
        let base = url.trim_end_matches('/').to_owned();
        Ok(RegistryClient {
            shown: without_credentials(&base),
            base,
            username: None,
            password: None,
            timeout,
            http,
            tls: RegistryTls::default(),
            bearer: None,
        })
    }

    /// Trusts the CA and presents the client certificate of `tls`, in every request (and from
    /// the [`SrSettings`]).
    pub fn with_tls(mut self, tls: RegistryTls) -> Result<RegistryClient, CodecError> {
        let unusable = |reason: String| CodecError::RegistrySettings {
            url: self.shown.clone(),
            source: reason.into(),
        };
        let builder = tls
            .apply(reqwest::Client::builder().timeout(self.timeout))
            .map_err(unusable)?;
        self.http = builder.build().map_err(|e| unusable(e.to_string()))?;
        self.tls = tls;
        Ok(self)
    }

    /// Sends a bearer token from `credentials` (client-credentials grant) with every request
    /// (and from the [`SrSettings`]), refreshed before it expires.
    #[must_use]
    pub fn with_bearer(mut self, credentials: ClientCredentials) -> RegistryClient {
        self.bearer = Some(BearerTokens::new(credentials, self.http.clone()));
        self
    }

    /// Sends HTTP basic auth with every request (and from the [`SrSettings`]).
    #[must_use]
    pub fn with_basic_auth(mut self, username: &str, password: Option<&str>) -> RegistryClient {
        self.username = Some(username.to_owned());
        self.password = password.map(str::to_owned);
        self
    }

    /// The base URL, without credentials.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Settings for `schema_registry_converter` (encoders, decoders) with the same URL, timeout
    /// and credentials.
    pub fn sr_settings(&self) -> Result<SrSettings, CodecError> {
        let mut builder = SrSettings::new_builder(self.base.clone());
        builder.set_timeout(self.timeout);
        if let Some(user) = &self.username {
            builder.set_basic_authorization(user, self.password.as_deref());
        }
        if let Some(bearer) = &self.bearer {
            builder.with_middleware(BearerMiddleware(bearer.clone()));
        }
        let client = self
            .tls
            .apply(reqwest::Client::builder())
            .map_err(|reason| CodecError::RegistrySettings {
                url: self.shown.clone(),
                source: reason.into(),
            })?;
        builder
            .build_with(client)
            .map_err(|e| CodecError::RegistrySettings {
                url: self.shown.clone(),
                source: Box::new(e),
            })
    }

    /// Whether the Avro `schema` (its JSON text) may be registered under `subject`, by the
    /// subject's compatibility level. Registers nothing.
    pub async fn check_compatibility(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Compatibility, CodecError> {
        // Kafka topic names (and so `<topic>-value`) only hold [A-Za-z0-9._-]: no escaping needed.
        let versions_path = format!("/subjects/{subject}/versions");
        let answer = self.send(Method::GET, &versions_path, None).await?;
        let versions: Vec<u32> = match answer.status {
            StatusCode::NOT_FOUND if answer.error_code() == Some(SUBJECT_NOT_FOUND) => {
                return Ok(Compatibility::NewSubject);
            }
            s if s.is_success() => serde_json::from_value(answer.body.clone()).map_err(|e| {
                self.unexpected(Method::GET, &versions_path, &answer, &e.to_string())
            })?,
            _ => return Err(self.refused(Method::GET, &versions_path, &answer)),
        };
        let Some(&latest) = versions.iter().max() else {
            return Ok(Compatibility::NewSubject);
        };
        let level = self.level(subject).await?;

        let check_path = format!("/compatibility/subjects/{subject}/versions/latest?verbose=true");
        let body = json!({"schema": schema, "schemaType": "AVRO"});
        let answer = self.send(Method::POST, &check_path, Some(&body)).await?;
        if answer.status == StatusCode::NOT_FOUND
            && matches!(
                answer.error_code(),
                Some(SUBJECT_NOT_FOUND | VERSION_NOT_FOUND)
            )
        {
            // Deleted between the two calls.
            return Ok(Compatibility::NewSubject);
        }
        if !answer.status.is_success() {
            return Err(self.refused(Method::POST, &check_path, &answer));
        }
        let Some(compatible) = answer.body.get("is_compatible").and_then(Json::as_bool) else {
            return Err(self.unexpected(
                Method::POST,
                &check_path,
                &answer,
                "no boolean `is_compatible`",
            ));
        };
        if compatible {
            return Ok(Compatibility::Compatible { level, latest });
        }
        let mut reasons = registry_messages(&answer.body);
        if reasons.is_empty() {
            reasons = self
                .local_reasons(subject, schema, &level, &versions)
                .await?;
        }
        Ok(Compatibility::Incompatible {
            level,
            latest,
            reasons,
        })
    }

    /// The subject's compatibility level, falling back to the global one.
    async fn level(&self, subject: &str) -> Result<String, CodecError> {
        let subject_path = format!("/config/{subject}?defaultToGlobal=true");
        let answer = self.send(Method::GET, &subject_path, None).await?;
        let (path, answer) = match answer.status {
            s if s.is_success() => (subject_path, answer),
            StatusCode::NOT_FOUND
                if matches!(
                    answer.error_code(),
                    Some(SUBJECT_LEVEL_NOT_CONFIGURED | SUBJECT_NOT_FOUND)
                ) =>
            {
                let answer = self.send(Method::GET, "/config", None).await?;
                if !answer.status.is_success() {
                    return Err(self.refused(Method::GET, "/config", &answer));
                }
                ("/config".to_owned(), answer)
            }
            _ => return Err(self.refused(Method::GET, &subject_path, &answer)),
        };
        // Confluent answers `compatibilityLevel`; some registries echo the PUT's `compatibility`.
        ["compatibilityLevel", "compatibility"]
            .iter()
            .find_map(|key| answer.body.get(*key).and_then(Json::as_str))
            .map(str::to_owned)
            .ok_or_else(|| self.unexpected(Method::GET, &path, &answer, "no compatibility level"))
    }

    /// Reasons from apache-avro's resolution check against the versions `level` compares with:
    /// the latest, or all of them for the `_TRANSITIVE` levels.
    async fn local_reasons(
        &self,
        subject: &str,
        schema: &str,
        level: &str,
        versions: &[u32],
    ) -> Result<Vec<String>, CodecError> {
        let level = level.to_ascii_uppercase();
        let compared: Vec<u32> = if level.ends_with("_TRANSITIVE") {
            versions.to_vec()
        } else {
            versions.iter().max().into_iter().copied().collect()
        };
        let (backward, forward) = match level.trim_end_matches("_TRANSITIVE") {
            "BACKWARD" => (true, false),
            "FORWARD" => (false, true),
            _ => (true, true),
        };
        let candidate = match Schema::parse_str(schema) {
            Ok(s) => s,
            Err(e) => return Ok(vec![format!("local check: the schema does not parse: {e}")]),
        };
        let mut reasons = Vec::new();
        for version in &compared {
            let path = format!("/subjects/{subject}/versions/{version}");
            let answer = self.send(Method::GET, &path, None).await?;
            if !answer.status.is_success() {
                return Err(self.refused(Method::GET, &path, &answer));
            }
            let Some(text) = answer.body.get("schema").and_then(Json::as_str) else {
                return Err(self.unexpected(Method::GET, &path, &answer, "no `schema` text"));
            };
            let registered = match Schema::parse_str(text) {
                Ok(s) => s,
                Err(e) => {
                    reasons.push(format!(
                        "local check: version {version} does not parse here: {e}"
                    ));
                    continue;
                }
            };
            if backward && let Err(e) = SchemaCompatibility::can_read(&registered, &candidate) {
                reasons.push(format!(
                    "local check: the new schema cannot read data written with version {version}: {}",
                    chain(&e)
                ));
            }
            if forward && let Err(e) = SchemaCompatibility::can_read(&candidate, &registered) {
                reasons.push(format!(
                    "local check: version {version} cannot read data written with the new schema: {}",
                    chain(&e)
                ));
            }
        }
        if reasons.is_empty() {
            let compared = compared
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            reasons.push(format!(
                "the registry gives no reason, and a local Avro check against version(s) {compared} finds none"
            ));
        }
        Ok(reasons)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Json>,
    ) -> Result<Answer, CodecError> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header(
                reqwest::header::ACCEPT,
                "application/vnd.schemaregistry.v1+json, application/json",
            );
        if let Some(user) = &self.username {
            request = request.basic_auth(user, self.password.as_deref());
        }
        if let Some(bearer) = &self.bearer {
            request = request.header(reqwest::header::AUTHORIZATION, bearer.header().await?);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let no_answer = |e: reqwest::Error| {
            let reason = if e.is_timeout() {
                format!("no answer within {:?}", self.timeout)
            } else if e.is_connect() {
                "cannot connect".to_owned()
            } else {
                "no answer".to_owned()
            };
            CodecError::Registry {
                request: format!("{method} {}{path}", self.shown),
                status: None,
                reason,
                source: Some(e.without_url()),
            }
        };
        let response = request.send().await.map_err(no_answer)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(no_answer)?;
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            if bytes.is_empty() {
                Json::Null
            } else {
                Json::String(String::from_utf8_lossy(&bytes).into_owned())
            }
        });
        Ok(Answer { status, body })
    }

    /// The registry answered with an error status.
    fn refused(&self, method: Method, path: &str, answer: &Answer) -> CodecError {
        let message = ["message", "detail", "title"]
            .iter()
            .find_map(|key| answer.body.get(*key).and_then(Json::as_str))
            .map(str::to_owned)
            .unwrap_or_else(|| crate::error::truncated(&answer.body, 200));
        let hint = if answer.status == StatusCode::NOT_FOUND {
            " (is the URL the base of a Confluent-compatible API, e.g. …/apis/ccompat/v7?)"
        } else {
            ""
        };
        CodecError::Registry {
            request: format!("{method} {}{path}", self.shown),
            status: Some(answer.status.as_u16()),
            reason: format!("HTTP {}: {message}{hint}", answer.status),
            source: None,
        }
    }

    /// The registry answered 2xx, but not with what the Confluent API promises.
    fn unexpected(&self, method: Method, path: &str, answer: &Answer, what: &str) -> CodecError {
        CodecError::Registry {
            request: format!("{method} {}{path}", self.shown),
            status: Some(answer.status.as_u16()),
            reason: format!(
                "unexpected answer ({what}): {}",
                crate::error::truncated(&answer.body, 200)
            ),
            source: None,
        }
    }
}

/// Confluent's `messages` (verbose) or an older Apicurio's `reason`.
fn registry_messages(body: &Json) -> Vec<String> {
    let mut messages: Vec<String> = body
        .get("messages")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    if let Some(reason) = body.get("reason").and_then(Json::as_str) {
        messages.push(reason.to_owned());
    }
    messages.retain(|m| !m.trim().is_empty());
    messages
}

/// `url` with any `user:password@` removed.
fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            // Only fails for URLs that cannot have credentials, which these just had.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string().trim_end_matches('/').to_owned()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Serves one HTTP request with `status` and `body`, and hands back the request's head.
    async fn one_shot(status: &str, body: &str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/apis/ccompat/v7",
            listener.local_addr().expect("addr")
        );
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let served = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            socket.write_all(response.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&head).into_owned()
        });
        (url, served)
    }

    #[tokio::test]
    async fn basic_auth_is_sent_and_subject_not_found_means_new() {
        let (url, served) = one_shot(
            "404 Not Found",
            r#"{"error_code":40401,"message":"Subject not found"}"#,
        )
        .await;
        let client = RegistryClient::new(&url, Duration::from_secs(5))
            .expect("client")
            .with_basic_auth("ada", Some("s3cret"));
        let outcome = client
            .check_compatibility("t-value", r#"{"type":"string"}"#)
            .await
            .expect("answer");
        assert_eq!(outcome, Compatibility::NewSubject);
        let head = served.await.expect("server").to_ascii_lowercase();
        assert!(
            head.starts_with("get /apis/ccompat/v7/subjects/t-value/versions "),
            "{head}"
        );
        // base64("ada:s3cret")
        assert!(
            head.contains("authorization: basic ywrhonmzy3jlda=="),
            "{head}"
        );
    }

    #[tokio::test]
    async fn a_404_without_the_subject_error_code_is_an_error_not_a_new_subject() {
        let (url, served) = one_shot("404 Not Found", r#"{"title":"no such resource"}"#).await;
        let client = RegistryClient::new(&url, Duration::from_secs(5)).expect("client");
        let err = client
            .check_compatibility("t-value", r#"{"type":"string"}"#)
            .await
            .expect_err("a wrong base URL must not look like an empty registry");
        served.await.expect("server");
        let text = err.to_string();
        assert!(
            text.contains(&format!("GET {url}/subjects/t-value/versions")),
            "{text}"
        );
        assert!(
            text.contains("HTTP 404 Not Found: no such resource"),
            "{text}"
        );
        assert_eq!(
            autoglm_core::Classify::class(&err),
            autoglm_core::ErrorClass::Fatal
        );
    }

    #[tokio::test]
    async fn an_unreachable_registry_names_the_url_and_is_transient() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let url = format!("http://127.0.0.1:{port}/apis/ccompat/v7");
        let client = RegistryClient::new(&url, Duration::from_secs(5)).expect("client");
        let err = client
            .check_compatibility("t-value", r#"{"type":"string"}"#)
            .await
            .expect_err("nothing listens");
        assert_eq!(
            err.to_string(),
            format!("schema registry GET {url}/subjects/t-value/versions: cannot connect")
        );
        assert_eq!(
            autoglm_core::Classify::class(&err),
            autoglm_core::ErrorClass::Transient
        );
    }

    #[test]
    fn credentials_never_show() {
        let client =
            RegistryClient::new("https://u:pw@registry.example/api/", Duration::from_secs(1))
                .expect("client")
                .with_basic_auth("ada", Some("s3cret"));
        assert_eq!(client.url(), "https://registry.example/api");
        let debug = format!("{client:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("pw"),
            "{debug}"
        );
    }

    #[test]
    fn nested_avro_reasons_keep_the_field_and_the_cause() {
        let old = Schema::parse_str(
            r#"{"type":"record","name":"T","fields":[{"name":"amount","type":"long"}]}"#,
        )
        .expect("old");
        let new = Schema::parse_str(
            r#"{"type":"record","name":"T","fields":[{"name":"amount","type":"boolean"}]}"#,
        )
        .expect("new");
        let err = SchemaCompatibility::can_read(&old, &new).expect_err("long → boolean");
        let text = chain(&err);
        assert!(
            text.contains("'amount'") && text.contains("Writer schema is"),
            "{text}"
        );
    }

    #[test]
    fn messages_come_from_confluent_or_old_apicurio() {
        assert_eq!(
            registry_messages(&json!({"is_compatible": false, "messages": ["a", "b"]})),
            ["a", "b"]
        );
        assert_eq!(
            registry_messages(&json!({"is_compatible": false, "reason": "c"})),
            ["c"]
        );
        assert!(registry_messages(&json!({"is_compatible": false})).is_empty());
    }
}
