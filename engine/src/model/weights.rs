//! Loading individual weight tensors with their expected shapes, from a GGUF (a check that
//! their storage type is one we run), from Hugging Face safetensors (widened to f32 on the host,
//! or in the model's dtype on a device) or random (benchmarks of a real shape with no download),
//! behind one [`WeightSource`] the model loader asks by GGUF tensor name; [`Linear`], the weight
//! matrix as the forward pass multiplies by it; [`Embeddings`], the token table.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Storage, Tensor};

use crate::gguf::GgufFile;
use crate::hf::SafetensorsWeights;
use crate::kernels::{
    F32Matrix, Format, Q4KMatrix, Q4_0Matrix, Q4_1Matrix, Q6KMatrix, Q8_0Matrix, QuantMatrix,
};
use super::placement::Placement;
use crate::EngineError;

/// A weight matrix for `x @ W^T`: Q4_1, Q8_0, Q4_0 and Q6_K run on our SIMD kernels (candle's
/// Q4_1 ones are scalar; ours read each weight block once per batch of tokens; candle's Q6_K
/// gives a row different bits depending on the batch, ours never), and so does Q4_K where the
/// AVX-512 VNNI panel kernels run (`kernels::panels()`; elsewhere candle's repacked x86 Q4_K
/// kernel is 2-4x faster than our AVX2 one); every other type on candle's `QMatMul`.
/// Dense f32 matrices from safetensors run on our f32 kernel ([`Linear::dense`]): candle's f32
/// gemm does not promise a row the same bits alone and in a batch.
pub(crate) enum Linear {
    /// A dense matrix `[out, in]` on the model's device in its dtype (`Placement::Device`):
    /// candle's matmul (cuBLAS on CUDA).
    Device(Tensor),
    Candle(QMatMul),
    Q4_1(Q4_1Matrix),
    Q8_0(Q8_0Matrix),
    Q4_0(Q4_0Matrix),
    Q6K(Q6KMatrix),
    Q4K(Q4KMatrix),
    F32(F32Matrix),
}

/// `AI_SANDBOX_KERNEL=candle`, `CANDLE_DEQUANTIZE_ALL` or `CANDLE_DEQUANTIZE_ALL_F16`: every
/// matrix on candle's kernels (for comparisons).
fn candle_only() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0");
    std::env::var("AI_SANDBOX_KERNEL").is_ok_and(|v| v == "candle")
        || set("CANDLE_DEQUANTIZE_ALL")
        || set("CANDLE_DEQUANTIZE_ALL_F16")
}

impl Linear {
    /// Picks the implementation for a loaded tensor. `AI_SANDBOX_KERNEL=candle` keeps candle's
    /// kernels for every type (for comparisons), and so do candle's `CANDLE_DEQUANTIZE_ALL` /
    /// `CANDLE_DEQUANTIZE_ALL_F16` (which make `QMatMul` dequantize the weights at load).
    pub(crate) fn new(t: Arc<QTensor>) -> Result<Linear, EngineError> {
        if !candle_only() && t.device().is_cpu() {
            match t.dtype() {
                GgmlDType::Q4_1 => return Ok(Linear::Q4_1(Q4_1Matrix::new(t)?)),
                GgmlDType::Q8_0 => return Ok(Linear::Q8_0(Q8_0Matrix::new(t)?)),
                GgmlDType::Q4_0 => return Ok(Linear::Q4_0(Q4_0Matrix::new(t)?)),
                GgmlDType::Q6K => return Ok(Linear::Q6K(Q6KMatrix::new(t)?)),
                GgmlDType::Q4K if crate::kernels::panels() => return Ok(Linear::Q4K(Q4KMatrix::new(t)?)),
                _ => {}
            }
        }
        QMatMul::from_arc(t)
            .map(Linear::Candle)
            .map_err(|e| EngineError::Load(format!("weight matrix: {e}")))
    }

    /// A dense F32 matrix (from safetensors) on our f32 kernel; `AI_SANDBOX_KERNEL=candle` (see
    /// [`Linear::new`]) keeps candle's f32 matmul. GGUF F32 matrices keep going through
    /// [`Linear::new`] (candle), as before.
    pub(crate) fn dense(t: Arc<QTensor>) -> Result<Linear, EngineError> {
        if t.dtype() != GgmlDType::F32 {
            return Err(EngineError::Internal(format!(
                "dense matrix given a {:?} tensor",
                t.dtype()
            )));
        }
        if !candle_only() && t.device().is_cpu() {
            return Ok(Linear::F32(F32Matrix::new(t)?));
        }
        QMatMul::from_arc(t)
            .map(Linear::Candle)
            .map_err(|e| EngineError::Load(format!("weight matrix: {e}")))
    }

    /// Rows `ids` as f32 when the matrix keeps its blocks only in our panel layout (see
    /// `kernels::panels()`); `None` otherwise.
    pub(crate) fn packed_rows(&self, ids: &[u32]) -> Option<candle_core::Result<Vec<f32>>> {
        match self {
            Linear::Q4_1(m) => m.packed_rows(ids),
            Linear::Q8_0(m) => m.packed_rows(ids),
            Linear::Q4_0(m) => m.packed_rows(ids),
            Linear::Q6K(m) => m.packed_rows(ids),
            Linear::Q4K(m) => m.packed_rows(ids),
            _ => None,
        }
    }

    /// `x[.., in] @ W^T -> [.., out]`, f32.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Linear::Device(w) => x.matmul(&w.t()?),
            Linear::Candle(m) => m.forward(x),
            Linear::Q4_1(m) => ours(m, x),
            Linear::Q8_0(m) => ours(m, x),
            Linear::Q4_0(m) => ours(m, x),
            Linear::Q6K(m) => ours(m, x),
            Linear::Q4K(m) => ours(m, x),
            Linear::F32(m) => ours(m, x),
        }
    }
}

/// `x[.., in] @ W^T -> [.., out]` on our kernels: `x` is read in place (f32, CPU).
fn ours<F: Format>(m: &QuantMatrix<F>, x: &Tensor) -> candle_core::Result<Tensor> {
    let mut ys = ours_many(&[m], x)?;
    ys.pop().ok_or_else(|| candle_core::Error::Msg("matmul gave no result".into()))
}

/// [`ours`] for several matrices by the same input (see [`QuantMatrix::matmul_many`]).
fn ours_many<F: Format>(ms: &[&QuantMatrix<F>], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
    let dims = x.dims().to_vec();
    let cols = dims.last().copied().unwrap_or(0);
    if let Some(m) = ms.iter().find(|m| m.cols() != cols) {
        candle_core::bail!(
            "{:?} matmul: input {dims:?}, weight has {} columns",
            F::DTYPE,
            m.cols()
        );
    }
    let l = x.elem_count() / cols.max(1);
    let x = x.contiguous()?; // no copy when already contiguous (the model's case)
    let ys = {
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("{:?} kernel runs on the CPU only", F::DTYPE);
        };
        let start = layout.start_offset();
        let xs = cpu
            .as_slice::<f32>()?
            .get(start..start + l * cols)
            .ok_or_else(|| {
                candle_core::Error::Msg(format!("{:?} matmul: short input", F::DTYPE))
            })?;
        QuantMatrix::matmul_many(ms, xs, l)?
    };
    ms.iter()
        .zip(ys)
        .map(|(m, y)| {
            let mut out = dims.clone();
            if let Some(last) = out.last_mut() {
                *last = m.rows();
            }
            Tensor::from_vec(y, out, x.device())
        })
        .collect()
}

/// Runs `$body` with `$ms` bound to the matrices of `$ls` as our kernels' `QuantMatrix`es when
/// all of them are of one format we run (see [`Linear`]); does nothing otherwise.
macro_rules! with_ours {
    ($ls:expr, $ms:ident => $body:expr) => {
        with_ours!(@each $ls, $ms => $body; Q4_1 Q8_0 Q4_0 Q6K Q4K F32)
    };
    (@each $ls:expr, $ms:ident => $body:expr; $($variant:ident)*) => {
        $(
            if let Some($ms) = all_of($ls, |l| if let Linear::$variant(m) = l { Some(m) } else { None }) {
                $body;
            }
        )*
    };
}

/// `Some` of every matrix's `pick` when all of them have one.
fn all_of<'a, T>(ls: &[&'a Linear], pick: fn(&'a Linear) -> Option<&'a T>) -> Option<Vec<&'a T>> {
    ls.iter().map(|l| pick(l)).collect()
}

/// The tensor storage types we load: every type candle's CPU matmul implements and that
/// llama.cpp writes for weights (Q8_1 and Q8_K are activation-only formats and refused).
pub(crate) fn check_dtype(name: &str, dtype: GgmlDType) -> Result<(), EngineError> {
    use GgmlDType::*;
    match dtype {
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2K | Q3K | Q4K | Q5K | Q6K => Ok(()),
        Q8_1 | Q8K => Err(EngineError::Unsupported(format!(
            "tensor `{name}` has type {dtype:?}, which is not a weight format \
             (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K)"
        ))),
    }
}

/// Reads a quantized-or-float tensor, checking its type and its (rows, cols) shape
/// (candle's order: rows = output features).
pub(crate) fn qtensor(
    gguf: &mut GgufFile,
    name: &str,
    rows: usize,
    cols: usize,
    device: &Device,
) -> Result<QTensor, EngineError> {
    let info = gguf.tensor_info(name)?;
    check_dtype(name, info.ggml_dtype)?;
    let dims = info.shape.dims().to_vec();
    if dims != [rows, cols] {
        return Err(EngineError::Load(format!(
            "tensor `{name}` has shape {dims:?}, expected [{rows}, {cols}] from the metadata"
        )));
    }
    gguf.tensor(name, device)
}

/// A weight matrix ready for `x @ W^T`. With `requantize`, Q4_1/Q5_0/Q5_1 matrices are
/// converted to Q8_0 (candle has SIMD kernels for Q8_0 but only scalar ones for those types);
/// without it Q4_1 runs on our own kernels (see [`Linear`]).
pub(crate) fn matrix(
    gguf: &mut GgufFile,
    requantize: bool,
    name: &str,
    rows: usize,
    cols: usize,
    device: &Device,
) -> Result<Linear, EngineError> {
    let wrap = |e: candle_core::Error| EngineError::Load(format!("tensor `{name}`: {e}"));
    let mut t = qtensor(gguf, name, rows, cols, device)?;
    if requantize
        && matches!(
            t.dtype(),
            GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
        )
    {
        let f = t.dequantize(device).map_err(wrap)?;
        t = QTensor::quantize(&f, GgmlDType::Q8_0).map_err(wrap)?;
    }
    Linear::new(Arc::new(t)).map_err(|e| EngineError::Load(format!("tensor `{name}`: {e}")))
}

/// A 1-D tensor (norm weight, bias, rope factors) of length `n`, as f32.
pub(crate) fn vector(
    gguf: &mut GgufFile,
    name: &str,
    n: usize,
    device: &Device,
) -> Result<Tensor, EngineError> {
    let info = gguf.tensor_info(name)?;
    check_dtype(name, info.ggml_dtype)?;
    let dims = info.shape.dims().to_vec();
    if dims != [n] {
        return Err(EngineError::Load(format!(
            "tensor `{name}` has shape {dims:?}, expected [{n}]"
        )));
    }
    let t = gguf.tensor(name, device)?;
    t.dequantize(device)
        .and_then(|t| t.to_dtype(DType::F32))
        .map_err(|e| EngineError::Load(format!("tensor `{name}`: {e}")))
}

/// Where the model loader reads its weights, by GGUF tensor name: a GGUF file (weights as
/// stored, optionally requantized; see [`matrix`]), safetensors, or random values of the right
/// shapes. With [`Placement::Host`] the tensors go to our CPU kernels (safetensors and random
/// widened to f32); with [`Placement::Device`] every tensor becomes a dense tensor on the device
/// in the placement's dtype (GGUF quantized types dequantized).
pub(crate) enum WeightSource<'a> {
    Gguf {
        file: &'a mut GgufFile,
        requantize: bool,
    },
    Safetensors(&'a SafetensorsWeights),
    /// Normal(0, 0.02) matrices and embeddings, norm weights of 1; `output.weight` present
    /// (untied), q/k/v biases (zero) when `qwen2`. Created on the target device (candle's
    /// generator: curand on CUDA), so a 7B shape takes seconds.
    Random { qwen2: bool },
}

/// The token embedding table: looked up a row at a time.
pub(crate) enum Embeddings {
    /// As stored (host placement): GGUF types dequantized per row looked up.
    Table(Arc<QTensor>),
    /// The rows of the (tied) output matrix, which holds the table in its panel layout
    /// ([`Linear::packed_rows`]): one copy of the table, not two.
    Tied,
    /// `[vocab, hidden]` on the device in the model's dtype.
    Dense(Tensor),
}

impl Embeddings {
    /// Rows `ids` as `[ids, hidden]` (f32 on the host, the dtype on a device); `output` is the
    /// model's output matrix (read by [`Embeddings::Tied`]).
    pub(crate) fn lookup(&self, ids: &Tensor, output: &Linear) -> candle_core::Result<Tensor> {
        match self {
            Embeddings::Table(t) => t.embedding(ids),
            Embeddings::Dense(t) => t.index_select(ids, 0),
            Embeddings::Tied => {
                let list = ids.to_vec1::<u32>()?;
                let rows = output
                    .packed_rows(&list)
                    .ok_or_else(|| candle_core::Error::Msg("tied embeddings without a packed output matrix".into()))??;
                let hidden = rows.len().checked_div(list.len()).unwrap_or(0);
                Tensor::from_vec(rows, (list.len(), hidden), ids.device())
            }
        }
    }

    /// Bytes of the table as stored.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Embeddings::Table(t) => t.storage_size_in_bytes(),
            Embeddings::Tied => 0,
            Embeddings::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
        }
    }
}

impl Linear {
    /// `x @ W^T` for several matrices by the same input (a layer's q/k/v, gate/up): when all
    /// run on the same one of our kernels they share the activation quantization and one
    /// parallel region ([`QuantMatrix::matmul_many`]); otherwise one [`Linear::forward`] each.
    /// The values are [`Linear::forward`]'s either way.
    pub(crate) fn forward_many(ls: &[&Linear], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        with_ours!(ls, ms => return ours_many(&ms, x));
        ls.iter().map(|l| l.forward(x)).collect()
    }

    /// [`Linear::forward_many`] on host slices (the host forward's path): `x` is `[l, cols]`,
    /// `outs[i]` becomes `[l, rows of ls[i]]`, resized (a reused buffer is not zeroed). Our
    /// kernels write into the buffers ([`QuantMatrix::matmul_many_into`]); candle's
    /// (`Linear::Candle`) go through a tensor and a copy. The same values as `forward_many`.
    pub(crate) fn host_many(ls: &[&Linear], x: &[f32], l: usize, outs: &mut [&mut Vec<f32>]) -> candle_core::Result<()> {
        if ls.len() != outs.len() {
            candle_core::bail!("{} matrices but {} outputs", ls.len(), outs.len());
        }
        with_ours!(ls, ms => return QuantMatrix::matmul_many_into(&ms, x, l, outs));
        let cols = x.len().checked_div(l).unwrap_or(0);
        let t = Tensor::from_slice(x, (l, cols), &Device::Cpu)?;
        for (m, out) in ls.iter().zip(outs.iter_mut()) {
            **out = m.forward(&t)?.flatten_all()?.to_vec1::<f32>()?;
        }
        Ok(())
    }

    /// Bytes of the matrix as stored (what one pass over it reads).
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Linear::Device(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Linear::Candle(QMatMul::QTensor(t)) => t.storage_size_in_bytes(),
            Linear::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                t.elem_count() * t.dtype().size_in_bytes()
            }
            Linear::Q4_1(m) => m.bytes(),
            Linear::Q8_0(m) => m.bytes(),
            Linear::Q4_0(m) => m.bytes(),
            Linear::Q6K(m) => m.bytes(),
            Linear::Q4K(m) => m.bytes(),
            Linear::F32(m) => m.bytes(),
        }
    }
}

/// Standard deviation of random weights (transformers' `initializer_range` default).
const RANDOM_STD: f64 = 0.02;

fn random(shape: &[usize], dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::randn(0f32, RANDOM_STD as f32, shape, device)?.to_dtype(dtype)
}

impl WeightSource<'_> {
    /// Whether the tensor exists (optional tensors: biases, `output.weight`, `rope_freqs.weight`).
    pub(crate) fn has(&self, name: &str) -> bool {
        match self {
            WeightSource::Gguf { file, .. } => file.has_tensor(name),
            WeightSource::Safetensors(w) => w.has(name),
            WeightSource::Random { qwen2 } => {
                name == "output.weight"
                    || (*qwen2 && [".attn_q.bias", ".attn_k.bias", ".attn_v.bias"].iter().any(|b| name.ends_with(b)))
            }
        }
    }

    /// A `[rows, cols]` weight matrix for `x @ W^T`.
    pub(crate) fn matrix(&mut self, name: &str, rows: usize, cols: usize, at: &Placement) -> Result<Linear, EngineError> {
        let wrap = |e: candle_core::Error| EngineError::Load(format!("tensor `{name}`: {e}"));
        if let Placement::Device { device, dtype } = at {
            let t = match self {
                WeightSource::Gguf { file, .. } => qtensor(file, name, rows, cols, &Device::Cpu)?
                    .dequantize(&Device::Cpu)
                    .and_then(|t| t.to_dtype(*dtype))
                    .and_then(|t| t.to_device(device))
                    .map_err(wrap)?,
                WeightSource::Safetensors(w) => w.tensor(name, &[rows, cols], *dtype, device)?,
                WeightSource::Random { .. } => random(&[rows, cols], *dtype, device).map_err(wrap)?,
            };
            return Ok(Linear::Device(t));
        }
        match self {
            WeightSource::Gguf { file, requantize } => matrix(file, *requantize, name, rows, cols, &Device::Cpu),
            WeightSource::Safetensors(w) => {
                let t = dense_qtensor(w.tensor_f32(name, &[rows, cols])?, name)?;
                Linear::dense(Arc::new(t)).map_err(|e| EngineError::Load(format!("tensor `{name}`: {e}")))
            }
            WeightSource::Random { .. } => {
                let t = random(&[rows, cols], DType::F32, &Device::Cpu).map_err(wrap)?;
                Linear::dense(Arc::new(dense_qtensor(t, name)?))
            }
        }
    }

    /// A 1-D tensor of length `n` (f32 on the host, the placement's dtype on a device).
    pub(crate) fn vector(&mut self, name: &str, n: usize, at: &Placement) -> Result<Tensor, EngineError> {
        let (device, dtype) = match at {
            Placement::Host { .. } => (Device::Cpu, DType::F32),
            Placement::Device { device, dtype } => (device.clone(), *dtype),
        };
        let wrap = |e: candle_core::Error| EngineError::Load(format!("tensor `{name}`: {e}"));
        match self {
            WeightSource::Gguf { file, .. } => vector(file, name, n, &Device::Cpu)?
                .to_dtype(dtype)
                .and_then(|t| t.to_device(&device))
                .map_err(wrap),
            WeightSource::Safetensors(w) => w.tensor(name, &[n], dtype, &device),
            // Norm weights of 1 (as initialised); biases of 0.
            WeightSource::Random { .. } if name.ends_with(".bias") => Tensor::zeros(n, dtype, &device).map_err(wrap),
            WeightSource::Random { .. } => Tensor::ones(n, dtype, &device).map_err(wrap),
        }
    }

    /// The `[vocab, hidden]` embedding table.
    pub(crate) fn embeddings(&mut self, name: &str, rows: usize, cols: usize, at: &Placement) -> Result<Embeddings, EngineError> {
        if let Placement::Device { .. } = at {
            return match self.matrix(name, rows, cols, at)? {
                Linear::Device(t) => Ok(Embeddings::Dense(t)),
                _ => Err(EngineError::Internal("device embeddings not dense".into())),
            };
        }
        let wrap = |e: candle_core::Error| EngineError::Load(format!("tensor `{name}`: {e}"));
        let table = match self {
            WeightSource::Gguf { file, .. } => qtensor(file, name, rows, cols, &Device::Cpu)?,
            WeightSource::Safetensors(w) => dense_qtensor(w.tensor_f32(name, &[rows, cols])?, name)?,
            WeightSource::Random { .. } => dense_qtensor(random(&[rows, cols], DType::F32, &Device::Cpu).map_err(wrap)?, name)?,
        };
        Ok(Embeddings::Table(Arc::new(table)))
    }

    /// The output projection of a model without `output.weight`: the embedding table.
    pub(crate) fn tied_output(&self, embeddings: &Embeddings) -> Result<Linear, EngineError> {
        match (self, embeddings) {
            (_, Embeddings::Dense(t)) => Ok(Linear::Device(t.clone())),
            (WeightSource::Gguf { .. }, Embeddings::Table(t)) => Linear::new(t.clone()),
            (_, Embeddings::Table(t)) => Linear::dense(t.clone()),
            (_, Embeddings::Tied) => Err(EngineError::Internal("the output matrix of tied embeddings was already built".into())),
        }
    }
}

/// An f32 matrix in an F32 `QTensor` on the CPU: the storage our dense kernel reads and whose
/// `embedding` copies rows bit for bit.
fn dense_qtensor(t: Tensor, name: &str) -> Result<QTensor, EngineError> {
    QTensor::quantize(&t, GgmlDType::F32).map_err(|e| EngineError::Load(format!("tensor `{name}`: {e}")))
}
