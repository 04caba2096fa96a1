//! Inner loops written so LLVM vectorises them, compiled for AVX2 + FMA and for the baseline
//! target, chosen at run time; and which vector instructions the kernels may use.
//!
//! `exp` is a range-reduced polynomial (e^x = 2^n · e^r, |r| ≤ ln2/2, Taylor to degree 6, relative
//! error about 2e-7) instead of libm's scalar call, which does not vectorise. Sums use eight
//! accumulators, since LLVM never reorders a float reduction on its own.
//!
//! `TSUKURU_CPU=avx2` keeps the kernels off AVX-512 on a CPU that has it (the matrix products are
//! the ones that use it): to compare the two, or where 512-bit instructions lower the clock more
//! than they gain.

/// True when the CPU has AVX2 and FMA.
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// True when the kernels may use AVX-512: the CPU has AVX-512F beside AVX2 + FMA, and
/// `TSUKURU_CPU` is not `avx2`. Decided once per process; any other value of `TSUKURU_CPU` than
/// `avx2` or `native` is reported on stderr and ignored.
pub fn avx512() -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX512.get_or_init(|| {
        let capped = match std::env::var("TSUKURU_CPU") {
            Ok(v) if v.eq_ignore_ascii_case("avx2") => true,
            Ok(v) if v.is_empty() || v.eq_ignore_ascii_case("native") => false,
            Ok(v) => {
                eprintln!("warning: TSUKURU_CPU={v:?} is not understood (use avx2 or native); using every instruction set this CPU has");
                false
            }
            Err(_) => false,
        };
        #[cfg(target_arch = "x86_64")]
        {
            avx2() && std::is_x86_feature_detected!("avx512f") && !capped
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = capped;
            false
        }
    })
}

/// Generates `$name(args)` that runs `$body` compiled with AVX2 + FMA when the CPU supports them,
/// and the baseline build otherwise. The body must be an `#[inline(always)]` function. (An
/// AVX-512 build of these loops measured no faster: they wait on memory and on the polynomial's
/// dependency chain, not on vector width.)
macro_rules! dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $body:ident;) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                if $crate::kernels::simd::avx2() {
                    // SAFETY: the CPU features `fast` was compiled for were detected.
                    return unsafe { fast($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use dispatch;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// e^x for finite x (clamped to the f32 range; NaN stays NaN).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // 2^n built in the exponent field. `n` is a whole number in −126..=127 (x is clamped), so
    // adding 2^23 + 127 leaves n + 127 in the low mantissa bits: integer lane operations only,
    // where `n as i32` (saturating, NaN to 0) would compile to a scalar conversion per lane.
    const MAGIC: f32 = 8_388_608.0 + 127.0;
    p * f32::from_bits(((n + MAGIC).to_bits().wrapping_sub(MAGIC.to_bits() - 127)) << 23)
}

/// Largest element (−∞ for an empty slice).
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    rest.iter().fold(acc.iter().copied().fold(f32::NEG_INFINITY, f32::max), |m, &x| m.max(x))
}

/// Sum of the elements.
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Sum of `a[i] * b[i]`.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `out[i] = exp(scale * x[i] - shift)`; returns the sum of `out`.
#[inline(always)]
pub fn exp_shifted(x: &[f32], scale: f32, shift: f32, out: &mut [f32]) -> f32 {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp(scale * v - shift);
    }
    sum(out)
}

/// `xs = scale · softmax(xs)` in place, with one exponential per value (shifted by the maximum,
/// summed as written, then scaled); returns the log-sum-exp of the original values.
#[inline(always)]
pub fn softmax_in_place(xs: &mut [f32], scale: f32) -> f32 {
    let top = max(xs);
    for x in xs.iter_mut() {
        *x = exp(*x - top);
    }
    let total = sum(xs);
    let k = scale / total;
    for x in xs.iter_mut() {
        *x *= k;
    }
    top + total.ln()
}

/// Sum of `exp(x[i] - shift)`, without writing anything.
#[inline(always)]
pub fn sum_exp(x: &[f32], shift: f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().map(|&v| exp(v - shift)).sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += exp(c[i] - shift);
        }
    }
    acc.iter().sum::<f32>() + rest
}
