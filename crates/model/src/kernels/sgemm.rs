//! Single-precision matrix product for x86-64 with AVX2 + FMA (the module exists on x86-64 only),
//! in the GotoBLAS structure: the operands are copied into panels laid out in the order the
//! micro-kernel reads them, blocked so that a panel of `b` stays in L1 and a block of `a` in L2,
//! and a 6 × 16 micro-kernel keeps its tile of `c` in twelve registers.
//!
//! Why not the `gemm` crate that candle uses: its f32 kernel reads `b` through run-time strides
//! (an address computation per broadcast) and runs the k loop one step at a time; on this class of
//! CPU that leaves it near 60–75% of the FMA peak. The micro-kernel here runs four k steps per
//! loop trip from packed panels, written in assembly so the register allocation is the one
//! intended, and reaches ~95% of the peak with its operands in L1 (docs/PERF.md).
//!
//! `c` is row-major with any row stride; `a` and `b` are read through any pair of steps, so
//! transposed views cost only the packing. `c = scale · a · b`, or `c += scale · a · b`; `c` is
//! never read when not accumulating, so it may hold anything.
//!
//! The packing routines, the micro-kernel and the tile store stay out of line (one call per panel
//! or tile, so the cost is nil) so that a profile shows how the time splits between them.

use super::SharedOut;
use std::cell::RefCell;

/// Rows of `c` per micro-tile (elements of `a` broadcast per k step).
const MR: usize = 6;
/// Columns of `c` per micro-tile (two 8-lane vectors of `b` per k step).
const NR: usize = 16;
/// Depth of one block: a 6 × KC panel of `a` and a KC × 16 panel of `b` (33 KiB) sit in L1; as
/// deep as the model's width so that most products write `c` in one pass.
const KC: usize = 384;
/// Rows of `a` per packed block (MC × KC floats, 216 KiB, stays in L2).
const MC: usize = 144;
/// Columns of `b` per packed block.
const NC: usize = 4096;
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

/// True when this CPU runs the kernel (x86-64 with AVX2 and FMA).
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
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
    debug_assert!(available());
    let (a, b) = (Mat { ptr: a.0.as_ptr(), rs: a.1, cs: a.2 }, Mat { ptr: b.0.as_ptr(), rs: b.1, cs: b.2 });
    let c = SharedOut::new(c);
    let threads = if m * n * k < PARALLEL_MIN { 1 } else { threads.max(1) };
    if threads == 1 {
        with_buffers(|bufs| unsafe { serial(m, n, k, c, ldc, accumulate, a, b, scale, bufs) });
        return;
    }
    // Split the longer side of `c` into one slab per thread, in whole micro-tiles; each thread
    // packs the shared operand itself (the shorter side's, so the cheaper one to repeat; on a tie
    // `b`'s, usually the contiguous one).
    let (len, tile) = if n > m { (n, NR) } else { (m, MR) };
    let slab = len.div_ceil(threads).div_ceil(tile) * tile;
    let parts = len.div_ceil(slab);
    use rayon::prelude::*;
    (0..parts).into_par_iter().for_each(|p| {
        let (start, width) = (p * slab, slab.min(len - p * slab));
        with_buffers(|bufs| unsafe {
            if n > m {
                let cp = SharedOut::new(c.ptr().add(start));
                serial(m, width, k, cp, ldc, accumulate, a, b.offset(0, start), scale, bufs)
            } else {
                let cp = SharedOut::new(c.ptr().add(start * ldc));
                serial(width, n, k, cp, ldc, accumulate, a.offset(start, 0), b, scale, bufs)
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
/// The CPU has AVX2 and FMA; `a`, `b` and `c` cover every element the sizes and steps reach.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn serial(
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
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let bp = aligned(&mut bufs.b, kc * nc.div_ceil(NR) * NR);
            pack_b(bp, b.offset(pc, jc), kc, nc);
            let add = accumulate || pc > 0;
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                let ap = aligned(&mut bufs.a, kc * mc.div_ceil(MR) * MR);
                pack_a(ap, a.offset(ic, pc), mc, kc);
                for jr in (0..nc).step_by(NR) {
                    let bpanel = bp.as_ptr().add(jr * kc);
                    for ir in (0..mc).step_by(MR) {
                        let mut acc = Tile([0.0; MR * NR]);
                        kernel(kc, ap.as_ptr().add(ir * kc), bpanel, &mut acc);
                        let tile = c.ptr().add((ic + ir) * ldc + jc + jr);
                        store(tile, ldc, MR.min(mc - ir), NR.min(nc - jr), &acc, scale, add);
                    }
                }
            }
        }
    }
}

/// Copies `mc × kc` of `a` into panels of MR rows, each laid out k-major (MR values per k step),
/// the last panel padded with zeros.
#[inline(never)]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_a(dst: &mut [f32], a: Mat, mc: usize, kc: usize) {
    for (p, panel) in dst.chunks_exact_mut(MR * kc).enumerate() {
        let rows = MR.min(mc - p * MR);
        let src = a.offset(p * MR, 0);
        let out = panel.as_mut_ptr();
        // k steps already copied by a fast path; the rest go element by element.
        let mut done = 0;
        if rows == MR && a.rs == 1 {
            // Columns are contiguous (a transposed view): MR values per k step in one copy.
            for q in 0..kc {
                std::ptr::copy_nonoverlapping(src.ptr.add(q * a.cs), out.add(q * MR), MR);
            }
            done = kc;
        }
        if rows == MR && a.cs == 1 {
            // Rows are contiguous: transpose 8 k steps of the six rows at a time.
            use std::arch::x86_64::*;
            while done + 8 <= kc {
                let row = |r: usize| _mm256_loadu_ps(src.ptr.add(r * a.rs + done));
                let zero = _mm256_setzero_ps();
                let cols = transpose8([row(0), row(1), row(2), row(3), row(4), row(5), zero, zero]);
                for (i, v) in cols.into_iter().enumerate() {
                    // Six of the eight lanes: four, then two.
                    let to = out.add((done + i) * MR);
                    _mm_storeu_ps(to, _mm256_castps256_ps128(v));
                    _mm_store_sd(to.add(4).cast(), _mm_castps_pd(_mm256_extractf128_ps(v, 1)));
                }
                done += 8;
            }
        }
        for q in done..kc {
            for r in 0..MR {
                *out.add(q * MR + r) = if r < rows { *src.ptr.add(r * a.rs + q * a.cs) } else { 0.0 };
            }
        }
    }
}

/// Copies `kc × nc` of `b` into panels of NR columns, each laid out k-major (NR values per k
/// step), the last panel padded with zeros.
#[inline(never)]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_b(dst: &mut [f32], b: Mat, kc: usize, nc: usize) {
    for (p, panel) in dst.chunks_exact_mut(NR * kc).enumerate() {
        let cols = NR.min(nc - p * NR);
        let src = b.offset(0, p * NR);
        let out = panel.as_mut_ptr();
        let mut done = 0;
        if b.cs == 1 && cols == NR {
            // Rows are contiguous: NR values per k step, two vector moves (a copy of a run-time
            // length would be a call into the C library for every 64 bytes).
            use std::arch::x86_64::*;
            for q in 0..kc {
                let (from, to) = (src.ptr.add(q * b.rs), out.add(q * NR));
                _mm256_storeu_ps(to, _mm256_loadu_ps(from));
                _mm256_storeu_ps(to.add(8), _mm256_loadu_ps(from.add(8)));
            }
            done = kc;
        } else if b.cs == 1 {
            for q in 0..kc {
                std::ptr::copy_nonoverlapping(src.ptr.add(q * b.rs), out.add(q * NR), cols);
                std::ptr::write_bytes(out.add(q * NR + cols), 0, NR - cols);
            }
            done = kc;
        }
        if cols == NR && b.rs == 1 {
            // Columns are contiguous (a transposed view): transpose 8 × 8 blocks.
            use std::arch::x86_64::*;
            while done + 8 <= kc {
                for half in [0, 8] {
                    let col = |j: usize| _mm256_loadu_ps(src.ptr.add((half + j) * b.cs + done));
                    let rows = transpose8([col(0), col(1), col(2), col(3), col(4), col(5), col(6), col(7)]);
                    for (i, v) in rows.into_iter().enumerate() {
                        _mm256_storeu_ps(out.add((done + i) * NR + half), v);
                    }
                }
                done += 8;
            }
        }
        for q in done..kc {
            for j in 0..NR {
                *out.add(q * NR + j) = if j < cols { *src.ptr.add(q * b.rs + j * b.cs) } else { 0.0 };
            }
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

/// The micro-kernel's result: MR rows of NR sums, row-major.
#[repr(C, align(64))]
struct Tile([f32; MR * NR]);

/// `acc = a_panel · b_panel` over `kc` steps: `a` holds MR values per step, `b` NR values.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` holds `kc · MR` floats and `b` `kc · NR`.
#[inline(never)]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, acc: &mut Tile) {
    // One k step: two vectors of b (ymm0, ymm1), six broadcasts of a (alternating ymm2, ymm3 so
    // a broadcast can issue while the previous one's FMAs run), twelve FMAs into ymm4–ymm15 —
    // accumulator 4 + 2r holds columns 0–7 of row r, 5 + 2r columns 8–15.
    macro_rules! step {
        ($a:literal, $b:literal) => {
            concat!(
                "vmovups ymm0, ymmword ptr [{b} + ",
                $b,
                "]\n",
                "vmovups ymm1, ymmword ptr [{b} + ",
                $b,
                " + 32]\n",
                "vbroadcastss ymm2, dword ptr [{a} + ",
                $a,
                "]\n",
                "vfmadd231ps ymm4, ymm0, ymm2\n",
                "vfmadd231ps ymm5, ymm1, ymm2\n",
                "vbroadcastss ymm3, dword ptr [{a} + ",
                $a,
                " + 4]\n",
                "vfmadd231ps ymm6, ymm0, ymm3\n",
                "vfmadd231ps ymm7, ymm1, ymm3\n",
                "vbroadcastss ymm2, dword ptr [{a} + ",
                $a,
                " + 8]\n",
                "vfmadd231ps ymm8, ymm0, ymm2\n",
                "vfmadd231ps ymm9, ymm1, ymm2\n",
                "vbroadcastss ymm3, dword ptr [{a} + ",
                $a,
                " + 12]\n",
                "vfmadd231ps ymm10, ymm0, ymm3\n",
                "vfmadd231ps ymm11, ymm1, ymm3\n",
                "vbroadcastss ymm2, dword ptr [{a} + ",
                $a,
                " + 16]\n",
                "vfmadd231ps ymm12, ymm0, ymm2\n",
                "vfmadd231ps ymm13, ymm1, ymm2\n",
                "vbroadcastss ymm3, dword ptr [{a} + ",
                $a,
                " + 20]\n",
                "vfmadd231ps ymm14, ymm0, ymm3\n",
                "vfmadd231ps ymm15, ymm1, ymm3\n",
            )
        };
    }
    std::arch::asm!(
        "vxorps ymm4, ymm4, ymm4",
        "vxorps ymm5, ymm5, ymm5",
        "vxorps ymm6, ymm6, ymm6",
        "vxorps ymm7, ymm7, ymm7",
        "vxorps ymm8, ymm8, ymm8",
        "vxorps ymm9, ymm9, ymm9",
        "vxorps ymm10, ymm10, ymm10",
        "vxorps ymm11, ymm11, ymm11",
        "vxorps ymm12, ymm12, ymm12",
        "vxorps ymm13, ymm13, ymm13",
        "vxorps ymm14, ymm14, ymm14",
        "vxorps ymm15, ymm15, ymm15",
        "test {quads}, {quads}",
        "jz 3f",
        // Four k steps per trip.
        "2:",
        step!("0", "0"),
        step!("24", "64"),
        step!("48", "128"),
        step!("72", "192"),
        "add {a}, 96",
        "add {b}, 256",
        "dec {quads}",
        "jnz 2b",
        "3:",
        "test {rest}, {rest}",
        "jz 5f",
        "4:",
        step!("0", "0"),
        "add {a}, 24",
        "add {b}, 64",
        "dec {rest}",
        "jnz 4b",
        "5:",
        "vmovaps ymmword ptr [{acc}], ymm4",
        "vmovaps ymmword ptr [{acc} + 32], ymm5",
        "vmovaps ymmword ptr [{acc} + 64], ymm6",
        "vmovaps ymmword ptr [{acc} + 96], ymm7",
        "vmovaps ymmword ptr [{acc} + 128], ymm8",
        "vmovaps ymmword ptr [{acc} + 160], ymm9",
        "vmovaps ymmword ptr [{acc} + 192], ymm10",
        "vmovaps ymmword ptr [{acc} + 224], ymm11",
        "vmovaps ymmword ptr [{acc} + 256], ymm12",
        "vmovaps ymmword ptr [{acc} + 288], ymm13",
        "vmovaps ymmword ptr [{acc} + 320], ymm14",
        "vmovaps ymmword ptr [{acc} + 352], ymm15",
        a = inout(reg) a => _,
        b = inout(reg) b => _,
        quads = inout(reg) kc / 4 => _,
        rest = inout(reg) kc % 4 => _,
        acc = in(reg) acc.0.as_mut_ptr(),
        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
        out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
        out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
        out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
        options(nostack),
    );
}

/// Writes the `rows × cols` corner of a tile to `c`: `scale · acc`, added to `c` when `add`.
#[inline(never)]
#[target_feature(enable = "avx2,fma")]
unsafe fn store(c: *mut f32, ldc: usize, rows: usize, cols: usize, acc: &Tile, scale: f32, add: bool) {
    if cols == NR {
        use std::arch::x86_64::*;
        let s = _mm256_set1_ps(scale);
        for r in 0..rows {
            let (row, t) = (c.add(r * ldc), acc.0.as_ptr().add(r * NR));
            for half in [0, 8] {
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
            let v = scale * acc.0[r * NR + j];
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

    /// Every shape class (edges in m, n and k, several blocks in each), both layouts of each
    /// operand, overwrite and accumulate, one and two threads: equal to the plain triple loop in
    /// f64 to rounding.
    #[test]
    fn matches_the_triple_loop() {
        if !available() {
            return;
        }
        let shapes = [
            (1, 1, 1),
            (5, 15, 3),
            (6, 16, 4),
            (7, 17, 5),
            (13, 33, 259),
            (150, 40, 300),
            (40, 4100, 9),
            (300, 70, 520),
        ];
        for (m, n, k) in shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for accumulate in [false, true] {
                    for threads in [1, 2] {
                        let (av, bv) = (data(m * k, 1), data(k * n, 2));
                        let a = if ta { (&av[..], 1, m) } else { (&av[..], k, 1) };
                        let b = if tb { (&bv[..], 1, k) } else { (&bv[..], n, 1) };
                        let ldc = n + 3;
                        let init = data(m * ldc, 3);
                        let mut c = init.clone();
                        unsafe { matmul(m, n, k, c.as_mut_ptr(), ldc, accumulate, a, b, 0.5, threads) };
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
}
