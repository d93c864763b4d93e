//! Loading individual weight tensors with their expected shapes, from a GGUF (a check that
//! their storage type is one we run) or from Hugging Face safetensors (widened to f32), behind
//! one [`WeightSource`] the model loader asks by GGUF tensor name; and [`Linear`], the weight
//! matrix as the forward pass multiplies by it.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Storage, Tensor};

use crate::gguf::GgufFile;
use crate::hf::SafetensorsWeights;
use crate::kernels::{
    F32Matrix, Format, Q4_0Matrix, Q4_1Matrix, Q6KMatrix, Q8_0Matrix, QuantMatrix,
};
use crate::EngineError;

/// A weight matrix for `x @ W^T`: Q4_1, Q8_0, Q4_0 and Q6_K run on our SIMD kernels (candle's
/// Q4_1 ones are scalar; ours read each weight block once per batch of tokens; candle's Q6_K
/// gives a row different bits depending on the batch, ours never), every other type (Q4_K
/// included: candle's repacked x86 kernel is 2-4x faster than ours) on candle's `QMatMul`.
/// Dense f32 matrices from safetensors run on our f32 kernel ([`Linear::dense`]): candle's f32
/// gemm does not promise a row the same bits alone and in a batch.
pub(crate) enum Linear {
    Candle(QMatMul),
    Q4_1(Q4_1Matrix),
    Q8_0(Q8_0Matrix),
    Q4_0(Q4_0Matrix),
    Q6K(Q6KMatrix),
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

    /// `x[.., in] @ W^T -> [.., out]`, f32.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Linear::Candle(m) => m.forward(x),
            Linear::Q4_1(m) => ours(m, x),
            Linear::Q8_0(m) => ours(m, x),
            Linear::Q4_0(m) => ours(m, x),
            Linear::Q6K(m) => ours(m, x),
            Linear::F32(m) => ours(m, x),
        }
    }
}

/// `x[.., in] @ W^T -> [.., out]` on our kernels: `x` is read in place (f32, CPU).
fn ours<F: Format>(m: &QuantMatrix<F>, x: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let cols = dims.last().copied().unwrap_or(0);
    if cols != m.cols() {
        candle_core::bail!(
            "{:?} matmul: input {dims:?}, weight has {} columns",
            F::DTYPE,
            m.cols()
        );
    }
    let l = x.elem_count() / cols.max(1);
    let x = x.contiguous()?; // no copy when already contiguous (the model's case)
    let y = {
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
        m.matmul(xs, l)?
    };
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = m.rows();
    }
    Tensor::from_vec(y, out, x.device())
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
/// stored, optionally requantized; see [`matrix`]) or safetensors (every tensor widened to f32;
/// matrices on our dense kernel, the embedding table an F32 `QTensor` whose lookup is a row copy).
pub(crate) enum WeightSource<'a> {
    Gguf {
        file: &'a mut GgufFile,
        requantize: bool,
    },
    Safetensors(&'a SafetensorsWeights),
}

impl WeightSource<'_> {
    /// Whether the tensor exists (optional tensors: biases, `output.weight`, `rope_freqs.weight`).
    pub(crate) fn has(&self, name: &str) -> bool {
        match self {
            WeightSource::Gguf { file, .. } => file.has_tensor(name),
            WeightSource::Safetensors(w) => w.has(name),
        }
    }

    /// A `[rows, cols]` weight matrix for `x @ W^T`.
    pub(crate) fn matrix(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        device: &Device,
    ) -> Result<Linear, EngineError> {
        match self {
            WeightSource::Gguf { file, requantize } => {
                matrix(file, *requantize, name, rows, cols, device)
            }
            WeightSource::Safetensors(w) => {
                let t = dense_qtensor(w, name, rows, cols)?;
                Linear::dense(Arc::new(t))
                    .map_err(|e| EngineError::Load(format!("tensor `{name}`: {e}")))
            }
        }
    }

    /// A 1-D tensor of length `n`, as f32.
    pub(crate) fn vector(
        &mut self,
        name: &str,
        n: usize,
        device: &Device,
    ) -> Result<Tensor, EngineError> {
        match self {
            WeightSource::Gguf { file, .. } => vector(file, name, n, device),
            WeightSource::Safetensors(w) => w.tensor(name, &[n], DType::F32, device),
        }
    }

    /// The `[vocab, hidden]` embedding table as a `QTensor` (looked up a row at a time).
    pub(crate) fn embeddings(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        device: &Device,
    ) -> Result<QTensor, EngineError> {
        match self {
            WeightSource::Gguf { file, .. } => qtensor(file, name, rows, cols, device),
            WeightSource::Safetensors(w) => dense_qtensor(w, name, rows, cols),
        }
    }

    /// The output projection of a model without `output.weight`: the embedding table.
    pub(crate) fn tied_output(&self, embeddings: Arc<QTensor>) -> Result<Linear, EngineError> {
        match self {
            WeightSource::Gguf { .. } => Linear::new(embeddings),
            WeightSource::Safetensors(_) => Linear::dense(embeddings),
        }
    }
}

/// A safetensors matrix widened to f32 (exact from F32, F16 and BF16) in an F32 `QTensor` on the
/// CPU: the storage our dense kernel reads and whose `embedding` copies rows bit for bit.
fn dense_qtensor(
    w: &SafetensorsWeights,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<QTensor, EngineError> {
    let t = w.tensor_f32(name, &[rows, cols])?;
    QTensor::quantize(&t, GgmlDType::F32)
        .map_err(|e| EngineError::Load(format!("tensor `{name}`: {e}")))
}
