//! Opening a GPU: one candle device per GPU per process, set up for how tsukuru uses it, and the
//! figures of its memory pool.

use candle_core::backend::BackendDevice;
use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{Device, Result};
use std::sync::Mutex;

/// CUDA device `ordinal`, opened once per process: every later call returns the same device, so
/// all of a process's GPU work shares one stream and tensors pass freely between its stages.
///
/// Two of the driver's defaults are changed. cudarc's per-buffer event tracking is turned off: it
/// orders a buffer's uses across streams (two events made at every allocation, a wait and a record
/// per buffer at every launch, two waits at every free), while candle runs a device on one stream,
/// which orders all of that already, so the tracking only adds driver calls to every op — most of
/// what an op costs the host when decoding one token at a time. And the memory pool that every
/// allocation comes from (`cuMemAllocAsync`) keeps what is freed instead of handing it back to the
/// driver at each synchronisation (its release threshold is 0 by default): a training step that
/// reads its loss, or a decoding step that reads its token, would otherwise map its activations'
/// memory afresh every time. PyTorch's caching allocator keeps freed memory the same way.
pub fn open(ordinal: usize) -> Result<Device> {
    static OPENED: Mutex<Vec<(usize, CudaDevice)>> = Mutex::new(Vec::new());
    let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, d)) = opened.iter().find(|(o, _)| *o == ordinal) {
        return Ok(Device::Cuda(d.clone()));
    }
    let d = CudaDevice::new(ordinal)?;
    // SAFETY: buffers made from here on skip the events; this device's work, the only work on these
    // buffers, runs in order on its one stream, and frees are ordered on that stream too.
    unsafe { d.disable_event_tracking() };
    if let Some(pool) = pool(&d)? {
        let mut keep = u64::MAX;
        // SAFETY: sets one attribute of the device's own pool from a local value.
        unsafe {
            let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
            sys::cuMemPoolSetAttribute(pool, attr, (&mut keep as *mut u64).cast()).result().w()?;
        }
    }
    opened.push((ordinal, d.clone()));
    Ok(Device::Cuda(d))
}

/// The default memory pool of `d`'s GPU, which candle's allocations come from; None where the
/// GPU has no pools (allocations are then synchronous and nothing is pooled).
fn pool(d: &CudaDevice) -> Result<Option<sys::CUmemoryPool>> {
    let ctx = d.cuda_stream().context().clone();
    if !ctx.has_async_alloc() {
        return Ok(None);
    }
    ctx.bind_to_thread().w()?;
    let mut pool = std::ptr::null_mut();
    // SAFETY: a plain query of the current context's device into a local variable.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result().w()? };
    Ok(Some(pool))
}

/// Peak bytes in use from the GPU's memory pool so far (every candle allocation comes from it):
/// the counterpart of PyTorch's `max_memory_allocated`. None off the GPU or without a pool.
pub fn peak_bytes(device: &Device) -> Option<u64> {
    let Device::Cuda(d) = device else { return None };
    let pool = pool(d).ok()??;
    let mut high = 0u64;
    // SAFETY: a plain query of the pool into a local variable.
    unsafe {
        let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
        sys::cuMemPoolGetAttribute(pool, attr, (&mut high as *mut u64).cast()).result().ok()?;
    }
    Some(high)
}
