//! Fused GPU kernels: CUDA C (`gpu/cuda/*.cu`, compiled to PTX by nvcc when the crate is built
//! with the `cuda` feature) behind candle ops with their own backward, for f32 and bf16 tensors on
//! a CUDA device. All arithmetic is f32 whatever the storage type. Like the CPU kernels
//! ([`crate::kernels`]) they replace chains of candle ops whose intermediates the graph would
//! keep; the composites in [`crate::ops::composite`] are the reference they are checked against.
//!
//! The helpers here turn tensors into device pointers, allocate outputs (filled with NaN when
//! [`set_poison`] is on, so an element a kernel fails to write shows in a check) and launch a
//! kernel by name, `NAME_f32` or `NAME_bf16` after the data type.

pub mod adamw;
pub mod attention;
pub mod device;
pub mod embedding;
pub mod linear_cross_entropy;
pub mod linear_logprobs;
pub mod matmul;
pub mod rms_norm;
pub mod rope;
pub mod swiglu;

use candle_core::backend::{BackendDevice, BackendStorage};
pub(crate) use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, CudaStorageSlice, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{DType, Layout, Result, Shape, Storage, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

/// One compiled `.cu` file.
pub(crate) struct Module {
    name: &'static str,
    ptx: &'static str,
}

macro_rules! module {
    ($konst:ident, $file:literal) => {
        pub(crate) const $konst: Module =
            Module { name: $file, ptx: include_str!(concat!(env!("OUT_DIR"), "/", $file, ".ptx")) };
    };
}
module!(ADAMW, "adamw");
module!(ATTENTION, "attention");
module!(ATTENTION_TC, "attention_tc");
module!(CROSS_ENTROPY, "cross_entropy");
module!(EMBEDDING, "embedding");
module!(RMS_NORM, "rms_norm");
module!(ROPE, "rope");
module!(SWIGLU, "swiglu");

static POISON: AtomicBool = AtomicBool::new(false);

pub use device::open;

/// Fills every output the kernels allocate with NaN before they run (for checks: an element left
/// unwritten then shows). Off by default: it costs a memset per output.
pub fn set_poison(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

/// True when the fused GPU kernels can take these tensors: all on a CUDA device, f32 or bf16, and
/// the fused kernels not turned off (`TSUKURU_KERNELS=composite`).
pub fn supported(ts: &[&Tensor]) -> bool {
    crate::ops::fused_enabled()
        && ts.iter().all(|t| t.device().is_cuda() && matches!(t.dtype(), DType::F32 | DType::BF16))
}

/// The CUDA device of a tensor.
pub(crate) fn device(t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        candle_core::Device::Cuda(d) => Ok(d.clone()),
        d => candle_core::bail!("expected a tensor on a CUDA device, got one on {d:?}"),
    }
}

/// The suffix of a kernel's entry point for `dtype`.
fn suffix(dtype: DType, op: &str) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        d => candle_core::bail!("{op}: the GPU kernels take f32 or bf16, got {d:?}"),
    }
}

/// Device address of the first element of a contiguous view of `s`.
pub(crate) fn storage_ptr(s: &CudaStorage, l: &Layout, op: &str) -> Result<u64> {
    if l.contiguous_offsets().is_none() {
        candle_core::bail!("{op}: expected a contiguous tensor")
    }
    storage_base(s, l.start_offset(), op)
}

/// Device address of element `offset` of `s`.
pub(crate) fn storage_base(s: &CudaStorage, offset: usize, op: &str) -> Result<u64> {
    let stream = s.device.cuda_stream();
    // The guard records a read event when dropped; every kernel here runs on this one stream, which
    // orders it after the writes anyway.
    let (base, size) = match &s.slice {
        CudaStorageSlice::F32(v) => (v.device_ptr(&stream).0, 4),
        CudaStorageSlice::BF16(v) => (v.device_ptr(&stream).0, 2),
        CudaStorageSlice::U32(v) => (v.device_ptr(&stream).0, 4),
        CudaStorageSlice::F64(v) => (v.device_ptr(&stream).0, 8),
        CudaStorageSlice::I64(v) => (v.device_ptr(&stream).0, 8),
        _ => candle_core::bail!("{op}: unsupported data type {:?}", s.dtype()),
    };
    Ok(base + (offset * size) as u64)
}

/// Device address of the first element of a contiguous CUDA tensor.
pub(crate) fn ptr(t: &Tensor, op: &str) -> Result<u64> {
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cuda(c) => storage_ptr(c, l, op),
        _ => candle_core::bail!("{op}: expected a tensor on a CUDA device"),
    }
}

/// Fresh storage for `shape` in `dtype` (NaN-filled under [`set_poison`]).
pub(crate) fn alloc(dev: &CudaDevice, shape: &Shape, dtype: DType) -> Result<CudaStorage> {
    // SAFETY: every kernel that receives it writes all of it (the poison checks test exactly that).
    let s = unsafe { dev.alloc_uninit(shape, dtype)? };
    if POISON.load(Ordering::Relaxed) {
        let layout = Layout::contiguous(shape);
        let bytes = shape.elem_count() * dtype.size_in_bytes();
        let stream = dev.cuda_stream();
        // SAFETY: the range is the allocation just made; all-ones bits are NaN in f32 and bf16.
        unsafe {
            candle_core::cuda_backend::cudarc::driver::result::memset_d8_async(
                storage_ptr(&s, &layout, "poison")?,
                0xFF,
                bytes,
                stream.cu_stream(),
            )
        }
        .w()?;
    }
    Ok(s)
}

/// A copy of a contiguous CUDA tensor as fresh storage: what an op whose result was computed
/// outside the graph returns from its forward.
pub(crate) fn storage_copy(t: &Tensor, op: &str) -> Result<CudaStorage> {
    let dev = device(t)?;
    let out = alloc(&dev, t.shape(), t.dtype())?;
    let dst = storage_ptr(&out, &Layout::contiguous(t.shape()), op)?;
    let bytes = t.elem_count() * t.dtype().size_in_bytes();
    let stream = dev.cuda_stream();
    // SAFETY: `bytes` from `t` (alive here, contiguous) into the allocation just made, on the stream
    // that wrote `t`.
    unsafe {
        candle_core::cuda_backend::cudarc::driver::result::memcpy_dtod_async(
            dst,
            ptr(t, op)?,
            bytes,
            stream.cu_stream(),
        )
    }
    .w()?;
    Ok(out)
}

/// A new tensor over fresh storage (see [`alloc`]), outside the graph.
pub(crate) fn output(dev: &CudaDevice, shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
    let shape = shape.into();
    let s = alloc(dev, &shape, dtype)?;
    Ok(Tensor::from_storage(Storage::Cuda(s), shape, BackpropOp::none(), false))
}

/// A kernel argument.
#[derive(Clone, Copy)]
pub(crate) enum Arg {
    /// A device address.
    Ptr(u64),
    /// An `int`.
    Int(i32),
    /// A `float`.
    Float(f32),
    /// A `long long` (strides).
    Long(i64),
    /// An `unsigned long long` (element counts).
    Count(u64),
}

/// A size as a kernel's `int`, or an error naming `what`.
pub(crate) fn int(n: usize, what: &str) -> Result<Arg> {
    match i32::try_from(n) {
        Ok(v) => Ok(Arg::Int(v)),
        Err(_) => candle_core::bail!("{what} = {n} exceeds the GPU kernels' 32-bit sizes"),
    }
}

/// Launches `NAME_{f32|bf16}` from `module` on `dev`'s stream.
pub(crate) fn launch(
    dev: &CudaDevice,
    module: &Module,
    name: &str,
    dtype: DType,
    cfg: LaunchConfig,
    args: &[Arg],
) -> Result<()> {
    let (x, y, z) = cfg.grid_dim;
    if x == 0 || y == 0 || z == 0 {
        // Nothing to do (an empty tensor); the driver would refuse an empty grid.
        return Ok(());
    }
    let func = dev.get_or_load_custom_func(&format!("{name}_{}", suffix(dtype, name)?), module.name, module.ptx)?;
    if cfg.shared_mem_bytes > 48 * 1024 {
        // Above 48 KiB a kernel's dynamic shared memory must be asked for.
        let attr = candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        func.set_attribute(attr, cfg.shared_mem_bytes as i32).w()?;
    }
    let mut b = func.builder();
    for a in args {
        match a {
            Arg::Ptr(p) => b.arg(p),
            Arg::Int(i) => b.arg(i),
            Arg::Float(x) => b.arg(x),
            Arg::Long(x) => b.arg(x),
            Arg::Count(x) => b.arg(x),
        };
    }
    // SAFETY: the argument lists follow the kernels' signatures in gpu/cuda (the device checks in
    // tests/gpu_kernels.rs run every one), and buffers dropped before a kernel runs are freed in
    // stream order (cudarc frees asynchronously on this one stream), so none is reused under it.
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// A launch shape without dynamic shared memory.
pub(crate) fn grid(blocks: (u32, u32, u32), threads: (u32, u32, u32)) -> LaunchConfig {
    LaunchConfig { grid_dim: blocks, block_dim: threads, shared_mem_bytes: 0 }
}

/// Threads per block for a kernel that walks a row of `d` elements: enough to cover short rows
/// in one pass, at most 1,024.
pub(crate) fn row_threads(d: usize) -> u32 {
    (d.div_ceil(32) * 32).clamp(32, 1024) as u32
}
