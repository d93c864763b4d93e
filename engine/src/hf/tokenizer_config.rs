//! `tokenizer_config.json` (chat template, bos/eos token strings, add_bos_token) and
//! `generation_config.json` (bos/eos token ids). Token fields may be a string or an AddedToken
//! object (`{"content": "<s>", ...}`); `eos_token_id` may be an int or a list.

use std::path::Path;

use serde_json::Value;

use crate::EngineError;

/// What the engine reads from `tokenizer_config.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerConfig {
    /// The Jinja chat template (for a list of named templates, the one named `default`).
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Whether the tokenizer prepends BOS; `None` = not said (then tokenizer.json's post-processor decides).
    pub add_bos_token: Option<bool>,
}

/// What the engine reads from `generation_config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerationConfig {
    pub bos_token_id: Option<u32>,
    /// Every id that ends generation (`eos_token_id`, an int or a list).
    pub eos_token_ids: Vec<u32>,
}

fn read_json(path: &Path) -> Result<Value, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
    if !v.is_object() {
        return Err(EngineError::Load(format!("{}: expected a JSON object", path.display())));
    }
    Ok(v)
}

impl TokenizerConfig {
    pub fn from_file(path: &Path) -> Result<TokenizerConfig, EngineError> {
        Self::from_value(&read_json(path)?).map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))
    }

    pub fn from_value(v: &Value) -> Result<TokenizerConfig, String> {
        let chat_template = match v.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => {
                let named = |want: &str| {
                    list.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(want))
                };
                let t = named("default").ok_or("chat_template is a list without a template named `default`")?;
                Some(t.get("template").and_then(Value::as_str).ok_or("chat_template `default` has no template text")?.to_string())
            }
            Some(_) => return Err("chat_template must be a string or a list of {name, template}".into()),
        };
        let add_bos_token = match v.get("add_bos_token") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err("add_bos_token must be true or false".into()),
        };
        Ok(TokenizerConfig {
            chat_template,
            bos_token: token_string(v, "bos_token")?,
            eos_token: token_string(v, "eos_token")?,
            add_bos_token,
        })
    }
}

/// `"<s>"`, `{"content": "<s>", ...}` or null.
fn token_string(v: &Value, key: &str) -> Result<Option<String>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(obj @ Value::Object(_)) => match obj.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(format!("{key} is an object without a string `content`")),
        },
        Some(_) => Err(format!("{key} must be a string or an object with `content`")),
    }
}

impl GenerationConfig {
    pub fn from_file(path: &Path) -> Result<GenerationConfig, EngineError> {
        Self::from_value(&read_json(path)?).map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))
    }

    pub fn from_value(v: &Value) -> Result<GenerationConfig, String> {
        let id = |x: &Value, key: &str| -> Result<u32, String> {
            x.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| format!("{key} has a non-integer or negative entry {x}"))
        };
        let bos_token_id = match v.get("bos_token_id") {
            None | Some(Value::Null) => None,
            Some(x) => Some(id(x, "bos_token_id")?),
        };
        let eos_token_ids = match v.get("eos_token_id") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(xs)) => xs.iter().map(|x| id(x, "eos_token_id")).collect::<Result<_, _>>()?,
            Some(x) => vec![id(x, "eos_token_id")?],
        };
        Ok(GenerationConfig { bos_token_id, eos_token_ids })
    }
}
