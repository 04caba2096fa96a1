// Cross-entropy of rows of logits, in place: one block per row computes the row's log-sum-exp in
// one pass (each thread a running maximum and sum, one exponential per element, then combined over
// the block; 16-byte loads where the rows allow), writes the row's
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

// Adds exp(x − m) to the running sum s, first moving the maximum m up to x when x exceeds it: one
// exponential per element, two when the maximum moves.
__device__ __forceinline__ void push(float& m, float& s, float x) {
    if (x == -INFINITY) return;
    if (x > m) {
        s = s * __expf(m - x) + 1.f;
        m = x;
    } else {
        s += __expf(x - m);
    }
}

template <typename T>
__device__ void rows(T* logits, const unsigned* targets, float* loss, int v, float scale, const float* row_scale,
                     int write_grad) {
    constexpr int N = Vec16<T>::N;
    __shared__ float sm[32], ss[32];
    const size_t row = blockIdx.x;
    T* x = logits + row * v;
    const bool wide = v % N == 0 && aligned16(logits);
    float m = -INFINITY, s = 0.f;
    if (wide) {
        for (int j = N * threadIdx.x; j < v; j += N * blockDim.x) {
            Vec16<T> c;
            c.load(x + j);
            for (int e = 0; e < N; ++e) push(m, s, to_f32(c.e()[e]));
        }
    } else {
        for (int j = threadIdx.x; j < v; j += blockDim.x) push(m, s, to_f32(x[j]));
    }
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
    // (softmax − onehot) · k of one logit at index j.
    auto grad = [&](float xj, int j) { return ignored ? 0.f : (__expf(xj - lse) - (j == (int)t ? 1.f : 0.f)) * k; };
    if (wide) {
        for (int j = N * threadIdx.x; j < v; j += N * blockDim.x) {
            Vec16<T> c;
            c.load(x + j);
            for (int e = 0; e < N; ++e) c.e()[e] = from_f32<T>(grad(to_f32(c.e()[e]), j + e));
            c.store(x + j);
        }
    } else {
        for (int j = threadIdx.x; j < v; j += blockDim.x) x[j] = from_f32<T>(grad(to_f32(x[j]), j));
    }
}

// Launched with 1,024 threads: the bound keeps the compiler (ptxas here, the driver's JIT there)
// within 64 registers a thread, or the launch would fail for want of registers.
#define ENTRY(T, S)                                                                                      \
    extern "C" __global__ void __launch_bounds__(1024)                                                   \
    cross_entropy_rows_##S(T* logits, const unsigned* targets, float* loss, int v, float scale,          \
                           const float* row_scale, int write_grad) {                                     \
        rows<T>(logits, targets, loss, v, scale, row_scale, write_grad);                                 \
    }
FOR_EACH_TYPE(ENTRY)
