// The embedding table's gradient. Row ids[i] of `out` (vocab × d, f32, zeroed by the caller)
// gains row i of `grad` (n × d, the looked-up rows' gradient). One thread per element of grad,
// adding atomically: the same token appears many times in a batch, and this way the whole device
// works at once. (Adding row after row in one thread per column, as a general index-add does,
// walks all n rows in sequence on a single block.) The order of the additions is not fixed, so the
// sum's last bits can differ between runs, as with PyTorch's index_add_ on a GPU.
#include "common.cuh"

template <typename T>
__device__ void embedding_bwd(const unsigned* ids, const T* grad, float* out, int n, int d, int vocab) {
    const size_t total = (size_t)n * d;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const unsigned id = ids[i / d];
        if (id < (unsigned)vocab) atomicAdd(out + (size_t)id * d + i % d, to_f32(grad[i]));
    }
}

#define ENTRY(T, S)                                                                                        \
    extern "C" __global__ void embedding_bwd_##S(const unsigned* ids, const T* grad, float* out, int n, int d, \
                                                 int vocab) {                                              \
        embedding_bwd<T>(ids, grad, out, n, d, vocab);                                                     \
    }
FOR_EACH_TYPE(ENTRY)
