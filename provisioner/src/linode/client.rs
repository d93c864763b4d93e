//! The Linode API v4 HTTP client: sends the requests built in [`super::request`] with the
//! bearer token, retries transient answers per [`super::retry`], follows pagination, and
//! turns answers into typed values or [`LinodeError`]s. The only module that does network
//! IO for the Linode API.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION, RETRY_AFTER, USER_AGENT};
use serde::de::DeserializeOwned;

use super::error::{ApiErrorBody, ApiErrorDetail, LinodeError};
use super::request::{self, ApiRequest, Filter, LoggedRequest, Method};
use super::retry::{classify, Answer, Retry, RetryPolicy};
use super::secret::ApiToken;
use super::types::{
    Account, CreateFirewallRequest, CreateInstanceRequest, Firewall, FirewallDevice, Image,
    Instance, LinodeType, Page, Region,
};

/// Production API base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.linode.com/v4";
/// Environment variable overriding the base URL (tests point it at the fake API).
pub const BASE_URL_ENV: &str = "LINODE_API_URL";
/// Largest page Linode serves; fewer round trips.
pub const MAX_PAGE_SIZE: u32 = 500;
/// Smallest page size Linode accepts.
pub const MIN_PAGE_SIZE: u32 = 25;
/// Safety bound on pages followed for one listing.
const MAX_PAGES: u32 = 1000;

/// Called with every request attempt just before it is sent (secrets already redacted).
pub type RequestHook = Arc<dyn Fn(&LoggedRequest) + Send + Sync>;

/// `LINODE_API_URL` if set and non-empty, else [`DEFAULT_BASE_URL`].
pub fn base_url_from_env() -> String {
    std::env::var(BASE_URL_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned())
}

/// A Linode API client. Cheap to clone.
#[derive(Clone)]
pub struct LinodeClient {
    http: reqwest::Client,
    base_url: String,
    token: ApiToken,
    retry: RetryPolicy,
    page_size: u32,
    hook: Option<RequestHook>,
}

impl fmt::Debug for LinodeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinodeClient")
            .field("base_url", &self.base_url)
            .field("token", &self.token)
            .field("retry", &self.retry)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

impl LinodeClient {
    /// A client for `base_url` (e.g. [`base_url_from_env`]) authenticating with `token`.
    pub fn new(token: ApiToken, base_url: &str) -> Result<Self, LinodeError> {
        let (base_url, loopback) = check_base_url(base_url)?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(90));
        if loopback {
            // A test's fake API must never be reached through an HTTP(S)_PROXY.
            builder = builder.no_proxy();
        }
        let http = builder.build().map_err(LinodeError::ClientInit)?;
        Ok(Self {
            http,
            base_url,
            token,
            retry: RetryPolicy::default(),
            page_size: MAX_PAGE_SIZE,
            hook: None,
        })
    }

    /// Replaces the retry policy (attempts, delays, sleeper).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Page size for listings, clamped to Linode's 25..=500.
    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size.clamp(MIN_PAGE_SIZE, MAX_PAGE_SIZE);
        self
    }

    /// Observes every request attempt (redacted), e.g. for a request log.
    pub fn with_request_hook(mut self, hook: RequestHook) -> Self {
        self.hook = Some(hook);
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Sends `req` (retrying transient failures) and decodes the 2xx body as `T`.
    pub async fn send<T: DeserializeOwned>(&self, req: &ApiRequest) -> Result<T, LinodeError> {
        let (status, body) = self.execute(req).await?;
        serde_json::from_slice(&body).map_err(|e| LinodeError::Decode {
            status,
            method: req.method,
            path: req.path.clone(),
            message: e.to_string(),
        })
    }

    /// Sends `req` and ignores the 2xx body (DELETE answers `{}`).
    pub async fn send_no_content(&self, req: &ApiRequest) -> Result<(), LinodeError> {
        self.execute(req).await.map(|_| ())
    }

    /// Fetches every page of a collection.
    pub async fn send_all_pages<T: DeserializeOwned>(
        &self,
        req: &ApiRequest,
    ) -> Result<Vec<T>, LinodeError> {
        let mut out = Vec::new();
        let mut page = 1;
        loop {
            let got: Page<T> = self
                .send(&req.clone().with_page(page, self.page_size))
                .await?;
            out.extend(got.data);
            if page >= got.pages || page >= MAX_PAGES {
                return Ok(out);
            }
            page += 1;
        }
    }

    pub async fn get_region(&self, id: &str) -> Result<Region, LinodeError> {
        self.send(&request::get_region(id)?).await
    }
    pub async fn list_regions(&self) -> Result<Vec<Region>, LinodeError> {
        self.send_all_pages(&request::list_regions()).await
    }
    pub async fn list_types(&self, filter: Option<Filter>) -> Result<Vec<LinodeType>, LinodeError> {
        self.send_all_pages(&request::list_types(filter)).await
    }
    /// Plans of class `gpu`.
    pub async fn list_gpu_types(&self) -> Result<Vec<LinodeType>, LinodeError> {
        let mut types = self.list_types(Some(Filter::class("gpu"))).await?;
        types.retain(LinodeType::is_gpu);
        Ok(types)
    }
    pub async fn get_type(&self, id: &str) -> Result<LinodeType, LinodeError> {
        self.send(&request::get_type(id)?).await
    }
    pub async fn get_image(&self, id: &str) -> Result<Image, LinodeError> {
        self.send(&request::get_image(id)?).await
    }
    pub async fn create_firewall(
        &self,
        body: &CreateFirewallRequest,
    ) -> Result<Firewall, LinodeError> {
        self.send(&request::create_firewall(body)?).await
    }
    pub async fn get_firewall(&self, id: u64) -> Result<Firewall, LinodeError> {
        self.send(&request::get_firewall(id)).await
    }
    pub async fn list_firewalls(
        &self,
        filter: Option<Filter>,
    ) -> Result<Vec<Firewall>, LinodeError> {
        self.send_all_pages(&request::list_firewalls(filter)).await
    }
    /// Firewalls carrying `tag` (server-side filter, re-checked here).
    pub async fn firewalls_with_tag(&self, tag: &str) -> Result<Vec<Firewall>, LinodeError> {
        let mut all = self.list_firewalls(Some(Filter::tag(tag))).await?;
        all.retain(|f| f.tags.iter().any(|t| t == tag));
        Ok(all)
    }
    pub async fn delete_firewall(&self, id: u64) -> Result<(), LinodeError> {
        self.send_no_content(&request::delete_firewall(id)).await
    }
    pub async fn list_firewall_devices(&self, id: u64) -> Result<Vec<FirewallDevice>, LinodeError> {
        self.send_all_pages(&request::list_firewall_devices(id))
            .await
    }
    pub async fn create_instance(
        &self,
        body: &CreateInstanceRequest,
    ) -> Result<Instance, LinodeError> {
        self.send(&request::create_instance(body)?).await
    }
    pub async fn get_instance(&self, id: u64) -> Result<Instance, LinodeError> {
        self.send(&request::get_instance(id)).await
    }
    pub async fn list_instances(
        &self,
        filter: Option<Filter>,
    ) -> Result<Vec<Instance>, LinodeError> {
        self.send_all_pages(&request::list_instances(filter)).await
    }
    /// Instances carrying `tag` (server-side filter, re-checked here because tag filters
    /// have misbehaved in other clients).
    pub async fn instances_with_tag(&self, tag: &str) -> Result<Vec<Instance>, LinodeError> {
        let mut all = self.list_instances(Some(Filter::tag(tag))).await?;
        all.retain(|i| i.has_tag(tag));
        Ok(all)
    }
    pub async fn delete_instance(&self, id: u64) -> Result<(), LinodeError> {
        self.send_no_content(&request::delete_instance(id)).await
    }
    pub async fn get_account(&self) -> Result<Account, LinodeError> {
        self.send(&request::get_account()).await
    }

    /// One logical request: attempts until success, a permanent error, or the bound.
    async fn execute(&self, req: &ApiRequest) -> Result<(u16, Vec<u8>), LinodeError> {
        let max_attempts = self.retry.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            if let Some(hook) = &self.hook {
                hook(&req.to_logged());
            }
            tracing::debug!(method = %req.method, path = %req.path, attempt, "Linode API request");
            let transport_err = |source| LinodeError::Transport {
                method: req.method,
                path: req.path.clone(),
                source,
            };
            let resp = match self.build(req)?.send().await {
                Ok(resp) => resp,
                Err(e) => {
                    // Retry only when the request surely did not take effect (connect
                    // failure) or when repeating it is harmless.
                    let retryable =
                        e.is_connect() || (e.is_timeout() && req.method.is_idempotent());
                    if retryable && attempt < max_attempts {
                        self.retry
                            .sleeper
                            .sleep(self.retry.delay(attempt, None))
                            .await;
                        attempt += 1;
                        continue;
                    }
                    return Err(transport_err(e));
                }
            };
            let status = resp.status().as_u16();
            let retry_after = header_str(&resp, RETRY_AFTER);
            let maintenance = resp.headers().contains_key("x-maintenance-mode");
            let body = resp.bytes().await.map_err(transport_err)?.to_vec();
            if (200..300).contains(&status) {
                return Ok((status, body));
            }
            let errors = error_details(status, &body);
            let decision = classify(&Answer {
                status,
                retry_after: retry_after.as_deref(),
                maintenance,
                errors: &errors,
            });
            match decision {
                Retry::After(hint) if attempt < max_attempts => {
                    let wait = self.retry.delay(attempt, hint);
                    tracing::debug!(
                        status,
                        ?wait,
                        attempt,
                        "transient Linode API answer; retrying"
                    );
                    self.retry.sleeper.sleep(wait).await;
                    attempt += 1;
                }
                _ => {
                    return Err(LinodeError::Api {
                        status,
                        errors,
                        method: req.method,
                        path: req.path.clone(),
                        attempts: attempt,
                    })
                }
            }
        }
    }

    fn build(&self, req: &ApiRequest) -> Result<reqwest::RequestBuilder, LinodeError> {
        let url = format!("{}{}", self.base_url, req.path_and_query());
        let method = match req.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.token.expose_secret()))
            .map_err(|_| LinodeError::InvalidToken("not a valid HTTP header value".into()))?;
        auth.set_sensitive(true);
        let mut builder = self
            .http
            .request(method, url)
            .header(AUTHORIZATION, auth)
            .header(
                USER_AGENT,
                concat!("ai-sandbox/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in req.headers() {
            let value =
                HeaderValue::from_str(&value).map_err(|_| LinodeError::InvalidArgument {
                    what: "header",
                    value: name.to_owned(),
                    reason: "value is not a valid HTTP header value",
                })?;
            builder = builder.header(HeaderName::from_static(lower(name)), value);
        }
        if let Some(body) = &req.body {
            builder = builder.body(body.to_string());
        }
        Ok(builder)
    }
}

fn lower(name: &'static str) -> &'static str {
    match name {
        "Accept" => "accept",
        "Content-Type" => "content-type",
        "X-Filter" => "x-filter",
        _ => "x-unknown",
    }
}

fn header_str(resp: &reqwest::Response, name: HeaderName) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Linode's `errors[]`, or one synthetic reason when the body is not in that shape.
fn error_details(status: u16, body: &[u8]) -> Vec<ApiErrorDetail> {
    if let Ok(parsed) = serde_json::from_slice::<ApiErrorBody>(body) {
        if !parsed.errors.is_empty() {
            return parsed.errors;
        }
    }
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let reason = if text.trim().is_empty() {
        format!("HTTP {status} with an empty body")
    } else {
        format!("HTTP {status}: {}", text.trim())
    };
    vec![ApiErrorDetail {
        field: None,
        reason,
    }]
}

/// Normalises and checks a base URL: https (plain http only to a loopback host, so the
/// token never crosses a network unencrypted), a host, no credentials/query/fragment, no
/// trailing slash. Also says whether the host is loopback.
fn check_base_url(url: &str) -> Result<(String, bool), LinodeError> {
    let bad = |reason: &str| LinodeError::InvalidBaseUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("scheme must be http or https"));
    }
    let loopback = match parsed.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => return Err(bad("no host")),
    };
    if parsed.scheme() == "http" && !loopback {
        return Err(bad(
            "plain http is only allowed to 127.0.0.1/localhost; use https",
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("must not contain credentials"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("must not contain a query or fragment"));
    }
    Ok((parsed.as_str().trim_end_matches('/').to_owned(), loopback))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_is_normalised_and_checked() {
        assert_eq!(
            check_base_url("https://api.linode.com/v4/").unwrap(),
            (DEFAULT_BASE_URL.to_owned(), false)
        );
        assert_eq!(
            check_base_url("http://127.0.0.1:8080/v4").unwrap(),
            ("http://127.0.0.1:8080/v4".to_owned(), true)
        );
        assert!(check_base_url("http://api.linode.com/v4").is_err());
        assert!(check_base_url("ftp://x/v4").is_err());
        assert!(check_base_url("https://u:p@x/v4").is_err());
        assert!(check_base_url("https://x/v4?a=1").is_err());
        assert!(check_base_url("not a url").is_err());
    }

    #[test]
    fn non_linode_error_bodies_become_one_reason() {
        let d = error_details(502, b"<html>bad gateway</html>");
        assert_eq!(d.len(), 1);
        assert!(d[0].reason.contains("502") && d[0].reason.contains("bad gateway"));
        let d = error_details(
            400,
            br#"{"errors":[{"field":"label","reason":"too long"}]}"#,
        );
        assert_eq!(d[0].field.as_deref(), Some("label"));
    }

    #[test]
    fn debug_redacts_token_and_https_is_required_off_loopback() {
        let token = ApiToken::new("tok-very-secret-123").unwrap();
        let c = LinodeClient::new(token, "http://127.0.0.1:9/v4").unwrap();
        assert!(!format!("{c:?}").contains("tok-very-secret-123"));
    }
}
