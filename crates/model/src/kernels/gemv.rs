//! Matrix–vector products for decoding one token: `out = W · x` with `W` row-major `(rows, cols)`.
//!
//! At batch 1 every weight is read once per token and used for one multiply-add, so decoding is
//! bound by memory bandwidth. Several products that read the same input (q, k, v; gate, up) are
//! cut into row blocks of similar size and run as one parallel call, so the threads stream
//! weights continuously instead of meeting at a barrier after each matrix.

use rayon::prelude::*;

/// Bytes of weights per rayon task: enough to hide the scheduling, small enough to balance.
const TASK_BYTES: usize = 96 * 1024;

/// `out[r] = w[r, :] · x` for the `out.len()` rows of `w`.
pub fn rows(w: &[f32], x: &[f32], out: &mut [f32]) {
    assert!(w.len() >= out.len() * x.len(), "gemv: {} weights for {} rows of {}", w.len(), out.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU features were detected just above; the bounds were checked by the assert.
        return unsafe { avx2::rows(w, x, out) };
    }
    for (r, o) in out.iter_mut().enumerate() {
        *o = super::simd::dot(&w[r * x.len()..(r + 1) * x.len()], x);
    }
}

/// Explicit AVX2 + FMA: LLVM's own vectorisation of the four-row loop interleaves the rows
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

    /// Four rows at a time, each with two accumulators, sharing every load of `x`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows(w: &[f32], x: &[f32], out: &mut [f32]) {
        let cols = x.len();
        let n16 = cols / 16 * 16;
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let tail = |row: *const f32| (n16..cols).map(|j| *row.add(j) * x[j]).sum::<f32>();
        let mut r = 0;
        while r + 4 <= out.len() {
            let rows = [wp.add(r * cols), wp.add((r + 1) * cols), wp.add((r + 2) * cols), wp.add((r + 3) * cols)];
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut j = 0;
            while j < n16 {
                let (x0, x1) = (_mm256_loadu_ps(xp.add(j)), _mm256_loadu_ps(xp.add(j + 8)));
                for k in 0..4 {
                    acc[2 * k] = _mm256_fmadd_ps(_mm256_loadu_ps(rows[k].add(j)), x0, acc[2 * k]);
                    acc[2 * k + 1] = _mm256_fmadd_ps(_mm256_loadu_ps(rows[k].add(j + 8)), x1, acc[2 * k + 1]);
                }
                j += 16;
            }
            for k in 0..4 {
                out[r + k] = hsum(_mm256_add_ps(acc[2 * k], acc[2 * k + 1])) + tail(rows[k]);
            }
            r += 4;
        }
        while r < out.len() {
            let row = wp.add(r * cols);
            let mut acc = _mm256_setzero_ps();
            let mut j = 0;
            while j < n16 {
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(j)), _mm256_loadu_ps(xp.add(j)), acc);
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(j + 8)), _mm256_loadu_ps(xp.add(j + 8)), acc);
                j += 16;
            }
            out[r] = hsum(acc) + tail(row);
            r += 1;
        }
    }
}

/// `out_i = W_i · x` for every pair `(W_i, out_i)`, all rows of all matrices shared over the
/// threads in one parallel call. Each `W_i` holds `out_i.len() × x.len()` values.
pub fn gemv_many(pairs: Vec<(&[f32], &mut [f32])>, x: &[f32]) {
    let cols = x.len().max(1);
    let per_task = (TASK_BYTES / (4 * cols)).max(4) / 4 * 4;
    let mut tasks: Vec<(&[f32], &mut [f32])> = Vec::new();
    for (w, out) in pairs {
        debug_assert_eq!(w.len(), out.len() * x.len());
        for (i, o) in out.chunks_mut(per_task).enumerate() {
            let start = i * per_task * cols;
            tasks.push((&w[start..start + o.len() * cols], o));
        }
    }
    tasks.into_par_iter().for_each(|(w, o)| rows(w, x, o));
}

/// `out = W · x` over the threads.
pub fn gemv(w: &[f32], x: &[f32], out: &mut [f32]) {
    gemv_many(vec![(w, out)], x);
}
