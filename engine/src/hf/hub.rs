//! `hf:ORG/NAME[@REV]` downloads with hf-hub's blocking client into the Hugging Face cache
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`: the layout the Python
//! tools share), with `HF_TOKEN` for gated repos and `HF_ENDPOINT` for mirrors. Files already in
//! the cache are not fetched again; an interrupted download resumes from its `.part` file; a
//! progress bar is drawn on stderr when it is a terminal.
//!
//! Fetched: config.json, tokenizer.json (required); tokenizer_config.json, generation_config.json,
//! chat_template.jinja (when the repo has them); model.safetensors.index.json and its shards, else
//! model.safetensors. A missing optional file is a 404; any other failure stops the download, so a
//! flaky network never silently drops the chat template. Offline, point --model at the snapshot
//! folder instead.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use super::files::{self, HfModelFiles};
use super::source::HubRepo;
use crate::EngineError;

/// How to reach the Hub and where to cache. [`HubOptions::from_env`] reads the usual variables;
/// tests build one by hand.
#[derive(Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// Base URL, `https://huggingface.co` unless `HF_ENDPOINT` says otherwise.
    pub endpoint: String,
    /// The hub cache folder (holds `models--ORG--NAME/`).
    pub cache_dir: PathBuf,
    /// Bearer token; `None` falls back to the `token` file next to the cache (`huggingface-cli login`).
    pub token: Option<String>,
    /// Draw indicatif progress bars (they stay hidden when stderr is not a terminal).
    pub progress: bool,
}

impl std::fmt::Debug for HubOptions {
    // The token never prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubOptions")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("progress", &self.progress)
            .finish()
    }
}

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Retries (each resuming where the last stopped) for a file whose transfer breaks off.
const RETRIES: usize = 3;

impl HubOptions {
    /// `HF_ENDPOINT`, `HF_HUB_CACHE` / `HF_HOME` / `HOME`, `HF_TOKEN`. `Load` when no cache
    /// folder can be named (no HF_HOME and no HOME).
    pub fn from_env() -> Result<HubOptions, EngineError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let cache_dir = if let Some(c) = var("HF_HUB_CACHE") {
            PathBuf::from(c)
        } else if let Some(h) = var("HF_HOME") {
            Path::new(&h).join("hub")
        } else if let Some(home) = var("HOME") {
            Path::new(&home).join(".cache").join("huggingface").join("hub")
        } else {
            return Err(EngineError::Load("hf: models need a cache folder: set HF_HOME".into()));
        };
        Ok(HubOptions {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            cache_dir,
            token: var("HF_TOKEN"),
            progress: true,
        })
    }
}

impl HubRepo {
    /// Downloads (or finds in the cache) the model's files and returns the snapshot folder's
    /// [`HfModelFiles`]. Errors are `Load` and name the repo and the file.
    pub fn download(&self, opts: &HubOptions) -> Result<HfModelFiles, EngineError> {
        let mut builder = ApiBuilder::from_cache(Cache::new(opts.cache_dir.clone()))
            .with_endpoint(opts.endpoint.trim_end_matches('/').to_string())
            .with_progress(opts.progress)
            .with_retries(RETRIES)
            .with_user_agent("ai-sandbox", env!("CARGO_PKG_VERSION"));
        if opts.token.is_some() {
            builder = builder.with_token(opts.token.clone());
        }
        let api = builder.build().map_err(|e| self.error("the HTTP client", &e))?;
        let repo = match &self.revision {
            Some(rev) => Repo::with_revision(self.repo_id.clone(), RepoType::Model, rev.clone()),
            None => Repo::new(self.repo_id.clone(), RepoType::Model),
        };
        let api = api.repo(repo);
        let get = |name: &str| api.get(name).map_err(|e| self.error(name, &e));
        let config = get(files::CONFIG)?;
        get(files::TOKENIZER)?;
        for name in [files::TOKENIZER_CONFIG, files::GENERATION_CONFIG, files::CHAT_TEMPLATE] {
            self.optional(&api, name)?;
        }
        match self.optional(&api, files::WEIGHTS_INDEX)? {
            Some(index) => {
                for shard in files::shard_names(&index)? {
                    get(&shard)?;
                }
            }
            None => {
                get(files::SINGLE_WEIGHTS)?;
            }
        }
        // Every file of one revision lands in the same snapshots/COMMIT/ folder.
        let dir = config
            .parent()
            .ok_or_else(|| EngineError::Internal(format!("{} has no parent folder", config.display())))?;
        HfModelFiles::from_dir(dir)
    }

    /// A file the repo may not have: `Ok(None)` on 404.
    fn optional(&self, api: &ApiRepo, name: &str) -> Result<Option<PathBuf>, EngineError> {
        match api.get(name) {
            Ok(p) => Ok(Some(p)),
            Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(404, _)) => Ok(None),
            Err(e) => Err(self.error(name, &e)),
        }
    }

    fn error(&self, file: &str, e: &ApiError) -> EngineError {
        let status = match e {
            ApiError::RequestError(inner) => match **inner {
                ureq::Error::Status(code, _) => Some(code),
                ureq::Error::Transport(_) => None,
            },
            _ => None,
        };
        let hint = match status {
            Some(401 | 403) => " (a gated or private repo: accept its license on the Hub and set HF_TOKEN)",
            Some(404) => " (check the repository id, revision and that the repo has this file)",
            _ => "",
        };
        EngineError::Load(format!("--model {}: downloading {file} failed: {e}{hint}", self.display()))
    }
}
