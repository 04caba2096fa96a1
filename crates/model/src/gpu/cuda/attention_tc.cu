// Causal attention on the tensor cores, bf16 only: the FlashAttention-2 walk of attention.cu (64
// query rows per block, tiles of 64 keys, online softmax, log-sum-exp kept; dQ per query tile and
// dK, dV per key tile in the backward) with every product a 16 × 8 × 16 bf16 multiply-accumulate in
// f32 (mma.sync.m16n8k16). Four warps, each owning 16 rows of the block. Scores, probabilities and
// accumulators stay in registers, in the instruction's fragment layout: a row's values sit in the
// four lanes of a group (a row reduction is two shuffles), and the accumulators of one product,
// rounded to bf16, are already the left operand of the next (P·V, dS·K, Pᵀ·dO, dSᵀ·Q). Shared
// memory holds only the tiles every warp reads, each once, row-major with rows padded so that the
// eight rows of an 8 × 8 matrix fall in 32 different banks; fragments come out of it by ldmatrix,
// four matrices a lane-wide instruction, transposed on the way (.trans) for operands read along
// positions (V in P·V, K in dS·K, dO and Q in the key-side products). Operands' rows start on
// 8-element boundaries (16-byte loads). Same layouts, masks, inputs and outputs as attention.cu.
#include "attention.cuh"

namespace tc {

constexpr int WARPS = 4;
constexpr int THREADS = 32 * WARPS;

#ifdef __CUDA_ARCH__
// d (16 × 8, f32) += a (16 × 16, bf16) · b (16 × 8, bf16), one warp; fragments as the PTX ISA lays
// them out for m16n8k16 (a host emulation of the kernels defines it otherwise).
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8 × 8 bf16 matrices from shared memory into r[0..4], one warp: lane l gives the address of
// row l % 8 of matrix l / 8 (16 bytes, 16-byte aligned); lane 4g + i receives elements 2i and
// 2i + 1 of each matrix's row g, lower element in the lower half, as the PTX ISA lays out ldmatrix
// (a host emulation defines these otherwise).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* row) {
    const unsigned at = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(at));
}

// Sixteen bytes from global `src` to shared `dst` without waiting (zeros instead when !valid, src
// then unread); a thread's copies since the last commit form a group, and wait<N> returns once at
// most N of its groups are still in flight. Other threads' copies are seen after a barrier.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    const unsigned at = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(at), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Two matrices, transposed: lanes 0..16 give the rows (the other lanes' addresses are not read),
// and lane 4g + i receives elements g of rows 2i and 2i + 1 of each, its column g.
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const __nv_bfloat16* row) {
    const unsigned at = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(at));
}
#endif

// Two values rounded to bf16 and packed low first, as an operand register holds them.
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
    return uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
           (uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16);
}

// Each loader below has lane l point at row l % 8 of matrix m = l / 8 of a row-major tile (row
// stride ld), so that ldmatrix's four registers are the operand fragments of mma.m16n8k16 (lane
// 4g + i: A's rows g and g + 8 at columns 2i, 2i + 1 and 2i + 8, 2i + 9; B's column g at rows 2i,
// 2i + 1 and 2i + 8, 2i + 9).

// The left operand (16 × 16) at rows r.., columns c..: matrices rows r.. and r + 8.. at columns c..,
// then the same at c + 8...
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const __nv_bfloat16* tile, int ld, int r, int c) {
    const int lane = threadIdx.x & 31, m = lane >> 3;
    ldmatrix_x4(a, tile + (r + (lane & 7) + 8 * (m & 1)) * ld + c + 8 * (m >> 1));
}

// Two right operands (16 × 8 each), b[0..2] and b[2..4], whose column j is row n + j, then row
// n + 8 + j, of the tile, read from column c: (tile[n..n + 16][c..c + 16])ᵀ. Products of rows of
// one tile against rows of another (Q·Kᵀ, dO·Vᵀ and their transposes) take these.
__device__ __forceinline__ void load_b2(uint32_t (&b)[4], const __nv_bfloat16* tile, int ld, int n, int c) {
    const int lane = threadIdx.x & 31, m = lane >> 3;
    ldmatrix_x4(b, tile + (n + (lane & 7) + 8 * (m >> 1)) * ld + c + 8 * (m & 1));
}

// The right operand (16 × 8) that is the tile's own block at rows k.., columns n..: tile[k..k +
// 16][n..n + 8], read through ldmatrix's transposition (matrices rows k.. and k + 8..). The
// products of a result along positions with a tile of positions (P·V, dS·K, Pᵀ·dO, dSᵀ·Q) take
// these. One operand a load rather than two: at head size 128 the dK/dV kernel's accumulators fill
// the register file, and the four registers of a paired load made it spill.
__device__ __forceinline__ void load_bt(uint32_t (&b)[2], const __nv_bfloat16* tile, int ld, int k, int n) {
    const int lane = threadIdx.x & 31, m = (lane >> 3) & 1;
    ldmatrix_x2_trans(b, tile + (k + (lane & 7) + 8 * m) * ld + n);
}

// The left operand made of two accumulator tiles side by side (columns 16j.. of a 16-row result
// whose tiles 2j and 2j + 1 these are), rounded to bf16: the same lanes hold the same elements.
__device__ __forceinline__ void to_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
    a[0] = pack(lo[0], lo[1]);
    a[1] = pack(lo[2], lo[3]);
    a[2] = pack(hi[0], hi[1]);
    a[3] = pack(hi[2], hi[3]);
}

// Rows first..first + TILE of a position-major bf16 operand (row stride st; HD columns) into `dst`,
// row-major with row stride HD + 8, zeros past `limit`. Sixteen bytes per load; a warp takes
// consecutive chunks of a row.
template <int HD>
__device__ __forceinline__ void load_tile(__nv_bfloat16* dst, const __nv_bfloat16* base, long long st, int first,
                                          int limit) {
    constexpr int CHUNKS = HD / 8;
    for (int i = threadIdx.x; i < TILE * CHUNKS; i += THREADS) {
        const int r = i / CHUNKS, d = 8 * (i % CHUNKS);
        const int pos = first + r;
        uint4 x = make_uint4(0, 0, 0, 0);
        if (pos < limit) x = *reinterpret_cast<const uint4*>(base + pos * st + d);
        *reinterpret_cast<uint4*>(dst + r * (HD + 8) + d) = x;
    }
}

// load_tile's copy started without waiting (cp.async), to be waited for by the caller; rows past
// `limit` are zeros (their source, pointed at row `first`, which every caller has below `limit`, is
// not read).
template <int HD>
__device__ __forceinline__ void load_tile_async(__nv_bfloat16* dst, const __nv_bfloat16* base, long long st,
                                                int first, int limit) {
    constexpr int CHUNKS = HD / 8;
    for (int i = threadIdx.x; i < TILE * CHUNKS; i += THREADS) {
        const int r = i / CHUNKS, d = 8 * (i % CHUNKS);
        const int pos = first + r;
        cp_async16(dst + r * (HD + 8) + d, base + (pos < limit ? pos : first) * st + d, pos < limit);
    }
}

// A double-buffered walk's turn at `step` of `steps`: starts the next step's loads
// (`fetch(step + 1)`, which commits its cp.async group) and waits, block-wide, for this step's.
// Every warp must be done with the half the next step refills (the previous step's) beforehand.
template <typename Fetch> __device__ __forceinline__ void arrive(int step, int steps, const Fetch& fetch) {
    if (step + 1 < steps) {
        fetch(step + 1);
        cp_async_wait<1>();
    } else {
        cp_async_wait<0>();
    }
    __syncthreads();
}

// The key and value tiles of a query block's walk over keys, double-buffered in shared memory laid
// out [half][K, V][TILE][HD + 8]: step j's tiles (keys 64j..) load by cp.async into half j % 2
// while step j − 1 computes on the other half.
template <int HD> struct KvTiles {
    static constexpr int LDH = HD + 8;
    __nv_bfloat16* smem;
    const __nv_bfloat16 *kb, *vb;
    long long kt, vt;
    int s, steps;

    __device__ __forceinline__ __nv_bfloat16* k(int step) const { return smem + (step & 1) * 2 * TILE * LDH; }
    __device__ __forceinline__ __nv_bfloat16* v(int step) const { return k(step) + TILE * LDH; }
    __device__ __forceinline__ void fetch(int step) const {
        load_tile_async<HD>(k(step), kb, kt, step * TILE, s);
        load_tile_async<HD>(v(step), vb, vt, step * TILE, s);
        cp_async_commit();
    }
    // The walk's turn at `step` (tc::arrive).
    __device__ __forceinline__ void arrive(int step) const {
        ::tc::arrive(step, steps, [this](int next) { fetch(next); });
    }
};

// Takes rows r and r + 8 of a 16 × HD accumulator (positions pos0 and pos8) back through RoPE
// (see `unrotate`): this lane's columns 8n + c, + 1 pair with those HD/16 tiles on.
template <int HD>
__device__ __forceinline__ void unrotate_rows(float (&acc)[HD / 8][4], const __nv_bfloat16* cos,
                                              const __nv_bfloat16* sin, int pos0, int pos8) {
    const int c = 2 * (threadIdx.x & 3);
#pragma unroll
    for (int n = 0; n < HD / 16; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            unrotate(acc[n][e], acc[n + HD / 16][e], cos, sin, e < 2 ? pos0 : pos8, 8 * n + c + (e & 1), HD / 2);
}

// Writes rows r and r + 8 of a 16 × HD accumulator (times `scale`) as bf16 into `row0` and `row8`
// (either null when that row is past the end).
template <int HD>
__device__ __forceinline__ void store_rows(__nv_bfloat16* row0, __nv_bfloat16* row8, const float (&acc)[HD / 8][4],
                                           float scale0, float scale8) {
    const int c = 2 * (threadIdx.x & 3);
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
        if (row0) *reinterpret_cast<uint32_t*>(row0 + 8 * n + c) = pack(acc[n][0] * scale0, acc[n][1] * scale0);
        if (row8) *reinterpret_cast<uint32_t*>(row8 + 8 * n + c) = pack(acc[n][2] * scale8, acc[n][3] * scale8);
    }
}

// s (16 × 64, eight accumulator tiles) += A · Bᵀ over columns 16kk.. of the head dimension: A
// the warp's 16 rows there as an operand fragment, B the 64 rows of a row-major tile.
template <int HD>
__device__ __forceinline__ void partial_scores(float (&s)[8][4], const uint32_t (&a)[4], const __nv_bfloat16* tile,
                                               int kk) {
#pragma unroll
    for (int n = 0; n < 8; n += 2) {
        uint32_t bb[4];
        load_b2(bb, tile, HD + 8, 8 * n, 16 * kk);
        mma_m16n8k16(s[n], a, bb[0], bb[1]);
        mma_m16n8k16(s[n + 1], a, bb[2], bb[3]);
    }
}

// s (16 × 64) = A · Bᵀ over HD: A the warp's 16 rows as operand fragments (one per 16 columns),
// B the 64 rows of a row-major tile.
template <int HD>
__device__ __forceinline__ void scores(float (&s)[8][4], const uint32_t (&a)[HD / 16][4], const __nv_bfloat16* tile) {
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) partial_scores<HD>(s, a[kk], tile, kk);
}

// acc (16 × HD) += W · B: W the 16 × 64 accumulator tiles of an earlier product, rounded to bf16
// as the left operand; B a row-major 64 × HD tile.
template <int HD>
__device__ __forceinline__ void accumulate(float (&acc)[HD / 8][4], const float (&w)[8][4], const __nv_bfloat16* tile) {
#pragma unroll
    for (int j = 0; j < TILE / 16; ++j) {
        uint32_t a[4];
        to_a(a, w[2 * j], w[2 * j + 1]);
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
            uint32_t bb[2];
            load_bt(bb, tile, HD + 8, 16 * j, 8 * n);
            mma_m16n8k16(acc[n], a, bb[0], bb[1]);
        }
    }
}

template <int HD>
__device__ void forward(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, __nv_bfloat16* o,
                        float* lse, const unsigned* seg, int heads, int kv_heads, int t, int s, int start, float scale,
                        Strides qs, Strides ks, Strides vs) {
    constexpr int LDH = HD + 8, KSTEPS = HD / 16, NT = HD / 8;
    DYNAMIC_SHARED(smem);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, c = 2 * (lane & 3);
    const auto [b, h, kb, vb] = query_block(k, v, heads, kv_heads, ks, vs);
    const int q0 = blockIdx.x * TILE, r0 = 16 * warp + (lane >> 2);  // this lane's rows: r0, r0 + 8
    const int end = min(s, start + q0 + TILE);
    const KvTiles<HD> kv{reinterpret_cast<__nv_bfloat16*>(smem), kb, vb, ks.t, vs.t, s, (end + TILE - 1) / TILE};
    // The queries pass through the K buffer of half 1, which step 1 refills.
    load_tile<HD>(kv.k(1), q + b * qs.b + h * qs.h, qs.t, q0, t);
    __syncthreads();
    uint32_t qa[KSTEPS][4];  // the warp's 16 query rows, for the whole walk
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) load_a(qa[kk], kv.k(1), LDH, 16 * warp, 16 * kk);
    __syncthreads();
    float acc[NT][4] = {};
    // Per row (r0, r0 + 8): the running maximum, and this lane's part of the running sum.
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    if (kv.steps > 0) kv.fetch(0);
    for (int step = 0; step < kv.steps; ++step) {
        kv.arrive(step);
        const int k0 = step * TILE;
        const __nv_bfloat16 *sk = kv.k(step), *sv = kv.v(step);
        // S (16 × 64) = Q_warp · Kᵀ.
        float sc[8][4] = {};
        scores<HD>(sc, qa, sk);
        const bool masked = tile_masked(q0, k0, t, s, start, seg);
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = e >> 1, key = k0 + 8 * n + c + (e & 1);
                const bool ok = !masked || visible(q0 + r0 + 8 * i, key, b, t, s, start, seg);
                const float x = ok ? sc[n][e] * scale : -INFINITY;
                sc[n][e] = x;
                mx[i] = fmaxf(mx[i], x);
            }
        float alpha[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const float next = fmaxf(m[i], quad_max(mx[i]));
            alpha[i] = next == -INFINITY ? 1.f : __expf(m[i] - next);
            m[i] = next;
            l[i] *= alpha[i];
        }
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float mi = m[e >> 1];
                const float p = mi == -INFINITY ? 0.f : __expf(sc[n][e] - mi);
                sc[n][e] = p;
                l[e >> 1] += p;
            }
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[n][e] *= alpha[e >> 1];
        // O_warp (16 × HD) += P (16 × 64) · V, the probabilities straight from their registers.
        accumulate<HD>(acc, sc, sv);
        __syncthreads();
    }
    __nv_bfloat16* rows[2];
    float inv[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const float sum = quad_sum(l[i]);
        const int qi = q0 + r0 + 8 * i;
        inv[i] = sum > 0.f ? 1.f / sum : 0.f;
        rows[i] = qi < t ? o + (((size_t)b * t + qi) * heads + h) * HD : nullptr;
        if (qi < t && c == 0) lse[(size_t)blockIdx.y * t + qi] = m[i] + logf(sum);
    }
    store_rows<HD>(rows[0], rows[1], acc, inv[0], inv[1]);
}

// dQ = scale · Σ_keys dS · K, dS = P ⊙ (dO·Vᵀ − D), P from the kept log-sum-exp. dout is
// (B, T, H, hd) contiguous, dsum D is (B, T, H), dq is written positions-major, `ld` elements from
// one position's row of heads to the next; with RoPE tables (`cos` not null) taken back through the
// rotation that made q.
template <int HD>
__device__ void backward_dq(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                            const __nv_bfloat16* dout, const float* lse, const float* dsum, const unsigned* seg,
                            __nv_bfloat16* dq, int heads, int kv_heads, int t, int s, int start, float scale,
                            Strides qs, Strides ks, Strides vs, long long ld, const __nv_bfloat16* cos,
                            const __nv_bfloat16* sin) {
    constexpr int LDH = HD + 8, KSTEPS = HD / 16, NT = HD / 8;
    DYNAMIC_SHARED(smem);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, c = 2 * (lane & 3);
    const auto [b, h, kb, vb] = query_block(k, v, heads, kv_heads, ks, vs);
    const int q0 = blockIdx.x * TILE, r0 = 16 * warp + (lane >> 2);
    const int end = min(s, start + q0 + TILE);
    const KvTiles<HD> kv{reinterpret_cast<__nv_bfloat16*>(smem), kb, vb, ks.t, vs.t, s, (end + TILE - 1) / TILE};
    // The queries and their output gradients pass through half 1, which step 1 refills.
    load_tile<HD>(kv.k(1), q + b * qs.b + h * qs.h, qs.t, q0, t);
    load_tile<HD>(kv.v(1), dout + ((size_t)b * t * heads + h) * HD, (long long)heads * HD, q0, t);
    __syncthreads();
    uint32_t qa[KSTEPS][4], da[KSTEPS][4];
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) {
        load_a(qa[kk], kv.k(1), LDH, 16 * warp, 16 * kk);
        load_a(da[kk], kv.v(1), LDH, 16 * warp, 16 * kk);
    }
    __syncthreads();
    float row_lse[2], row_d[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int qi = q0 + r0 + 8 * i;
        row_lse[i] = qi < t ? lse[(size_t)blockIdx.y * t + qi] : 0.f;
        row_d[i] = qi < t ? dsum[((size_t)b * t + qi) * heads + h] : 0.f;
    }
    float acc[NT][4] = {};
    if (kv.steps > 0) kv.fetch(0);
    for (int step = 0; step < kv.steps; ++step) {
        kv.arrive(step);
        const int k0 = step * TILE;
        const __nv_bfloat16 *sk = kv.k(step), *sv = kv.v(step);
        float sc[8][4] = {}, dp[8][4] = {};
        scores<HD>(sc, qa, sk);
        scores<HD>(dp, da, sv);
        // dS, over the score registers.
        const bool masked = tile_masked(q0, k0, t, s, start, seg);
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = e >> 1, key = k0 + 8 * n + c + (e & 1);
                const bool ok = !masked || visible(q0 + r0 + 8 * i, key, b, t, s, start, seg);
                const float p = ok ? __expf(sc[n][e] * scale - row_lse[i]) : 0.f;
                sc[n][e] = p * (dp[n][e] - row_d[i]);
            }
        accumulate<HD>(acc, sc, sk);
        __syncthreads();
    }
    __nv_bfloat16* rows[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int qi = q0 + r0 + 8 * i;
        rows[i] = qi < t ? dq + ((size_t)b * t + qi) * ld + h * HD : nullptr;
    }
    // Rows past the end are not stored; position 0 keeps their table reads in range.
    const int pos0 = q0 + r0 < t ? start + q0 + r0 : 0, pos8 = q0 + r0 + 8 < t ? start + q0 + r0 + 8 : 0;
    if (cos) unrotate_rows<HD>(acc, cos, sin, pos0, pos8);
    store_rows<HD>(rows[0], rows[1], acc, scale, scale);
}

// dV = Σ_queries Pᵀ · dO and dK = scale · Σ_queries dSᵀ · Q for a tile of keys of one key/value head,
// over every query head it serves; a warp's rows are 16 keys. dk and dv are written positions-major,
// `ld` elements from one position's row of heads to the next.
template <int HD>
__device__ void backward_dkv(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                             const __nv_bfloat16* dout, const float* lse, const float* dsum, const unsigned* seg,
                             __nv_bfloat16* dk, __nv_bfloat16* dv, int heads, int kv_heads, int t, int s, int start,
                             float scale, Strides qs, Strides ks, Strides vs, long long ld, const __nv_bfloat16* cos,
                             const __nv_bfloat16* sin) {
    constexpr int LDH = HD + 8, KSTEPS = HD / 16, NT = HD / 8;
    DYNAMIC_SHARED(smem);
    __nv_bfloat16* sk = reinterpret_cast<__nv_bfloat16*>(smem);  // [TILE][LDH], the block's keys
    __nv_bfloat16* sv = sk + TILE * LDH;                         // [TILE][LDH], their values
    __nv_bfloat16* sq = sv + TILE * LDH;                         // [2][TILE][LDH], two in turn
    __nv_bfloat16* sdo = sq + 2 * TILE * LDH;                    // [2][TILE][LDH]
    float* slse = reinterpret_cast<float*>(sdo + 2 * TILE * LDH);  // [2][TILE]
    float* sd = slse + 2 * TILE;                                 // [2][TILE]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, c = 2 * (lane & 3);
    const int b = blockIdx.y / kv_heads, kvh = blockIdx.y % kv_heads, group = heads / kv_heads;
    const int k0 = blockIdx.x * TILE, r0 = 16 * warp + (lane >> 2);  // this lane's keys: k0 + r0, + 8
    load_tile<HD>(sk, k + b * ks.b + kvh * ks.h, ks.t, k0, s);
    load_tile<HD>(sv, v + b * vs.b + kvh * vs.h, vs.t, k0, s);
    float dka[NT][4] = {}, dva[NT][4] = {};
    // The (query head, query tile) steps this key tile meets: query tiles from `first` (those
    // before see none of its keys) of each query head the key/value head serves. A step's Q and dO
    // tiles load (cp.async) into one half of the double buffers while the step before computes on
    // the other.
    const int first = max(0, k0 - start) / TILE * TILE;
    const int tiles = first < t ? (t - first + TILE - 1) / TILE : 0, steps = group * tiles;
    auto fetch = [&](int step) {
        const int h = kvh * group + step / tiles, q0 = first + step % tiles * TILE, half = step & 1;
        load_tile_async<HD>(sq + half * TILE * LDH, q + b * qs.b + h * qs.h, qs.t, q0, t);
        load_tile_async<HD>(sdo + half * TILE * LDH, dout + ((size_t)b * t * heads + h) * HD, (long long)heads * HD, q0,
                            t);
        cp_async_commit();
        for (int i = threadIdx.x; i < TILE; i += THREADS) {
            const int qi = q0 + i;
            slse[half * TILE + i] = qi < t ? lse[((size_t)b * heads + h) * t + qi] : 0.f;
            sd[half * TILE + i] = qi < t ? dsum[((size_t)b * t + qi) * heads + h] : 0.f;
        }
    };
    if (steps > 0) fetch(0);
    for (int step = 0; step < steps; ++step) {
        arrive(step, steps, fetch);
        const int q0 = first + step % tiles * TILE, half = step & 1;
        const __nv_bfloat16 *cq = sq + half * TILE * LDH, *cdo = sdo + half * TILE * LDH;
        const float *cl = slse + half * TILE, *cd = sd + half * TILE;
        // Sᵀ (16 keys × 64 queries) = K_warp · Qᵀ and (dO·Vᵀ)ᵀ = V_warp · dOᵀ.
        float st[8][4] = {}, dpt[8][4] = {};
#pragma unroll
        for (int kk = 0; kk < KSTEPS; ++kk) {
            uint32_t ka[4], va[4];
            load_a(ka, sk, LDH, 16 * warp, 16 * kk);
            load_a(va, sv, LDH, 16 * warp, 16 * kk);
            partial_scores<HD>(st, ka, cq, kk);
            partial_scores<HD>(dpt, va, cdo, kk);
        }
        // Pᵀ into st and dSᵀ into dpt; columns are queries.
        const bool masked = tile_masked(q0, k0, t, s, start, seg);
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int col = 8 * n + c + (e & 1);
                const bool ok = !masked || visible(q0 + col, k0 + r0 + 8 * (e >> 1), b, t, s, start, seg);
                const float p = ok ? __expf(st[n][e] * scale - cl[col]) : 0.f;
                st[n][e] = p;
                dpt[n][e] = p * (dpt[n][e] - cd[col]);
            }
        accumulate<HD>(dva, st, cdo);
        accumulate<HD>(dka, dpt, cq);
        // Every warp is done with this half before the next step's fetch refills it.
        __syncthreads();
    }
    if (cos) unrotate_rows<HD>(dka, cos, sin, k0 + r0 < s ? k0 + r0 : 0, k0 + r0 + 8 < s ? k0 + r0 + 8 : 0);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int kp = k0 + r0 + 8 * i;
        if (kp >= s) continue;
        const size_t at = ((size_t)b * s + kp) * ld + kvh * HD;
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            *reinterpret_cast<uint32_t*>(dk + at + 8 * n + c) = pack(dka[n][2 * i] * scale, dka[n][2 * i + 1] * scale);
            *reinterpret_cast<uint32_t*>(dv + at + 8 * n + c) = pack(dva[n][2 * i], dva[n][2 * i + 1]);
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
        long long kh, long long kt, long long vb, long long vh, long long vt, long long ld,                  \
        const __nv_bfloat16* cos, const __nv_bfloat16* sin) {                                                \
        tc::backward_dq<HD>(q, k, v, dout, lse, dsum, seg, dq, heads, kv_heads, t, s, start, scale,           \
                            {qb, qh, qt}, {kb, kh, kt}, {vb, vh, vt}, ld, cos, sin);                         \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(tc::THREADS) attention_bwd_dkv_tc_hd##HD##_bf16(            \
        const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const __nv_bfloat16* dout,    \
        const float* lse, const float* dsum, const unsigned* seg, __nv_bfloat16* dk, __nv_bfloat16* dv,       \
        int heads, int kv_heads, int t, int s, int start, float scale, long long qb, long long qh,            \
        long long qt, long long kb, long long kh, long long kt, long long vb, long long vh, long long vt,       \
        long long ld, const __nv_bfloat16* cos, const __nv_bfloat16* sin) {                                  \
        tc::backward_dkv<HD>(q, k, v, dout, lse, dsum, seg, dk, dv, heads, kv_heads, t, s, start, scale,      \
                             {qb, qh, qt}, {kb, kh, kt}, {vb, vh, vt}, ld, cos, sin);                        \
    }
ENTRY(64)
ENTRY(128)
ENTRY_BWD(64)
ENTRY_BWD(128)
