//! Pure construction of every Linode API request the provisioner sends: method, path,
//! query, `X-Filter` and JSON body, without the token and without any IO. The client sends
//! exactly these values; `plan --out` dumps them (via [`ApiRequest::to_logged`], which
//! redacts secrets) without sending anything.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use super::error::LinodeError;
use super::types::{CreateFirewallRequest, CreateInstanceRequest};

/// Placeholder written wherever a secret would appear in logs or dumps.
pub const REDACTED: &str = "<redacted>";

/// Body keys whose values are secrets and never leave the process except in the real request.
const SECRET_BODY_KEYS: &[&str] = &["root_pass"];

/// HTTP methods the client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }

    /// Whether sending the request twice has the same effect as once (safe to retry after a
    /// timeout where we cannot know whether the first one arrived).
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Method::Post)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `X-Filter` header value: a JSON object of field -> value (AND of all keys).
/// Tag filters are always a JSON *string* (an array gives Linode a 400).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter(Map<String, Value>);

impl Filter {
    pub fn new() -> Self {
        Self::default()
    }
    /// `{"label": label}`
    pub fn label(label: &str) -> Self {
        Self::new().and("label", label)
    }
    /// `{"tags": tag}` — matches items carrying that tag.
    pub fn tag(tag: &str) -> Self {
        Self::new().and("tags", tag)
    }
    /// `{"class": class}` for `/linode/types` (e.g. `gpu`).
    pub fn class(class: &str) -> Self {
        Self::new().and("class", class)
    }
    /// Adds `key == value` to the filter (replacing an earlier value for `key`).
    pub fn and(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }
    pub fn as_json(&self) -> Value {
        Value::Object(self.0.clone())
    }
    /// The header value: compact JSON.
    pub fn header_value(&self) -> String {
        Value::Object(self.0.clone()).to_string()
    }
}

/// One API request, fully described; relative to the base URL (`/linode/instances`, not
/// `/v4/linode/instances`).
#[derive(Clone, Debug, PartialEq)]
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub filter: Option<Filter>,
    pub body: Option<Value>,
}

/// What a log line / `plan --out` shows for a request: secrets replaced by [`REDACTED`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoggedRequest {
    pub method: Method,
    /// Path plus query string, relative to the base URL.
    pub path: String,
    /// Headers the client sends, with the `Authorization` value redacted.
    pub headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

impl ApiRequest {
    fn new(method: Method, path: String) -> Self {
        Self {
            method,
            path,
            query: Vec::new(),
            filter: None,
            body: None,
        }
    }

    /// Same request asking for one page of a collection.
    pub fn with_page(mut self, page: u32, page_size: u32) -> Self {
        self.query.retain(|(k, _)| k != "page" && k != "page_size");
        self.query.push(("page".into(), page.to_string()));
        self.query.push(("page_size".into(), page_size.to_string()));
        self
    }

    /// Path with the query string appended.
    pub fn path_and_query(&self) -> String {
        if self.query.is_empty() {
            return self.path.clone();
        }
        let q = self
            .query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        format!("{}?{q}", self.path)
    }

    /// Headers other than `Authorization`, as sent.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("Accept", "application/json".to_owned())];
        if self.body.is_some() {
            headers.push(("Content-Type", "application/json".to_owned()));
        }
        if let Some(filter) = &self.filter {
            headers.push(("X-Filter", filter.header_value()));
        }
        headers
    }

    /// The request as it may be written to logs or to `plan --out`: the token and secret
    /// body fields (`root_pass`) are replaced by [`REDACTED`].
    pub fn to_logged(&self) -> LoggedRequest {
        let mut headers: BTreeMap<String, String> = self
            .headers()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        headers.insert("Authorization".into(), format!("Bearer {REDACTED}"));
        LoggedRequest {
            method: self.method,
            path: self.path_and_query(),
            headers,
            body: self.body.as_ref().map(redact_body),
        }
    }
}

/// Copy of `body` with every secret field's value replaced by [`REDACTED`].
pub fn redact_body(body: &Value) -> Value {
    match body {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    if SECRET_BODY_KEYS.contains(&k.as_str()) {
                        (k.clone(), Value::String(REDACTED.into()))
                    } else {
                        (k.clone(), redact_body(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact_body).collect()),
        other => other.clone(),
    }
}

/// Checks an id that goes into a path segment. Linode ids are `[A-Za-z0-9._-]`; image ids
/// carry one `/` (`linode/ubuntu24.04`, `private/123`).
fn segment(what: &'static str, value: &str, allow_slash: bool) -> Result<String, LinodeError> {
    let bad = |reason| LinodeError::InvalidArgument {
        what,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() || value.len() > 128 {
        return Err(bad("must be 1 to 128 characters"));
    }
    let slashes = value.matches('/').count();
    if slashes > usize::from(allow_slash) || value.starts_with('/') || value.ends_with('/') {
        return Err(bad("contains a misplaced '/'"));
    }
    if value == "." || value == ".." || value.split('/').any(|s| s == "." || s == "..") {
        return Err(bad("is not an id"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
    if !value.chars().all(ok) {
        return Err(bad("may only contain letters, digits, '.', '_' and '-'"));
    }
    Ok(value.to_owned())
}

fn to_body<T: Serialize>(what: &'static str, value: &T) -> Result<Value, LinodeError> {
    serde_json::to_value(value).map_err(|e| LinodeError::InvalidArgument {
        what,
        value: String::new(),
        reason: if e.is_data() {
            "cannot be encoded as JSON"
        } else {
            "cannot be encoded"
        },
    })
}

fn list(path: &str, filter: Option<Filter>) -> ApiRequest {
    let mut req = ApiRequest::new(Method::Get, path.to_owned());
    req.filter = filter.filter(|f| !f.0.is_empty());
    req
}

/// `GET /regions/{id}`
pub fn get_region(id: &str) -> Result<ApiRequest, LinodeError> {
    Ok(ApiRequest::new(
        Method::Get,
        format!("/regions/{}", segment("region", id, false)?),
    ))
}
/// `GET /regions`
pub fn list_regions() -> ApiRequest {
    list("/regions", None)
}
/// `GET /linode/types` (e.g. with `Filter::class("gpu")`)
pub fn list_types(filter: Option<Filter>) -> ApiRequest {
    list("/linode/types", filter)
}
/// `GET /linode/types/{id}`
pub fn get_type(id: &str) -> Result<ApiRequest, LinodeError> {
    Ok(ApiRequest::new(
        Method::Get,
        format!("/linode/types/{}", segment("type", id, false)?),
    ))
}
/// `GET /images/{id}` (`id` like `linode/ubuntu24.04`)
pub fn get_image(id: &str) -> Result<ApiRequest, LinodeError> {
    Ok(ApiRequest::new(
        Method::Get,
        format!("/images/{}", segment("image", id, true)?),
    ))
}
/// `POST /networking/firewalls`
pub fn create_firewall(body: &CreateFirewallRequest) -> Result<ApiRequest, LinodeError> {
    let mut req = ApiRequest::new(Method::Post, "/networking/firewalls".into());
    req.body = Some(to_body("firewall request", body)?);
    Ok(req)
}
/// `GET /networking/firewalls/{id}`
pub fn get_firewall(id: u64) -> ApiRequest {
    ApiRequest::new(Method::Get, format!("/networking/firewalls/{id}"))
}
/// `GET /networking/firewalls` (filterable by `label`, `tags`)
pub fn list_firewalls(filter: Option<Filter>) -> ApiRequest {
    list("/networking/firewalls", filter)
}
/// `DELETE /networking/firewalls/{id}`
pub fn delete_firewall(id: u64) -> ApiRequest {
    ApiRequest::new(Method::Delete, format!("/networking/firewalls/{id}"))
}
/// `GET /networking/firewalls/{id}/devices`
pub fn list_firewall_devices(id: u64) -> ApiRequest {
    list(&format!("/networking/firewalls/{id}/devices"), None)
}
/// `POST /linode/instances`
pub fn create_instance(body: &CreateInstanceRequest) -> Result<ApiRequest, LinodeError> {
    let mut req = ApiRequest::new(Method::Post, "/linode/instances".into());
    req.body = Some(to_body("instance request", body)?);
    Ok(req)
}
/// `GET /linode/instances/{id}`
pub fn get_instance(id: u64) -> ApiRequest {
    ApiRequest::new(Method::Get, format!("/linode/instances/{id}"))
}
/// `GET /linode/instances` (filterable by `label`, `tags`, `region`, ...)
pub fn list_instances(filter: Option<Filter>) -> ApiRequest {
    list("/linode/instances", filter)
}
/// `DELETE /linode/instances/{id}`
pub fn delete_instance(id: u64) -> ApiRequest {
    ApiRequest::new(Method::Delete, format!("/linode/instances/{id}"))
}
/// `GET /account`
pub fn get_account() -> ApiRequest {
    ApiRequest::new(Method::Get, "/account".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tag_filter_is_a_string() {
        assert_eq!(
            Filter::tag("ai-sandbox").header_value(),
            r#"{"tags":"ai-sandbox"}"#
        );
        let f = Filter::label("x").and("tags", "ai-sandbox:x");
        assert_eq!(f.as_json(), json!({"label": "x", "tags": "ai-sandbox:x"}));
    }

    #[test]
    fn segments_reject_traversal_and_odd_characters() {
        assert!(get_image("linode/ubuntu24.04").is_ok());
        assert!(get_image("../account").is_err());
        assert!(get_image("linode/a/b").is_err());
        assert!(get_region("us-ord?x=1").is_err());
        assert!(get_region("").is_err());
        assert!(get_type("g2-gpu-rtx4000a1-s").is_ok());
        assert!(get_type("a/b").is_err());
    }

    #[test]
    fn logged_request_redacts_secrets_at_any_depth() {
        let mut req = ApiRequest::new(Method::Post, "/linode/instances".into());
        req.body = Some(json!({"root_pass": "s3cret", "x": [{"root_pass": "s3cret"}]}));
        let logged = serde_json::to_string(&req.to_logged()).unwrap();
        assert!(!logged.contains("s3cret"), "{logged}");
        assert!(logged.contains("Bearer <redacted>"));
    }

    #[test]
    fn with_page_replaces_previous_paging() {
        let req = list_instances(None).with_page(1, 25).with_page(2, 25);
        assert_eq!(
            req.path_and_query(),
            "/linode/instances?page=2&page_size=25"
        );
    }
}
