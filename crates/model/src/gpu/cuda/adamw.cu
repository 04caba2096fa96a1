// AdamW in place over f32 master weights and moments, from a gradient in f32 or bf16, in one
// pass (the formula and order of operations of the CPU kernel); and the sum of squares of a
// gradient for the global norm, as per-block partial sums in f64 and then their sum in a fixed
// order, so the norm is the same every run.
#include "common.cuh"

template <typename T>
__device__ void update(float* w, float* m, float* v, const T* g, size_t n, float scale, float beta1, float beta2,
                       float lr, float bc1, float bc2, float eps, float keep) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float x = to_f32(g[i]) * scale;
        const float mi = beta1 * m[i] + (1.f - beta1) * x;
        const float vi = beta2 * v[i] + (1.f - beta2) * (x * x);
        m[i] = mi;
        v[i] = vi;
        w[i] = w[i] * keep - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
    }
}

__device__ __forceinline__ double block_sum_f64(double x, double* scratch) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    x = lane < warps ? scratch[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

template <typename T>
__device__ void sum_squares(const T* g, double* partial, size_t n) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const double x = to_f32(g[i]);
        s += x * x;
    }
    s = block_sum_f64(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// One block: out[0] = the sum of partial[0..count).
__device__ void sum_partials(const double* partial, int count, double* out) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    s = block_sum_f64(s, scratch);
    if (threadIdx.x == 0) out[0] = s;
}

#define ENTRY(T, S)                                                                                        \
    extern "C" __global__ void adamw_update_##S(float* w, float* m, float* v, const T* g,                 \
                                                unsigned long long n, float scale, float beta1,           \
                                                float beta2, float lr, float bc1, float bc2, float eps,   \
                                                float keep) {                                             \
        update<T>(w, m, v, g, n, scale, beta1, beta2, lr, bc1, bc2, eps, keep);                           \
    }                                                                                                      \
    extern "C" __global__ void sum_squares_##S(const T* g, double* partial, unsigned long long n) {       \
        sum_squares<T>(g, partial, n);                                                                     \
    }                                                                                                      \
    extern "C" __global__ void sum_partials_##S(const double* partial, int count, double* out) {          \
        sum_partials(partial, count, out);                                                                 \
    }
FOR_EACH_TYPE(ENTRY)
