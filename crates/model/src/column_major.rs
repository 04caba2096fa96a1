//! Row-major strided matrices as the column-major operands of a BLAS product (cuBLASLt's, in
//! `gpu::matmul`). A pure mapping, kept apart from the CUDA code so that its test runs in every
//! build, not only in builds with the `cuda` feature.

#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

/// A row-major `(R, C)` matrix with strides `(sr, sc)` as a column-major operand: the stored
/// matrix's rows, columns and leading dimension, and whether it is transposed to give `Xᵀ`. Rows
/// in memory (column stride 1) are the column-major `Xᵀ (C, R)` as they lie; columns in memory (row
/// stride 1, a transposed view) are the column-major `X (R, C)`, transposed. `None` for anything
/// else (broadcast or strided views).
pub(crate) fn column_major((r, c): (usize, usize), (sr, sc): (usize, usize)) -> Option<(u64, u64, i64, bool)> {
    if sc == 1 && (r == 1 || sr >= c) {
        Some((c as u64, r as u64, sr.max(c).max(1) as i64, false))
    } else if sr == 1 && (c == 1 || sc >= r) {
        Some((r as u64, c as u64, sc.max(r).max(1) as i64, true))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::column_major;

    /// Element `(i, j)` of `op(M)` for a column-major `M` of leading dimension `ld` in `mem`.
    fn op(mem: &[f64], ld: i64, trans: bool, i: usize, j: usize) -> f64 {
        let (r, c) = if trans { (j, i) } else { (i, j) };
        mem[r + c * ld as usize]
    }

    /// `(mem, strides)` of `f` as a row-major `(r, c)` matrix with `pad` elements after each row,
    /// or as a transposed view (its transpose stored that way).
    fn lay(
        f: &dyn Fn(usize, usize) -> f64,
        (r, c): (usize, usize),
        transposed: bool,
        pad: usize,
    ) -> (Vec<f64>, (usize, usize)) {
        let (outer, inner) = if transposed { (c, r) } else { (r, c) };
        let ld = inner + pad;
        let mut mem = vec![f64::NAN; outer * ld];
        for i in 0..r {
            for j in 0..c {
                let at = if transposed { j * ld + i } else { i * ld + j };
                mem[at] = f(i, j);
            }
        }
        (mem, if transposed { (1, ld) } else { (ld, 1) })
    }

    /// `a · b` through the mapping `gpu::matmul`'s header describes, computed as cuBLASLt defines its
    /// column-major product (`D = op(A) · op(B)`, A the stored `b`, B the stored `a`), equals the
    /// row-major product, for row-major operands, transposed views and padded rows.
    #[test]
    fn the_column_major_product_of_the_stored_operands_is_the_row_major_product() {
        let (m, k, n) = (3, 5, 4);
        let a = |i: usize, j: usize| (i * 7 + j * 3) as f64 - 4.0;
        let b = |i: usize, j: usize| (i * 2 + j * 5) as f64 * 0.5 - 3.0;
        for (ta, tb, pad) in [(false, false, 0), (true, false, 1), (false, true, 2), (true, true, 0)] {
            let (am, ast) = lay(&a, (m, k), ta, pad);
            let (bm, bst) = lay(&b, (k, n), tb, pad);
            let (ra, ca, lda, transa) = column_major((k, n), bst).expect("b is rows or columns");
            let (rb, cb, ldb, transb) = column_major((m, k), ast).expect("a is rows or columns");
            // op(A) is N × K and op(B) is K × M, as cuBLASLt's (m, n, k) = (N, M, K) needs.
            assert_eq!(if transa { (ca, ra) } else { (ra, ca) }, (n as u64, k as u64));
            assert_eq!(if transb { (cb, rb) } else { (rb, cb) }, (k as u64, m as u64));
            // D (N × M, column-major, leading dimension N) read row-major is (M, N).
            let mut d = vec![0.0; m * n];
            for col in 0..m {
                for row in 0..n {
                    d[row + col * n] =
                        (0..k).map(|l| op(&bm, lda, transa, row, l) * op(&am, ldb, transb, l, col)).sum();
                }
            }
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|l| a(i, l) * b(l, j)).sum();
                    assert_eq!(d[i * n + j], want, "a transposed {ta}, b transposed {tb}, pad {pad}: ({i}, {j})");
                }
            }
        }
        // Broadcast and strided views are neither.
        assert_eq!(column_major((3, 4), (0, 1)), None);
        assert_eq!(column_major((3, 4), (8, 2)), None);
    }
}
