//! Weights from (sharded) `*.safetensors` files, looked up by the GGUF tensor names the model
//! loader uses (`blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`, ...).
//!
//! Opening reads only each file's header (checked: dtypes, shapes, offsets inside the file);
//! a tensor's bytes are read with plain file reads when asked for, converted from F32/F16/BF16
//! (little-endian, as the format defines) to the requested dtype. No mmap, so no `unsafe`, and
//! a file changed under us fails a read instead of crashing the process.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use safetensors::tensor::{Dtype, Metadata, TensorInfo};

use crate::EngineError;

/// The HF name of a GGUF-style tensor name, for the llama/mistral/qwen2 layout; `None` for
/// names that have no safetensors counterpart (e.g. `rope_freqs.weight`).
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) || (layer.len() > 1 && layer.starts_with('0')) {
        return None;
    }
    let (part, kind) = tail.rsplit_once('.')?;
    let hf = match (part, kind) {
        ("attn_norm", "weight") => "input_layernorm.weight",
        ("ffn_norm", "weight") => "post_attention_layernorm.weight",
        ("attn_q", "weight") => "self_attn.q_proj.weight",
        ("attn_k", "weight") => "self_attn.k_proj.weight",
        ("attn_v", "weight") => "self_attn.v_proj.weight",
        ("attn_q", "bias") => "self_attn.q_proj.bias",
        ("attn_k", "bias") => "self_attn.k_proj.bias",
        ("attn_v", "bias") => "self_attn.v_proj.bias",
        ("attn_output", "weight") => "self_attn.o_proj.weight",
        ("ffn_gate", "weight") => "mlp.gate_proj.weight",
        ("ffn_up", "weight") => "mlp.up_proj.weight",
        ("ffn_down", "weight") => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

struct Shard {
    path: PathBuf,
    file: Mutex<File>,
    /// Byte offset of the data section (8 + header length).
    data_start: u64,
}

/// The tensors of one checkpoint, across its shards. `Send + Sync`; reads take `&self`.
pub struct SafetensorsWeights {
    shards: Vec<Shard>,
    /// HF name -> (shard index, dtype, shape, byte range within the data section).
    tensors: HashMap<String, (usize, TensorInfo)>,
    tied_embeddings: bool,
}

impl std::fmt::Debug for SafetensorsWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsWeights")
            .field("files", &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>())
            .field("tensors", &self.tensors.len())
            .field("tied_embeddings", &self.tied_embeddings)
            .finish()
    }
}

/// Headers above this are refused (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

impl SafetensorsWeights {
    /// Opens every file and indexes its tensors. `Load` for unreadable or inconsistent files or a
    /// tensor name present in two shards.
    pub fn open(paths: &[PathBuf]) -> Result<SafetensorsWeights, EngineError> {
        if paths.is_empty() {
            return Err(EngineError::Load("no safetensors files".into()));
        }
        let mut shards = Vec::with_capacity(paths.len());
        let mut tensors = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let (shard, infos) = open_shard(path)?;
            for (name, info) in infos {
                if tensors.insert(name.clone(), (i, info)).is_some() {
                    return Err(EngineError::Load(format!("tensor `{name}` is in more than one safetensors file")));
                }
            }
            shards.push(shard);
        }
        Ok(SafetensorsWeights { shards, tensors, tied_embeddings: false })
    }

    /// With `tied`, `output.weight` counts as absent even if the files hold an `lm_head.weight`
    /// (config.json's tie_word_embeddings: the loader then uses the embedding table, as for a GGUF
    /// without `output.weight`).
    pub fn with_tied_embeddings(mut self, tied: bool) -> Self {
        self.tied_embeddings = tied;
        self
    }

    fn lookup(&self, gguf_name: &str) -> Option<(&str, usize, &TensorInfo)> {
        if self.tied_embeddings && gguf_name == "output.weight" {
            return None;
        }
        let hf = hf_tensor_name(gguf_name)?;
        self.tensors.get_key_value(&hf).map(|(k, (s, info))| (k.as_str(), *s, info))
    }

    /// Whether the checkpoint has the tensor the loader calls `gguf_name`.
    pub fn has(&self, gguf_name: &str) -> bool {
        self.lookup(gguf_name).is_some()
    }

    /// The stored shape of a tensor (HF/candle order: `[out, in]` for matrices).
    pub fn shape(&self, gguf_name: &str) -> Option<&[usize]> {
        self.lookup(gguf_name).map(|(_, _, info)| info.shape.as_slice())
    }

    /// The HF tensor names in the files, sorted (for diagnostics and tests).
    pub fn hf_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// [`Self::tensor`] as f32 on the CPU.
    pub fn tensor_f32(&self, gguf_name: &str, shape: &[usize]) -> Result<Tensor, EngineError> {
        self.tensor(gguf_name, shape, DType::F32, &Device::Cpu)
    }

    /// Reads a tensor, checks that its shape is `shape`, converts it to `dtype` (F32, F16 or BF16)
    /// and puts it on `device`. `Load` names both the GGUF and the HF name.
    pub fn tensor(&self, gguf_name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor, EngineError> {
        let Some((hf, shard, info)) = self.lookup(gguf_name) else {
            let hf = hf_tensor_name(gguf_name).unwrap_or_else(|| "(no HF counterpart)".into());
            return Err(EngineError::Load(format!("tensor `{gguf_name}` ({hf}) is not in the safetensors files")));
        };
        let what = || format!("tensor `{gguf_name}` ({hf})");
        if info.shape != shape {
            return Err(EngineError::Load(format!("{} has shape {:?}, expected {shape:?}", what(), info.shape)));
        }
        let bytes = self.read(shard, info).map_err(|e| EngineError::Load(format!("{}: {e}", what())))?;
        let wrap = |e: candle_core::Error| EngineError::Load(format!("{}: {e}", what()));
        let t = match (info.dtype, dtype) {
            (Dtype::BF16, DType::BF16) => Tensor::from_vec(le_u16(&bytes).map(bf16::from_bits).collect::<Vec<_>>(), shape, device),
            (Dtype::F16, DType::F16) => Tensor::from_vec(le_u16(&bytes).map(f16::from_bits).collect::<Vec<_>>(), shape, device),
            (src, DType::F32 | DType::F16 | DType::BF16) => {
                let v: Vec<f32> = match src {
                    Dtype::F32 => bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    Dtype::BF16 => le_u16(&bytes).map(|b| bf16::from_bits(b).to_f32()).collect(),
                    Dtype::F16 => le_u16(&bytes).map(|b| f16::from_bits(b).to_f32()).collect(),
                    other => {
                        return Err(EngineError::Unsupported(format!(
                            "{} is stored as {other:?} (supported: F32, F16, BF16)",
                            what()
                        )))
                    }
                };
                Tensor::from_vec(v, shape, device).and_then(|t| t.to_dtype(dtype))
            }
            (_, other) => return Err(EngineError::Internal(format!("{}: cannot convert to {other:?}", what()))),
        };
        t.map_err(wrap)
    }

    fn read(&self, shard: usize, info: &TensorInfo) -> Result<Vec<u8>, String> {
        let s = self.shards.get(shard).ok_or("bad shard index")?;
        let (start, end) = info.data_offsets;
        let mut buf = vec![0u8; end - start];
        let mut file = s.file.lock().map_err(|_| "the file lock is poisoned".to_string())?;
        file.seek(SeekFrom::Start(s.data_start + start as u64))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| format!("{}: {e}", s.path.display()))?;
        Ok(buf)
    }
}

fn le_u16(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]))
}

/// Reads and checks one file's header: every tensor's byte range lies inside the file and matches
/// its dtype and shape.
fn open_shard(path: &Path) -> Result<(Shard, Vec<(String, TensorInfo)>), EngineError> {
    let err = |e: String| EngineError::Load(format!("{}: {e}", path.display()));
    let mut file = File::open(path).map_err(|e| err(e.to_string()))?;
    let file_len = file.metadata().map_err(|e| err(e.to_string()))?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(|e| err(format!("not a safetensors file ({e})")))?;
    let header_len = u64::from_le_bytes(n);
    if header_len > MAX_HEADER || 8 + header_len > file_len {
        return Err(err(format!("not a safetensors file (header length {header_len}, file length {file_len})")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| err(e.to_string()))?;
    let meta: Metadata = serde_json::from_slice(&header).map_err(|e| err(format!("bad safetensors header: {e}")))?;
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    let mut infos = Vec::new();
    for (name, info) in meta.tensors() {
        let (start, end) = info.data_offsets;
        let elems = info.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let want = elems.and_then(|e| e.checked_mul(info.dtype.bitsize())).map(|bits| bits.div_ceil(8));
        if start > end || end as u64 > data_len || want != Some(end - start) {
            return Err(err(format!(
                "tensor `{name}`: {:?} {:?} does not fit its byte range {start}..{end} (data section {data_len} bytes)",
                info.dtype, info.shape
            )));
        }
        infos.push((name, info.clone()));
    }
    Ok((Shard { path: path.to_path_buf(), file: Mutex::new(file), data_start }, infos))
}
