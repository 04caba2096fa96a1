//! L-BFGS (limited-memory BFGS) with a backtracking Armijo line search: the robust quasi-Newton
//! optimiser Chinchilla's Approach 3 fits with, for a handful of parameters.

/// Minimises `f` from `x0`; `f(x, grad)` returns the value and writes the gradient. Stops when the
/// gradient's largest entry is below `tol`, the value stops falling, or after `max_iter` steps.
/// Returns the best point and its value.
pub(crate) fn minimize(
    f: impl Fn(&[f64], &mut [f64]) -> f64,
    x0: &[f64],
    max_iter: usize,
    tol: f64,
) -> (Vec<f64>, f64) {
    const MEMORY: usize = 10;
    let n = x0.len();
    let mut x = x0.to_vec();
    let mut g = vec![0.0; n];
    let mut fx = f(&x, &mut g);
    // Past steps s = x' − x and gradient changes y = g' − g, newest last.
    let mut history: Vec<(Vec<f64>, Vec<f64>, f64)> = Vec::with_capacity(MEMORY);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let (mut x_new, mut g_new) = (vec![0.0; n], vec![0.0; n]);
    for _ in 0..max_iter {
        if !fx.is_finite() || g.iter().all(|v| v.abs() < tol) {
            break;
        }
        // Two-loop recursion: d = −H·g with H the inverse-Hessian estimate from the history.
        let mut d: Vec<f64> = g.iter().map(|v| -v).collect();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &d);
            d.iter_mut().zip(y).for_each(|(di, yi)| *di -= a * yi);
            alphas.push(a);
        }
        if let Some((s, y, _)) = history.last() {
            let gamma = dot(s, y) / dot(y, y);
            d.iter_mut().for_each(|di| *di *= gamma);
        } else {
            // First step: a unit move in the largest coordinate.
            let scale = g.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
            d.iter_mut().for_each(|di| *di /= scale);
        }
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &d);
            d.iter_mut().zip(s).for_each(|(di, si)| *di += (a - b) * si);
        }
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction (curvature estimate gone bad): restart from steepest descent.
            history.clear();
            let scale = g.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
            d = g.iter().map(|v| -v / scale).collect();
            slope = dot(&g, &d);
        }
        let mut step = 1.0;
        let mut accepted = None;
        for _ in 0..60 {
            x_new.iter_mut().zip(&x).zip(&d).for_each(|((xn, xi), di)| *xn = xi + step * di);
            let f_new = f(&x_new, &mut g_new);
            if f_new.is_finite() && f_new <= fx + 1e-4 * step * slope {
                accepted = Some(f_new);
                break;
            }
            step *= 0.5;
        }
        let Some(f_new) = accepted else { break };
        let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-300 {
            if history.len() == MEMORY {
                history.remove(0);
            }
            history.push((s, y, 1.0 / sy));
        }
        let stalled = (fx - f_new).abs() <= 1e-15 * fx.abs().max(1e-300);
        std::mem::swap(&mut x, &mut x_new);
        std::mem::swap(&mut g, &mut g_new);
        fx = f_new;
        if stalled {
            break;
        }
    }
    (x, fx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_minimum_of_rosenbrocks_valley() {
        let rosen = |x: &[f64], g: &mut [f64]| {
            let (a, b) = (1.0 - x[0], x[1] - x[0] * x[0]);
            g[0] = -2.0 * a - 400.0 * x[0] * b;
            g[1] = 200.0 * b;
            a * a + 100.0 * b * b
        };
        let (x, f) = minimize(rosen, &[-1.2, 1.0], 1000, 1e-10);
        assert!((x[0] - 1.0).abs() < 1e-6 && (x[1] - 1.0).abs() < 1e-6 && f < 1e-12, "{x:?} {f}");
    }
}
