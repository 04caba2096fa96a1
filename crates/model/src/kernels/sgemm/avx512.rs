//! The AVX-512 micro-kernel: a 12 × 32 tile of `c` in twenty-four 16-lane registers.
//!
//! Twice the lanes of the AVX2 kernel and twice the registers: per k step two vectors of `b`,
//! twelve broadcasts of `a` and 24 FMAs, so the FMA units (two 512-bit ones on server cores)
//! outnumber the loads almost two to one, as in BLIS's 32 × 12 kernel for the same CPUs.

use super::{MicroKernel, Out};

/// Twelve rows of `c` by thirty-two columns (two 16-lane vectors of `b`).
pub(super) struct Avx512;

impl MicroKernel for Avx512 {
    const MR: usize = 12;
    const NR: usize = 32;
    // A 12 × 512 panel of `a` (24 KiB) stays in L1. Deeper blocks measured faster than 256 or
    // 384 (each block past the first reads and rewrites the whole of `c`): GFLOP/s on the
    // benchmark's shapes 317–374 at 256, 333–364 at 384, 331–373 at 512, 313–362 at 768; a
    // training step 2–4% faster at 512 than at 384 (docs/PERF.md, step 30).
    const KC: usize = 512;
    // 144, 288 and 576 rows measured level (step 30).
    const MC: usize = 288;

    fn available() -> bool {
        super::simd::avx512()
    }

    unsafe fn run(kc: usize, a: *const f32, b: *const f32, out: Out) {
        kernel(kc, a, b, out)
    }
}

/// `out = scale · a_panel · b_panel (+ out)` over `kc` steps: `a` holds 12 values per step, `b` 32.
///
/// # Safety
/// The CPU has AVX-512F; `a` holds `kc · 12` floats and `b` `kc · 32`; `out` covers a 12 × 32 tile.
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, out: Out) {
    // One row of one k step: broadcast a's element (byte offset `$a + $r` in the panel) into
    // `$t`, then two FMAs into the row's accumulators.
    macro_rules! row {
        ($a:literal, $r:literal, $t:literal, $lo:literal, $hi:literal) => {
            concat!(
                "vbroadcastss ",
                $t,
                ", dword ptr [{a} + ",
                $a,
                " + ",
                $r,
                "]\n",
                "vfmadd231ps ",
                $lo,
                ", zmm0, ",
                $t,
                "\n",
                "vfmadd231ps ",
                $hi,
                ", zmm1, ",
                $t,
                "\n",
            )
        };
    }
    // One k step: two vectors of b (zmm0, zmm1), twelve broadcasts of a (rotating over zmm2–zmm7
    // so several loads are in flight), 24 FMAs — accumulator 8 + 2r holds columns 0–15 of row r,
    // 9 + 2r columns 16–31.
    macro_rules! step {
        ($a:literal, $b:literal) => {
            concat!(
                "vmovups zmm0, zmmword ptr [{b} + ",
                $b,
                "]\n",
                "vmovups zmm1, zmmword ptr [{b} + ",
                $b,
                " + 64]\n",
                row!($a, "0", "zmm2", "zmm8", "zmm9"),
                row!($a, "4", "zmm3", "zmm10", "zmm11"),
                row!($a, "8", "zmm4", "zmm12", "zmm13"),
                row!($a, "12", "zmm5", "zmm14", "zmm15"),
                row!($a, "16", "zmm6", "zmm16", "zmm17"),
                row!($a, "20", "zmm7", "zmm18", "zmm19"),
                row!($a, "24", "zmm2", "zmm20", "zmm21"),
                row!($a, "28", "zmm3", "zmm22", "zmm23"),
                row!($a, "32", "zmm4", "zmm24", "zmm25"),
                row!($a, "36", "zmm5", "zmm26", "zmm27"),
                row!($a, "40", "zmm6", "zmm28", "zmm29"),
                row!($a, "44", "zmm7", "zmm30", "zmm31"),
            )
        };
    }
    // One row of the tile, `lo` and `hi` its two halves: `out = scale · acc + out`, or
    // `out = scale · acc`; then on to the next row.
    macro_rules! add_row {
        ($lo:literal, $hi:literal) => {
            tile_row!(add, "zmmword", "64", "zmm0", $lo, $hi)
        };
    }
    macro_rules! set_row {
        ($lo:literal, $hi:literal) => {
            tile_row!(set, "zmmword", "64", "zmm0", $lo, $hi)
        };
    }
    std::arch::asm!(
        "vpxord zmm8, zmm8, zmm8",
        "vpxord zmm9, zmm9, zmm9",
        "vpxord zmm10, zmm10, zmm10",
        "vpxord zmm11, zmm11, zmm11",
        "vpxord zmm12, zmm12, zmm12",
        "vpxord zmm13, zmm13, zmm13",
        "vpxord zmm14, zmm14, zmm14",
        "vpxord zmm15, zmm15, zmm15",
        "vpxord zmm16, zmm16, zmm16",
        "vpxord zmm17, zmm17, zmm17",
        "vpxord zmm18, zmm18, zmm18",
        "vpxord zmm19, zmm19, zmm19",
        "vpxord zmm20, zmm20, zmm20",
        "vpxord zmm21, zmm21, zmm21",
        "vpxord zmm22, zmm22, zmm22",
        "vpxord zmm23, zmm23, zmm23",
        "vpxord zmm24, zmm24, zmm24",
        "vpxord zmm25, zmm25, zmm25",
        "vpxord zmm26, zmm26, zmm26",
        "vpxord zmm27, zmm27, zmm27",
        "vpxord zmm28, zmm28, zmm28",
        "vpxord zmm29, zmm29, zmm29",
        "vpxord zmm30, zmm30, zmm30",
        "vpxord zmm31, zmm31, zmm31",
        "test {quads}, {quads}",
        "jz 3f",
        // Four k steps per trip.
        "2:",
        step!("0", "0"),
        step!("48", "128"),
        step!("96", "256"),
        step!("144", "384"),
        "add {a}, 192",
        "add {b}, 512",
        "dec {quads}",
        "jnz 2b",
        "3:",
        "test {rest}, {rest}",
        "jz 5f",
        "4:",
        step!("0", "0"),
        "add {a}, 48",
        "add {b}, 128",
        "dec {rest}",
        "jnz 4b",
        "5:",
        // The tile, row by row: scaled, added to what `out` holds when accumulating.
        "vbroadcastss zmm0, dword ptr [{scale}]",
        "test {add:e}, {add:e}",
        "jz 6f",
        add_row!("zmm8", "zmm9"),
        add_row!("zmm10", "zmm11"),
        add_row!("zmm12", "zmm13"),
        add_row!("zmm14", "zmm15"),
        add_row!("zmm16", "zmm17"),
        add_row!("zmm18", "zmm19"),
        add_row!("zmm20", "zmm21"),
        add_row!("zmm22", "zmm23"),
        add_row!("zmm24", "zmm25"),
        add_row!("zmm26", "zmm27"),
        add_row!("zmm28", "zmm29"),
        add_row!("zmm30", "zmm31"),
        "jmp 7f",
        "6:",
        set_row!("zmm8", "zmm9"),
        set_row!("zmm10", "zmm11"),
        set_row!("zmm12", "zmm13"),
        set_row!("zmm14", "zmm15"),
        set_row!("zmm16", "zmm17"),
        set_row!("zmm18", "zmm19"),
        set_row!("zmm20", "zmm21"),
        set_row!("zmm22", "zmm23"),
        set_row!("zmm24", "zmm25"),
        set_row!("zmm26", "zmm27"),
        set_row!("zmm28", "zmm29"),
        set_row!("zmm30", "zmm31"),
        "7:",
        a = inout(reg) a => _,
        b = inout(reg) b => _,
        quads = inout(reg) kc / 4 => _,
        rest = inout(reg) kc % 4 => _,
        c = inout(reg) out.ptr => _,
        ldc = in(reg) out.ld * 4,
        scale = in(reg) &out.scale,
        add = in(reg) out.add as u32,
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
        out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
        out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
        out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
        out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
        out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
        out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
        out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
        options(nostack),
    );
}
