// Stands in for CUDA's <mma.h> when the kernels are compiled for the host: WMMA fragments hold the
// whole 16 × 16 tile on every lane (element (i, j) at x[16·i + j]), products are computed in f32,
// and only lane 0 of a warp stores (the kernels synchronise the warp before reading what was stored,
// as on the GPU).
#pragma once

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    float x[16 * 16];
};

inline float wmma_value(float v) { return v; }
inline float wmma_value(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename Use, int M, int N, int K, typename T, typename L>
void fill_fragment(fragment<Use, M, N, K, T, L>& f, float v) {
    for (float& e : f.x) e = v;
}

template <typename T>
void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, row_major>& f, const T* p, unsigned ld) {
    for (int i = 0; i < 16; ++i)
        for (int k = 0; k < 16; ++k) f.x[i * 16 + k] = wmma_value(p[i * ld + k]);
}

template <typename T>
void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, col_major>& f, const T* p, unsigned ld) {
    for (int i = 0; i < 16; ++i)
        for (int k = 0; k < 16; ++k) f.x[i * 16 + k] = wmma_value(p[k * ld + i]);
}

template <typename T>
void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, row_major>& f, const T* p, unsigned ld) {
    for (int k = 0; k < 16; ++k)
        for (int j = 0; j < 16; ++j) f.x[k * 16 + j] = wmma_value(p[k * ld + j]);
}

template <typename T>
void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, col_major>& f, const T* p, unsigned ld) {
    for (int k = 0; k < 16; ++k)
        for (int j = 0; j < 16; ++j) f.x[k * 16 + j] = wmma_value(p[j * ld + k]);
}

template <typename L>
void load_matrix_sync(fragment<accumulator, 16, 16, 16, float, L>& f, const float* p, unsigned ld, layout_t layout) {
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) f.x[i * 16 + j] = layout == mem_row_major ? p[i * ld + j] : p[j * ld + i];
}

template <typename T, typename LA, typename LB, typename LC, typename LD>
void mma_sync(fragment<accumulator, 16, 16, 16, float, LD>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float, LC>& c) {
    float out[16 * 16];
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) {
            float s = c.x[i * 16 + j];
            for (int k = 0; k < 16; ++k) s += a.x[i * 16 + k] * b.x[k * 16 + j];
            out[i * 16 + j] = s;
        }
    for (int i = 0; i < 16 * 16; ++i) d.x[i] = out[i];
}

template <typename L>
void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float, L>& f, unsigned ld, layout_t layout) {
    if ((emu_linear_thread() & 31u) != 0) return;
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) (layout == mem_row_major ? p[i * ld + j] : p[j * ld + i]) = f.x[i * 16 + j];
}

}  // namespace wmma
}  // namespace nvcuda
