// AdamW over every parameter in one launch, and the sum of squares of every gradient for the
// global norm. Parameters are described by a table, eight 64-bit words each: addresses of the
// weights, first and second moments (f32) and gradient (f32 or bf16), the length, the first chunk
// of 4,096 elements that is the tensor's, and 1 − lr·wd as f32 bits. Each tensor starts a chunk,
// so a block finds a chunk's tensor with one binary search. The update is the CPU kernel's formula
// in the same order; the sums of squares are per-chunk partial sums in f64, then their sum in a
// fixed order, so the norm is the same every run.
#include "common.cuh"

constexpr unsigned long long CHUNK = 4096;

// The table entry of the tensor that owns chunk c.
__device__ __forceinline__ const unsigned long long* owner(const unsigned long long* table, int tensors,
                                                           unsigned long long c) {
    int lo = 0, hi = tensors - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (table[mid * 8 + 5] <= c) lo = mid;
        else hi = mid - 1;
    }
    return table + lo * 8;
}

template <typename T>
__device__ void update(const unsigned long long* table, int tensors, unsigned long long chunks, float scale,
                       float beta1, float beta2, float lr, float bc1, float bc2, float eps) {
    for (unsigned long long c = blockIdx.x; c < chunks; c += gridDim.x) {
        const unsigned long long* e = owner(table, tensors, c);
        float* w = reinterpret_cast<float*>(e[0]);
        float* m = reinterpret_cast<float*>(e[1]);
        float* v = reinterpret_cast<float*>(e[2]);
        const T* g = reinterpret_cast<const T*>(e[3]);
        const float keep = __uint_as_float((unsigned)e[6]);
        const unsigned long long first = (c - e[5]) * CHUNK, last = min(e[4], first + CHUNK);
        for (unsigned long long i = first + threadIdx.x; i < last; i += blockDim.x) {
            const float x = to_f32(g[i]) * scale;
            const float mi = beta1 * m[i] + (1.f - beta1) * x;
            const float vi = beta2 * v[i] + (1.f - beta2) * (x * x);
            m[i] = mi;
            v[i] = vi;
            w[i] = w[i] * keep - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
        }
    }
}

__device__ __forceinline__ double block_sum_f64(double x, double* scratch) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    x = lane < warps ? scratch[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// partial[c] = Σ g² over chunk c, for every chunk.
template <typename T>
__device__ void sum_squares(const unsigned long long* table, int tensors, unsigned long long chunks, double* partial) {
    __shared__ double scratch[32];
    for (unsigned long long c = blockIdx.x; c < chunks; c += gridDim.x) {
        const unsigned long long* e = owner(table, tensors, c);
        const T* g = reinterpret_cast<const T*>(e[3]);
        const unsigned long long first = (c - e[5]) * CHUNK, last = min(e[4], first + CHUNK);
        double s = 0.0;
        for (unsigned long long i = first + threadIdx.x; i < last; i += blockDim.x) {
            const double x = to_f32(g[i]);
            s += x * x;
        }
        s = block_sum_f64(s, scratch);
        if (threadIdx.x == 0) partial[c] = s;
    }
}

// One block: out[0] = the sum of partial[0..count).
__device__ void sum_partials(const double* partial, unsigned long long count, double* out) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (unsigned long long i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    s = block_sum_f64(s, scratch);
    if (threadIdx.x == 0) out[0] = s;
}

#define ENTRY(T, S)                                                                                        \
    extern "C" __global__ void adamw_update_##S(const unsigned long long* table, int tensors,             \
                                                unsigned long long chunks, float scale, float beta1,      \
                                                float beta2, float lr, float bc1, float bc2, float eps) { \
        update<T>(table, tensors, chunks, scale, beta1, beta2, lr, bc1, bc2, eps);                        \
    }                                                                                                      \
    extern "C" __global__ void sum_squares_##S(const unsigned long long* table, int tensors,              \
                                               unsigned long long chunks, double* partial) {              \
        sum_squares<T>(table, tensors, chunks, partial);                                                   \
    }                                                                                                      \
    extern "C" __global__ void sum_partials_##S(const double* partial, unsigned long long count,          \
                                                double* out) {                                             \
        sum_partials(partial, count, out);                                                                 \
    }
FOR_EACH_TYPE(ENTRY)
