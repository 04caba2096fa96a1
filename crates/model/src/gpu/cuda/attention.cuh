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

// Whether query index qi (row b) may see key index kp: keys at or before the query's position
// start + qi and, with `seg` (packed rows), at or after the start of the query's sequence.
__device__ __forceinline__ bool visible(int qi, int kp, int b, int t, int s, int start, const unsigned* seg) {
    if (qi >= t || kp >= s || kp > start + qi) return false;
    return seg == nullptr || kp >= (int)seg[(size_t)b * t + qi];
}
