//! Chat templates: SmolLM2's own (from the GGUF) rendered to the exact expected string, roles,
//! raise_exception -> InvalidInput, broken templates -> Unsupported, and HF helpers.
//! (tokenizer_reference.rs compares these same templates against transformers' rendering.)

use std::path::Path;

use ai_sandbox_engine::gguf::GgufFile;
use ai_sandbox_engine::{ChatMessage, ChatTemplate, EngineError, Tokenizer};

fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
    pairs.iter().map(|(r, c)| ChatMessage { role: r.to_string(), content: c.to_string() }).collect()
}

fn data(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/chat_templates").join(file)).unwrap()
}

fn smollm2() -> ChatTemplate {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/fetch-model first", p.display());
    let gguf = GgufFile::open(&p).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    ChatTemplate::from_gguf(&gguf, &tok).unwrap()
}

#[test]
fn smollm2_template_exact() {
    let t = smollm2();
    assert_eq!(
        t.render(&msgs(&[("user", "Hi")]), true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.render(&msgs(&[("developer", "Be terse."), ("user", "Hi"), ("assistant", "Hello")]), false).unwrap(),
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n",
        "developer renders as system, so the default system prompt is not added"
    );
}

#[test]
fn unknown_roles_are_invalid_input() {
    let t = smollm2();
    for role in ["tool", "function", "System", ""] {
        match t.render(&msgs(&[(role, "x")]), true) {
            Err(EngineError::InvalidInput { message, param }) => {
                assert_eq!(param.as_deref(), Some("messages"));
                assert!(message.contains(&format!("`{role}`")), "{message}");
            }
            other => panic!("role {role:?}: {other:?}"),
        }
    }
}

#[test]
fn llama3_template() {
    let t = ChatTemplate::from_source(&data("llama3.jinja"), "<|begin_of_text|>", "<|eot_id|>").unwrap();
    let out = t.render(&msgs(&[("developer", "  Sys  "), ("user", "Hi")]), true).unwrap();
    assert_eq!(
        out,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSys<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn mistral_template_and_raise_exception() {
    let t = ChatTemplate::from_source(&data("mistral_v03.jinja"), "<s>", "</s>").unwrap();
    let out = t.render(&msgs(&[("system", "S"), ("user", "a"), ("assistant", " b "), ("user", "c")]), true).unwrap();
    assert_eq!(out, "<s>[INST] a[/INST] b</s>[INST] S\n\nc[/INST]");
    match t.render(&msgs(&[("user", "a"), ("user", "b")]), true) {
        Err(EngineError::InvalidInput { message, param }) => {
            assert_eq!(
                message,
                "After the optional system message, conversation roles must alternate user/assistant/user/assistant/..."
            );
            assert_eq!(param.as_deref(), Some("messages"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn broken_templates_are_unsupported_not_invalid_input() {
    let err = ChatTemplate::from_source("{% for m in messages %}{{ m.content }", "", "").err().expect("parse error");
    assert!(matches!(err, EngineError::Unsupported(_)), "{err:?}");
    // Unknown filter: minijinja may refuse it when compiling or when rendering; either way it's the template's fault.
    match ChatTemplate::from_source("{{ messages[0].content | no_such_filter }}", "", "") {
        Err(err) => assert!(matches!(err, EngineError::Unsupported(_)), "{err:?}"),
        Ok(t) => {
            let err = t.render(&msgs(&[("user", "x")]), false).unwrap_err();
            assert!(matches!(err, EngineError::Unsupported(_)), "{err:?}");
        }
    }
}

#[test]
fn strftime_now_and_lenient_undefined() {
    let t = ChatTemplate::from_source(
        "{{ strftime_now('%Y-%m-%d') }}|{{ tools }}|{{ messages[0].missing }}|{% if tools %}x{% endif %}",
        "",
        "",
    )
    .unwrap();
    let out = t.render(&msgs(&[("user", "x")]), false).unwrap();
    let (date, rest) = out.split_once('|').unwrap();
    let b = date.as_bytes();
    assert!(b.len() == 10 && b[4] == b'-' && b[7] == b'-' && date.starts_with("20"), "{date}");
    assert_eq!(rest, "||");
}

#[test]
fn chatml_fallback_when_the_model_has_none() {
    let t = ChatTemplate::from_source(ai_sandbox_engine::chat_template::CHATML, "", "").unwrap();
    assert_eq!(
        t.render(&msgs(&[("user", "Hi")]), true).unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}
