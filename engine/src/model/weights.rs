//! Loading individual weight tensors from the GGUF with their expected shapes and a check
//! that their storage type is one we run.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::gguf::GgufFile;
use crate::EngineError;

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
    let info = gguf.content().tensor_infos.get(name).ok_or_else(|| {
        EngineError::Load(format!(
            "{}: tensor `{name}` is missing",
            gguf.path().display()
        ))
    })?;
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
/// converted to Q8_0 (candle has SIMD kernels for Q8_0 but only scalar ones for those types).
pub(crate) fn matrix(
    gguf: &mut GgufFile,
    requantize: bool,
    name: &str,
    rows: usize,
    cols: usize,
    device: &Device,
) -> Result<QMatMul, EngineError> {
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
    QMatMul::from_arc(Arc::new(t)).map_err(wrap)
}

/// A 1-D tensor (norm weight, bias, rope factors) of length `n`, as f32.
pub(crate) fn vector(
    gguf: &mut GgufFile,
    name: &str,
    n: usize,
    device: &Device,
) -> Result<Tensor, EngineError> {
    let info = gguf.content().tensor_infos.get(name).ok_or_else(|| {
        EngineError::Load(format!(
            "{}: tensor `{name}` is missing",
            gguf.path().display()
        ))
    })?;
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
