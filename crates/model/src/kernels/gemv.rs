//! Matrix products for decoding: `out[b] = W · x[b]` for a few inputs `x[b]` at once, `W`
//! row-major `(rows, cols)`.
//!
//! Decoding reads every weight once per step and uses it for one multiply-add per input, so it is
//! bound by memory bandwidth: a batch of inputs is served by one pass over the weights, each group
//! of four weight rows staying in L1 while every input is multiplied by it. Several products that
//! read the same inputs (q, k, v; gate, up) are cut into row blocks of similar size and run as one
//! parallel call, so the threads stream weights continuously instead of meeting at a barrier after
//! each matrix.
//!
//! Every output element is summed in the same order whatever the number of inputs, so a row's
//! result does not depend on what else is in the batch: batched serving gives the tokens of
//! one-at-a-time decoding exactly.

use super::SharedOut;
use rayon::prelude::*;

/// Bytes of weights per rayon task: enough to hide the scheduling, small enough to balance.
const TASK_BYTES: usize = 96 * 1024;

/// Writes `out[b · stride + r] = w[r, :] · xs[b, :]` for the `rows` rows of `w` and every input.
///
/// # Safety
/// `out` must be valid for writes at every `b · stride + r` with `b < xs.len() / cols`, `r < rows`.
unsafe fn rows(w: &[f32], xs: &[f32], cols: usize, rows: usize, out: *mut f32, stride: usize) {
    assert!(w.len() >= rows * cols && xs.len().is_multiple_of(cols.max(1)), "gemv: operand sizes");
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx2() {
        // SAFETY: the CPU features were detected just above; the bounds were checked by the assert
        // and the caller.
        return unsafe { avx2::rows(w, xs, cols, rows, out, stride) };
    }
    for (b, x) in xs.chunks_exact(cols.max(1)).enumerate() {
        for r in 0..rows {
            // SAFETY: in bounds by the caller's contract.
            unsafe { *out.add(b * stride + r) = super::simd::dot(&w[r * cols..(r + 1) * cols], x) };
        }
    }
}

/// Explicit AVX2 + FMA: LLVM's own vectorisation of a several-row loop interleaves the rows
/// through shuffles and runs at a fraction of memory speed (measured).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// Rows `r..r + R` of `w` times inputs `b..b + C`: `R × C` accumulators of eight lanes, each
    /// weight load shared by `C` inputs and each input load by `R` rows. Every output is summed in
    /// the same order (eight lanes over the columns, then across the lanes, then the scalar tail)
    /// whatever the tile, so the result of a row never depends on its neighbours in the batch.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize, const C: usize>(
        w: *const f32,
        xs: *const f32,
        cols: usize,
        r: usize,
        b: usize,
        out: *mut f32,
        stride: usize,
    ) {
        let n8 = cols / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut j = 0;
        while j < n8 {
            let mut x = [_mm256_setzero_ps(); C];
            for (c, x) in x.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(xs.add((b + c) * cols + j));
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let wv = _mm256_loadu_ps(w.add((r + i) * cols + j));
                for (a, &x) in acc.iter_mut().zip(&x) {
                    *a = _mm256_fmadd_ps(wv, x, *a);
                }
            }
            j += 8;
        }
        for (i, acc) in acc.iter().enumerate() {
            let row = w.add((r + i) * cols);
            for (c, &a) in acc.iter().enumerate() {
                let x = xs.add((b + c) * cols);
                let tail = (n8..cols).map(|k| *row.add(k) * *x.add(k)).sum::<f32>();
                *out.add((b + c) * stride + r + i) = hsum(a) + tail;
            }
        }
    }

    /// Every input against rows `r..r + R`, three inputs at a time.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_of<const R: usize>(
        w: *const f32,
        xs: *const f32,
        cols: usize,
        inputs: usize,
        r: usize,
        out: *mut f32,
        stride: usize,
    ) {
        let mut b = 0;
        while b + 3 <= inputs {
            tile::<R, 3>(w, xs, cols, r, b, out, stride);
            b += 3;
        }
        match inputs - b {
            2 => tile::<R, 2>(w, xs, cols, r, b, out, stride),
            1 => tile::<R, 1>(w, xs, cols, r, b, out, stride),
            _ => {}
        }
    }

    /// Four weight rows at a time against every input (eight for a single input): the rows stay
    /// in L1 while the inputs stream past them.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows(w: &[f32], xs: &[f32], cols: usize, n_rows: usize, out: *mut f32, stride: usize) {
        let inputs = xs.len().checked_div(cols).unwrap_or(0);
        let (wp, xp) = (w.as_ptr(), xs.as_ptr());
        let mut r = 0;
        // Alone, an input needs more rows in flight to hide the multiply-add latency.
        if inputs == 1 {
            while r + 8 <= n_rows {
                rows_of::<8>(wp, xp, cols, inputs, r, out, stride);
                r += 8;
            }
        }
        while r + 4 <= n_rows {
            rows_of::<4>(wp, xp, cols, inputs, r, out, stride);
            r += 4;
        }
        while r < n_rows {
            rows_of::<1>(wp, xp, cols, inputs, r, out, stride);
            r += 1;
        }
    }
}

/// `out_i[b, :] = W_i · xs[b, :]` for every pair `(W_i, out_i)` and every input row of `xs`
/// (row-major, `cols` wide), all rows of all matrices shared over the threads in one parallel
/// call. Each `W_i` holds `rows_i × cols` values and each `out_i` is `inputs × rows_i`.
pub fn gemv_many(pairs: Vec<(&[f32], &mut [f32])>, xs: &[f32], cols: usize) {
    let cols = cols.max(1);
    let inputs = xs.len() / cols;
    assert_eq!(inputs * cols, xs.len(), "gemv: inputs of {cols} values expected");
    // Multiples of four rows per task, so each row is summed the same way however it is split.
    let per_task = (TASK_BYTES / (4 * cols)).max(4) / 4 * 4;
    let mut tasks: Vec<(&[f32], usize, SharedOut, usize)> = Vec::new();
    for (w, out) in pairs {
        let n_rows = out.len() / inputs.max(1);
        assert!(out.len() == n_rows * inputs && w.len() == n_rows * cols, "gemv: operand sizes");
        let base = SharedOut::new(out.as_mut_ptr());
        for start in (0..n_rows).step_by(per_task) {
            let take = per_task.min(n_rows - start);
            // SAFETY: `start < n_rows`, inside `out`.
            let at = SharedOut::new(unsafe { base.ptr().add(start) });
            tasks.push((&w[start * cols..(start + take) * cols], take, at, n_rows));
        }
    }
    // SAFETY: each task writes rows `start..start + take` of every input's output, disjoint from
    // the other tasks' and inside `out` (checked above); the buffers outlive the parallel call.
    tasks.into_par_iter().for_each(|(w, take, at, stride)| unsafe { rows(w, xs, cols, take, at.ptr(), stride) });
}

/// `out[b, :] = W · xs[b, :]` over the threads.
pub fn gemv(w: &[f32], xs: &[f32], cols: usize, out: &mut [f32]) {
    gemv_many(vec![(w, out)], xs, cols);
}
