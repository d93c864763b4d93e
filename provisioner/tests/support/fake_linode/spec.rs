//! The official Linode OpenAPI spec (v4.189.0, `../shared/specs/`) as a request validator
//! for the fake API: loads the YAML once, resolves `$ref`, turns an operation's OpenAPI 3.0
//! request schema into plain JSON Schema (draft 4) and checks bodies with `jsonschema`.
//! Also builds spec-shaped example bodies from the schemas' `example` values.
//!
//! OpenAPI -> JSON Schema conversion (what a literal reading would get wrong):
//! - `allOf` branches and their sibling keywords are merged into one object schema
//!   (properties united, `required` united, `additionalProperties: false` kept): the spec
//!   puts `additionalProperties: false` on one branch while the other holds `region`/`type`,
//!   so a literal `allOf` would reject every request.
//! - `nullable: true` becomes `type: [T, "null"]`; without it `null` is a type error.
//! - `readOnly` properties are dropped from request schemas, so sending them is rejected.
//! - a `required` list on an array schema (the spec's firewall `rules.inbound`) applies to
//!   its items.
//! - `format: byte` is checked as standard base64 without line breaks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value};

const SPEC_FILE: &str = "linode-openapi-v4.189.0.yaml";

/// Directory of the shared specs: `$AI_SANDBOX_SPECS_DIR` or `<repo>/../shared/specs`.
pub fn specs_dir() -> PathBuf {
    std::env::var_os("AI_SANDBOX_SPECS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/specs"))
}

/// The loaded spec plus compiled validators (per operation, built on first use).
pub struct Spec {
    root: Value,
    validators: Mutex<HashMap<(String, String), Arc<jsonschema::Validator>>>,
}

/// The process-wide spec, loaded on first use (the YAML is 3.6 MB).
pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = specs_dir().join(SPEC_FILE);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading the Linode spec {}: {e}", path.display()));
        let root: Value = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing the Linode spec {}: {e}", path.display()));
        Spec {
            root,
            validators: Mutex::new(HashMap::new()),
        }
    })
}

impl Spec {
    fn operation(&self, method: &str, template: &str) -> Option<&Value> {
        self.root
            .get("paths")?
            .get(template)?
            .get(method.to_ascii_lowercase())
    }

    /// The request-body schema of an operation, converted to JSON Schema (see module doc).
    /// `template` is the spec path, e.g. `/{apiVersion}/linode/instances`.
    pub fn request_schema(&self, method: &str, template: &str) -> Option<Value> {
        let raw = self
            .operation(method, template)?
            .pointer("/requestBody/content/application~1json/schema")?;
        let flat = flatten(raw, &self.root, 0);
        Some(finish(&flat, true))
    }

    /// A spec-shaped example of an operation's 200 answer, from the `example` values.
    pub fn example_response(&self, method: &str, template: &str) -> Option<Value> {
        let raw = self
            .operation(method, template)?
            .pointer("/responses/200/content/application~1json/schema")?;
        Some(example_of(&finish(&flatten(raw, &self.root, 0), false)))
    }

    /// Checks `body` against the operation's request schema. `Ok` when the operation takes
    /// no body; `Err` lists `(field, problem)` pairs, `field` as Linode writes it
    /// (`rules.inbound[0].label`), `None` for the body as a whole.
    pub fn validate_request(
        &self,
        method: &str,
        template: &str,
        body: &Value,
    ) -> Result<(), Vec<(Option<String>, String)>> {
        let validator = {
            let key = (method.to_owned(), template.to_owned());
            let mut cache = self.validators.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(&key) {
                Some(v) => Arc::clone(v),
                None => {
                    let Some(schema) = self.request_schema(method, template) else {
                        return Ok(());
                    };
                    let v = Arc::new(compile(&schema).unwrap_or_else(|e| {
                        panic!("compiling the spec schema of {method} {template}: {e}")
                    }));
                    cache.insert(key, Arc::clone(&v));
                    v
                }
            }
        };
        let errors: Vec<_> = validator
            .iter_errors(body)
            .map(|e| (field_of(&e.instance_path().to_string()), e.to_string()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Compiles a converted schema with the `byte` format check.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .with_format("byte", is_strict_base64)
        .build(schema)
        .map_err(|e| e.to_string())
}

/// Standard-alphabet, padded base64 with no whitespace or line breaks.
pub fn is_strict_base64(s: &str) -> bool {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return false;
    }
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    pad <= 2
        && b[..b.len() - pad]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// JSON pointer `/rules/inbound/0/label` -> `rules.inbound[0].label`.
fn field_of(pointer: &str) -> Option<String> {
    let mut out = String::new();
    for part in pointer.split('/').skip(1) {
        let part = part.replace("~1", "/").replace("~0", "~");
        if part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&part);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Pass 1: resolve `$ref` and merge `allOf` (recursively).
fn flatten(schema: &Value, root: &Value, depth: usize) -> Value {
    assert!(depth < 64, "the spec's $ref chain is too deep or cyclic");
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    if let Some(Value::String(r)) = map.get("$ref") {
        let target = r
            .strip_prefix('#')
            .and_then(|p| root.pointer(p))
            .unwrap_or_else(|| panic!("unresolvable $ref {r}"));
        return flatten(target, root, depth + 1);
    }
    let mut out = Map::new();
    for (k, v) in map {
        let v = match k.as_str() {
            "properties" => Value::Object(
                v.as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, s)| (name.clone(), flatten(s, root, depth + 1)))
                    .collect(),
            ),
            "items" | "additionalProperties" | "not" => flatten(v, root, depth + 1),
            "allOf" | "anyOf" | "oneOf" => Value::Array(
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| flatten(s, root, depth + 1))
                    .collect(),
            ),
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    if let Some(Value::Array(branches)) = out.remove("allOf") {
        let mut merged = Value::Object(Map::new());
        for b in &branches {
            merged = merge(merged, b);
        }
        merged = merge(merged, &Value::Object(out));
        return merged;
    }
    Value::Object(out)
}

/// Merges schema `b` into `a` (both describing the same value).
fn merge(a: Value, b: &Value) -> Value {
    let (Value::Object(mut a), Value::Object(b)) = (a, b) else {
        return b.clone();
    };
    for (k, bv) in b {
        match (k.as_str(), a.remove(k)) {
            (_, None) => {
                a.insert(k.clone(), bv.clone());
            }
            ("properties", Some(Value::Object(mut ap))) => {
                for (name, s) in bv.as_object().into_iter().flatten() {
                    let m = match ap.remove(name) {
                        Some(prev) => merge(prev, s),
                        None => s.clone(),
                    };
                    ap.insert(name.clone(), m);
                }
                a.insert(k.clone(), Value::Object(ap));
            }
            ("required", Some(Value::Array(mut req))) => {
                for r in bv.as_array().into_iter().flatten() {
                    if !req.contains(r) {
                        req.push(r.clone());
                    }
                }
                a.insert(k.clone(), Value::Array(req));
            }
            ("additionalProperties", Some(prev)) => {
                let closed = prev == Value::Bool(false) || *bv == Value::Bool(false);
                a.insert(k.clone(), if closed { Value::Bool(false) } else { prev });
            }
            ("items", Some(prev)) => {
                a.insert(k.clone(), merge(prev, bv));
            }
            (_, Some(prev)) => {
                a.insert(k.clone(), prev);
            }
        }
    }
    Value::Object(a)
}

/// Pass 2: `nullable`, array-level `required`, and (for requests) dropping `readOnly`.
fn finish(schema: &Value, request: bool) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (k, v) in map {
        let v = match k.as_str() {
            "properties" => {
                let props: Map<String, Value> = v
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, s)| !(request && s.get("readOnly") == Some(&Value::Bool(true))))
                    .map(|(name, s)| (name.clone(), finish(s, request)))
                    .collect();
                Value::Object(props)
            }
            "items" | "additionalProperties" | "not" => finish(v, request),
            "anyOf" | "oneOf" => Value::Array(
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| finish(s, request))
                    .collect(),
            ),
            "nullable" => continue,
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    // Requests must not require what they may not send.
    let dropped: Vec<&String> = map
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, s)| request && s.get("readOnly") == Some(&Value::Bool(true)))
        .map(|(name, _)| name)
        .collect();
    if let Some(Value::Array(req)) = out.get_mut("required") {
        req.retain(|r| {
            r.as_str()
                .is_none_or(|n| !dropped.iter().any(|d| d.as_str() == n))
        });
    }
    let is_array = out.get("type") == Some(&Value::String("array".into()));
    if is_array {
        if let Some(req) = out.remove("required") {
            let items = out
                .remove("items")
                .unwrap_or_else(|| Value::Object(Map::new()));
            let mut items = items.as_object().cloned().unwrap_or_default();
            items.insert("required".into(), req);
            out.insert("items".into(), Value::Object(items));
        }
    }
    if map.get("nullable") == Some(&Value::Bool(true)) {
        if let Some(Value::String(t)) = out.get("type").cloned() {
            out.insert("type".into(), serde_json::json!([t, "null"]));
        }
        if let Some(Value::Array(mut e)) = out.remove("enum") {
            e.push(Value::Null);
            out.insert("enum".into(), Value::Array(e));
        }
    }
    Value::Object(out)
}

/// A value built from a (flattened) schema's `example`s: objects get every property.
pub fn example_of(schema: &Value) -> Value {
    if let Some(e) = schema.get("example") {
        if !matches!(schema.get("type").and_then(Value::as_str), Some("object")) {
            return e.clone();
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") | None if schema.get("properties").is_some() => Value::Object(
            schema["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, s)| (k.clone(), example_of(s)))
                .collect(),
        ),
        Some("array") => match schema.get("items") {
            Some(items) => Value::Array(vec![example_of(items)]),
            None => Value::Array(vec![]),
        },
        Some("string") => Value::String(String::new()),
        Some("integer") | Some("number") => Value::from(0),
        Some("boolean") => Value::Bool(false),
        _ => schema.get("example").cloned().unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_to_linode_field() {
        assert_eq!(
            field_of("/rules/inbound/0/label").as_deref(),
            Some("rules.inbound[0].label")
        );
        assert_eq!(field_of(""), None);
    }
}
