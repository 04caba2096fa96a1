// SwiGLU's gate, h = silu(a) ⊙ b = a · σ(a) · b, and its backward from the upstream gradient g:
// da = g · b · σ(a) · (1 + a · (1 − σ(a))), db = g · a · σ(a). Element-wise, grid-stride loops.
#include "common.cuh"

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }

template <typename T>
__device__ void forward(const T* a, const T* b, T* h, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float x = to_f32(a[i]);
        h[i] = from_f32<T>(x * sigmoid(x) * to_f32(b[i]));
    }
}

template <typename T>
__device__ void backward(const T* a, const T* b, const T* g, T* da, T* db, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float x = to_f32(a[i]), y = to_f32(b[i]), gi = to_f32(g[i]);
        const float s = sigmoid(x);
        da[i] = from_f32<T>(gi * y * s * (1.f + x * (1.f - s)));
        db[i] = from_f32<T>(gi * x * s);
    }
}

#define ENTRY(T, S)                                                                                     \
    extern "C" __global__ void swiglu_fwd_##S(const T* a, const T* b, T* h, unsigned long long n) {    \
        forward<T>(a, b, h, n);                                                                         \
    }                                                                                                   \
    extern "C" __global__ void swiglu_bwd_##S(const T* a, const T* b, const T* g, T* da, T* db,        \
                                              unsigned long long n) {                                   \
        backward<T>(a, b, g, da, db, n);                                                                \
    }
FOR_EACH_TYPE(ENTRY)
