// Causal attention on the tensor cores, bf16 only: the FlashAttention-2 walk of attention.cu (64
// rows per block, tiles of 64, online softmax, log-sum-exp kept; dQ per query tile and dK, dV per
// key tile in the backward) with every product as 16 × 16 × 16 bf16 matrix multiply-accumulates in
// f32 (WMMA). Four warps, each owning 16 rows of the block: a warp writes its products to shared
// memory, two lanes per row turn them into probabilities or their gradients (bf16 for the next
// product), and the accumulators live in shared memory in f32 between tiles. Same layouts, masks,
// inputs and outputs as attention.cu.
#include <mma.h>

#include "attention.cuh"

namespace tc {

using namespace nvcuda;
constexpr int WARPS = 4;
constexpr int THREADS = 32 * WARPS;

// Rows first..first+TILE of a position-major bf16 tensor into `dst` (row stride ld; zeros past limit).
template <int HD>
__device__ __forceinline__ void load_tile(__nv_bfloat16* dst, int ld, const __nv_bfloat16* base, long long st,
                                          int first, int limit) {
    for (int i = threadIdx.x; i < TILE * HD; i += THREADS) {
        const int r = i / HD, d = i % HD, pos = first + r;
        dst[r * ld + d] = pos < limit ? base[(long long)pos * st + d] : __float2bfloat16_rn(0.f);
    }
}

// A (16 × 64) f32 block of `dst` (row stride LDS) = rows of `a` times rows of `b` transposed
// (both bf16, row stride LDH, HD columns): the scores of 16 rows against a tile.
template <int HD>
__device__ __forceinline__ void rows_times_tile(float* dst, int lds, const __nv_bfloat16* a, const __nv_bfloat16* b,
                                                int ldh) {
    for (int n = 0; n < TILE / 16; ++n) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.f);
        for (int kk = 0; kk < HD / 16; ++kk) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
            wmma::load_matrix_sync(fa, a + 16 * kk, ldh);
            wmma::load_matrix_sync(fb, b + 16 * n * ldh + 16 * kk, ldh);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(dst + 16 * n, acc, lds, wmma::mem_row_major);
    }
}

// The f32 accumulators `acc` (16 × HD, row stride LDO) += `w` (16 × 64 bf16, row stride LDP) times
// the tile `b` (64 × HD bf16, row stride LDH).
template <int HD>
__device__ __forceinline__ void accumulate_tile(float* acc_rows, int ldo, const __nv_bfloat16* w, int ldp,
                                                const __nv_bfloat16* b, int ldh) {
    for (int n = 0; n < HD / 16; ++n) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::load_matrix_sync(acc, acc_rows + 16 * n, ldo, wmma::mem_row_major);
        for (int kk = 0; kk < TILE / 16; ++kk) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
            wmma::load_matrix_sync(fa, w + 16 * kk, ldp);
            wmma::load_matrix_sync(fb, b + 16 * kk * ldh + 16 * n, ldh);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(acc_rows + 16 * n, acc, ldo, wmma::mem_row_major);
    }
}

template <int HD>
__device__ void forward(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, __nv_bfloat16* o,
                        float* lse, const unsigned* seg, int heads, int kv_heads, int t, int s, int start, float scale,
                        Strides qs, Strides ks, Strides vs) {
    constexpr int LDH = HD + 8;    // bf16 tiles
    constexpr int LDS = TILE + 4;  // f32 scores
    constexpr int LDP = TILE + 8;  // bf16 probabilities
    constexpr int LDO = HD + 4;    // f32 outputs
    DYNAMIC_SHARED(smem);
    float* so = smem;                        // [TILE][LDO]
    float* ss = so + TILE * LDO;             // [TILE][LDS]
    __nv_bfloat16* sq = reinterpret_cast<__nv_bfloat16*>(ss + TILE * LDS);
    __nv_bfloat16* sk = sq + TILE * LDH;
    __nv_bfloat16* sv = sk + TILE * LDH;
    __nv_bfloat16* sp = sv + TILE * LDH;     // [TILE][LDP]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.y / heads, h = blockIdx.y % heads, kvh = h / (heads / kv_heads);
    const int q0 = blockIdx.x * TILE;
    // Softmax bookkeeping: lanes 2r and 2r + 1 of a warp share row 16·warp + r, each half its columns.
    const int row = 16 * warp + (lane >> 1), half = lane & 1, qi = q0 + row;
    load_tile<HD>(sq, LDH, q + b * qs.b + h * qs.h, qs.t, q0, t);
    for (int i = threadIdx.x; i < TILE * LDO; i += THREADS) so[i] = 0.f;
    const __nv_bfloat16* kb = k + b * ks.b + kvh * ks.h;
    const __nv_bfloat16* vb = v + b * vs.b + kvh * vs.h;
    float m = -INFINITY, l = 0.f;
    const int end = min(s, start + q0 + TILE);
    for (int k0 = 0; k0 < end; k0 += TILE) {
        __syncthreads();
        load_tile<HD>(sk, LDH, kb, ks.t, k0, s);
        load_tile<HD>(sv, LDH, vb, vs.t, k0, s);
        __syncthreads();
        // S (16 × 64) = Q_warp · Kᵀ.
        rows_times_tile<HD>(ss + 16 * warp * LDS, LDS, sq + 16 * warp * LDH, sk, LDH);
        __syncwarp();
        // Online softmax over this row's half of the tile.
        float* srow = ss + row * LDS + 32 * half;
        float mx = -INFINITY;
        for (int c = 0; c < 32; ++c) {
            const float x = visible(qi, k0 + 32 * half + c, b, t, s, start, seg) ? srow[c] * scale : -INFINITY;
            srow[c] = x;
            mx = fmaxf(mx, x);
        }
        const float next = fmaxf(m, fmaxf(mx, __shfl_xor_sync(FULL, mx, 1)));
        const float alpha = next == -INFINITY ? 1.f : __expf(m - next);
        float sum = 0.f;
        __nv_bfloat16* prow = sp + row * LDP + 32 * half;
        for (int c = 0; c < 32; ++c) {
            const float p = next == -INFINITY ? 0.f : __expf(srow[c] - next);
            sum += p;
            prow[c] = __float2bfloat16_rn(p);
        }
        l = l * alpha + sum + __shfl_xor_sync(FULL, sum, 1);
        m = next;
        float* orow = so + row * LDO + (HD / 2) * half;
        for (int d = 0; d < HD / 2; ++d) orow[d] *= alpha;
        __syncwarp();
        // O_warp (16 × HD) += P_warp (16 × 64) · V.
        accumulate_tile<HD>(so + 16 * warp * LDO, LDO, sp + 16 * warp * LDP, LDP, sv, LDH);
        __syncwarp();
    }
    if (qi < t) {
        const float inv = l > 0.f ? 1.f / l : 0.f;
        __nv_bfloat16* out = o + (((size_t)b * t + qi) * heads + h) * HD + (HD / 2) * half;
        const float* orow = so + row * LDO + (HD / 2) * half;
        for (int d = 0; d < HD / 2; ++d) out[d] = __float2bfloat16_rn(orow[d] * inv);
        if (half == 0) lse[(size_t)blockIdx.y * t + qi] = m + logf(l);
    }
}

// dQ = scale · Σ_keys dS · K, dS = P ⊙ (dO·Vᵀ − D), P from the kept log-sum-exp. dout is
// (B, T, H, hd) contiguous, dsum D is (B, T, H), dq is written (B, H, T, hd).
template <int HD>
__device__ void backward_dq(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                            const __nv_bfloat16* dout, const float* lse, const float* dsum, const unsigned* seg,
                            __nv_bfloat16* dq, int heads, int kv_heads, int t, int s, int start, float scale,
                            Strides qs, Strides ks, Strides vs) {
    constexpr int LDH = HD + 8, LDS = TILE + 4, LDP = TILE + 8, LDO = HD + 4;
    DYNAMIC_SHARED(smem);
    float* sacc = smem;                     // [TILE][LDO] dQ accumulators
    float* sp = sacc + TILE * LDO;          // [TILE][LDS] scores, then probabilities
    float* sdp = sp + TILE * LDS;           // [TILE][LDS] dO·Vᵀ
    __nv_bfloat16* sq = reinterpret_cast<__nv_bfloat16*>(sdp + TILE * LDS);
    __nv_bfloat16* sdo = sq + TILE * LDH;
    __nv_bfloat16* sk = sdo + TILE * LDH;
    __nv_bfloat16* sv = sk + TILE * LDH;
    __nv_bfloat16* sds = sv + TILE * LDH;   // [TILE][LDP]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.y / heads, h = blockIdx.y % heads, kvh = h / (heads / kv_heads);
    const int q0 = blockIdx.x * TILE;
    const int row = 16 * warp + (lane >> 1), half = lane & 1, qi = q0 + row;
    load_tile<HD>(sq, LDH, q + b * qs.b + h * qs.h, qs.t, q0, t);
    load_tile<HD>(sdo, LDH, dout + ((size_t)b * t * heads + h) * HD, (long long)heads * HD, q0, t);
    for (int i = threadIdx.x; i < TILE * LDO; i += THREADS) sacc[i] = 0.f;
    const float row_lse = qi < t ? lse[(size_t)blockIdx.y * t + qi] : 0.f;
    const float row_d = qi < t ? dsum[((size_t)b * t + qi) * heads + h] : 0.f;
    const __nv_bfloat16* kb = k + b * ks.b + kvh * ks.h;
    const __nv_bfloat16* vb = v + b * vs.b + kvh * vs.h;
    const int end = min(s, start + q0 + TILE);
    for (int k0 = 0; k0 < end; k0 += TILE) {
        __syncthreads();
        load_tile<HD>(sk, LDH, kb, ks.t, k0, s);
        load_tile<HD>(sv, LDH, vb, vs.t, k0, s);
        __syncthreads();
        rows_times_tile<HD>(sp + 16 * warp * LDS, LDS, sq + 16 * warp * LDH, sk, LDH);
        rows_times_tile<HD>(sdp + 16 * warp * LDS, LDS, sdo + 16 * warp * LDH, sv, LDH);
        __syncwarp();
        const float* prow = sp + row * LDS + 32 * half;
        const float* dprow = sdp + row * LDS + 32 * half;
        __nv_bfloat16* dsrow = sds + row * LDP + 32 * half;
        for (int c = 0; c < 32; ++c) {
            const bool ok = visible(qi, k0 + 32 * half + c, b, t, s, start, seg);
            const float p = ok ? __expf(prow[c] * scale - row_lse) : 0.f;
            dsrow[c] = __float2bfloat16_rn(p * (dprow[c] - row_d));
        }
        __syncwarp();
        accumulate_tile<HD>(sacc + 16 * warp * LDO, LDO, sds + 16 * warp * LDP, LDP, sk, LDH);
        __syncwarp();
    }
    if (qi < t) {
        __nv_bfloat16* out = dq + (((size_t)b * heads + h) * t + qi) * HD + (HD / 2) * half;
        const float* arow = sacc + row * LDO + (HD / 2) * half;
        for (int d = 0; d < HD / 2; ++d) out[d] = __float2bfloat16_rn(arow[d] * scale);
    }
}

// dV = Σ_queries P · dO and dK = scale · Σ_queries dS · Q for a tile of keys of one key/value head,
// over every query head it serves; rows are keys. dk and dv are written (B, KV, S, hd).
template <int HD>
__device__ void backward_dkv(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                             const __nv_bfloat16* dout, const float* lse, const float* dsum, const unsigned* seg,
                             __nv_bfloat16* dk, __nv_bfloat16* dv, int heads, int kv_heads, int t, int s, int start,
                             float scale, Strides qs, Strides ks, Strides vs) {
    constexpr int LDH = HD + 8, LDS = TILE + 4, LDP = TILE + 8, LDO = HD + 4;
    DYNAMIC_SHARED(smem);
    float* sdk = smem;                      // [TILE][LDO]
    float* sdv = sdk + TILE * LDO;          // [TILE][LDO]
    float* sst = sdv + TILE * LDO;          // [TILE][LDS] Sᵀ (keys × queries)
    float* sdpt = sst + TILE * LDS;         // [TILE][LDS] (dO·Vᵀ)ᵀ
    float* slse = sdpt + TILE * LDS;        // [TILE]
    float* sd = slse + TILE;                // [TILE]
    __nv_bfloat16* sk = reinterpret_cast<__nv_bfloat16*>(sd + TILE);
    __nv_bfloat16* sv = sk + TILE * LDH;
    __nv_bfloat16* sq = sv + TILE * LDH;
    __nv_bfloat16* sdo = sq + TILE * LDH;
    __nv_bfloat16* spt = sdo + TILE * LDH;  // [TILE][LDP] Pᵀ
    __nv_bfloat16* sdst = spt + TILE * LDP; // [TILE][LDP] dSᵀ
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.y / kv_heads, kvh = blockIdx.y % kv_heads, group = heads / kv_heads;
    const int k0 = blockIdx.x * TILE;
    const int row = 16 * warp + (lane >> 1), half = lane & 1, kp = k0 + row;
    load_tile<HD>(sk, LDH, k + b * ks.b + kvh * ks.h, ks.t, k0, s);
    load_tile<HD>(sv, LDH, v + b * vs.b + kvh * vs.h, vs.t, k0, s);
    for (int i = threadIdx.x; i < TILE * LDO; i += THREADS) sdk[i] = sdv[i] = 0.f;
    const int first = max(0, k0 - start) / TILE * TILE;
    for (int g = 0; g < group; ++g) {
        const int h = kvh * group + g;
        for (int q0 = first; q0 < t; q0 += TILE) {
            __syncthreads();
            load_tile<HD>(sq, LDH, q + b * qs.b + h * qs.h, qs.t, q0, t);
            load_tile<HD>(sdo, LDH, dout + ((size_t)b * t * heads + h) * HD, (long long)heads * HD, q0, t);
            for (int i = threadIdx.x; i < TILE; i += THREADS) {
                const int qi = q0 + i;
                slse[i] = qi < t ? lse[((size_t)b * heads + h) * t + qi] : 0.f;
                sd[i] = qi < t ? dsum[((size_t)b * t + qi) * heads + h] : 0.f;
            }
            __syncthreads();
            rows_times_tile<HD>(sst + 16 * warp * LDS, LDS, sk + 16 * warp * LDH, sq, LDH);
            rows_times_tile<HD>(sdpt + 16 * warp * LDS, LDS, sv + 16 * warp * LDH, sdo, LDH);
            __syncwarp();
            const float* srow = sst + row * LDS + 32 * half;
            const float* dprow = sdpt + row * LDS + 32 * half;
            __nv_bfloat16* prow = spt + row * LDP + 32 * half;
            __nv_bfloat16* dsrow = sdst + row * LDP + 32 * half;
            for (int c = 0; c < 32; ++c) {
                const int col = 32 * half + c;
                const bool ok = visible(q0 + col, kp, b, t, s, start, seg);
                const float p = ok ? __expf(srow[c] * scale - slse[col]) : 0.f;
                prow[c] = __float2bfloat16_rn(p);
                dsrow[c] = __float2bfloat16_rn(p * (dprow[c] - sd[col]));
            }
            __syncwarp();
            accumulate_tile<HD>(sdv + 16 * warp * LDO, LDO, spt + 16 * warp * LDP, LDP, sdo, LDH);
            accumulate_tile<HD>(sdk + 16 * warp * LDO, LDO, sdst + 16 * warp * LDP, LDP, sq, LDH);
            __syncwarp();
        }
    }
    if (kp < s) {
        const size_t at = (((size_t)b * kv_heads + kvh) * s + kp) * HD + (HD / 2) * half;
        const float *krow = sdk + row * LDO + (HD / 2) * half, *vrow = sdv + row * LDO + (HD / 2) * half;
        for (int d = 0; d < HD / 2; ++d) {
            dk[at + d] = __float2bfloat16_rn(krow[d] * scale);
            dv[at + d] = __float2bfloat16_rn(vrow[d]);
        }
    }
}

}  // namespace tc

#define ENTRY(HD)                                                                                            \
    extern "C" __global__ void __launch_bounds__(tc::THREADS) attention_fwd_tc_hd##HD##_bf16(                \
        const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, __nv_bfloat16* o, float* lse, \
        const unsigned* seg, int heads, int kv_heads, int t, int s, int start, float scale, long long qb,    \
        long long qh, long long qt, long long kb, long long kh, long long kt, long long vb, long long vh,     \
        long long vt) {                                                                                      \
        tc::forward<HD>(q, k, v, o, lse, seg, heads, kv_heads, t, s, start, scale, {qb, qh, qt}, {kb, kh, kt}, \
                        {vb, vh, vt});                                                                       \
    }
#define ENTRY_BWD(HD)                                                                                        \
    extern "C" __global__ void __launch_bounds__(tc::THREADS) attention_bwd_dq_tc_hd##HD##_bf16(             \
        const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const __nv_bfloat16* dout,    \
        const float* lse, const float* dsum, const unsigned* seg, __nv_bfloat16* dq, int heads, int kv_heads, \
        int t, int s, int start, float scale, long long qb, long long qh, long long qt, long long kb,          \
        long long kh, long long kt, long long vb, long long vh, long long vt) {                              \
        tc::backward_dq<HD>(q, k, v, dout, lse, dsum, seg, dq, heads, kv_heads, t, s, start, scale,           \
                            {qb, qh, qt}, {kb, kh, kt}, {vb, vh, vt});                                       \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(tc::THREADS) attention_bwd_dkv_tc_hd##HD##_bf16(            \
        const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const __nv_bfloat16* dout,    \
        const float* lse, const float* dsum, const unsigned* seg, __nv_bfloat16* dk, __nv_bfloat16* dv,       \
        int heads, int kv_heads, int t, int s, int start, float scale, long long qb, long long qh,            \
        long long qt, long long kb, long long kh, long long kt, long long vb, long long vh, long long vt) {     \
        tc::backward_dkv<HD>(q, k, v, dout, lse, dsum, seg, dk, dv, heads, kv_heads, t, s, start, scale,      \
                             {qb, qh, qt}, {kb, kh, kt}, {vb, vh, vt});                                      \
    }
ENTRY(64)
ENTRY(128)
ENTRY_BWD(64)
ENTRY_BWD(128)
