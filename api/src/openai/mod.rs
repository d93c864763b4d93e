//! The OpenAI endpoints: request DTOs and their validation into engine requests, response DTOs,
//! and the handlers. Everything JSON-shaped lives here; the engine never sees JSON.

pub mod chat;
pub mod common;
pub mod completions;
pub mod models;
pub mod prompts;
