// Host emulation of the few CUDA features paged_attention.cu uses (one block at a time, one
// std::thread per CUDA thread), to check the kernels' logic without a GPU.
#include <barrier>
#include <cmath>
#include <cstring>
#include <cstddef>
#include <thread>
#include <vector>
#include <functional>
struct dim3e { unsigned int x = 0, y = 0, z = 0; };
inline thread_local dim3e threadIdx, blockIdx;
inline dim3e blockDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
// IEEE half <-> float (round to nearest even), what PTX's cvt.f32.f16 / cvt.rn.f16.f32 do, by
// the compiler's _Float16 (GCC 12+ on x86-64).
inline float emu_f16_to_f32(unsigned short h) { _Float16 v; std::memcpy(&v, &h, 2); return (float)v; }
inline unsigned short emu_f32_to_f16(float f) { _Float16 v = (_Float16)f; unsigned short h; std::memcpy(&h, &v, 2); return h; }
inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline std::barrier<>* g_block_barrier;
inline std::vector<std::barrier<>*> g_warp_barriers;
inline float g_xchg[64][32];
inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int off) {
    unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
    g_xchg[w][l] = v;
    g_warp_barriers[w]->arrive_and_wait();
    float r = g_xchg[w][l ^ off];
    g_warp_barriers[w]->arrive_and_wait();
    return r;
}
inline void launch(unsigned gx, unsigned gy, unsigned threads, const std::function<void()>& k) {
    blockDim.x = threads;
    for (unsigned by = 0; by < gy; ++by) for (unsigned bx = 0; bx < gx; ++bx) {
        std::barrier<> block(threads);
        g_block_barrier = &block;
        std::vector<std::barrier<>*> warps;
        for (unsigned w = 0; w < threads / 32; ++w) warps.push_back(new std::barrier<>(32));
        g_warp_barriers = warps;
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < threads; ++t) ts.emplace_back([&, t] { threadIdx.x = t; blockIdx.x = bx; blockIdx.y = by; k(); });
        for (auto& t : ts) t.join();
        for (auto* w : warps) delete w;
    }
}
