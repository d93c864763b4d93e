//! Where a model's weights, KV cache and arithmetic live: [`Placement::Host`] (our SIMD CPU
//! kernels over weights as stored, an f16 or f32 KV cache) or [`Placement::Device`] (candle
//! tensors on a device in one dtype: CUDA with bf16/f16 in production, the CPU in f32 to test the
//! same code path without a GPU). Parsed from `--device` / `--dtype` / `--kv-cache-dtype`.

use candle_core::{DType, Device};

use crate::EngineError;

/// See the module doc.
#[derive(Debug, Clone)]
pub enum Placement {
    /// Our CPU kernels, with the KV cache in `kv`.
    Host { kv: KvDtype },
    Device { device: Device, dtype: DType },
}

impl Default for Placement {
    /// The host kernels with an f16 KV cache.
    fn default() -> Placement {
        Placement::Host { kv: KvDtype::default() }
    }
}

/// The element type of the host KV cache (`--kv-cache-dtype`). Activations and attention math
/// stay f32; f16 halves the cache's memory and the bytes attention reads (rounding each key and
/// value to 11 significant bits, as llama.cpp's default cache does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    #[default]
    F16,
    F32,
}

impl KvDtype {
    /// `f16` or `f32`.
    pub fn parse(s: &str) -> Result<KvDtype, EngineError> {
        match s.trim() {
            "f16" => Ok(KvDtype::F16),
            "f32" => Ok(KvDtype::F32),
            other => Err(EngineError::Load(format!("--kv-cache-dtype `{other}`: expected f16 or f32"))),
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F16 => 2,
            KvDtype::F32 => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            KvDtype::F16 => "f16",
            KvDtype::F32 => "f32",
        }
    }
}

impl Placement {
    /// The host kernels with an f32 KV cache (the exact one, for tests with tight tolerances).
    pub fn host_f32() -> Placement {
        Placement::Host { kv: KvDtype::F32 }
    }

    /// `device`: `cpu` (host kernels), `cpu-tensor` (the device code path on the CPU, f32 by
    /// default), `cuda` or `cuda:N` (bf16 by default). `dtype`: `bf16`, `f16` or `f32`; not
    /// allowed with `cpu`. `kv_dtype` (`f16`, the default, or `f32`): the host KV cache; a
    /// device's KV cache is in `dtype`.
    pub fn parse(device: &str, dtype: Option<&str>, kv_dtype: Option<&str>) -> Result<Placement, EngineError> {
        let bad = |m: String| EngineError::Load(m);
        let kv = kv_dtype.map(str::trim).filter(|s| !s.is_empty()).map(KvDtype::parse).transpose()?;
        let dtype = match dtype.map(str::trim) {
            None | Some("") => None,
            Some("bf16") => Some(DType::BF16),
            Some("f16") => Some(DType::F16),
            Some("f32") => Some(DType::F32),
            Some(other) => return Err(bad(format!("--dtype `{other}`: expected bf16, f16 or f32"))),
        };
        let device = device.trim();
        if device != "cpu" && kv.is_some() {
            return Err(bad(format!(
                "--kv-cache-dtype applies to --device cpu; with --device {device} the KV cache is in --dtype"
            )));
        }
        match device {
            "cpu" => match dtype {
                None | Some(DType::F32) => Ok(Placement::Host { kv: kv.unwrap_or_default() }),
                Some(d) => Err(bad(format!(
                    "--dtype {}: --device cpu computes in f32 on its own kernels (use --device cpu-tensor)",
                    dtype_name(d)
                ))),
            },
            "cpu-tensor" => Ok(Placement::Device { device: Device::Cpu, dtype: dtype.unwrap_or(DType::F32) }),
            _ => {
                let ordinal = match device.strip_prefix("cuda") {
                    Some("") => 0,
                    Some(rest) => rest
                        .strip_prefix(':')
                        .and_then(|n| n.parse::<usize>().ok())
                        .ok_or_else(|| bad(format!("--device `{device}`: expected cuda or cuda:N")))?,
                    None => {
                        return Err(bad(format!("--device `{device}`: expected cpu, cpu-tensor, cuda or cuda:N")))
                    }
                };
                let device = cuda_device(ordinal)?;
                Ok(Placement::Device { device, dtype: dtype.unwrap_or(DType::BF16) })
            }
        }
    }

    /// The device tensors live on (`Device::Cpu` for the host placement).
    pub fn device(&self) -> Device {
        match self {
            Placement::Host { .. } => Device::Cpu,
            Placement::Device { device, .. } => device.clone(),
        }
    }

    /// Bytes per element of a dense (f32 on the host, `dtype` on a device) weight matrix.
    pub fn weight_elem_bytes(&self) -> usize {
        match self {
            Placement::Host { .. } => 4,
            Placement::Device { dtype, .. } => dtype.size_in_bytes(),
        }
    }

    /// Bytes per KV-cache element.
    pub fn kv_elem_bytes(&self) -> usize {
        match self {
            Placement::Host { kv } => kv.bytes(),
            Placement::Device { dtype, .. } => dtype.size_in_bytes(),
        }
    }

    /// `cpu (KV f16)`, `cpu-tensor (f32)`, `cuda:0 (bf16)`.
    pub fn describe(&self) -> String {
        match self {
            Placement::Host { kv } => format!("cpu (KV {})", kv.name()),
            Placement::Device { device: Device::Cpu, dtype } => format!("cpu-tensor ({})", dtype_name(*dtype)),
            Placement::Device { device, dtype } => format!("{:?} ({})", device.location(), dtype_name(*dtype)),
        }
    }
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F32 => "f32",
        _ => "other",
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device, EngineError> {
    Device::new_cuda(ordinal).map_err(|e| EngineError::Load(format!("--device cuda:{ordinal}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> Result<Device, EngineError> {
    Err(EngineError::Unsupported(format!(
        "--device cuda:{ordinal}: this binary was built without the `cuda` feature"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes_and_names_the_flag_in_errors() {
        assert!(matches!(Placement::parse("cpu", None, None), Ok(Placement::Host { kv: KvDtype::F16 })));
        assert!(matches!(Placement::parse("cpu", None, Some("f32")), Ok(Placement::Host { kv: KvDtype::F32 })));
        assert!(matches!(Placement::parse("cpu", Some("f32"), Some(" f16")), Ok(Placement::Host { kv: KvDtype::F16 })));
        assert!(matches!(
            Placement::parse("cpu-tensor", Some("bf16"), None),
            Ok(Placement::Device { device: Device::Cpu, dtype: DType::BF16 })
        ));
        assert_eq!(Placement::default().kv_elem_bytes(), 2);
        assert_eq!(Placement::host_f32().kv_elem_bytes(), 4);
        let err = |d, t, k| Placement::parse(d, t, k).unwrap_err().to_string();
        assert!(err("cpu", Some("bf16"), None).contains("--dtype bf16"));
        assert!(err("cpu", Some("f64"), None).contains("--dtype `f64`"));
        assert!(err("cpu", None, Some("bf16")).contains("--kv-cache-dtype `bf16`"));
        assert!(err("cpu-tensor", None, Some("f16")).contains("--kv-cache-dtype applies to --device cpu"));
        assert!(err("tpu", None, None).contains("--device `tpu`"));
        assert!(err("cuda:x", None, None).contains("--device `cuda:x`"));
        #[cfg(not(feature = "cuda"))]
        assert!(err("cuda", None, None).contains("without the `cuda` feature"));
    }
}
