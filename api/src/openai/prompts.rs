//! Reading the `prompt` field of POST /v1/completions: a string, an array of strings, token ids
//! (`int[]`) or an array of token-id lists (`int[][]`), into one `PromptInput` per prompt,
//! bounded by `MAX_PROMPTS`. Every error names `prompt`.

use serde_json::Value;

use crate::error::ApiError;

/// The most prompts one request may carry; each is its own generation, run one after another.
pub const MAX_PROMPTS: usize = 16;

/// One prompt, as text or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

fn token_ids(v: &[Value], vocab: usize) -> Result<Vec<u32>, ApiError> {
    v.iter()
        .map(|x| {
            x.as_u64()
                .filter(|&id| (id as usize) < vocab)
                .map(|id| id as u32)
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!("Token ids in 'prompt' must be integers in 0..{vocab}; got {x}."),
                        Some("prompt"),
                    )
                })
        })
        .collect()
}

fn empty() -> ApiError {
    ApiError::invalid("'prompt' must not be empty.", Some("prompt"))
}

fn bad() -> ApiError {
    ApiError::invalid(
        "'prompt' must be a string, an array of strings, an array of token ids, or an array of token-id arrays.",
        Some("prompt"),
    )
}

/// Read `prompt`: a string, [string, ...], int[] or [int[], ...]. Arrays must not be empty,
/// must not mix forms, and may hold at most `MAX_PROMPTS` prompts.
pub fn parse_prompts(p: Option<&Value>, vocab: usize) -> Result<Vec<PromptInput>, ApiError> {
    let a = match p {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("'prompt' is required.", Some("prompt")))
        }
        Some(Value::String(s)) => return Ok(vec![PromptInput::Text(s.clone())]),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad()),
    };
    match a.first() {
        None => Err(empty()),
        // A flat array of numbers is one prompt of token ids, however long.
        Some(Value::Number(_)) => Ok(vec![PromptInput::Tokens(token_ids(a, vocab)?)]),
        Some(_) if a.len() > MAX_PROMPTS => Err(ApiError::invalid(
            format!(
                "At most {MAX_PROMPTS} prompts per request are supported; got {}.",
                a.len()
            ),
            Some("prompt"),
        )),
        Some(Value::String(_)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(PromptInput::Text(s.clone())),
                _ => Err(bad()),
            })
            .collect(),
        Some(Value::Array(_)) => a
            .iter()
            .map(|x| match x {
                Value::Array(inner) if inner.is_empty() => Err(empty()),
                Value::Array(inner) => Ok(PromptInput::Tokens(token_ids(inner, vocab)?)),
                _ => Err(bad()),
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(s: &str) -> PromptInput {
        PromptInput::Text(s.into())
    }

    #[test]
    fn prompt_forms() {
        assert_eq!(parse_prompts(Some(&json!("hi")), 10).unwrap(), [text("hi")]);
        assert_eq!(
            parse_prompts(Some(&json!(["hi"])), 10).unwrap(),
            [text("hi")]
        );
        assert_eq!(
            parse_prompts(Some(&json!(["a", "", "b"])), 10).unwrap(),
            [text("a"), text(""), text("b")]
        );
        assert_eq!(
            parse_prompts(Some(&json!([1, 2])), 10).unwrap(),
            [PromptInput::Tokens(vec![1, 2])]
        );
        assert_eq!(
            parse_prompts(Some(&json!([[3]])), 10).unwrap(),
            [PromptInput::Tokens(vec![3])]
        );
        assert_eq!(
            parse_prompts(Some(&json!([[3, 4], [5]])), 10).unwrap(),
            [
                PromptInput::Tokens(vec![3, 4]),
                PromptInput::Tokens(vec![5])
            ]
        );
        // A long flat token list is one prompt, not many.
        let long: Vec<u32> = vec![1; MAX_PROMPTS + 5];
        assert_eq!(
            parse_prompts(Some(&json!(long)), 10).unwrap(),
            [PromptInput::Tokens(long.clone())]
        );
        let most: Vec<&str> = vec!["x"; MAX_PROMPTS];
        assert_eq!(
            parse_prompts(Some(&json!(most)), 10).unwrap().len(),
            MAX_PROMPTS
        );
    }

    #[test]
    fn bad_prompts_name_prompt() {
        let too_many: Vec<&str> = vec!["x"; MAX_PROMPTS + 1];
        let too_many_ids: Vec<Vec<u32>> = vec![vec![1]; MAX_PROMPTS + 1];
        for bad in [
            json!(too_many),
            json!(too_many_ids),
            json!(["a", 1]),
            json!([[1], "a"]),
            json!([[1], []]),
            json!([[1], [10]]),
            json!([1, "a"]),
            json!([10]),
            json!([-1]),
            json!([1.5]),
            json!([]),
            json!([{}]),
            json!([null]),
            json!(5),
            json!({}),
        ] {
            let e = parse_prompts(Some(&bad), 10).unwrap_err();
            assert_eq!(e.object.param.as_deref(), Some("prompt"), "{bad}");
            assert_eq!(e.status.as_u16(), 400, "{bad}");
        }
        assert!(parse_prompts(None, 10).is_err());
        assert!(parse_prompts(Some(&Value::Null), 10).is_err());
        let e = parse_prompts(Some(&json!(too_many)), 10).unwrap_err();
        assert!(
            e.object.message.contains("At most 16 prompts"),
            "{}",
            e.object.message
        );
    }
}
