// RMSNorm over the last dimension: y = x · inv · w with inv = 1 / sqrt(mean(x²) + eps) per row.
// Forward: one block per row (16-byte loads where the rows allow), inv kept for the backward. Backward: dx one block per row,
// dx = inv · (w ⊙ g − x · inv² · mean(x ⊙ w ⊙ g)); dw = Σ_rows g ⊙ x · inv in two steps (partial
// sums over row groups, then their sum), so no atomics and the same bits every run.
#include "common.cuh"

// Calls f(first, count) over the elements of a row this thread owns: chunks of Vec16's N when
// `wide` (16-byte loads), single elements otherwise.
template <typename T, typename F> __device__ __forceinline__ void each(int d, bool wide, F&& f) {
    constexpr int N = Vec16<T>::N;
    if (wide) {
        for (int c = N * threadIdx.x; c < d; c += N * blockDim.x) f(c, N);
    } else {
        for (int c = threadIdx.x; c < d; c += blockDim.x) f(c, 1);
    }
}

// Loads n (1 or Vec16's N) elements of p from i as floats.
template <typename T> __device__ __forceinline__ void load(const T* p, int i, int n, float* out) {
    if (n == 1) {
        out[0] = to_f32(p[i]);
        return;
    }
    Vec16<T> v;
    v.load(p + i);
    for (int j = 0; j < Vec16<T>::N; ++j) out[j] = to_f32(v.e()[j]);
}

// Stores n floats at p + i.
template <typename T> __device__ __forceinline__ void store(T* p, int i, int n, const float* in) {
    if (n == 1) {
        p[i] = from_f32<T>(in[0]);
        return;
    }
    Vec16<T> v;
    for (int j = 0; j < Vec16<T>::N; ++j) v.e()[j] = from_f32<T>(in[j]);
    v.store(p + i);
}

template <typename T>
__device__ void forward(const T* x, const T* w, T* y, float* inv, int d, float eps) {
    constexpr int N = Vec16<T>::N;
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const T* xr = x + row * d;
    T* yr = y + row * d;
    const bool wide = d % N == 0 && aligned16(x, w, y);
    float ss = 0.f;
    each<T>(d, wide, [&](int c, int n) {
        float v[N];
        load(xr, c, n, v);
        for (int j = 0; j < n; ++j) ss += v[j] * v[j];
    });
    const float r = rsqrtf(block_sum(ss, scratch) / d + eps);
    if (threadIdx.x == 0) inv[row] = r;
    each<T>(d, wide, [&](int c, int n) {
        float v[N], g[N];
        load(xr, c, n, v);
        load(w, c, n, g);
        for (int j = 0; j < n; ++j) v[j] *= r * g[j];
        store(yr, c, n, v);
    });
}

// dx for one row; with `res` (not null) the gradient arriving at x around the norm (a residual
// connection's) is added in the same pass.
template <typename T>
__device__ void backward_dx(const T* x, const T* w, const T* g, const float* inv, const T* res, T* dx, int d) {
    constexpr int N = Vec16<T>::N;
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const T *xr = x + row * d, *gr = g + row * d, *rr = res ? res + row * d : nullptr;
    T* dr = dx + row * d;
    const bool wide = d % N == 0 && aligned16(x, w, g, res, dx);
    float inner = 0.f;
    each<T>(d, wide, [&](int c, int n) {
        float xv[N], wv[N], gv[N];
        load(xr, c, n, xv);
        load(w, c, n, wv);
        load(gr, c, n, gv);
        for (int j = 0; j < n; ++j) inner += xv[j] * wv[j] * gv[j];
    });
    const float r = inv[row];
    const float coef = block_sum(inner, scratch) * r * r / d;
    each<T>(d, wide, [&](int c, int n) {
        float xv[N], wv[N], gv[N], rv[N] = {};
        load(xr, c, n, xv);
        load(w, c, n, wv);
        load(gr, c, n, gv);
        if (rr) load(rr, c, n, rv);
        for (int j = 0; j < n; ++j) xv[j] = r * (wv[j] * gv[j] - xv[j] * coef) + rv[j];
        store(dr, c, n, xv);
    });
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

// A row's kernels take up to 1,024 threads (wide rows): the bound keeps them within 64 registers a
// thread, which such a launch needs.
#define ENTRY(T, S)                                                                                      \
    extern "C" __global__ void __launch_bounds__(1024)                                                   \
    rms_norm_fwd_##S(const T* x, const T* w, T* y, float* inv, int d, float eps) {                       \
        forward<T>(x, w, y, inv, d, eps);                                                                \
    }                                                                                                    \
    extern "C" __global__ void __launch_bounds__(1024)                                                   \
    rms_norm_bwd_dx_##S(const T* x, const T* w, const T* g, const float* inv, const T* res, T* dx,       \
                        int d) {                                                                         \
        backward_dx<T>(x, w, g, inv, res, dx, d);                                                        \
    }                                                                                                    \
    extern "C" __global__ void rms_norm_bwd_dw_partial_##S(const T* x, const T* g, const float* inv,      \
                                                           float* partial, int rows, int d) {            \
        backward_dw_partial<T>(x, g, inv, partial, rows, d);                                             \
    }                                                                                                    \
    extern "C" __global__ void rms_norm_bwd_dw_sum_##S(const float* partial, T* dw, int groups, int d) {  \
        backward_dw_sum<T>(partial, dw, groups, d);                                                      \
    }
FOR_EACH_TYPE(ENTRY)
