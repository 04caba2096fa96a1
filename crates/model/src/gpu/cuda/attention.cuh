// What both attention kernel files share: the tile size, the operands' strides and the mask.
#pragma once
#include "common.cuh"

// Rows of queries or keys per tile.
constexpr int TILE = 64;
constexpr unsigned FULL = 0xffffffffu;

// Steps between batches, heads and positions of an operand, in elements.
struct Strides {
    long long b, h, t;
};

// What a block over (query tile, b · heads + head) reads: its batch row, its query head, and the
// rows of the key/value head serving that query head (heads / kv_heads query heads each) in k and v.
template <typename T> struct QueryBlock {
    int b, h;
    const T* k;
    const T* v;
};

template <typename T>
__device__ __forceinline__ QueryBlock<T> query_block(const T* k, const T* v, int heads, int kv_heads, Strides ks,
                                                     Strides vs) {
    const int b = blockIdx.y / heads, h = blockIdx.y % heads, kvh = h / (heads / kv_heads);
    return {b, h, k + b * ks.b + kvh * ks.h, v + b * vs.b + kvh * vs.h};
}

// A gradient pair (g1, g2) of a rotated row's columns i and i + half at position `pos`, taken back
// through RoPE (Llama's half-split rotation; its backward is the rotation by the opposite angle)
// from the tables `cos` and `sin` ((positions, half), row-major). The kernels that write dQ and dK
// apply it to their accumulators when given the tables: each thread holds both columns of a pair.
template <typename T>
__device__ __forceinline__ void unrotate(float& g1, float& g2, const T* cos, const T* sin, int pos, int i, int half) {
    const float c = to_f32(cos[(size_t)pos * half + i]), s = to_f32(sin[(size_t)pos * half + i]);
    const float a = g1, b = g2;
    g1 = a * c + b * s;
    g2 = b * c - a * s;
}

// The maximum and the sum over the four lanes of a quad (lanes 4g..4g + 4), which hold one row
// between them in both files' layouts.
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(FULL, v, 1));
    return fmaxf(v, __shfl_xor_sync(FULL, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(FULL, v, 1);
    return v + __shfl_xor_sync(FULL, v, 2);
}

// Whether query index qi (row b) may see key index kp: keys at or before the query's position
// start + qi and, with `seg` (packed rows), at or after the start of the query's sequence.
__device__ __forceinline__ bool visible(int qi, int kp, int b, int t, int s, int start, const unsigned* seg) {
    if (qi >= t || kp >= s || kp > start + qi) return false;
    return seg == nullptr || kp >= (int)seg[(size_t)b * t + qi];
}

// Whether some query of the tile from q0 may not see some key of the tile from k0: the tiles meet at
// or past the diagonal, either runs past its end, or rows are packed. Elsewhere every key is
// visible, and a kernel can skip the per-element mask.
__device__ __forceinline__ bool tile_masked(int q0, int k0, int t, int s, int start, const unsigned* seg) {
    return seg != nullptr || k0 + TILE - 1 > start + q0 || q0 + TILE > t || k0 + TILE > s;
}
