// Cross-entropy of rows of logits, in place: one block per row computes the row's log-sum-exp in
// one pass (each thread a running maximum and sum, then combined over the block), writes the row's
// loss lse − x[target] (0 for an ignored target), and when asked overwrites the logits with the
// loss's gradient, (softmax − onehot) · scale, times row_scale[row] when given (per-row upstream
// gradients: the token log-probabilities of preference losses); 0 for an ignored row.
#include "common.cuh"

#define IGNORE 0xFFFFFFFFu

// Folds the running pair (m2, s2) into (m, s): s is a sum of exp(x − m).
__device__ __forceinline__ void fold(float& m, float& s, float m2, float s2) {
    const float mx = fmaxf(m, m2);
    if (mx == -INFINITY) return;
    s = s * __expf(m - mx) + s2 * __expf(m2 - mx);
    m = mx;
}

template <typename T>
__device__ void rows(T* logits, const unsigned* targets, float* loss, int v, float scale, const float* row_scale,
                     int write_grad) {
    __shared__ float sm[32], ss[32];
    const size_t row = blockIdx.x;
    T* x = logits + row * v;
    float m = -INFINITY, s = 0.f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) fold(m, s, to_f32(x[j]), 1.f);
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        fold(m, s, m2, s2);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) {
        sm[warp] = m;
        ss[warp] = s;
    }
    __syncthreads();
    m = lane < warps ? sm[lane] : -INFINITY;
    s = lane < warps ? ss[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        fold(m, s, m2, s2);
    }
    const float lse = m + logf(s);
    const unsigned t = targets[row];
    const bool ignored = t == IGNORE || t >= (unsigned)v;
    // Every thread has read the target's logit before any thread overwrites the row.
    const float picked = ignored ? 0.f : to_f32(x[t]);
    if (threadIdx.x == 0) loss[row] = ignored ? 0.f : lse - picked;
    if (!write_grad) return;
    __syncthreads();
    const float k = row_scale == nullptr ? scale : scale * row_scale[row];
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        const float p = __expf(to_f32(x[j]) - lse);
        x[j] = from_f32<T>(ignored ? 0.f : (p - (j == (int)t ? 1.f : 0.f)) * k);
    }
}

#define ENTRY(T, S)                                                                                      \
    extern "C" __global__ void cross_entropy_rows_##S(T* logits, const unsigned* targets, float* loss,  \
                                                      int v, float scale, const float* row_scale,        \
                                                      int write_grad) {                                  \
        rows<T>(logits, targets, loss, v, scale, row_scale, write_grad);                                 \
    }
FOR_EACH_TYPE(ENTRY)
