//! How the processor proves itself to a secured Schema Registry: TLS with a private CA and a
//! client certificate, and an OAuth2 bearer token by the client-credentials grant.
//!
//! ```text
//!   every registry request ─► BearerTokens::token() ─ cached, fresh? ── yes ─► Authorization: Bearer …
//!                                                       │ no (absent, or past 80% of its life)
//!                                                       ▼
//!                                  POST token_endpoint (grant_type=client_credentials, scope)
//! ```
//!
//! The same token source serves the processor's own registry calls and, as a
//! `reqwest_middleware` middleware, the decoders' and encoders' (`schema_registry_converter`).
//! A refused token request is a fatal [`CodecError::RegistryRefused`]-like error naming the
//! endpoint and the provider's answer; no answer is transient. Secrets never appear in errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Certificate, ClientBuilder, Identity};

use crate::CodecError;

/// TLS settings for the registry, as PEM bytes.
#[derive(Clone, Default)]
pub struct RegistryTls {
    /// CA certificates to trust besides the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// The client's certificate followed by its private key (mutual TLS).
    pub identity_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for RegistryTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryTls")
            .field("ca", &self.ca_pem.is_some())
            .field("identity", &self.identity_pem.is_some())
            .finish()
    }
}

impl RegistryTls {
    /// `builder` with these certificates.
    pub(crate) fn apply(&self, mut builder: ClientBuilder) -> Result<ClientBuilder, String> {
        if let Some(ca) = &self.ca_pem {
            for certificate in Certificate::from_pem_bundle(ca)
                .map_err(|e| format!("the CA file is not PEM certificates: {e}"))?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let Some(identity) = &self.identity_pem {
            builder =
                builder.identity(Identity::from_pem(identity).map_err(|e| {
                    format!("the client certificate and key are not a PEM pair: {e}")
                })?);
        }
        Ok(builder)
    }
}

/// OAuth2 client credentials.
#[derive(Clone)]
pub struct ClientCredentials {
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
    /// The provider's token endpoint.
    pub token_endpoint: String,
    /// Space-separated scopes, if any.
    pub scope: Option<String>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("token_endpoint", &self.token_endpoint)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Bearer tokens for the registry, fetched when needed and reused until 80% of their life.
#[derive(Clone, Debug)]
pub struct BearerTokens {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    credentials: ClientCredentials,
    http: reqwest::Client,
    /// The token and when to fetch the next one.
    cached: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl BearerTokens {
    /// A token source for `credentials`, fetching over `http`.
    pub fn new(credentials: ClientCredentials, http: reqwest::Client) -> BearerTokens {
        BearerTokens {
            inner: Arc::new(Inner {
                credentials,
                http,
                cached: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// A token that is still fresh, fetching one if needed.
    pub async fn token(&self) -> Result<String, CodecError> {
        let mut cached = self.inner.cached.lock().await;
        if let Some((token, refresh_at)) = cached.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        *cached = Some((token.clone(), Instant::now() + lifetime.mul_f64(0.8)));
        Ok(token)
    }

    async fn fetch(&self) -> Result<(String, Duration), CodecError> {
        let c = &self.inner.credentials;
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials")
                .append_pair("client_id", &c.client_id)
                .append_pair("client_secret", &c.client_secret);
            if let Some(scope) = &c.scope {
                form.append_pair("scope", scope);
            }
            form.finish()
        };
        let request = format!("POST {}", c.token_endpoint);
        let failed = |status: Option<u16>, reason: String| CodecError::Registry {
            request: request.clone(),
            status,
            reason: format!("OAuth token: {reason}"),
            source: None,
        };
        let response = self
            .inner
            .http
            .post(&c.token_endpoint)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .map_err(|e| failed(None, format!("no answer: {}", e.without_url())))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| failed(Some(status.as_u16()), format!("not JSON: {e}")))?;
        if !status.is_success() {
            // 4xx: the provider refused (a wrong secret, a disabled client): fatal, like a
            // registry's 401. 5xx: transient.
            let status = if status.is_server_error() { 503 } else { 401 };
            return Err(failed(Some(status), format!("refused: {body}")));
        }
        let token = body
            .get("access_token")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| failed(Some(401), "the answer has no access_token".to_owned()))?;
        let lifetime = body
            .get("expires_in")
            .and_then(serde_json::Value::as_u64)
            .map_or(Duration::from_secs(60), Duration::from_secs);
        Ok((token.to_owned(), lifetime))
    }

    /// The `Authorization` header value.
    pub(crate) async fn header(&self) -> Result<HeaderValue, CodecError> {
        let token = self.token().await?;
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| CodecError::Registry {
            request: format!("POST {}", self.inner.credentials.token_endpoint),
            status: Some(401),
            reason: format!("OAuth token: not a header value: {e}"),
            source: None,
        })
    }
}

/// Adds the bearer token to every request of `schema_registry_converter`.
#[derive(Debug)]
pub(crate) struct BearerMiddleware(pub(crate) BearerTokens);

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for BearerMiddleware {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let header = self
            .0
            .header()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        request.headers_mut().insert(AUTHORIZATION, header);
        next.run(request, extensions).await
    }
}
