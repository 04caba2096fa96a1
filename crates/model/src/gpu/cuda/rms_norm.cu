// RMSNorm over the last dimension: y = x · inv · w with inv = 1 / sqrt(mean(x²) + eps) per row.
// Forward: one block per row, inv kept for the backward. Backward: dx one block per row,
// dx = inv · (w ⊙ g − x · inv² · mean(x ⊙ w ⊙ g)); dw = Σ_rows g ⊙ x · inv in two steps (partial
// sums over row groups, then their sum), so no atomics and the same bits every run.
#include "common.cuh"

template <typename T>
__device__ void forward(const T* x, const T* w, T* y, float* inv, int d, float eps) {
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const T* xr = x + row * d;
    T* yr = y + row * d;
    float ss = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float v = to_f32(xr[i]);
        ss += v * v;
    }
    const float r = rsqrtf(block_sum(ss, scratch) / d + eps);
    if (threadIdx.x == 0) inv[row] = r;
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = from_f32<T>(to_f32(xr[i]) * r * to_f32(w[i]));
}

template <typename T>
__device__ void backward_dx(const T* x, const T* w, const T* g, const float* inv, T* dx, int d) {
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const T *xr = x + row * d, *gr = g + row * d;
    T* dr = dx + row * d;
    float inner = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) inner += to_f32(xr[i]) * to_f32(w[i]) * to_f32(gr[i]);
    const float r = inv[row];
    const float coef = block_sum(inner, scratch) * r * r / d;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        dr[i] = from_f32<T>(r * (to_f32(w[i]) * to_f32(gr[i]) - to_f32(xr[i]) * coef));
}

// Block (32, 8): 32 columns, 8 lanes of rows; blockIdx.y picks a group of rows (strided by
// gridDim.y · 8). Writes partial[blockIdx.y · d + column].
template <typename T>
__device__ void backward_dw_partial(const T* x, const T* g, const float* inv, float* partial, int rows, int d) {
    __shared__ float acc[8][33];
    const int col = blockIdx.x * 32 + threadIdx.x;
    float s = 0.f;
    if (col < d) {
        for (int r = blockIdx.y * 8 + threadIdx.y; r < rows; r += gridDim.y * 8) {
            const size_t at = (size_t)r * d + col;
            s += to_f32(g[at]) * to_f32(x[at]) * inv[r];
        }
    }
    acc[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < d) {
        float t = 0.f;
        for (int k = 0; k < 8; ++k) t += acc[k][threadIdx.x];
        partial[(size_t)blockIdx.y * d + col] = t;
    }
}

template <typename T>
__device__ void backward_dw_sum(const float* partial, T* dw, int groups, int d) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= d) return;
    float s = 0.f;
    for (int k = 0; k < groups; ++k) s += partial[(size_t)k * d + col];
    dw[col] = from_f32<T>(s);
}

#define ENTRY(T, S)                                                                                      \
    extern "C" __global__ void rms_norm_fwd_##S(const T* x, const T* w, T* y, float* inv, int d, float eps) { \
        forward<T>(x, w, y, inv, d, eps);                                                                \
    }                                                                                                    \
    extern "C" __global__ void rms_norm_bwd_dx_##S(const T* x, const T* w, const T* g, const float* inv,   \
                                                   T* dx, int d) {                                       \
        backward_dx<T>(x, w, g, inv, dx, d);                                                             \
    }                                                                                                    \
    extern "C" __global__ void rms_norm_bwd_dw_partial_##S(const T* x, const T* g, const float* inv,      \
                                                           float* partial, int rows, int d) {            \
        backward_dw_partial<T>(x, g, inv, partial, rows, d);                                             \
    }                                                                                                    \
    extern "C" __global__ void rms_norm_bwd_dw_sum_##S(const float* partial, T* dw, int groups, int d) {  \
        backward_dw_sum<T>(partial, dw, groups, d);                                                      \
    }
FOR_EACH_TYPE(ENTRY)
