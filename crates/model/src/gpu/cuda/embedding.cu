// The embedding table's gradient, row by row in a fixed order. The looked-up rows' gradients
// (grad, n × d) are grouped by token id on the host beforehand: `order` lists the row indices id
// by id (each id's rows in batch order), and `starts` where each of the `ids` present begins in it
// (one more entry at the end). Block b sums the rows of ids[b] into that row of `out` (vocab × d,
// f32, zeroed by the caller for the ids absent), its threads across the columns: no two blocks
// write one row, and each sum runs in the same order every time, so the gradient is the same bits
// run after run. (A general index-add gives one thread to each column and walks every row in
// sequence, all on one block.)
#include "common.cuh"

template <typename T>
__device__ void embedding_bwd(const unsigned* order, const unsigned* starts, const unsigned* ids, const T* grad,
                              float* out, int d) {
    const unsigned first = starts[blockIdx.x], end = starts[blockIdx.x + 1];
    float* row = out + (size_t)ids[blockIdx.x] * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float sum = 0.f;
        for (unsigned j = first; j < end; ++j) sum += to_f32(grad[(size_t)order[j] * d + c]);
        row[c] = sum;
    }
}

#define ENTRY(T, S)                                                                                        \
    extern "C" __global__ void embedding_bwd_##S(const unsigned* order, const unsigned* starts,            \
                                                 const unsigned* ids, const T* grad, float* out, int d) {   \
        embedding_bwd<T>(order, starts, ids, grad, out, d);                                                \
    }
FOR_EACH_TYPE(ENTRY)
