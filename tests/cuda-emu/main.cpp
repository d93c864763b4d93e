// Runs engine/src/cuda/paged_attention.cu on the CPU (harness.h emulates the CUDA features it
// uses) against a float64 reference: KV writes must be exact, attention within TOL. Built and
// run by scripts/test's cuda-emu step for several dtypes, head sizes, GQA ratios and windows.
// Usage: emu HEADS KV_HEADS WINDOW GAIN TOL   (exit 1 when the max |diff| exceeds TOL)
#include "harness.h"
#include "paged_attention.cu"
#include <cstdio>
#include <cstdlib>
#include <random>
#include <algorithm>
static float rt(float x) {
#if defined(KV_T_BF16) || defined(KV_T_F16)
    return to_f32(from_f32(x));
#else
    return x;
#endif
}
int main(int argc, char** argv) {
    if (argc != 6) { fprintf(stderr, "usage: emu HEADS KV_HEADS WINDOW GAIN TOL\n"); return 2; }
    unsigned nh = atoi(argv[1]), nkv = atoi(argv[2]), window = atoi(argv[3]); float gain = atof(argv[4]); double tol = atof(argv[5]);
    const unsigned bs = 16, nblocks = 14, hd = HEAD_DIM, width = nkv * hd;
    std::mt19937 rng(42);
    std::uniform_real_distribution<float> U(-1, 1);
    // sequences: lens and current batch: seq0 rows 30..69 (prefill chunk), seq1 decode at 22, seq2 chunk 0..5
    std::vector<unsigned> perm(nblocks); for (unsigned i = 0; i < nblocks; ++i) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<std::vector<unsigned>> tables = {{perm[0], perm[1], perm[2], perm[3], perm[4]}, {perm[5], perm[6]}, {perm[7]}};
    std::sort(tables[0].rbegin(), tables[0].rend());
    unsigned lens[3] = {70, 23, 5};
    std::vector<kv_t> kc(nblocks * bs * width), vc(nblocks * bs * width);
    std::vector<float> kf(kc.size()), vf(vc.size());
    // fill all slots of the sequences' positions via write_kv (one row per position)
    std::vector<unsigned> slots, positions, offsets, flat;
    std::vector<std::vector<unsigned>> seq_slots(3);
    for (int s = 0; s < 3; ++s) { for (unsigned p = 0; p < lens[s]; ++p) seq_slots[s].push_back(tables[s][p / bs] * bs + p % bs); }
    // write all positions with write_kv
    std::vector<unsigned> all_slots; for (int s = 0; s < 3; ++s) for (auto x : seq_slots[s]) all_slots.push_back(x);
    unsigned rows_w = all_slots.size();
    std::vector<kv_t> newk(rows_w * width), newv(rows_w * width);
    for (auto& x : newk) x = from_f32(2 * U(rng)); for (auto& x : newv) x = from_f32(U(rng));
    launch(rows_w, 1, 32, [&] { write_kv(kc.data(), newk.data(), all_slots.data(), rows_w, width, nblocks * bs); });
    launch(rows_w, 1, 32, [&] { write_kv(vc.data(), newv.data(), all_slots.data(), rows_w, width, nblocks * bs); });
    for (size_t i = 0; i < kc.size(); ++i) { kf[i] = to_f32(kc[i]); vf[i] = to_f32(vc[i]); }
    // check write exactness
    for (unsigned r = 0; r < rows_w; ++r) for (unsigned e = 0; e < width; ++e)
        if (to_f32(kc[all_slots[r] * width + e]) != to_f32(newk[r * width + e])) { printf("write mismatch\n"); return 1; }
    // batch: seq0 positions 30..69, seq1 22, seq2 0..4
    struct Span { int seq; unsigned pos, len; } spans[] = {{1, 22, 1}, {0, 30, 40}, {2, 0, 5}};
    for (int s = 0; s < 3; ++s) { (void)s; }
    std::vector<unsigned> table_start(3); { unsigned off = 0; for (int s = 0; s < 3; ++s) { table_start[s] = off; for (auto b : tables[s]) flat.push_back(b); off += tables[s].size(); } }
    for (auto& sp : spans) for (unsigned i = 0; i < sp.len; ++i) { positions.push_back(sp.pos + i); offsets.push_back(table_start[sp.seq]); }
    unsigned rows = positions.size();
    std::vector<kv_t> q(rows * nh * hd), out(rows * nh * hd);
    for (auto& x : q) x = from_f32(2 * gain * U(rng));
    float scale = 1.0f / std::sqrt((float)hd);
    launch(rows, nh, N_WARPS * 32, [&] { paged_attention(out.data(), q.data(), kc.data(), vc.data(), positions.data(), offsets.data(), flat.data(), nh, nkv, bs, window, scale); });
    double maxd = 0; unsigned r = 0;
    for (auto& sp : spans) for (unsigned i = 0; i < sp.len; ++i, ++r) {
        unsigned p = sp.pos + i, first = (window && p + 1 > window) ? p + 1 - window : 0;
        for (unsigned h = 0; h < nh; ++h) {
            unsigned kvh = h / (nh / nkv);
            std::vector<double> sc; double mx = -1e300;
            for (unsigned j = first; j <= p; ++j) { unsigned slot = seq_slots[sp.seq][j]; double s = 0;
                for (unsigned d = 0; d < hd; ++d) s += (double)to_f32(q[(r * nh + h) * hd + d]) * kf[slot * width + kvh * hd + d];
                s *= 1.0 / std::sqrt((double)hd); sc.push_back(s); mx = std::max(mx, s); }
            double tot = 0; for (auto& s : sc) { s = std::exp(s - mx); tot += s; }
            for (unsigned d = 0; d < hd; ++d) { double o = 0; unsigned jj = 0;
                for (unsigned j = first; j <= p; ++j, ++jj) o += sc[jj] * vf[seq_slots[sp.seq][j] * width + kvh * hd + d];
                o /= tot; double got = to_f32(out[(r * nh + h) * hd + d]);
                if (!(std::fabs(got - o) <= maxd)) maxd = std::isnan(got) ? 1e30 : std::fabs(got - o); }
        }
    }
    bool ok = maxd <= tol;
    printf("%s HEAD_DIM %d heads %u/%u window %u gain %.1f rows %u: max |diff| %.3e (tolerance %.1e)\n",
           ok ? "ok  " : "FAIL", HEAD_DIM, nh, nkv, window, gain, rows, maxd, tol);
    return ok ? 0 : 1;
}
