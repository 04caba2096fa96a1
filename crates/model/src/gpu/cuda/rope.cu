// Rotary embeddings, Llama's half-split convention: for i < half, with c = cos[pos][i] and
// s = sign · sin[pos][i], y[i] = x[i]·c − x[i+half]·s and y[i+half] = x[i+half]·c + x[i]·s.
// sign = 1 rotates (forward); sign = −1 rotates back, which is the backward. x (B, H, T, hd) is
// read and y written through their strides (b, head, position; the last dimension contiguous), so
// the projections' output transposed in place needs no copy in, and y can be laid out heads-major
// or positions-major. Threads (32, 8): y picks a row (b, head, position) and x walks its pairs
// (i, i + half); a row's indices are worked out once, in 32-bit arithmetic.
#include "common.cuh"

template <typename T>
__device__ void rotate(const T* x, const T* cos, const T* sin, T* y, int heads, int t, int hd, long long sb,
                       long long sh, long long st, long long ob, long long oh, long long ot, int start, float sign,
                       int rows) {
    const int half = hd / 2;
    for (int row = blockIdx.x * blockDim.y + threadIdx.y; row < rows; row += gridDim.x * blockDim.y) {
        const int pos = row % t, rest = row / t, h = rest % heads, b = rest / heads;
        const T* xr = x + b * sb + h * sh + pos * st;
        T* yr = y + b * ob + h * oh + pos * ot;
        const T *cr = cos + (size_t)(start + pos) * half, *sr = sin + (size_t)(start + pos) * half;
        for (int i = threadIdx.x; i < half; i += blockDim.x) {
            const float c = to_f32(cr[i]), s = sign * to_f32(sr[i]);
            const float x1 = to_f32(xr[i]), x2 = to_f32(xr[i + half]);
            yr[i] = from_f32<T>(x1 * c - x2 * s);
            yr[i + half] = from_f32<T>(x2 * c + x1 * s);
        }
    }
}

#define ENTRY(T, S)                                                                                        \
    extern "C" __global__ void rope_##S(const T* x, const T* cos, const T* sin, T* y, int heads, int t,    \
                                        int hd, long long sb, long long sh, long long st, long long ob,    \
                                        long long oh, long long ot, int start, float sign, int rows) {     \
        rotate<T>(x, cos, sin, y, heads, t, hd, sb, sh, st, ob, oh, ot, start, sign, rows);                \
    }
FOR_EACH_TYPE(ENTRY)
