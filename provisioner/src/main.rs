//! `ai-sandbox` binary entry point.
fn main() {}
