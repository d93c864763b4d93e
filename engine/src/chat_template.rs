//! The model's chat template (`tokenizer.chat_template`, a Hugging Face Jinja template) rendered
//! with minijinja set up like transformers' `apply_chat_template`: trim_blocks, lstrip_blocks,
//! loop controls, Python string/dict methods (minijinja-contrib pycompat), `raise_exception`,
//! `strftime_now`, a Python-style `tojson`, and `bos_token`/`eos_token`. Owns role checking
//! (developer -> system) and the split between template errors caused by the messages
//! (`InvalidInput`) and broken templates (`Unsupported`).

use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use crate::{ChatMessage, EngineError};

/// ChatML, for models that ship no template.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const NAME: &str = "chat_template";

/// A compiled chat template plus the special-token strings it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// Marks an error raised by the template's own `raise_exception(...)`.
#[derive(Debug)]
struct RaisedByTemplate(String);

impl std::fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for RaisedByTemplate {}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

impl ChatTemplate {
    /// From `tokenizer.chat_template`; a model without one gets ChatML (log a warning).
    pub fn from_gguf(gguf: &GgufFile, tok: &Tokenizer) -> Result<ChatTemplate, EngineError> {
        let source = match gguf.opt_str("tokenizer.chat_template")? {
            Some(s) => s,
            None => {
                tracing::warn!("the model has no tokenizer.chat_template; using ChatML");
                CHATML
            }
        };
        let text = |key: &str| -> Result<String, EngineError> {
            let id = gguf.opt_u64(key)?;
            Ok(id.and_then(|i| u32::try_from(i).ok()).and_then(|i| tok.token_text(i)).unwrap_or("").to_string())
        };
        Self::from_source(source, &text("tokenizer.ggml.bos_token_id")?, &text("tokenizer.ggml.eos_token_id")?)
    }

    /// For a Hugging Face folder: `chat_template.jinja` when present, else tokenizer_config.json's
    /// `chat_template`, else ChatML (log a warning). `bos_token`/`eos_token` are tokenizer_config's
    /// strings ("" when it has none), or without that file the texts of the tokenizer's BOS / first EOS.
    pub fn from_hf_files(
        tokenizer_config: Option<&std::path::Path>,
        chat_template_jinja: Option<&std::path::Path>,
        tok: &Tokenizer,
    ) -> Result<ChatTemplate, EngineError> {
        let cfg = match tokenizer_config {
            Some(p) => crate::hf::TokenizerConfig::from_file(p)?,
            None => crate::hf::TokenizerConfig::default(),
        };
        let source = match (chat_template_jinja, cfg.chat_template) {
            (Some(p), _) => std::fs::read_to_string(p)
                .map_err(|e| EngineError::Load(format!("{}: {e}", p.display())))?,
            (None, Some(t)) => t,
            (None, None) => {
                tracing::warn!("the model has no chat template (chat_template.jinja or tokenizer_config.json); using ChatML");
                CHATML.to_string()
            }
        };
        let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
        let (bos, eos) = match tokenizer_config {
            // transformers renders a missing or null token as "" (qwen2 has no bos_token).
            Some(_) => (cfg.bos_token.unwrap_or_default(), cfg.eos_token.unwrap_or_default()),
            None => (text(tok.bos_id()), text(tok.eos_ids().first().copied())),
        };
        Self::from_source(&source, &bos, &eos)
    }

    /// Compile a template given as text. A template that doesn't parse is `Unsupported`.
    pub fn from_source(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate, EngineError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| EngineError::Unsupported(format!("the chat template does not parse: {e:#}")))?;
        Ok(ChatTemplate { env, bos_token: bos_token.to_string(), eos_token: eos_token.to_string() })
    }

    /// Roles: system, developer (rendered as system), user, assistant. Other roles -> EngineError::InvalidInput
    /// with param "messages". Template errors caused by the input (e.g. raise_exception("Conversation roles must
    /// alternate...")) -> InvalidInput carrying the template's message; a broken template -> Unsupported.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, EngineError> {
        let mut msgs = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let role = match m.role.as_str() {
                "developer" | "system" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(EngineError::invalid(
                        format!(
                            "messages[{i}].role `{other}` is not supported (use system, developer, user or assistant)"
                        ),
                        Some("messages"),
                    ))
                }
            };
            msgs.push(Message { role, content: &m.content });
        }
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| EngineError::Internal(format!("chat template missing: {e}")))?;
        let ctx = minijinja::context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        tmpl.render(ctx).map_err(|e| match raised_message(&e) {
            Some(msg) => EngineError::invalid(msg, Some("messages")),
            None => EngineError::Unsupported(format!("the model's chat template failed: {e:#}")),
        })
    }
}

/// The message of a `raise_exception` somewhere in the error's chain.
fn raised_message(e: &Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<RaisedByTemplate>() {
            return Some(r.0.clone());
        }
        cur = err.source();
    }
    None
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, "raise_exception called").with_source(RaisedByTemplate(message)))
}

/// `strftime_now(format)`: the current UTC time formatted with the common strftime codes.
fn strftime_now(format: String) -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    strftime(secs, &format)
}

const MONTHS: [&str; 12] =
    ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Format `unix_secs` (UTC) with %Y %y %m %d %e %H %I %M %S %p %b %B %a %A %j %%; other codes stay as written.
pub(crate) fn strftime(unix_secs: i64, format: &str) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 })),
            Some('M') => out.push_str(&format!("{m:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`,
/// i.e. Python's separators (", " and ": ", or "," and ": " when indenting) and no HTML escaping.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(v: &Value, indent: Option<usize>, sort: bool, depth: usize, out: &mut String) -> Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Ok(i) = i64::try_from(v.clone()) {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => out.push_str(&json_string(v.as_str().unwrap_or(""))),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, sort, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if sort {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let key = match k.as_str() {
                    Some(s) => s.to_string(),
                    None => k.to_string(),
                };
                out.push_str(&json_string(&key));
                out.push_str(": ");
                write_json(&v.get_item(k)?, indent, sort, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => out.push_str(&json_string(&v.to_string())),
    }
    Ok(())
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// Python's float repr for the common cases: `1.0`, `0.5`, `NaN`, `Infinity`.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity".into() } else { "-Infinity".into() }
    } else if f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 13:05:09 UTC, a Friday, day 208 of a leap year.
        let t = 1_722_000_309;
        assert_eq!(strftime(t, "%d %b %Y"), "26 Jul 2024");
        assert_eq!(strftime(t, "%Y-%m-%d %H:%M:%S %A %j %I%p %%"), "2024-07-26 13:25:09 Friday 208 01PM %");
        assert_eq!(strftime(0, "%B %e, %y %a"), "January  1, 70 Thu");
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        let env = {
            let mut e = Environment::new();
            e.add_filter("tojson", tojson);
            e
        };
        let out = env
            .render_str(r#"{{ {"a": [1, 2.5, "é<"], "b": none} | tojson }}|{{ [1, true] | tojson(indent=2) }}"#, ())
            .unwrap();
        assert_eq!(out, "{\"a\": [1, 2.5, \"é<\"], \"b\": null}|[\n  1,\n  true\n]");
    }
}
