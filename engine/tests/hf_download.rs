//! `hf:ORG/NAME[@REV]` downloads against an in-process fake Hub on 127.0.0.1 that answers
//! `/{repo}/resolve/{rev}/{file}` the way huggingface.co does for hf-hub's client (ETag,
//! X-Repo-Commit, Range requests answered 206 with Content-Range, 404 for absent files, 401
//! without the right token). Checks the files land byte-identical in the HF cache layout, the
//! sharded and the single-file layouts, optional files, the token, resume from a `.part` file,
//! and that a second run is served from the cache.

#[path = "support/tiny_hf.rs"]
mod tiny_hf;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use ai_sandbox_engine::hf::{HubOptions, HubRepo, ModelSource};
use ai_sandbox_engine::EngineError;
use tiny_hf::{write_tiny_model, Arch, TempDir};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_secret_token";

/// Files by (repo id, file name); repos in `gated` need `Authorization: Bearer TOKEN`.
#[derive(Default)]
struct Hub {
    files: HashMap<(String, String), Vec<u8>>,
    gated: Vec<String>,
    /// (path, Range header) of every request, in order.
    log: Vec<(String, String)>,
}

fn etag(bytes: &[u8]) -> String {
    // FNV-1a: any content-derived id will do; the cache names blobs by it.
    let h = bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    format!("{h:016x}{:08x}", bytes.len())
}

fn serve(hub: Arc<Mutex<Hub>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let hub = hub.clone();
            std::thread::spawn(move || handle(stream, &hub));
        }
    });
    format!("http://{addr}")
}

fn handle(mut stream: TcpStream, hub: &Mutex<Hub>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned().unwrap_or_default();
    let reply = |stream: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body));
    };
    let mut hub = hub.lock().expect("hub lock");
    hub.log.push((path.clone(), range.clone()));
    // /{org}/{name}/resolve/{rev}/{file}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let [org, name, "resolve", _rev, file] = parts[..] else {
        return reply(&mut stream, "404 Not Found", "", b"not found");
    };
    let repo = format!("{org}/{name}");
    if hub.gated.contains(&repo) && headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}")) {
        return reply(&mut stream, "401 Unauthorized", "X-Error-Code: GatedRepo\r\n", b"gated");
    }
    let Some(bytes) = hub.files.get(&(repo, file.to_string())) else {
        return reply(&mut stream, "404 Not Found", "X-Error-Code: EntryNotFound\r\n", b"Entry not found");
    };
    let size = bytes.len();
    let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
        Some((a, b)) => {
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = if b.is_empty() { size - 1 } else { b.parse().unwrap_or(size - 1) };
            (a.min(size), (b + 1).min(size))
        }
        None => (0, size),
    };
    let extra = format!(
        "ETag: \"{}\"\r\nX-Repo-Commit: {COMMIT}\r\nContent-Range: bytes {start}-{}/{size}\r\n",
        etag(bytes),
        end.saturating_sub(1)
    );
    let body = bytes[start..end].to_vec();
    reply(&mut stream, "206 Partial Content", &extra, &body);
}

fn publish(hub: &Mutex<Hub>, repo: &str, dir: &Path, skip: &[&str]) {
    let mut hub = hub.lock().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if !skip.contains(&name.as_str()) {
            hub.files.insert((repo.to_string(), name), std::fs::read(entry.path()).unwrap());
        }
    }
}

/// Merges the two shards of a tiny model into one `model.safetensors` (the unsharded layout).
fn merge_shards(dir: &Path) {
    let shards: Vec<Vec<u8>> = tiny_hf::SHARDS.iter().map(|s| std::fs::read(dir.join(s)).unwrap()).collect();
    let parsed: Vec<_> = shards.iter().map(|b| safetensors::SafeTensors::deserialize(b).unwrap()).collect();
    let views: Vec<_> = parsed.iter().flat_map(|p| p.tensors()).collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    for s in tiny_hf::SHARDS.iter().chain(["model.safetensors.index.json"].iter()) {
        std::fs::remove_file(dir.join(s)).unwrap();
    }
}

fn opts(endpoint: &str, cache: &Path, token: Option<&str>) -> HubOptions {
    HubOptions { endpoint: endpoint.to_string(), cache_dir: cache.to_path_buf(), token: token.map(String::from), progress: false }
}

fn same_files(a: &Path, b: &Path, names: &[&str]) {
    for n in names {
        assert_eq!(std::fs::read(a.join(n)).unwrap(), std::fs::read(b.join(n)).unwrap(), "{n}");
    }
}

#[test]
fn hub_downloads_into_the_hf_cache() {
    let src_q = TempDir::new("hub-src-qwen2");
    let src_l = TempDir::new("hub-src-llama");
    let cache = TempDir::new("hub-cache");
    write_tiny_model(&src_q.0, Arch::Qwen2, 3);
    write_tiny_model(&src_l.0, Arch::Llama, 4);
    merge_shards(&src_l.0);

    let hub = Arc::new(Mutex::new(Hub::default()));
    publish(&hub, "tiny-org/tiny-qwen2", &src_q.0, &[]);
    publish(&hub, "tiny-org/tiny-llama", &src_l.0, &["generation_config.json"]);
    hub.lock().unwrap().gated.push("tiny-org/tiny-qwen2".into());
    let endpoint = serve(hub.clone());

    // Gated without the token: a Load error that says what to do.
    let ModelSource::Hub(qwen) = ModelSource::parse("hf:tiny-org/tiny-qwen2").unwrap() else { panic!("not a hub source") };
    let err = qwen.download(&opts(&endpoint, &cache.0, Some("wrong"))).unwrap_err();
    assert!(matches!(&err, EngineError::Load(s) if s.contains("HF_TOKEN") && s.contains("hf:tiny-org/tiny-qwen2")), "{err}");

    // Resume: half of the second shard is already in the cache's .part file.
    let shard2 = std::fs::read(src_q.0.join(tiny_hf::SHARDS[1])).unwrap();
    let blobs = cache.0.join("models--tiny-org--tiny-qwen2").join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let half = shard2.len() / 2;
    std::fs::write(blobs.join(format!("{}.part", etag(&shard2))), &shard2[..half]).unwrap();

    hub.lock().unwrap().log.clear();
    let files = qwen.download(&opts(&endpoint, &cache.0, Some(TOKEN))).unwrap();
    let snapshot = cache.0.join("models--tiny-org--tiny-qwen2").join("snapshots").join(COMMIT);
    assert_eq!(files.dir, snapshot);
    same_files(&src_q.0, &files.dir, &[
        "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
        "chat_template.jinja", "model.safetensors.index.json", tiny_hf::SHARDS[0], tiny_hf::SHARDS[1],
    ]);
    assert!(files.generation_config.is_some() && files.chat_template.is_some());
    assert_eq!(files.weights.len(), 2);
    let log = hub.lock().unwrap().log.clone();
    let shard2_path = format!("/tiny-org/tiny-qwen2/resolve/main/{}", tiny_hf::SHARDS[1]);
    assert!(log.contains(&(shard2_path.clone(), format!("bytes={half}-"))), "no resumed range request: {log:?}");
    assert!(!log.contains(&(shard2_path, "bytes=0-".to_string())), "{log:?}");
    // What was downloaded loads.
    let cfg = files.config().unwrap();
    let w = files.open_weights().unwrap();
    cfg.model_config(w.shape("token_embd.weight").unwrap()[0]).unwrap();
    files.tokenizer().unwrap();

    // Second run: everything comes from the cache; only the absent optional file (none here) or
    // nothing is asked for.
    hub.lock().unwrap().log.clear();
    let again = qwen.download(&opts(&endpoint, &cache.0, Some(TOKEN))).unwrap();
    assert_eq!(again, files);
    assert!(hub.lock().unwrap().log.is_empty(), "{:?}", hub.lock().unwrap().log);

    // Unsharded, at a revision, without generation_config.json, not gated.
    hub.lock().unwrap().log.clear();
    let llama = HubRepo::parse("tiny-org/tiny-llama@v1.0").unwrap();
    let files = llama.download(&opts(&endpoint, &cache.0, None)).unwrap();
    same_files(&src_l.0, &files.dir, &["config.json", "tokenizer.json", "model.safetensors"]);
    assert_eq!(files.generation_config, None);
    assert_eq!(files.weights_index, None);
    assert_eq!(files.weights, vec![files.dir.join("model.safetensors")]);
    let log = hub.lock().unwrap().log.clone();
    assert!(log.iter().all(|(p, _)| p.starts_with("/tiny-org/tiny-llama/resolve/v1.0/")), "{log:?}");
    assert!(log.iter().any(|(p, _)| p.ends_with("/model.safetensors.index.json")), "the index is tried first");
    let w = files.open_weights().unwrap();
    assert!(w.has("output.weight") && w.has("blk.1.ffn_down.weight"));

    // A repo the hub doesn't have.
    let err = HubRepo::parse("tiny-org/absent").unwrap().download(&opts(&endpoint, &cache.0, None)).unwrap_err();
    assert!(matches!(&err, EngineError::Load(s) if s.contains("config.json") && s.contains("404")), "{err}");
}
