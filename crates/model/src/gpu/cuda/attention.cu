// Causal attention without the (T × S) score matrix, after FlashAttention-2: a block takes 64
// query rows of one head and walks the key tiles of 64 up to the diagonal, keeping a running
// maximum, sum and output per row (online softmax); the log-sum-exp of each row is kept for the
// backward pass. The backward recomputes the probabilities tile by tile, in two kernels without
// atomics: one per query tile for dQ, one per key tile of a key/value head (all the query heads it
// serves) for dK and dV.
//
// Layouts: q (B, H, T, hd), k and v (B, KV, S, hd), each read through strides (b, head, position)
// with the last dimension contiguous; the output is written as (B, T, H · hd), the heads side by
// side for the output projection. Query t sits at position start + t; key s at position s. It
// sees keys at or before it and, with `seg` (packed rows, start 0), at or after seg[b · T + t].
//
// 256 threads: 64 rows × 4 lanes. Lane j of a row owns the scores of columns j, j + 4, … and the
// output dimensions 4j..4j+3, 4j+16.., so tile reads are 16-byte and free of bank conflicts; a
// row's probabilities pass between its 4 lanes by warp shuffles. All arithmetic is f32; tiles are
// held in shared memory as f32, rows padded by 4.
#include "attention.cuh"

constexpr int THREADS = 256;

// Rows first..first+TILE of a (position-major) tensor at `base` into `dst` (zeros past `limit`).
template <typename T, int HD>
__device__ __forceinline__ void load_tile(float* dst, const T* base, long long st, int first, int limit) {
    constexpr int LD = HD + 4;
    for (int i = threadIdx.x; i < TILE * HD; i += THREADS) {
        const int r = i / HD, d = i % HD, pos = first + r;
        dst[r * LD + d] = pos < limit ? to_f32(base[(long long)pos * st + d]) : 0.f;
    }
}

// Dot products of row `row` of `a` with rows j, j+4, …, j+60 of `b` (both tiles).
template <int HD>
__device__ __forceinline__ void row_dots(const float* a, const float* b, int row, int j, float (&out)[TILE / 4]) {
    constexpr int LD = HD + 4;
#pragma unroll
    for (int c = 0; c < TILE / 4; ++c) out[c] = 0.f;
#pragma unroll 4
    for (int d = 0; d < HD; d += 4) {
        const float4 x = *reinterpret_cast<const float4*>(&a[row * LD + d]);
#pragma unroll
        for (int c = 0; c < TILE / 4; ++c) {
            const float4 y = *reinterpret_cast<const float4*>(&b[(j + 4 * c) * LD + d]);
            out[c] += x.x * y.x + x.y * y.y + x.z * y.z + x.w * y.w;
        }
    }
}

// acc += Σ_columns w[column] · rows of `tile`, where w of column j + 4c is lane j's w[c]; acc holds
// this lane's dimensions (chunks of 4 at 4j + 16i).
template <int HD>
__device__ __forceinline__ void accumulate(const float* tile, const float (&w)[TILE / 4], int j, float (&acc)[HD / 4]) {
    constexpr int LD = HD + 4;
    const int quad = (threadIdx.x & 31) & ~3;
#pragma unroll
    for (int c = 0; c < TILE / 4; ++c) {
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
            const float p = __shfl_sync(FULL, w[c], quad + jj);
            const float* row = &tile[(jj + 4 * c) * LD];
#pragma unroll
            for (int i = 0; i < HD / 16; ++i) {
                const float4 y = *reinterpret_cast<const float4*>(&row[4 * j + 16 * i]);
                acc[4 * i] += p * y.x;
                acc[4 * i + 1] += p * y.y;
                acc[4 * i + 2] += p * y.z;
                acc[4 * i + 3] += p * y.w;
            }
        }
    }
}

template <typename T, int HD>
__device__ void forward(const T* q, const T* k, const T* v, T* o, float* lse, const unsigned* seg, int heads,
                        int kv_heads, int t, int s, int start, float scale, Strides qs, Strides ks, Strides vs) {
    DYNAMIC_SHARED(smem);
    constexpr int LD = HD + 4;
    float *sq = smem, *sk = sq + TILE * LD, *sv = sk + TILE * LD;
    const int r = threadIdx.x >> 2, j = threadIdx.x & 3;
    const auto [b, h, kb, vb] = query_block(k, v, heads, kv_heads, ks, vs);
    const int q0 = blockIdx.x * TILE, qi = q0 + r;
    load_tile<T, HD>(sq, q + b * qs.b + h * qs.h, qs.t, q0, t);
    float m = -INFINITY, l = 0.f, acc[HD / 4] = {};
    const int end = min(s, start + q0 + TILE);
    for (int k0 = 0; k0 < end; k0 += TILE) {
        __syncthreads();
        load_tile<T, HD>(sk, kb, ks.t, k0, s);
        load_tile<T, HD>(sv, vb, vs.t, k0, s);
        __syncthreads();
        float p[TILE / 4];
        row_dots<HD>(sq, sk, r, j, p);
        float mx = -INFINITY;
#pragma unroll
        for (int c = 0; c < TILE / 4; ++c) {
            p[c] = visible(qi, k0 + j + 4 * c, b, t, s, start, seg) ? p[c] * scale : -INFINITY;
            mx = fmaxf(mx, p[c]);
        }
        const float next = fmaxf(m, quad_max(mx));
        // A row that has seen no visible key yet keeps m = −∞ and adds nothing.
        const float alpha = next == -INFINITY ? 1.f : __expf(m - next);
        float sum = 0.f;
#pragma unroll
        for (int c = 0; c < TILE / 4; ++c) {
            p[c] = next == -INFINITY ? 0.f : __expf(p[c] - next);
            sum += p[c];
        }
        l = l * alpha + quad_sum(sum);
        m = next;
#pragma unroll
        for (int i = 0; i < HD / 4; ++i) acc[i] *= alpha;
        accumulate<HD>(sv, p, j, acc);
    }
    if (qi < t) {
        const float inv = l > 0.f ? 1.f / l : 0.f;
        T* row = o + (((size_t)b * t + qi) * heads + h) * HD;
#pragma unroll
        for (int i = 0; i < HD / 16; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) row[4 * j + 16 * i + e] = from_f32<T>(acc[4 * i + e] * inv);
        if (j == 0) lse[(size_t)blockIdx.y * t + qi] = m + logf(l);
    }
}

// A row's gradient at position `pos` in this thread's accumulators (columns 4j + 16i + e for
// i < HD/16, e < 4) taken back through RoPE (see `unrotate`): its columns 4j + 16i + e pair with
// those HD/32 steps of i on.
template <typename T, int HD>
__device__ __forceinline__ void unrotate_row(float (&acc)[HD / 4], const T* cos, const T* sin, int pos, int j) {
#pragma unroll
    for (int i = 0; i < HD / 32; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            unrotate(acc[4 * i + e], acc[4 * (i + HD / 32) + e], cos, sin, pos, 4 * j + 16 * i + e, HD / 2);
}

// dQ = scale · Σ_keys dS · K with dS = P ⊙ (dO·Vᵀ − D), P recomputed from the kept log-sum-exp.
// dout is (B, T, H, hd) contiguous; dsum D is (B, T, H); dq is written positions-major, `ld`
// elements from one position's row of heads to the next (H · hd for (B, T, H, hd)). With RoPE
// tables (`cos` not null) dq is taken back through the rotation that made q (see `unrotate`).
template <typename T, int HD>
__device__ void backward_dq(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* dsum,
                            const unsigned* seg, T* dq, int heads, int kv_heads, int t, int s, int start, float scale,
                            Strides qs, Strides ks, Strides vs, long long ld, const T* cos, const T* sin) {
    DYNAMIC_SHARED(smem);
    constexpr int LD = HD + 4;
    float *sq = smem, *sdo = sq + TILE * LD, *sk = sdo + TILE * LD, *sv = sk + TILE * LD;
    const int r = threadIdx.x >> 2, j = threadIdx.x & 3;
    const auto [b, h, kb, vb] = query_block(k, v, heads, kv_heads, ks, vs);
    const int q0 = blockIdx.x * TILE, qi = q0 + r;
    load_tile<T, HD>(sq, q + b * qs.b + h * qs.h, qs.t, q0, t);
    load_tile<T, HD>(sdo, dout + ((size_t)b * t * heads + h) * HD, (long long)heads * HD, q0, t);
    const float row_lse = qi < t ? lse[(size_t)blockIdx.y * t + qi] : 0.f;
    const float row_d = qi < t ? dsum[((size_t)b * t + qi) * heads + h] : 0.f;
    float acc[HD / 4] = {};
    const int end = min(s, start + q0 + TILE);
    for (int k0 = 0; k0 < end; k0 += TILE) {
        __syncthreads();
        load_tile<T, HD>(sk, kb, ks.t, k0, s);
        load_tile<T, HD>(sv, vb, vs.t, k0, s);
        __syncthreads();
        float p[TILE / 4], dp[TILE / 4];
        row_dots<HD>(sq, sk, r, j, p);
        row_dots<HD>(sdo, sv, r, j, dp);
#pragma unroll
        for (int c = 0; c < TILE / 4; ++c) {
            const float pc = visible(qi, k0 + j + 4 * c, b, t, s, start, seg) ? __expf(p[c] * scale - row_lse) : 0.f;
            p[c] = pc * (dp[c] - row_d);
        }
        accumulate<HD>(sk, p, j, acc);
    }
    if (qi < t) {
        T* row = dq + ((size_t)b * t + qi) * ld + h * HD;
        if (cos) unrotate_row<T, HD>(acc, cos, sin, start + qi, j);
#pragma unroll
        for (int i = 0; i < HD / 16; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) row[4 * j + 16 * i + e] = from_f32<T>(acc[4 * i + e] * scale);
    }
}

// dV = Σ_queries P · dO and dK = scale · Σ_queries dS · Q for a tile of keys of one key/value
// head, over every query head it serves. Rows are keys here; dk and dv are written positions-major,
// `ld` elements from one position's row of heads to the next (KV · hd for (B, S, KV, hd)).
template <typename T, int HD>
__device__ void backward_dkv(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* dsum,
                             const unsigned* seg, T* dk, T* dv, int heads, int kv_heads, int t, int s, int start,
                             float scale, Strides qs, Strides ks, Strides vs, long long ld, const T* cos,
                             const T* sin) {
    DYNAMIC_SHARED(smem);
    constexpr int LD = HD + 4;
    float *sk = smem, *sv = sk + TILE * LD, *sq = sv + TILE * LD, *sdo = sq + TILE * LD;
    float* slse = sdo + TILE * LD;
    float* sd = slse + TILE;
    const int r = threadIdx.x >> 2, j = threadIdx.x & 3;
    const int b = blockIdx.y / kv_heads, kvh = blockIdx.y % kv_heads, group = heads / kv_heads;
    const int k0 = blockIdx.x * TILE, kp = k0 + r;
    load_tile<T, HD>(sk, k + b * ks.b + kvh * ks.h, ks.t, k0, s);
    load_tile<T, HD>(sv, v + b * vs.b + kvh * vs.h, vs.t, k0, s);
    float adk[HD / 4] = {}, adv[HD / 4] = {};
    // Queries before position k0 see none of these keys.
    const int first = max(0, k0 - start) / TILE * TILE;
    for (int g = 0; g < group; ++g) {
        const int h = kvh * group + g;
        for (int q0 = first; q0 < t; q0 += TILE) {
            __syncthreads();
            load_tile<T, HD>(sq, q + b * qs.b + h * qs.h, qs.t, q0, t);
            load_tile<T, HD>(sdo, dout + ((size_t)b * t * heads + h) * HD, (long long)heads * HD, q0, t);
            for (int i = threadIdx.x; i < TILE; i += THREADS) {
                const int qi = q0 + i;
                slse[i] = qi < t ? lse[((size_t)b * heads + h) * t + qi] : 0.f;
                sd[i] = qi < t ? dsum[((size_t)b * t + qi) * heads + h] : 0.f;
            }
            __syncthreads();
            float p[TILE / 4], ds[TILE / 4];
            row_dots<HD>(sk, sq, r, j, p);
            row_dots<HD>(sv, sdo, r, j, ds);
#pragma unroll
            for (int c = 0; c < TILE / 4; ++c) {
                const int col = j + 4 * c;
                const float pc = visible(q0 + col, kp, b, t, s, start, seg) ? __expf(p[c] * scale - slse[col]) : 0.f;
                p[c] = pc;
                ds[c] = pc * (ds[c] - sd[col]);
            }
            accumulate<HD>(sdo, p, j, adv);
            accumulate<HD>(sq, ds, j, adk);
        }
    }
    if (kp < s) {
        const size_t at = ((size_t)b * s + kp) * ld + kvh * HD;
        if (cos) unrotate_row<T, HD>(adk, cos, sin, kp, j);
#pragma unroll
        for (int i = 0; i < HD / 16; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                dk[at + 4 * j + 16 * i + e] = from_f32<T>(adk[4 * i + e] * scale);
                dv[at + 4 * j + 16 * i + e] = from_f32<T>(adv[4 * i + e]);
            }
    }
}

#define ENTRY_HD(T, S, HD)                                                                                  \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_fwd_hd##HD##_##S(                       \
        const T* q, const T* k, const T* v, T* o, float* lse, const unsigned* seg, int heads, int kv_heads,  \
        int t, int s, int start, float scale, long long qb, long long qh, long long qt, long long kb,        \
        long long kh, long long kt, long long vb, long long vh, long long vt) {                             \
        forward<T, HD>(q, k, v, o, lse, seg, heads, kv_heads, t, s, start, scale, {qb, qh, qt}, {kb, kh, kt}, \
                       {vb, vh, vt});                                                                       \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_bwd_dq_hd##HD##_##S(                    \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* dsum,             \
        const unsigned* seg, T* dq, int heads, int kv_heads, int t, int s, int start, float scale,           \
        long long qb, long long qh, long long qt, long long kb, long long kh, long long kt, long long vb,     \
        long long vh, long long vt, long long ld, const T* cos, const T* sin) {                             \
        backward_dq<T, HD>(q, k, v, dout, lse, dsum, seg, dq, heads, kv_heads, t, s, start, scale,           \
                           {qb, qh, qt}, {kb, kh, kt}, {vb, vh, vt}, ld, cos, sin);                         \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_bwd_dkv_hd##HD##_##S(                   \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* dsum,             \
        const unsigned* seg, T* dk, T* dv, int heads, int kv_heads, int t, int s, int start, float scale,    \
        long long qb, long long qh, long long qt, long long kb, long long kh, long long kt, long long vb,     \
        long long vh, long long vt, long long ld, const T* cos, const T* sin) {                             \
        backward_dkv<T, HD>(q, k, v, dout, lse, dsum, seg, dk, dv, heads, kv_heads, t, s, start, scale,      \
                            {qb, qh, qt}, {kb, kh, kt}, {vb, vh, vt}, ld, cos, sin);                        \
    }
#define ENTRY(T, S) ENTRY_HD(T, S, 64) ENTRY_HD(T, S, 128)
FOR_EACH_TYPE(ENTRY)

// D = rowsum(dO ⊙ O) in f32 for `rows` rows of `hd` (dO and O contiguous, (B, T, H · hd) read as
// B·T·H rows): what both backward kernels subtract from dP. One warp per row, one pass over each.
template <typename T>
__device__ void attention_dsum(const T* dout, const T* out, float* dsum, int rows, int hd) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    // Whole blocks step together (every warp shuffles the same number of times).
    for (int first = blockIdx.x * warps; first < rows; first += gridDim.x * warps) {
        const int row = first + (threadIdx.x >> 5);
        float acc = 0.f;
        for (int d = lane; row < rows && d < hd; d += 32)
            acc += to_f32(dout[(size_t)row * hd + d]) * to_f32(out[(size_t)row * hd + d]);
        acc = warp_sum(acc);
        if (row < rows && lane == 0) dsum[row] = acc;
    }
}

#define ENTRY_DSUM(T, S)                                                                                    \
    extern "C" __global__ void attention_dsum_##S(const T* dout, const T* out, float* dsum, int rows, int hd) { \
        attention_dsum<T>(dout, out, dsum, rows, hd);                                                        \
    }
FOR_EACH_TYPE(ENTRY_DSUM)
