//! The AVX2 + FMA micro-kernel: a 6 × 16 tile of `c` in twelve 8-lane registers.

use super::{MicroKernel, Out};

/// Six rows of `c` (elements of `a` broadcast per k step) by sixteen columns (two 8-lane vectors
/// of `b`).
pub(super) struct Avx2;

impl MicroKernel for Avx2 {
    const MR: usize = 6;
    const NR: usize = 16;
    // A 6 × 384 panel of `a` (9 KiB) stays in L1 and a 384 × 768 block of `b` (1.1 MiB) in L2;
    // as deep as the model's width so that most products write `c` in one pass.
    const KC: usize = 384;
    // A 144 × 384 block of `a` (216 KiB) packed at a time.
    const MC: usize = 144;

    fn available() -> bool {
        super::simd::avx2()
    }

    unsafe fn run(kc: usize, a: *const f32, b: *const f32, out: Out) {
        kernel(kc, a, b, out)
    }
}

/// `out = scale · a_panel · b_panel (+ out)` over `kc` steps: `a` holds 6 values per step, `b` 16.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` holds `kc · 6` floats and `b` `kc · 16`; `out` covers a 6 × 16
/// tile.
#[inline(never)]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, out: Out) {
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
    // One row of the tile, `lo` and `hi` its two halves: `out = scale · acc + out`, or
    // `out = scale · acc`; then on to the next row.
    macro_rules! add_row {
        ($lo:literal, $hi:literal) => {
            tile_row!(add, "ymmword", "32", "ymm0", $lo, $hi)
        };
    }
    macro_rules! set_row {
        ($lo:literal, $hi:literal) => {
            tile_row!(set, "ymmword", "32", "ymm0", $lo, $hi)
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
        // The tile, row by row: scaled, added to what `out` holds when accumulating.
        "vbroadcastss ymm0, dword ptr [{scale}]",
        "test {add:e}, {add:e}",
        "jz 6f",
        add_row!("ymm4", "ymm5"),
        add_row!("ymm6", "ymm7"),
        add_row!("ymm8", "ymm9"),
        add_row!("ymm10", "ymm11"),
        add_row!("ymm12", "ymm13"),
        add_row!("ymm14", "ymm15"),
        "jmp 7f",
        "6:",
        set_row!("ymm4", "ymm5"),
        set_row!("ymm6", "ymm7"),
        set_row!("ymm8", "ymm9"),
        set_row!("ymm10", "ymm11"),
        set_row!("ymm12", "ymm13"),
        set_row!("ymm14", "ymm15"),
        "7:",
        a = inout(reg) a => _,
        b = inout(reg) b => _,
        quads = inout(reg) kc / 4 => _,
        rest = inout(reg) kc % 4 => _,
        c = inout(reg) out.ptr => _,
        ldc = in(reg) out.ld * 4,
        scale = in(reg) &out.scale,
        add = in(reg) out.add as u32,
        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
        out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
        out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
        out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
        options(nostack),
    );
}
