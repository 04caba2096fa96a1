//! Single-precision matrix product for x86-64 (the module exists on x86-64 only), in the
//! GotoBLAS structure: the operands are copied into panels laid out in the order the micro-kernel
//! reads them, blocked so that a block of `b` stays in L2 while a panel of `a` in L1 runs across
//! it, and the micro-kernel keeps its tile of `c` in registers and writes it straight into `c`
//! (scaled, added when accumulating). Two micro-kernels, chosen at run time: 12 × 32 with AVX-512
//! ([`avx512`]), 6 × 16 with AVX2 + FMA ([`avx2`]); the driver, the packing, the epilogue's
//! assembly text and the edge-tile stores are shared, generic over the tile shape.
//!
//! Why not the `gemm` crate that candle uses: its f32 kernel reads `b` through run-time strides
//! (an address computation per broadcast) and runs the k loop one step at a time; on this class of
//! CPU that leaves it near 60–75% of the FMA peak. The micro-kernels here run four k steps per
//! loop trip from packed panels, written in assembly so the register allocation is the one
//! intended, and reach ~95% of the peak with their operands in L1 (docs/PERF.md).
//!
//! `c` is row-major with any row stride; `a` and `b` are read through any pair of steps, so
//! transposed views cost only the packing. `c = scale · a · b`, or `c += scale · a · b`; `c` is
//! never read when not accumulating, so it may hold anything.
//!
//! The packing routines, the micro-kernel and the edge-tile store stay out of line (one call per
//! panel or tile, so the cost is nil) so that a profile shows how the time splits between them.
//!
//! `TSUKURU_CPU=avx2` keeps the AVX2 kernel on a CPU with AVX-512 ([`simd::avx512`]).

/// One row of a micro-kernel's tile written out by its epilogue, as assembly text: the row's two
/// halves `lo` and `hi` (`$w`-sized vectors, `$half` bytes apart in `c`) times the scale held in
/// `$s`, added to what `{c}` points at (`add`) or not (`set`); then `{c}` moves on by `{ldc}`
/// bytes. Shared by both kernels, which differ only in vector width.
macro_rules! tile_row {
    (add, $w:literal, $half:literal, $s:literal, $lo:literal, $hi:literal) => {
        concat!(
            "vfmadd213ps ",
            $lo,
            ", ",
            $s,
            ", ",
            $w,
            " ptr [{c}]\n",
            "vmovups ",
            $w,
            " ptr [{c}], ",
            $lo,
            "\n",
            "vfmadd213ps ",
            $hi,
            ", ",
            $s,
            ", ",
            $w,
            " ptr [{c} + ",
            $half,
            "]\n",
            "vmovups ",
            $w,
            " ptr [{c} + ",
            $half,
            "], ",
            $hi,
            "\n",
            "add {c}, {ldc}\n",
        )
    };
    (set, $w:literal, $half:literal, $s:literal, $lo:literal, $hi:literal) => {
        concat!(
            "vmulps ",
            $lo,
            ", ",
            $lo,
            ", ",
            $s,
            "\n",
            "vmovups ",
            $w,
            " ptr [{c}], ",
            $lo,
            "\n",
            "vmulps ",
            $hi,
            ", ",
            $hi,
            ", ",
            $s,
            "\n",
            "vmovups ",
            $w,
            " ptr [{c} + ",
            $half,
            "], ",
            $hi,
            "\n",
            "add {c}, {ldc}\n",
        )
    };
}

mod avx2;
mod avx512;

use super::{simd, SharedOut};
use std::cell::RefCell;

/// Columns of `b` per packed block: a KC × NC block (1.5 MiB at KC 512) stays in L2 while each
/// panel of `a` runs across it. Measured against 384–4,096 with the panel loops this way round:
/// within the noise, except 4,096 (the block spills out of L2), slower.
const NC: usize = 768;
/// Products smaller than this many multiply-adds run on the calling thread.
const PARALLEL_MIN: usize = 1 << 18;

/// A read-only matrix operand as a raw pointer and the steps between rows and columns.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

// SAFETY: `Mat` only ever reads, and the caller keeps the slice it points into alive and unchanged
// for the whole product.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    /// The view starting `rows` rows and `cols` columns further in.
    fn offset(self, rows: usize, cols: usize) -> Self {
        // SAFETY: callers only offset to elements inside the operand (checked by `matmul`).
        Self { ptr: unsafe { self.ptr.add(rows * self.rs + cols * self.cs) }, ..self }
    }
}

/// One micro-kernel: the tile of `c` it keeps in registers, the blocking that suits it, and its
/// code.
trait MicroKernel {
    /// Rows of `c` per tile (elements of `a` broadcast per k step).
    const MR: usize;
    /// Columns of `c` per tile (lanes of `b` per k step; a multiple of 8).
    const NR: usize;
    /// Depth of one block: an MR × KC panel of `a` stays in L1 while the NR-wide panels of the
    /// block of `b` stream past it from L2; every block after the first reads and rewrites all of
    /// `c`.
    const KC: usize;
    /// Rows of `a` packed at a time (a multiple of MR).
    const MC: usize;
    /// True when this CPU has the instructions the kernel uses.
    fn available() -> bool;
    /// `out = out.scale · a_panel · b_panel (+ out when out.add)` over `kc` steps: `a` holds MR
    /// values per step, `b` NR values.
    ///
    /// # Safety
    /// [`Self::available`] holds; `a` holds `kc · MR` floats and `b` `kc · NR`; `out` covers an
    /// MR × NR tile, initialised if adding.
    unsafe fn run(kc: usize, a: *const f32, b: *const f32, out: Out);
}

/// Where a micro-kernel writes its tile: row-major from `ptr`, `ld` floats between rows, the
/// product times `scale`, added to what is there when `add`.
struct Out {
    ptr: *mut f32,
    ld: usize,
    scale: f32,
    add: bool,
}

/// A tile of `c` that lies partly outside `c`: the kernel writes it here whole and [`store`]
/// copies the part inside; sized for the largest tile (12 × 32).
#[repr(C, align(64))]
struct Tile([f32; 384]);

/// True when this CPU runs one of the kernels (x86-64 with AVX2 and FMA at least).
pub(crate) fn available() -> bool {
    simd::avx2()
}

/// `c (m × n, row stride ldc) = scale · a · b (+ c when accumulating)` over `threads` rayon
/// threads. `a` is `(slice, row step, column step)` of an `m × k` matrix, `b` of a `k × n` one.
///
/// # Safety
/// The CPU passes [`available`]; every index the steps reach is inside `a` and `b`; `c` points to
/// `(m − 1) · ldc + n` writable floats, initialised if accumulating (otherwise never read).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    scale: f32,
    threads: usize,
) {
    let (a, b) = (Mat { ptr: a.0.as_ptr(), rs: a.1, cs: a.2 }, Mat { ptr: b.0.as_ptr(), rs: b.1, cs: b.2 });
    let c = SharedOut::new(c);
    if simd::avx512() {
        parallel::<avx512::Avx512>(m, n, k, c, ldc, accumulate, a, b, scale, threads)
    } else {
        parallel::<avx2::Avx2>(m, n, k, c, ldc, accumulate, a, b, scale, threads)
    }
}

/// [`matmul`] with micro-kernel `K`.
///
/// # Safety
/// As for [`matmul`], with `K::available()`.
#[allow(clippy::too_many_arguments)]
unsafe fn parallel<K: MicroKernel>(
    m: usize,
    n: usize,
    k: usize,
    c: SharedOut,
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    scale: f32,
    threads: usize,
) {
    debug_assert!(K::available());
    let threads = if m * n * k < PARALLEL_MIN { 1 } else { threads.max(1) };
    if threads == 1 {
        with_buffers(|bufs| unsafe { serial::<K>(m, n, k, c, ldc, accumulate, a, b, scale, bufs) });
        return;
    }
    // Split the longer side of `c` into one slab per thread, in whole micro-tiles; each thread
    // packs the shared operand itself (the shorter side's, so the cheaper one to repeat; on a tie
    // `b`'s, usually the contiguous one).
    let (len, tile) = if n > m { (n, K::NR) } else { (m, K::MR) };
    let slab = len.div_ceil(threads).div_ceil(tile) * tile;
    let parts = len.div_ceil(slab);
    use rayon::prelude::*;
    (0..parts).into_par_iter().for_each(|p| {
        let (start, width) = (p * slab, slab.min(len - p * slab));
        with_buffers(|bufs| unsafe {
            if n > m {
                let cp = SharedOut::new(c.ptr().add(start));
                serial::<K>(m, width, k, cp, ldc, accumulate, a, b.offset(0, start), scale, bufs)
            } else {
                let cp = SharedOut::new(c.ptr().add(start * ldc));
                serial::<K>(width, n, k, cp, ldc, accumulate, a.offset(start, 0), b, scale, bufs)
            }
        })
    });
}

/// Packing buffers, one pair per thread, kept between products.
#[derive(Default)]
struct Buffers {
    a: Vec<f32>,
    b: Vec<f32>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

fn with_buffers(f: impl FnOnce(&mut Buffers)) {
    BUFFERS.with(|b| f(&mut b.borrow_mut()))
}

/// A 64-byte-aligned region of `len` floats inside `v` (grown as needed), so that the kernel's
/// vector loads never straddle a cache line.
fn aligned(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len + 16 {
        v.resize(len + 16, 0.0);
    }
    let skip = v.as_ptr().align_offset(64);
    &mut v[skip..skip + len]
}

/// The whole product on this thread.
///
/// # Safety
/// `K::available()`; `a`, `b` and `c` cover every element the sizes and steps reach.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn serial<K: MicroKernel>(
    m: usize,
    n: usize,
    k: usize,
    c: SharedOut,
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    scale: f32,
    bufs: &mut Buffers,
) {
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::ptr::write_bytes(c.ptr().add(i * ldc), 0, n);
            }
        }
        return;
    }
    let (mr, nr) = (K::MR, K::NR);
    // Every kernel call into it overwrites the tile's first MR × NR values, all that the store reads.
    let mut edge = Tile([0.0; 384]);
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(K::KC) {
            let kc = K::KC.min(k - pc);
            let bp = aligned(&mut bufs.b, kc * nc.div_ceil(nr) * nr);
            pack_b::<K>(bp, b.offset(pc, jc), kc, nc);
            let add = accumulate || pc > 0;
            for ic in (0..m).step_by(K::MC) {
                let mc = K::MC.min(m - ic);
                let ap = aligned(&mut bufs.a, kc * mc.div_ceil(mr) * mr);
                pack_a::<K>(ap, a.offset(ic, pc), mc, kc);
                for ir in (0..mc).step_by(mr) {
                    let apanel = ap.as_ptr().add(ir * kc);
                    for jr in (0..nc).step_by(nr) {
                        let bpanel = bp.as_ptr().add(jr * kc);
                        let tile = c.ptr().add((ic + ir) * ldc + jc + jr);
                        let (rows, cols) = (mr.min(mc - ir), nr.min(nc - jr));
                        if rows == mr && cols == nr {
                            K::run(kc, apanel, bpanel, Out { ptr: tile, ld: ldc, scale, add });
                        } else {
                            let out = Out { ptr: edge.0.as_mut_ptr(), ld: nr, scale: 1.0, add: false };
                            K::run(kc, apanel, bpanel, out);
                            store::<K>(tile, ldc, rows, cols, &edge, scale, add);
                        }
                    }
                }
            }
        }
    }
}

/// Copies `mc × kc` of `a` into panels of `mr = K::MR` rows, each laid out k-major (`mr` values
/// per k step), the last panel padded with zeros.
#[inline(never)]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_a<K: MicroKernel>(dst: &mut [f32], a: Mat, mc: usize, kc: usize) {
    let mr = K::MR;
    // Whole panels already copied by the sweep.
    let mut swept = 0;
    if a.rs == 1 {
        // Columns are contiguous (a transposed view): each k step's values lie side by side.
        swept = mc / mr;
        sweep(dst.as_mut_ptr(), a.ptr, a.cs, swept, kc, mr);
    }
    for (p, panel) in dst.chunks_exact_mut(mr * kc).enumerate().skip(swept) {
        let rows = mr.min(mc - p * mr);
        let src = a.offset(p * mr, 0);
        let out = panel.as_mut_ptr();
        // k steps already copied by a fast path; the rest go element by element.
        let mut done = 0;
        if rows == mr && a.cs == 1 {
            // Rows are contiguous: transpose 8 k steps of up to 8 rows at a time.
            use std::arch::x86_64::*;
            while done + 8 <= kc {
                for g in (0..mr).step_by(8) {
                    let n = 8.min(mr - g);
                    let row = |r: usize| {
                        if r < n {
                            _mm256_loadu_ps(src.ptr.add((g + r) * a.rs + done))
                        } else {
                            _mm256_setzero_ps()
                        }
                    };
                    let cols = transpose8([row(0), row(1), row(2), row(3), row(4), row(5), row(6), row(7)]);
                    for (i, v) in cols.into_iter().enumerate() {
                        store_lanes(out.add((done + i) * mr + g), v, n);
                    }
                }
                done += 8;
            }
        }
        for q in done..kc {
            for r in 0..mr {
                *out.add(q * mr + r) = if r < rows { *src.ptr.add(r * a.rs + q * a.cs) } else { 0.0 };
            }
        }
    }
}

/// Stores the first `n` lanes of `v` (8, 6 or 4 take vector moves).
#[inline(always)]
unsafe fn store_lanes(to: *mut f32, v: std::arch::x86_64::__m256, n: usize) {
    use std::arch::x86_64::*;
    match n {
        8 => _mm256_storeu_ps(to, v),
        6 => {
            _mm_storeu_ps(to, _mm256_castps256_ps128(v));
            _mm_store_sd(to.add(4).cast(), _mm_castps_pd(_mm256_extractf128_ps(v, 1)));
        }
        4 => _mm_storeu_ps(to, _mm256_castps256_ps128(v)),
        _ => {
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), to, n);
        }
    }
}

/// Copies `kc × nc` of `b` into panels of `nr = K::NR` columns (a multiple of 8), each laid out k-major
/// (`nr` values per k step), the last panel padded with zeros.
#[inline(never)]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_b<K: MicroKernel>(dst: &mut [f32], b: Mat, kc: usize, nc: usize) {
    let nr = K::NR;
    use std::arch::x86_64::*;
    // Whole panels already copied by the sweep.
    let mut swept = 0;
    if b.cs == 1 {
        // Rows are contiguous.
        swept = nc / nr;
        sweep(dst.as_mut_ptr(), b.ptr, b.rs, swept, kc, nr);
    }
    for (p, panel) in dst.chunks_exact_mut(nr * kc).enumerate().skip(swept) {
        let cols = nr.min(nc - p * nr);
        let src = b.offset(0, p * nr);
        let out = panel.as_mut_ptr();
        let mut done = 0;
        if b.cs == 1 {
            for q in 0..kc {
                std::ptr::copy_nonoverlapping(src.ptr.add(q * b.rs), out.add(q * nr), cols);
                std::ptr::write_bytes(out.add(q * nr + cols), 0, nr - cols);
            }
            done = kc;
        }
        if cols == nr && b.rs == 1 {
            // Columns are contiguous (a transposed view): transpose 8 × 8 blocks.
            while done + 8 <= kc {
                for j0 in (0..nr).step_by(8) {
                    let col = |j: usize| _mm256_loadu_ps(src.ptr.add((j0 + j) * b.cs + done));
                    let rows = transpose8([col(0), col(1), col(2), col(3), col(4), col(5), col(6), col(7)]);
                    for (i, v) in rows.into_iter().enumerate() {
                        _mm256_storeu_ps(out.add((done + i) * nr + j0), v);
                    }
                }
                done += 8;
            }
        }
        for q in done..kc {
            for j in 0..nr {
                *out.add(q * nr + j) = if j < cols { *src.ptr.add(q * b.rs + j * b.cs) } else { 0.0 };
            }
        }
    }
}

/// Copies `panels` whole panels `w` values wide whose k steps are contiguous in the source (step
/// `step` floats between k steps) into `dst`, k step by k step: each step is one sequential read
/// of `panels · w` values, which the hardware prefetchers follow, where copying panel by panel
/// would read `w` values from each of `kc` rows far apart (a new page every few rows) per panel.
#[inline(always)]
unsafe fn sweep(dst: *mut f32, src: *const f32, step: usize, panels: usize, kc: usize, w: usize) {
    for q in 0..kc {
        let (from, to) = (src.add(q * step), dst.add(q * w));
        for p in 0..panels {
            // `w` is the kernel's constant tile side once inlined, so this is a few vector moves.
            std::ptr::copy_nonoverlapping(from.add(p * w), to.add(p * w * kc), w);
        }
    }
}

/// The transpose of an 8 × 8 block held as eight row vectors.
#[inline(always)]
unsafe fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    // Interleave pairs of rows, then pairs of pairs, then swap 128-bit halves.
    let t = [
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
        _mm256_unpacklo_ps(r[4], r[5]),
        _mm256_unpackhi_ps(r[4], r[5]),
        _mm256_unpacklo_ps(r[6], r[7]),
        _mm256_unpackhi_ps(r[6], r[7]),
    ];
    let u = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    [
        _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
        _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
        _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
        _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
        _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
        _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
        _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
        _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
    ]
}

/// Writes the `rows × cols` corner of an edge tile (`nr` floats per row) to `c`: `scale · acc`,
/// added to `c` when `add`.
#[inline(never)]
#[target_feature(enable = "avx2,fma")]
unsafe fn store<K: MicroKernel>(c: *mut f32, ldc: usize, rows: usize, cols: usize, acc: &Tile, scale: f32, add: bool) {
    let nr = K::NR;
    if cols == nr {
        use std::arch::x86_64::*;
        let s = _mm256_set1_ps(scale);
        for r in 0..rows {
            let (row, t) = (c.add(r * ldc), acc.0.as_ptr().add(r * nr));
            for half in (0..nr).step_by(8) {
                let v = _mm256_loadu_ps(t.add(half));
                let out = if add { _mm256_fmadd_ps(v, s, _mm256_loadu_ps(row.add(half))) } else { _mm256_mul_ps(v, s) };
                _mm256_storeu_ps(row.add(half), out);
            }
        }
        return;
    }
    for r in 0..rows {
        let row = c.add(r * ldc);
        for j in 0..cols {
            let v = scale * acc.0[r * nr + j];
            *row.add(j) = if add { *row.add(j) + v } else { v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic pseudo-random matrix.
    fn data(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Every shape class for micro-kernel `K` (edges in m, n and k, exact tiles, several blocks
    /// in each), both layouts of each operand, overwrite and accumulate, one to three threads:
    /// equal to the plain triple loop in f64 to rounding.
    fn matches_the_triple_loop<K: MicroKernel>() {
        if !K::available() {
            return;
        }
        let shapes = [
            (1, 1, 1),
            (5, 15, 3),
            (6, 16, 4),
            (7, 17, 5),
            (12, 32, 8),
            (13, 33, 259),
            (25, 65, 9),
            (150, 40, 300),
            (40, 4100, 9),
            (300, 70, 520),
        ];
        for (m, n, k) in shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for accumulate in [false, true] {
                    for threads in [1, 2, 3] {
                        let (av, bv) = (data(m * k, 1), data(k * n, 2));
                        let a = if ta { (&av[..], 1, m) } else { (&av[..], k, 1) };
                        let b = if tb { (&bv[..], 1, k) } else { (&bv[..], n, 1) };
                        let ldc = n + 3;
                        let init = data(m * ldc, 3);
                        let mut c = init.clone();
                        let (am, bm) =
                            (Mat { ptr: a.0.as_ptr(), rs: a.1, cs: a.2 }, Mat { ptr: b.0.as_ptr(), rs: b.1, cs: b.2 });
                        let cp = SharedOut::new(c.as_mut_ptr());
                        unsafe { parallel::<K>(m, n, k, cp, ldc, accumulate, am, bm, 0.5, threads) };
                        for i in 0..m {
                            for j in 0..n {
                                let dot: f64 =
                                    (0..k).map(|p| a.0[i * a.1 + p * a.2] as f64 * b.0[p * b.1 + j * b.2] as f64).sum();
                                let want = 0.5 * dot + if accumulate { init[i * ldc + j] as f64 } else { 0.0 };
                                let got = c[i * ldc + j] as f64;
                                assert!(
                                    (got - want).abs() <= 1e-5 * (1.0 + k as f64).sqrt() * (1.0 + want.abs()),
                                    "{m}×{n}×{k} ta {ta} tb {tb} acc {accumulate} threads {threads} at ({i}, {j}): {got} vs {want}"
                                );
                            }
                            // The padding between rows is never written.
                            for j in n..ldc {
                                assert_eq!(c[i * ldc + j], init[i * ldc + j]);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn avx2_matches_the_triple_loop() {
        matches_the_triple_loop::<avx2::Avx2>();
    }

    #[test]
    fn avx512_matches_the_triple_loop() {
        matches_the_triple_loop::<avx512::Avx512>();
    }
}
