// SwiGLU's gate, h = silu(a) ⊙ b = a · σ(a) · b, and its backward from the upstream gradient g:
// da = g · b · σ(a) · (1 + a · (1 − σ(a))), db = g · a · σ(a).
//
// Over `rows` rows of `f` columns: a and b are read with row stride `ld_in` (f for separate
// tensors; 2f for the gate and up projections side by side in one product's output, b = a + f),
// da and db are written with row stride `ld_out` likewise, h contiguous. Blocks stride over rows,
// threads over a row's columns, 16 bytes at a time (8 bf16 or 4 f32) when every row start is
// 16-byte aligned, one element at a time otherwise. The backward can also write h (recomputed from
// a and b), which the down projection's weight gradient needs, in the same pass over a and b.
#include "common.cuh"

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }

// Whether every row start of every operand is 16-byte aligned.
template <typename T, typename... P>
__device__ __forceinline__ bool rows_aligned(int f, long long ld_in, long long ld_out, const P*... p) {
    constexpr int N = Vec16<T>::N;
    return aligned16(p...) && f % N == 0 && ld_in % N == 0 && ld_out % N == 0;
}

template <typename T>
__device__ void forward(const T* a, const T* b, T* h, int rows, int f, long long ld_in) {
    constexpr int N = Vec16<T>::N;
    const bool wide = rows_aligned<T>(f, ld_in, f, a, b, h);
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const T *ar = a + row * ld_in, *br = b + row * ld_in;
        T* hr = h + (size_t)row * f;
        if (wide) {
            for (int c = N * threadIdx.x; c < f; c += N * blockDim.x) {
                Vec16<T> va, vb, vh;
                va.load(ar + c);
                vb.load(br + c);
                for (int j = 0; j < N; ++j) {
                    const float x = to_f32(va.e()[j]);
                    vh.e()[j] = from_f32<T>(x * sigmoid(x) * to_f32(vb.e()[j]));
                }
                vh.store(hr + c);
            }
        } else {
            for (int c = threadIdx.x; c < f; c += blockDim.x) {
                const float x = to_f32(ar[c]);
                hr[c] = from_f32<T>(x * sigmoid(x) * to_f32(br[c]));
            }
        }
    }
}

// One element's backward: (da, db) and h.
__device__ __forceinline__ void element_backward(float x, float y, float gi, float& da, float& db, float& h) {
    const float s = sigmoid(x);
    da = gi * y * s * (1.f + x * (1.f - s));
    db = gi * x * s;
    h = x * s * y;
}

template <typename T>
__device__ void backward(const T* a, const T* b, const T* g, T* da, T* db, T* h, int rows, int f, long long ld_in,
                         long long ld_out) {
    constexpr int N = Vec16<T>::N;
    const bool wide = rows_aligned<T>(f, ld_in, ld_out, a, b, g, da, db, h);
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const T *ar = a + row * ld_in, *br = b + row * ld_in, *gr = g + (size_t)row * f;
        T *dar = da + row * ld_out, *dbr = db + row * ld_out, *hr = h ? h + (size_t)row * f : nullptr;
        if (wide) {
            for (int c = N * threadIdx.x; c < f; c += N * blockDim.x) {
                Vec16<T> va, vb, vg, vda, vdb, vh;
                va.load(ar + c);
                vb.load(br + c);
                vg.load(gr + c);
                for (int j = 0; j < N; ++j) {
                    float x, y, z;
                    element_backward(to_f32(va.e()[j]), to_f32(vb.e()[j]), to_f32(vg.e()[j]), x, y, z);
                    vda.e()[j] = from_f32<T>(x);
                    vdb.e()[j] = from_f32<T>(y);
                    vh.e()[j] = from_f32<T>(z);
                }
                vda.store(dar + c);
                vdb.store(dbr + c);
                if (hr) vh.store(hr + c);
            }
        } else {
            for (int c = threadIdx.x; c < f; c += blockDim.x) {
                float x, y, z;
                element_backward(to_f32(ar[c]), to_f32(br[c]), to_f32(gr[c]), x, y, z);
                dar[c] = from_f32<T>(x);
                dbr[c] = from_f32<T>(y);
                if (hr) hr[c] = from_f32<T>(z);
            }
        }
    }
}

#define ENTRY(T, S)                                                                                        \
    extern "C" __global__ void swiglu_fwd_##S(const T* a, const T* b, T* h, int rows, int f, long long ld_in) { \
        forward<T>(a, b, h, rows, f, ld_in);                                                               \
    }                                                                                                      \
    extern "C" __global__ void swiglu_bwd_##S(const T* a, const T* b, const T* g, T* da, T* db, T* h, int rows, \
                                              int f, long long ld_in, long long ld_out) {                  \
        backward<T>(a, b, g, da, db, h, rows, f, ld_in, ld_out);                                           \
    }
FOR_EACH_TYPE(ENTRY)
