//! Our own CUDA kernels for the paged KV cache (`paged_attention.cu`): the source is compiled at
//! run time with nvrtc, once per (element type, head size) and process, and loaded into each
//! CUDA device as a module of its own. Owns the launches behind `DeviceKv::write` (`write_kv`,
//! one launch per cache tensor) and `DeviceKv::attend` (`paged_attention`, one launch per layer).
//!
//! Invariants: the kernels read and write tensors through their layouts' start offsets and
//! require contiguous storage (the caches and batch metadata are ours and always are; queries
//! and new keys/values are made contiguous here); shapes, dtypes and the geometry are checked
//! before any launch, so a mismatch is an error, never an out-of-bounds access.
//! `AI_SANDBOX_ATTENTION=generic` sends `DeviceKv` to the candle-op versions instead (for
//! comparisons); it is read once per process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::{
    compile_ptx_with_opts, CompileError, CompileOptions,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{bail, CpuStorage, DType, InplaceOp3, Layout, Storage, Tensor};
use half::{bf16, f16};

use crate::model::attention::Geometry;
use crate::model::device_attention::DeviceBatch;

/// The kernels' source; it includes no header (nvrtc gets no include path).
const SOURCE: &str = include_str!("paged_attention.cu");

/// Head sizes the attention kernel is built and checked for (it keeps `HEAD_DIM / 32` rounded up
/// values per lane, so at most 8).
pub(crate) const HEAD_DIMS: [usize; 5] = [64, 80, 96, 128, 256];

/// Warps per attention block: passed to the source as `N_WARPS` and used for the launch.
const ATTENTION_WARPS: u32 = 4;

/// Threads per `write_kv` block (each block copies one row of `kv_heads * head_dim` elements).
const WRITE_THREADS: u32 = 128;

/// True when `AI_SANDBOX_ATTENTION=generic` asks for the candle-op attention and KV writes
/// instead of our kernels.
/// `(free, total)` bytes of `device`'s memory as the driver reports them.
pub(crate) fn memory_info(device: &candle_core::Device) -> candle_core::Result<(usize, usize)> {
    let candle_core::Device::Cuda(dev) = device else {
        bail!("memory_info: {device:?} is not a CUDA device")
    };
    dev.cuda_stream()
        .context()
        .mem_get_info()
        .map_err(|e| candle_core::Error::Msg(format!("cuMemGetInfo: {e}")))
}

pub(crate) fn generic_only() -> bool {
    static GENERIC: OnceLock<bool> = OnceLock::new();
    *GENERIC.get_or_init(|| match std::env::var("AI_SANDBOX_ATTENTION") {
        Ok(v) if v == "generic" => true,
        Ok(v) if v.is_empty() || v == "kernels" => false,
        Ok(v) => {
            tracing::warn!(
                "AI_SANDBOX_ATTENTION={v:?} is not `generic` or `kernels`; using our kernels"
            );
            false
        }
        Err(_) => false,
    })
}

/// The `-D` define that selects the element type in the source.
fn type_define(dtype: DType) -> candle_core::Result<&'static str> {
    Ok(match dtype {
        DType::BF16 => "KV_T_BF16",
        DType::F16 => "KV_T_F16",
        DType::F32 => "KV_T_F32",
        other => bail!("our CUDA attention kernels support bf16, f16 and f32, not {other:?}"),
    })
}

/// The PTX of the source for `dtype` and `head_dim`, compiled on first use and kept for the
/// process (every device loads the same PTX).
fn ptx(dtype: DType, head_dim: usize) -> candle_core::Result<Arc<str>> {
    type PtxCache = Mutex<HashMap<(DType, usize), Arc<str>>>;
    static CACHE: OnceLock<PtxCache> = OnceLock::new();
    let define = type_define(dtype)?;
    if !HEAD_DIMS.contains(&head_dim) {
        bail!("our CUDA attention kernels support head_dim {HEAD_DIMS:?}, not {head_dim}");
    }
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    // A panic while holding the lock leaves the map itself consistent (inserts are atomic).
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(ptx) = map.get(&(dtype, head_dim)) {
        return Ok(ptx.clone());
    }
    let opts = CompileOptions {
        options: vec![
            format!("-D{define}"),
            format!("-DHEAD_DIM={head_dim}"),
            format!("-DN_WARPS={ATTENTION_WARPS}"),
        ],
        name: Some("paged_attention.cu".to_string()),
        ..Default::default()
    };
    let ptx: Arc<str> = compile_ptx_with_opts(SOURCE, opts)
        .map_err(|e| candle_core::Error::Msg(compile_error_message(&e, define, head_dim)))?
        .to_src()
        .into();
    map.insert((dtype, head_dim), ptx.clone());
    Ok(ptx)
}

fn compile_error_message(e: &CompileError, define: &str, head_dim: usize) -> String {
    let what =
        format!("nvrtc failed to compile paged_attention.cu with -D{define} -DHEAD_DIM={head_dim}");
    match e {
        CompileError::CompileError { nvrtc, log, .. } => {
            format!("{what}: {nvrtc:?}\n{}", log.to_string_lossy())
        }
        other => format!("{what}: {other:?}"),
    }
}

/// Kernel `name` of the module for `dtype` and `head_dim` on `dev` (loaded on first use).
fn kernel(
    dev: &CudaDevice,
    name: &str,
    dtype: DType,
    head_dim: usize,
) -> candle_core::Result<CudaFunction> {
    let ptx = ptx(dtype, head_dim)?;
    let module = format!("ai_sandbox_paged_attention_{}_{head_dim}", dtype.as_str());
    Ok(dev.get_or_load_custom_func(name, &module, &ptx)?.into_cuda_function())
}

fn as_u32(n: usize, what: &str) -> candle_core::Result<u32> {
    u32::try_from(n)
        .map_err(|_| candle_core::Error::Msg(format!("{what} = {n} does not fit the kernels' u32")))
}

/// The elements `l` addresses in `s`, as a view from the layout's start offset (contiguous only).
fn contiguous_view<'a, T: CudaDType>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{what} must be contiguous for our CUDA kernels (layout {l:?})")
    };
    s.as_cuda_slice::<T>()?.try_slice(start..end).ok_or_else(|| {
        candle_core::Error::Msg(format!("{what}: layout {l:?} is outside its storage"))
    })
}

fn cuda_storage<'a>(s: &'a Storage, what: &str) -> candle_core::Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => bail!("{what} is not on a CUDA device"),
    }
}

/// Stores row `t` of `new` (`[rows, kv_heads, head_dim]`, the cache's dtype) at row `slots[t]`
/// of `cache` (`[n_slots, kv_heads, head_dim]`, contiguous), in place. `slots`: `[rows]` u32.
pub(crate) fn write_kv(cache: &Tensor, new: &Tensor, slots: &Tensor) -> candle_core::Result<()> {
    let (n_slots, kv_heads, head_dim) = cache.dims3()?;
    let rows = slots.dims1()?;
    let (new_rows, new_heads, new_dim) = new.dims3()?;
    if (new_rows, new_heads, new_dim) != (rows, kv_heads, head_dim) {
        bail!(
            "write_kv: new keys/values are [{new_rows}, {new_heads}, {new_dim}], expected [{rows}, {kv_heads}, {head_dim}] \
             (rows from slots, heads and head_dim from the cache)"
        );
    }
    if new.dtype() != cache.dtype() {
        bail!("write_kv: new keys/values are {:?}, the cache is {:?}", new.dtype(), cache.dtype());
    }
    if slots.dtype() != DType::U32 {
        bail!("write_kv: slots must be u32, not {:?}", slots.dtype());
    }
    if !cache.is_contiguous() {
        bail!("write_kv: the cache must be contiguous");
    }
    type_define(cache.dtype())?;
    if rows == 0 {
        return Ok(());
    }
    let op = WriteKv {
        rows: as_u32(rows, "rows")?,
        row_len: as_u32(kv_heads * head_dim, "kv_heads * head_dim")?,
        cache_rows: as_u32(n_slots, "cache slots")?,
        head_dim,
    };
    cache.inplace_op3(&new.contiguous()?, slots, &op)
}

/// The in-place cache write as a candle op (candle takes the storage locks).
struct WriteKv {
    rows: u32,
    row_len: u32,
    cache_rows: u32,
    /// Selects the compiled module (the write itself does not depend on it).
    head_dim: usize,
}

impl InplaceOp3 for WriteKv {
    fn name(&self) -> &'static str {
        "ai-sandbox-write-kv"
    }

    fn cpu_fwd(
        &self,
        _: &mut CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<()> {
        bail!("write_kv is the CUDA kernel; on the CPU DeviceKv uses write_generic")
    }

    fn cuda_fwd(
        &self,
        cache: &mut CudaStorage,
        cache_l: &Layout,
        new: &CudaStorage,
        new_l: &Layout,
        slots: &CudaStorage,
        slots_l: &Layout,
    ) -> candle_core::Result<()> {
        let slots = contiguous_view::<u32>(slots, slots_l, "slots")?;
        match cache.dtype() {
            DType::BF16 => self.launch::<bf16>(cache, cache_l, new, new_l, &slots),
            DType::F16 => self.launch::<f16>(cache, cache_l, new, new_l, &slots),
            DType::F32 => self.launch::<f32>(cache, cache_l, new, new_l, &slots),
            other => bail!("write_kv: unsupported dtype {other:?}"),
        }
    }
}

impl WriteKv {
    fn launch<T: CudaDType + DeviceRepr>(
        &self,
        cache: &mut CudaStorage,
        cache_l: &Layout,
        new: &CudaStorage,
        new_l: &Layout,
        slots: &CudaView<'_, u32>,
    ) -> candle_core::Result<()> {
        let dev = cache.device().clone();
        let func = kernel(&dev, "write_kv", cache.dtype(), self.head_dim)?;
        let new = contiguous_view::<T>(new, new_l, "new keys/values")?;
        let Some((start, end)) = cache_l.contiguous_offsets() else {
            bail!("write_kv: the cache must be contiguous (layout {cache_l:?})")
        };
        let cache: &mut CudaSlice<T> = cache.as_cuda_slice_mut::<T>()?;
        let Some(mut cache) = cache.try_slice_mut(start..end) else {
            bail!("write_kv: cache layout {cache_l:?} is outside its storage")
        };
        let cfg = LaunchConfig {
            grid_dim: (self.rows, 1, 1),
            block_dim: (WRITE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&func);
        b.arg(&mut cache);
        b.arg(&new);
        b.arg(slots);
        b.arg(&self.rows);
        b.arg(&self.row_len);
        b.arg(&self.cache_rows);
        // SAFETY: the arguments match the kernel's signature in order and type (pointers to
        // `T`/u32 device memory, then three u32); `new` holds `rows * row_len` elements and
        // `slots` `rows` (checked by `write_kv`), and the kernel skips slots past `cache_rows`,
        // the cache view's row count.
        unsafe { b.launch(cfg) }
            .map_err(|e| candle_core::Error::Msg(format!("write_kv launch: {e:?}")))?;
        Ok(())
    }
}

/// Causal (optionally sliding-window) grouped-query attention of `q` (`[rows, n_heads,
/// head_dim]`, rotated, not scaled) over the cached keys `k` and values `v` (`[n_slots,
/// n_kv_heads, head_dim]`, `q`'s dtype) through the batch's block tables. Returns `[rows,
/// n_heads, head_dim]` in `q`'s dtype.
pub(crate) fn paged_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    b: &DeviceBatch,
    g: &Geometry,
) -> candle_core::Result<Tensor> {
    let (rows, n_heads, head_dim) = q.dims3()?;
    let (n_slots, n_kv_heads, kv_dim) = k.dims3()?;
    if (n_heads, head_dim, n_kv_heads) != (g.n_heads, g.head_dim, g.n_kv_heads)
        || kv_dim != head_dim
    {
        bail!(
            "paged_attention: q [{rows}, {n_heads}, {head_dim}] and k [{n_slots}, {n_kv_heads}, {kv_dim}] do not match \
             the geometry ({} heads, {} kv heads, head_dim {})",
            g.n_heads,
            g.n_kv_heads,
            g.head_dim
        );
    }
    if v.dims() != k.dims() {
        bail!("paged_attention: values {:?} and keys {:?} differ in shape", v.dims(), k.dims());
    }
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        bail!("paged_attention: {n_heads} heads is not a multiple of {n_kv_heads} kv heads");
    }
    if g.block_size == 0 || n_slots % g.block_size != 0 {
        bail!(
            "paged_attention: {n_slots} cache slots is not a whole number of blocks of {}",
            g.block_size
        );
    }
    let dtype = q.dtype();
    if k.dtype() != dtype || v.dtype() != dtype {
        bail!("paged_attention: q is {dtype:?}, keys {:?}, values {:?}", k.dtype(), v.dtype());
    }
    if b.positions.dims1()? != rows || b.table_offsets.dims1()? != rows {
        bail!(
            "paged_attention: the batch has {} positions for {rows} query rows",
            b.positions.dims1()?
        );
    }
    if n_heads > 65_535 {
        bail!("paged_attention: {n_heads} heads exceed the launch grid's y limit (65535)");
    }
    type_define(dtype)?;
    if rows == 0 {
        // Already the empty [0, n_heads, head_dim] result (no zero-byte device allocation).
        return Ok(q.clone());
    }
    let dev = q.device().as_cuda_device()?.clone();
    let func = kernel(&dev, "paged_attention", dtype, head_dim)?;
    let args = AttentionArgs {
        rows: as_u32(rows, "rows")?,
        n_heads: as_u32(n_heads, "n_heads")?,
        n_kv_heads: as_u32(n_kv_heads, "n_kv_heads")?,
        block_size: as_u32(g.block_size, "block_size")?,
        // 0 means no window; a window of 0 positions is meaningless (a row always sees itself).
        window: as_u32(g.sliding_window.unwrap_or(0), "sliding_window")?,
        scale: 1.0 / (head_dim as f32).sqrt(),
    };
    let q = q.contiguous()?;
    let out = match dtype {
        DType::BF16 => launch_attention::<bf16>(&dev, &func, &args, &q, k, v, b)?,
        DType::F16 => launch_attention::<f16>(&dev, &func, &args, &q, k, v, b)?,
        DType::F32 => launch_attention::<f32>(&dev, &func, &args, &q, k, v, b)?,
        other => bail!("paged_attention: unsupported dtype {other:?}"),
    };
    Ok(Tensor::from_storage(
        Storage::Cuda(out),
        (rows, n_heads, head_dim),
        BackpropOp::none(),
        false,
    ))
}

/// The scalar arguments of the attention kernel, in its parameter order.
struct AttentionArgs {
    rows: u32,
    n_heads: u32,
    n_kv_heads: u32,
    block_size: u32,
    window: u32,
    scale: f32,
}

fn launch_attention<T: CudaDType + DeviceRepr>(
    dev: &CudaDevice,
    func: &CudaFunction,
    a: &AttentionArgs,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    b: &DeviceBatch,
) -> candle_core::Result<CudaStorage> {
    let (q_s, q_l) = q.storage_and_layout();
    let (k_s, k_l) = k.storage_and_layout();
    let (v_s, v_l) = v.storage_and_layout();
    let (pos_s, pos_l) = b.positions.storage_and_layout();
    let (off_s, off_l) = b.table_offsets.storage_and_layout();
    let (tab_s, tab_l) = b.tables.storage_and_layout();
    let q_view = contiguous_view::<T>(cuda_storage(&q_s, "q")?, q_l, "q")?;
    let k_view = contiguous_view::<T>(cuda_storage(&k_s, "the key cache")?, k_l, "the key cache")?;
    let v_view =
        contiguous_view::<T>(cuda_storage(&v_s, "the value cache")?, v_l, "the value cache")?;
    let positions = contiguous_view::<u32>(cuda_storage(&pos_s, "positions")?, pos_l, "positions")?;
    let offsets =
        contiguous_view::<u32>(cuda_storage(&off_s, "table offsets")?, off_l, "table offsets")?;
    let tables =
        contiguous_view::<u32>(cuda_storage(&tab_s, "block tables")?, tab_l, "block tables")?;

    let n = q_view.len();
    // SAFETY: every element is written by the kernel (block (t, h) writes all head_dim values
    // of out[t, h]) before anyone reads the tensor.
    let mut out = unsafe { dev.alloc::<T>(n)? };
    let cfg = LaunchConfig {
        grid_dim: (a.rows, a.n_heads, 1),
        block_dim: (ATTENTION_WARPS * 32, 1, 1),
        shared_mem_bytes: 0,
    };
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(func);
    builder.arg(&mut out);
    builder.arg(&q_view);
    builder.arg(&k_view);
    builder.arg(&v_view);
    builder.arg(&positions);
    builder.arg(&offsets);
    builder.arg(&tables);
    builder.arg(&a.n_heads);
    builder.arg(&a.n_kv_heads);
    builder.arg(&a.block_size);
    builder.arg(&a.window);
    builder.arg(&a.scale);
    // SAFETY: arguments in the kernel's order and types (seven device pointers, four u32, one
    // f32); shapes and dtypes were checked by `paged_attention`. The positions, table offsets
    // and tables come from `DeviceBatch::new`, which builds every row's table to cover its
    // position, with block numbers the caller's KV pool allocated inside the cache.
    unsafe { builder.launch(cfg) }
        .map_err(|e| candle_core::Error::Msg(format!("paged_attention launch: {e:?}")))?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}
