// Rotary embeddings, Llama's half-split convention: for i < half, with c = cos[pos][i] and
// s = sign · sin[pos][i], y[i] = x[i]·c − x[i+half]·s and y[i+half] = x[i+half]·c + x[i]·s.
// sign = 1 rotates (forward); sign = −1 rotates back, which is the backward. x (B, H, T, hd) is
// read through its strides (the projections' output transposed in place); y is written
// contiguous. One thread per pair (i, i + half).
#include "common.cuh"

template <typename T>
__device__ void rotate(const T* x, const T* cos, const T* sin, T* y, int heads, int t, int hd, long long sb,
                       long long sh, long long st, int start, float sign, size_t pairs) {
    const int half = hd / 2;
    for (size_t p = blockIdx.x * (size_t)blockDim.x + threadIdx.x; p < pairs; p += (size_t)gridDim.x * blockDim.x) {
        const int i = p % half;
        size_t rest = p / half;
        const int pos = rest % t;
        rest /= t;
        const int h = rest % heads;
        const size_t b = rest / heads;
        const T* xr = x + b * sb + h * sh + pos * st;
        T* yr = y + ((b * heads + h) * t + pos) * hd;
        const float c = to_f32(cos[(size_t)(start + pos) * half + i]);
        const float s = sign * to_f32(sin[(size_t)(start + pos) * half + i]);
        const float x1 = to_f32(xr[i]), x2 = to_f32(xr[i + half]);
        yr[i] = from_f32<T>(x1 * c - x2 * s);
        yr[i + half] = from_f32<T>(x2 * c + x1 * s);
    }
}

#define ENTRY(T, S)                                                                                      \
    extern "C" __global__ void rope_##S(const T* x, const T* cos, const T* sin, T* y, int heads, int t,  \
                                        int hd, long long sb, long long sh, long long st, int start,     \
                                        float sign, unsigned long long pairs) {                          \
        rotate<T>(x, cos, sin, y, heads, t, hd, sb, sh, st, start, sign, pairs);                         \
    }
FOR_EACH_TYPE(ENTRY)
