// AI Sandbox's CUDA kernels for the paged KV cache (engine/src/cuda/mod.rs compiles this file at
// run time with nvrtc, once per element type and head size; scripts/test compiles every variant
// with nvcc to PTX). No header is included, so nvrtc needs no include path: bf16 is converted
// with bit operations and f16 with inline PTX (or, in a host build for tests/cuda-emu, the
// harness's IEEE conversions).
//
// Compile-time defines:
//   KV_T_BF16 | KV_T_F16 | KV_T_F32   the element type of queries, keys, values and outputs
//   HEAD_DIM                          64, 80, 96, 128 or 256 (any value from 1 to 256 works)
//   N_WARPS (optional, default 4)     warps per attention block
//
// Layouts (all contiguous, row-major):
//   cache (keys or values)  [n_slots, n_kv_heads, HEAD_DIM]; the slot of position j of a sequence
//                           whose block table is `table` is table[j / block_size] * block_size
//                           + j % block_size
//   q, out                  [rows, n_heads, HEAD_DIM]
//   positions, table_offsets [rows] u32; tables: the block tables of the batch's sequences, one
//                           after the other (u32)

#if defined(KV_T_BF16)
typedef unsigned short kv_t;
__device__ __forceinline__ float to_f32(kv_t x) {
    return __uint_as_float(((unsigned int)x) << 16);
}
// Round to nearest, ties to even; a NaN stays a (quiet) NaN instead of rounding to infinity.
__device__ __forceinline__ kv_t from_f32(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (kv_t)((u >> 16) | 0x0040u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (kv_t)(u >> 16);
}
#elif defined(KV_T_F16)
typedef unsigned short kv_t;
#if defined(__CUDA_ARCH__) || defined(__CUDACC_RTC__)
__device__ __forceinline__ float to_f32(kv_t x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
}
__device__ __forceinline__ kv_t from_f32(float f) {
    kv_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#else
// A host build (tests/cuda-emu): the same IEEE conversions (round to nearest even), from the
// harness.
__device__ __forceinline__ float to_f32(kv_t x) { return emu_f16_to_f32(x); }
__device__ __forceinline__ kv_t from_f32(float f) { return emu_f32_to_f16(f); }
#endif
#elif defined(KV_T_F32)
typedef float kv_t;
__device__ __forceinline__ float to_f32(kv_t x) { return x; }
__device__ __forceinline__ kv_t from_f32(float f) { return f; }
#else
#error "define one of KV_T_BF16, KV_T_F16, KV_T_F32"
#endif

#ifndef HEAD_DIM
#error "define HEAD_DIM"
#endif
#if HEAD_DIM < 1 || HEAD_DIM > 256
#error "HEAD_DIM must be in 1..=256"
#endif

#ifndef N_WARPS
#define N_WARPS 4
#endif

#define WARP_SIZE 32
// Elements of a head vector per lane: lane `l` owns dimensions l, l + 32, l + 64, ... (so each
// step of a warp reads 32 consecutive elements, and a HEAD_DIM that is not a multiple of 32,
// such as 80, only leaves some lanes one element short).
#define PER_LANE ((HEAD_DIM + WARP_SIZE - 1) / WARP_SIZE)
#define LOG2_E 1.4426950408889634f

__device__ __forceinline__ float neg_inf() { return __uint_as_float(0xff800000u); }

// Copies row t of `src` ([rows, row_len]) to row slots[t] of `cache` ([cache_rows, row_len]).
// Grid: (rows); any block size. A slot outside the cache is skipped (never written out of
// bounds); the host builds slots from block tables it has checked.
extern "C" __global__ void write_kv(
    kv_t* __restrict__ cache,
    const kv_t* __restrict__ src,
    const unsigned int* __restrict__ slots,
    unsigned int rows,
    unsigned int row_len,
    unsigned int cache_rows)
{
    const unsigned int t = blockIdx.x;
    if (t >= rows) {
        return;
    }
    const unsigned int slot = slots[t];
    if (slot >= cache_rows) {
        return;
    }
    const kv_t* from = src + (size_t)t * row_len;
    kv_t* to = cache + (size_t)slot * row_len;
    for (unsigned int i = threadIdx.x; i < row_len; i += blockDim.x) {
        to[i] = from[i];
    }
}

// Causal (optionally sliding-window) grouped-query attention of each query row over its own
// sequence's cached keys/values.
//
// Grid: (rows, n_heads); block: N_WARPS * 32 threads. Block (t, h) computes out[t, h, :] for the
// query at position p = positions[t]: the softmax over keys j in [first, p] (first =
// max(0, p + 1 - window), window 0 = none) of q.k_j * scale, applied to v_j; query head h reads
// kv head h / (n_heads / n_kv_heads). Rows are independent, so prefill rows (many rows of one
// sequence) and decode rows share a launch.
//
// Warp w visits keys first + w, first + w + N_WARPS, ... keeping an online softmax in f32
// (running max m, running sum l, accumulator acc, all in base 2: scores are pre-multiplied by
// log2(e)); then the warps' states are merged through shared memory. The range is never empty
// (it holds p itself), so warp 0 always sees a key and the merged max is finite; a warp that saw
// no key has m = -inf and weight 0.
extern "C" __global__ void __launch_bounds__(N_WARPS * WARP_SIZE) paged_attention(
    kv_t* __restrict__ out,
    const kv_t* __restrict__ q,
    const kv_t* __restrict__ k_cache,
    const kv_t* __restrict__ v_cache,
    const unsigned int* __restrict__ positions,
    const unsigned int* __restrict__ table_offsets,
    const unsigned int* __restrict__ tables,
    unsigned int n_heads,
    unsigned int n_kv_heads,
    unsigned int block_size,
    unsigned int window,
    float scale)
{
    __shared__ float warp_max[N_WARPS];
    __shared__ float warp_sum[N_WARPS];
    __shared__ float warp_acc[N_WARPS][HEAD_DIM];

    const unsigned int t = blockIdx.x;
    const unsigned int h = blockIdx.y;
    const unsigned int warp = threadIdx.x / WARP_SIZE;
    const unsigned int lane = threadIdx.x % WARP_SIZE;

    const unsigned int p = positions[t];
    const unsigned int first = (window != 0 && p + 1 > window) ? p + 1 - window : 0;
    const unsigned int kv_head = h / (n_heads / n_kv_heads);
    const unsigned int* table = tables + table_offsets[t];
    const size_t slot_stride = (size_t)n_kv_heads * HEAD_DIM;
    const size_t head_offset = (size_t)kv_head * HEAD_DIM;

    const kv_t* q_row = q + ((size_t)t * n_heads + h) * HEAD_DIM;
    const float q_scale = scale * LOG2_E;
    float qv[PER_LANE];
    float acc[PER_LANE];
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        const unsigned int d = i * WARP_SIZE + lane;
        qv[i] = d < HEAD_DIM ? to_f32(q_row[d]) * q_scale : 0.0f;
        acc[i] = 0.0f;
    }

    float m = neg_inf();
    float l = 0.0f;
    // The loop bounds are the same for every lane of a warp, so the shuffles see all 32 lanes.
    for (unsigned int j = first + warp; j <= p; j += N_WARPS) {
        const size_t slot = (size_t)table[j / block_size] * block_size + j % block_size;
        const kv_t* k_row = k_cache + slot * slot_stride + head_offset;
        const kv_t* v_row = v_cache + slot * slot_stride + head_offset;

        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i) {
            const unsigned int d = i * WARP_SIZE + lane;
            if (d < HEAD_DIM) {
                s += qv[i] * to_f32(k_row[d]);
            }
        }
#pragma unroll
        for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
            s += __shfl_xor_sync(0xffffffffu, s, offset);
        }

        const float m_new = fmaxf(m, s);
        const float correction = exp2f(m - m_new);  // 0 while m is -inf
        const float w = exp2f(s - m_new);
        l = l * correction + w;
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i) {
            const unsigned int d = i * WARP_SIZE + lane;
            const float vd = d < HEAD_DIM ? to_f32(v_row[d]) : 0.0f;
            acc[i] = acc[i] * correction + w * vd;
        }
        m = m_new;
    }

    if (lane == 0) {
        warp_max[warp] = m;
        warp_sum[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        const unsigned int d = i * WARP_SIZE + lane;
        if (d < HEAD_DIM) {
            warp_acc[warp][d] = acc[i];
        }
    }
    __syncthreads();

    float max_all = warp_max[0];
#pragma unroll
    for (int w = 1; w < N_WARPS; ++w) {
        max_all = fmaxf(max_all, warp_max[w]);
    }
    float factor[N_WARPS];
    float sum_all = 0.0f;
#pragma unroll
    for (int w = 0; w < N_WARPS; ++w) {
        factor[w] = warp_max[w] == neg_inf() ? 0.0f : exp2f(warp_max[w] - max_all);
        sum_all += warp_sum[w] * factor[w];
    }
    const float inv_sum = 1.0f / sum_all;

    kv_t* out_row = out + ((size_t)t * n_heads + h) * HEAD_DIM;
    for (unsigned int d = threadIdx.x; d < HEAD_DIM; d += N_WARPS * WARP_SIZE) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < N_WARPS; ++w) {
            o += warp_acc[w][d] * factor[w];
        }
        out_row[d] = from_f32(o * inv_sum);
    }
}
