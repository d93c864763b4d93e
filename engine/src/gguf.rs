//! Reading a GGUF file: its metadata (typed getters with errors that name the key) and its
//! tensors. Owns the open file; the model and tokenizer builders read through it.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;

use crate::EngineError;

/// An open GGUF file with its parsed header.
pub struct GgufFile {
    path: PathBuf,
    reader: BufReader<File>,
    content: Content,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let file = File::open(path)
            .map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| {
            EngineError::Load(format!("{}: not a readable GGUF file: {e}", path.display()))
        })?;
        Ok(Self { path: path.to_path_buf(), reader, content })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn content(&self) -> &Content {
        &self.content
    }

    /// The raw metadata value, if present.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    pub fn get_str(&self, key: &str) -> Result<&str, EngineError> {
        match self.value(key) {
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(wrong_type(key, "string", v)),
            None => Err(missing(key)),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, EngineError> {
        if self.has(key) { self.get_str(key).map(Some) } else { Ok(None) }
    }

    /// Any unsigned or non-negative signed integer type, as u64.
    pub fn get_u64(&self, key: &str) -> Result<u64, EngineError> {
        let v = self.value(key).ok_or_else(|| missing(key))?;
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I8(x) if *x >= 0 => *x as u64,
            Value::I16(x) if *x >= 0 => *x as u64,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => return Err(wrong_type(key, "non-negative integer", other)),
        };
        Ok(n)
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, EngineError> {
        if self.has(key) { self.get_u64(key).map(Some) } else { Ok(None) }
    }

    /// Any float or integer type, as f64.
    pub fn get_f64(&self, key: &str) -> Result<f64, EngineError> {
        let v = self.value(key).ok_or_else(|| missing(key))?;
        let n = match v {
            Value::F32(x) => *x as f64,
            Value::F64(x) => *x,
            Value::U8(_) | Value::U16(_) | Value::U32(_) | Value::U64(_) => self.get_u64(key)? as f64,
            Value::I8(x) => *x as f64,
            Value::I16(x) => *x as f64,
            Value::I32(x) => *x as f64,
            Value::I64(x) => *x as f64,
            other => return Err(wrong_type(key, "number", other)),
        };
        Ok(n)
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, EngineError> {
        if self.has(key) { self.get_f64(key).map(Some) } else { Ok(None) }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, EngineError> {
        match self.value(key) {
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong_type(key, "bool", v)),
            None => Ok(None),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value], EngineError> {
        match self.value(key) {
            Some(Value::Array(a)) => Ok(a),
            Some(v) => Err(wrong_type(key, "array", v)),
            None => Err(missing(key)),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, EngineError> {
        self.get_array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                other => Err(wrong_type(key, "array of strings", other)),
            })
            .collect()
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// A tensor's header (type, shape), or a load error naming the missing tensor.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, EngineError> {
        self.content.tensor_infos.get(name).ok_or_else(|| {
            EngineError::Load(format!("{}: tensor `{name}` is missing", self.path.display()))
        })
    }

    /// Read one tensor (quantized or not) from the file onto `device`.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor, EngineError> {
        self.tensor_info(name)?;
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| EngineError::Load(format!("{}: tensor `{name}`: {e}", self.path.display())))
    }
}

fn missing(key: &str) -> EngineError {
    EngineError::Load(format!("GGUF metadata key `{key}` is missing"))
}

fn wrong_type(key: &str, want: &str, got: &Value) -> EngineError {
    EngineError::Load(format!(
        "GGUF metadata key `{key}`: expected {want}, found {:?}",
        got.value_type()
    ))
}
