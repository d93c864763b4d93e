//! What `--model` names: a GGUF file, a local Hugging Face model folder, or a Hub repository
//! `hf:ORG/NAME[@REV]`. Parsing only looks at the local file system; nothing is downloaded here.

use std::path::{Path, PathBuf};

use crate::EngineError;

/// A Hub repository and revision, from `hf:ORG/NAME[@REV]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRepo {
    /// `ORG/NAME`, validated with the Hub's rules for repository names.
    pub repo_id: String,
    /// Branch, tag or commit; `None` = the default branch (`main`).
    pub revision: Option<String>,
}

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A GGUF file (any existing file that isn't a folder; the GGUF reader checks its magic).
    Gguf(PathBuf),
    /// A local Hugging Face model folder (holds a `config.json`).
    Folder(PathBuf),
    /// A Hub repository to download into the HF cache.
    Hub(HubRepo),
}

const PREFIX: &str = "hf:";

impl ModelSource {
    /// Reads a `--model` value. `hf:ORG/NAME[@REV]` -> [`ModelSource::Hub`] (malformed ids are
    /// `InvalidInput`); otherwise a path: a folder must contain `config.json`, a missing path is
    /// `Load` (with a hint when it looks like a Hub id written without `hf:`).
    pub fn parse(arg: &str) -> Result<ModelSource, EngineError> {
        if let Some(rest) = arg.strip_prefix(PREFIX) {
            return HubRepo::parse(rest).map(ModelSource::Hub);
        }
        if arg.trim().is_empty() {
            return Err(EngineError::invalid("--model is empty (give a .gguf file, a model folder or hf:ORG/NAME)", None));
        }
        let path = Path::new(arg);
        if path.is_dir() {
            if path.join("config.json").is_file() {
                return Ok(ModelSource::Folder(path.to_path_buf()));
            }
            return Err(EngineError::Load(format!(
                "--model {arg}: the folder has no config.json (a Hugging Face model folder needs config.json, \
                 tokenizer.json and *.safetensors; a GGUF model is given as the .gguf file itself)"
            )));
        }
        if path.is_file() {
            return Ok(ModelSource::Gguf(path.to_path_buf()));
        }
        let hint = if HubRepo::parse(arg).is_ok() && !arg.to_ascii_lowercase().ends_with(".gguf") {
            format!(" (to download it from the Hugging Face Hub, write --model hf:{arg})")
        } else {
            String::new()
        };
        Err(EngineError::Load(format!("--model {arg}: no such file or folder{hint}")))
    }
}

impl HubRepo {
    /// `ORG/NAME[@REV]` (without the `hf:` prefix).
    pub fn parse(spec: &str) -> Result<HubRepo, EngineError> {
        let bad = |why: String| {
            EngineError::invalid(format!("--model hf:{spec}: {why} (expected hf:ORG/NAME or hf:ORG/NAME@REVISION)"), None)
        };
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) => (id, Some(rev)),
            None => (spec, None),
        };
        let Some((org, name)) = id.split_once('/') else {
            return Err(bad("the repository id has no `/`".into()));
        };
        for (what, part) in [("organization", org), ("name", name)] {
            check_name_part(part).map_err(|why| bad(format!("the {what} `{part}` {why}")))?;
        }
        if let Some(rev) = revision {
            check_revision(rev).map_err(|why| bad(format!("the revision `{rev}` {why}")))?;
        }
        Ok(HubRepo { repo_id: id.to_string(), revision: revision.map(str::to_string) })
    }

    /// `hf:ORG/NAME[@REV]` as the user wrote it (for messages).
    pub fn display(&self) -> String {
        match &self.revision {
            Some(r) => format!("{PREFIX}{}@{r}", self.repo_id),
            None => format!("{PREFIX}{}", self.repo_id),
        }
    }
}

/// The Hub's rule for the two halves of a repo id: 1..=96 chars of `[A-Za-z0-9._-]`, not starting
/// or ending with `.` or `-`, no `--` or `..`.
fn check_name_part(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("is empty");
    }
    if s.len() > 96 {
        return Err("is longer than 96 characters");
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err("may only contain letters, digits, `.`, `_` and `-`");
    }
    if s.starts_with(['.', '-']) || s.ends_with(['.', '-']) {
        return Err("may not start or end with `.` or `-`");
    }
    if s.contains("--") || s.contains("..") {
        return Err("may not contain `--` or `..`");
    }
    Ok(())
}

/// A branch, tag or commit: git ref characters, no `..`, no empty path segment (it becomes part
/// of a URL and of a cache file name).
fn check_revision(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("is empty");
    }
    if s.len() > 255 {
        return Err("is longer than 255 characters");
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')) {
        return Err("may only contain letters, digits, `.`, `_`, `-` and `/`");
    }
    if s.contains("..") || s.starts_with('/') || s.ends_with('/') || s.contains("//") {
        return Err("is not a valid git ref");
    }
    Ok(())
}
