//! Matrix products through cuBLASLt, for what candle's products (cuBLAS, output in the inputs'
//! dtype, `C` overwritten) cannot do in one pass: an f32 output from bf16 operands (a weight's
//! gradient goes to its f32 master without a cast), the sum `add + a·b` with `add` a tensor of its
//! own (a block half's residual connection folded into its output projection), and `acc += a·b`
//! in place (the output layer's weight gradient summed over row chunks). Operands are read where
//! they lie, each row-major or transposed by its strides, with f32 accumulation.
//!
//! candle's matrices are row-major and cuBLASLt's column-major: a row-major `X (R, C)` with row
//! stride `ld` is the column-major `Xᵀ (C, R)` with the same `ld`. So `D = a · b` is computed as
//! `Dᵀ = bᵀ · aᵀ`: cuBLASLt's A is `b`, its B is `a`, and its column-major `N × M` output is the
//! row-major `(M, N)` one. The algorithm cuBLASLt's heuristic picks is kept per shape, layout and
//! alignment, so a training step asks for it once.

use super::{device, output, storage_base};
use crate::column_major::column_major;
use candle_core::cuda_backend::cudarc::cublaslt::{result, sys};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{DType, Result, Storage, Tensor};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Workspace bytes, NVIDIA's recommendation for Hopper.
const WORKSPACE: usize = 32 << 20;

/// `a · b` for `a (M, K)` and `b (K, N)` (bf16 or f32, one dtype), plus `add (M, N)` when given
/// (of dtype `out`), into a new contiguous `(M, N)` tensor of dtype `out` (f32, or the operands'
/// dtype). Nothing is recorded for candle's backward.
pub fn matmul(a: &Tensor, b: &Tensor, add: Option<&Tensor>, out: DType) -> Result<Tensor> {
    let name = "gpu matmul";
    let ((m, _), (_, n)) = (a.dims2()?, b.dims2()?);
    if let Some(c) = add {
        if c.dims() != [m, n] || c.dtype() != out {
            candle_core::bail!(
                "{name}: the addend {:?} {:?} is not the output's ({m}, {n}) {out:?}",
                c.dims(),
                c.dtype()
            );
        }
    }
    let d = output(&device(a)?, (m, n), out)?;
    check(a, b, &d, name)?;
    let c = add.map(Tensor::contiguous).transpose()?;
    if ran(|| product(a, b, c.as_ref(), &d, name)) {
        return Ok(d);
    }
    let p = a.matmul(b)?.to_dtype(out)?;
    match add {
        Some(c) => c + p,
        None => Ok(p),
    }
}

/// `acc + a · b` with `acc` a contiguous f32 `(M, N)` tensor this code made (outside the graph,
/// read by nothing else yet), `a` and `b` as for [`matmul`]: added into `acc` in place, which is
/// returned.
pub fn accumulate(acc: Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = "gpu matmul-accumulate";
    if acc.dtype() != DType::F32 {
        candle_core::bail!("{name}: the accumulator must be f32, got {:?}", acc.dtype());
    }
    check(a, b, &acc, name)?;
    if ran(|| product(a, b, Some(&acc), &acc, name)) {
        return Ok(acc);
    }
    acc + a.matmul(b)?.to_dtype(DType::F32)?
}

/// Whether cuBLASLt may be used (`TSUKURU_MATMUL=candle` says no: every product then goes through
/// candle's, with a separate add or cast, to measure what cuBLASLt saves), read once.
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("TSUKURU_MATMUL").map_or(true, |v| v != "candle"))
}

/// Products that went through candle instead of cuBLASLt so far in this process (after their
/// shapes passed [`check`]: a misfit is an error, not a fallback).
static FALLBACKS: AtomicUsize = AtomicUsize::new(0);

/// How many products fell back to candle's (same numbers up to rounding, a pass or two more)
/// because cuBLASLt refused them; the first says why on stderr.
pub fn fallbacks() -> usize {
    FALLBACKS.load(Ordering::Relaxed)
}

/// Whether `product` ran through cuBLASLt: false where it is switched off, or where it refused
/// (counted, the first refusal said on stderr) and candle's product is to run instead.
fn ran(product: impl FnOnce() -> Result<()>) -> bool {
    if !enabled() {
        return false;
    }
    match product() {
        Ok(()) => true,
        Err(e) => {
            if FALLBACKS.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("warning: a matrix product fell back from cuBLASLt to candle's: {e}");
            }
            false
        }
    }
}

/// Checks that `a · b` fits into `d`: `(M, K) · (K, N)` of one dtype (f32 or bf16) into a
/// contiguous `(M, N)` of f32 or that dtype.
fn check(a: &Tensor, b: &Tensor, d: &Tensor, name: &str) -> Result<()> {
    let ((m, k), (kb, n)) = (a.dims2()?, b.dims2()?);
    let dtype = a.dtype();
    let fits = k == kb
        && b.dtype() == dtype
        && matches!(dtype, DType::BF16 | DType::F32)
        && (d.dtype() == DType::F32 || d.dtype() == dtype)
        && d.dims() == [m, n]
        && d.is_contiguous();
    if !fits {
        candle_core::bail!(
            "{name}: a {:?} {dtype:?} and b {:?} {:?} into {:?} {:?}: expected (M, K) · (K, N) of one dtype, f32 or bf16, \
             into a contiguous (M, N) of f32 or that dtype",
            a.dims(),
            b.dims(),
            b.dtype(),
            d.dims(),
            d.dtype()
        );
    }
    Ok(())
}

/// `d = a · b (+ c)` by cuBLASLt, `d` and `c` contiguous `(M, N)` of one dtype, the shapes checked.
fn product(a: &Tensor, b: &Tensor, c: Option<&Tensor>, d: &Tensor, name: &str) -> Result<()> {
    let ((m, k), (_, n)) = (a.dims2()?, b.dims2()?);
    let dtype = a.dtype();
    if m == 0 || n == 0 {
        return Ok(());
    }
    // cuBLASLt's A is b, its B is a (see the header).
    let (op_a, op_b) = (Operand::of(b, name)?, Operand::of(a, name)?);
    let out = Operand::of(d, name)?;
    let c_ptr = match c {
        Some(c) => Operand::of(c, name)?.ptr,
        None => out.ptr,
    };
    let dev = device(d)?;
    let shape = Shape {
        types: [cuda_type(dtype), cuda_type(d.dtype())],
        mnk: [n as u64, m as u64, k as u64],
        a: (op_a.rows, op_a.cols, op_a.ld, op_a.trans),
        b: (op_b.rows, op_b.cols, op_b.ld, op_b.trans),
        ldd: out.ld,
        align: [align(op_a.ptr), align(op_b.ptr), align(c_ptr), align(out.ptr)],
    };
    let beta: f32 = if c.is_some() { 1.0 } else { 0.0 };
    let ordinal = dev.cuda_stream().context().ordinal();
    LTS.with_borrow_mut(|lts| {
        if !lts.iter().any(|(o, _)| *o == ordinal) {
            lts.push((ordinal, Lt::new(&dev, name)?));
        }
        let lt = &mut lts.iter_mut().find(|(o, _)| *o == ordinal).expect("just added").1;
        lt.run(&dev, &shape, [op_a.ptr, op_b.ptr, c_ptr, out.ptr], beta, name)
    })
}

/// Where a matrix lies, as the column-major operand cuBLASLt reads: the stored matrix's rows,
/// columns and leading dimension, and whether cuBLASLt transposes it.
struct Operand {
    ptr: u64,
    rows: u64,
    cols: u64,
    ld: i64,
    trans: bool,
}

impl Operand {
    /// `t (R, C)` on a CUDA device, as [`column_major`] reads its strides.
    fn of(t: &Tensor, name: &str) -> Result<Self> {
        let (r, c) = t.dims2()?;
        let (s, l) = t.storage_and_layout();
        let Storage::Cuda(cs) = &*s else { candle_core::bail!("{name}: expected a tensor on a CUDA device") };
        let ptr = storage_base(cs, l.start_offset(), name)?;
        let Some((rows, cols, ld, trans)) = column_major((r, c), (l.stride()[0], l.stride()[1])) else {
            candle_core::bail!(
                "{name}: a {:?} matrix with strides {:?} is neither rows nor columns in memory",
                t.dims(),
                l.stride()
            )
        };
        Ok(Self { ptr, rows, cols, ld, trans })
    }
}

/// The alignment cuBLASLt may assume of an address, in bytes (at most 256).
fn align(ptr: u64) -> u32 {
    1 << ptr.trailing_zeros().min(8)
}

fn cuda_type(dtype: DType) -> sys::cudaDataType {
    match dtype {
        DType::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
        _ => sys::cudaDataType_t::CUDA_R_32F,
    }
}

/// What the heuristic's choice depends on: operand and output types, cuBLASLt's `(m, n, k)`, each
/// operand's stored shape, leading dimension and transposition, the output's leading dimension,
/// and the addresses' alignments.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Shape {
    types: [sys::cudaDataType; 2],
    mnk: [u64; 3],
    a: (u64, u64, i64, bool),
    b: (u64, u64, i64, bool),
    ldd: i64,
    align: [u32; 4],
}

/// A cuBLASLt handle with its workspace, and the algorithms chosen so far.
struct Lt {
    handle: sys::cublasLtHandle_t,
    workspace: Tensor,
    algos: HashMap<Shape, sys::cublasLtMatmulAlgo_t>,
}

thread_local! {
    /// This thread's handles, one per device ordinal. Per thread because candle's device runs each
    /// thread's work on that thread's own stream, and a workspace must not serve two streams at once.
    static LTS: RefCell<Vec<(usize, Lt)>> = const { RefCell::new(Vec::new()) };
}

/// A cuBLASLt failure as candle's error, naming the call.
fn lt_err(name: &str, what: &str) -> impl FnOnce(result::CublasError) -> candle_core::Error {
    let msg = format!("{name}: cuBLASLt {what}");
    move |e| candle_core::Error::Msg(format!("{msg}: {e:?}"))
}

impl Lt {
    fn new(dev: &CudaDevice, name: &str) -> Result<Self> {
        let handle = result::create_handle().map_err(lt_err(name, "handle"))?;
        let workspace = output(dev, WORKSPACE / 4, DType::F32)?;
        Ok(Self { handle, workspace, algos: HashMap::new() })
    }

    /// `D = A·B + beta·C` for the described shape; `ptrs` are A, B, C, D.
    fn run(&mut self, dev: &CudaDevice, s: &Shape, ptrs: [u64; 4], beta: f32, name: &str) -> Result<()> {
        let desc = Desc::new(s, name)?;
        let algo = match self.algos.get(s) {
            Some(a) => *a,
            None => {
                let a = self.heuristic(&desc, s, name)?;
                self.algos.insert(s.clone(), a);
                a
            }
        };
        let alpha = 1.0f32;
        let w = super::ptr(&self.workspace, name)?;
        let stream = dev.cuda_stream();
        // SAFETY: the descriptors describe the operands the pointers address (checked shapes and
        // strides above), the workspace is this handle's, and the stream is the device's one.
        unsafe {
            result::matmul(
                self.handle,
                desc.matmul,
                (&alpha as *const f32).cast::<c_void>(),
                (&beta as *const f32).cast::<c_void>(),
                ptrs[0] as *const c_void,
                desc.a,
                ptrs[1] as *const c_void,
                desc.b,
                ptrs[2] as *const c_void,
                desc.d,
                ptrs[3] as *mut c_void,
                desc.d,
                &algo,
                w as *mut c_void,
                WORKSPACE,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(lt_err(name, "matmul"))
    }

    /// The heuristic's first choice for `s` within the workspace and the operands' alignments.
    fn heuristic(&self, desc: &Desc, s: &Shape, name: &str) -> Result<sys::cublasLtMatmulAlgo_t> {
        let pref = result::create_matmul_pref().map_err(lt_err(name, "preference"))?;
        let _drop = Dropper(move || unsafe { result::destroy_matmul_pref(pref).map(|_| ()) });
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        let workspace = WORKSPACE as u64;
        // SAFETY: each attribute gets a value of the type cuBLASLt documents for it.
        unsafe {
            let set = |attr, value: *const c_void, size| result::set_matmul_pref_attribute(pref, attr, value, size);
            set(P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, (&workspace as *const u64).cast(), size_of::<u64>())
                .map_err(lt_err(name, "workspace preference"))?;
            let attrs = [
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
            ];
            for (attr, value) in attrs.into_iter().zip(&s.align) {
                set(attr, (value as *const u32).cast(), size_of::<u32>())
                    .map_err(lt_err(name, "alignment preference"))?;
            }
            result::get_matmul_algo_heuristic(self.handle, desc.matmul, desc.a, desc.b, desc.d, desc.d, pref)
                .map(|h| h.algo)
                .map_err(lt_err(name, "heuristic (no algorithm for these layouts)"))
        }
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        // SAFETY: the handle was made by `Lt::new` and is destroyed once, here.
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

/// The operation and layout descriptors of one product, destroyed on drop.
struct Desc {
    matmul: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
}

impl Desc {
    fn new(s: &Shape, name: &str) -> Result<Self> {
        let [op_type, d_type] = s.types;
        let [m, n, _] = s.mnk;
        let compute = sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let matmul = result::create_matmul_desc(compute, sys::cudaDataType_t::CUDA_R_32F)
            .map_err(lt_err(name, "operation descriptor"))?;
        let mut desc = Self { matmul, a: std::ptr::null_mut(), b: std::ptr::null_mut(), d: std::ptr::null_mut() };
        use sys::cublasLtMatmulDescAttributes_t as D;
        for (attr, trans) in [(D::CUBLASLT_MATMUL_DESC_TRANSA, s.a.3), (D::CUBLASLT_MATMUL_DESC_TRANSB, s.b.3)] {
            let op = i32::from(trans); // CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
                                       // SAFETY: the transposition attributes take a 32-bit cublasOperation_t.
            unsafe { result::set_matmul_desc_attribute(matmul, attr, (&op as *const i32).cast(), size_of::<i32>()) }
                .map_err(lt_err(name, "transposition"))?;
        }
        let layout = |t, (rows, cols, ld, _): (u64, u64, i64, bool)| {
            result::create_matrix_layout(t, rows, cols, ld).map_err(lt_err(name, "layout"))
        };
        desc.a = layout(op_type, s.a)?;
        desc.b = layout(op_type, s.b)?;
        desc.d = layout(d_type, (m, n, s.ldd, false))?;
        Ok(desc)
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: each handle was created by `Desc::new` (null where creation did not get that far).
        unsafe {
            for l in [self.a, self.b, self.d] {
                if !l.is_null() {
                    let _ = result::destroy_matrix_layout(l);
                }
            }
            let _ = result::destroy_matmul_desc(self.matmul);
        }
    }
}

/// Runs a cleanup when dropped.
struct Dropper<F: FnMut() -> std::result::Result<(), result::CublasError>>(F);

impl<F: FnMut() -> std::result::Result<(), result::CublasError>> Drop for Dropper<F> {
    fn drop(&mut self) {
        let _ = (self.0)();
    }
}
