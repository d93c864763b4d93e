//! Where a model's weights, KV cache and arithmetic live: [`Placement::Host`] (our SIMD CPU
//! kernels over weights as stored, f32 KV cache) or [`Placement::Device`] (candle tensors on a
//! device in one dtype: CUDA with bf16/f16 in production, the CPU in f32 to test the same code
//! path without a GPU). Parsed from `--device` / `--dtype`.

use candle_core::{DType, Device};

use crate::EngineError;

/// See the module doc.
#[derive(Debug, Clone, Default)]
pub enum Placement {
    #[default]
    Host,
    Device { device: Device, dtype: DType },
}

impl Placement {
    /// `device`: `cpu` (host kernels), `cpu-tensor` (the device code path on the CPU, f32 by
    /// default), `cuda` or `cuda:N` (bf16 by default). `dtype`: `bf16`, `f16` or `f32`; not
    /// allowed with `cpu`.
    pub fn parse(device: &str, dtype: Option<&str>) -> Result<Placement, EngineError> {
        let bad = |m: String| EngineError::Load(m);
        let dtype = match dtype.map(str::trim) {
            None | Some("") => None,
            Some("bf16") => Some(DType::BF16),
            Some("f16") => Some(DType::F16),
            Some("f32") => Some(DType::F32),
            Some(other) => return Err(bad(format!("--dtype `{other}`: expected bf16, f16 or f32"))),
        };
        let device = device.trim();
        match device {
            "cpu" => match dtype {
                None | Some(DType::F32) => Ok(Placement::Host),
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
            Placement::Host => Device::Cpu,
            Placement::Device { device, .. } => device.clone(),
        }
    }

    /// Bytes per KV-cache element.
    pub fn kv_elem_bytes(&self) -> usize {
        match self {
            Placement::Host => 4,
            Placement::Device { dtype, .. } => dtype.size_in_bytes(),
        }
    }

    /// `cpu`, `cpu-tensor (f32)`, `cuda:0 (bf16)`.
    pub fn describe(&self) -> String {
        match self {
            Placement::Host => "cpu".into(),
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
        assert!(matches!(Placement::parse("cpu", None), Ok(Placement::Host)));
        assert!(matches!(
            Placement::parse("cpu-tensor", Some("bf16")),
            Ok(Placement::Device { device: Device::Cpu, dtype: DType::BF16 })
        ));
        let err = |d, t| Placement::parse(d, t).unwrap_err().to_string();
        assert!(err("cpu", Some("bf16")).contains("--dtype bf16"));
        assert!(err("cpu", Some("f64")).contains("--dtype `f64`"));
        assert!(err("tpu", None).contains("--device `tpu`"));
        assert!(err("cuda:x", None).contains("--device `cuda:x`"));
        #[cfg(not(feature = "cuda"))]
        assert!(err("cuda", None).contains("without the `cuda` feature"));
    }
}
