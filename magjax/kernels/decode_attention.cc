// One decode step's attention: each slot writes its new key and value into its cache
// rows, then attends with its few query heads to its own valid rows.
//
// Why this exists: XLA:CPU runs this step as broadcast products and reductions over the
// whole cache length (masked), several passes over memory where one suffices. Here each
// (slot, kv head) reads exactly its valid key and value rows once: scores, a softmax with
// a vector exp, then the value sum. The caches are updated in place (XLA aliases them to
// the outputs): the new key's column write, a scatter XLA runs element by element, is
// 64 stores here. Layouts are the sampler's cache layouts: keys
// k[B, KV, E, S] (positions last, so a score block is a row sweep) and values
// v[B, KV, S, E] (head dim last, so a value row is contiguous).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ffi_types.h"
#include "parallel.h"
#include "vec.h"
#include "xla/ffi/api/ffi.h"

using namespace magjax;  // NOLINT: the kernels' vector and FFI buffer types

namespace {

constexpr int kSBlock = 64;       // positions per score block (4 vectors)
constexpr int kGBlock = 4;        // query heads per register block
constexpr int64_t kMinParallel = int64_t{1} << 16;  // multiply-adds below which one thread runs it

struct Job {
  const float *q, *k_new, *v_new;
  float *k, *v;  // the caches, written at `at` and read
  const int32_t *lo, *hi, *at;
  float* out;
  float scale;
  int64_t b, kv, g, e, s;
};

// scores[g][0, n) = scale * q[g] . k[:, lo + i] for one (slot, kv head).
void scores(const Job& j, const float* q, const float* k, int64_t lo, int64_t n, float* sc, float* tail) {
  for (int64_t s0 = 0; s0 < n; s0 += kSBlock) {
    const int64_t w = std::min<int64_t>(kSBlock, n - s0);
    const float* kb = k + lo + s0;
    int64_t ld = j.s;
    if (w < kSBlock) {  // a short last block: copy it out, zero-padded, to keep full vectors
      for (int64_t e = 0; e < j.e; ++e) {
        std::memset(tail + e * kSBlock, 0, kSBlock * sizeof(float));
        std::memcpy(tail + e * kSBlock, kb + e * j.s, w * sizeof(float));
      }
      kb = tail;
      ld = kSBlock;
    }
    for (int64_t g0 = 0; g0 < j.g; g0 += kGBlock) {
      const int gn = static_cast<int>(std::min<int64_t>(kGBlock, j.g - g0));
      v16 acc[kGBlock][kSBlock / kW] = {};
      for (int64_t e = 0; e < j.e; ++e) {
        v16 kv[kSBlock / kW];
        for (int c = 0; c < kSBlock / kW; ++c) kv[c] = load(kb + e * ld + c * kW);
        for (int g = 0; g < gn; ++g) {
          const float qg = q[(g0 + g) * j.e + e];
          for (int c = 0; c < kSBlock / kW; ++c) acc[g][c] += qg * kv[c];
        }
      }
      float block[kSBlock];
      for (int g = 0; g < gn; ++g) {
        for (int c = 0; c < kSBlock / kW; ++c) store(block + c * kW, acc[g][c] * splat(j.scale));
        std::memcpy(sc + (g0 + g) * j.s + s0, block, w * sizeof(float));
      }
    }
  }
}

// Softmax of each row in place over [0, n); returns nothing, rows sum to 1.
void softmax(const Job& j, float* sc, int64_t n) {
  for (int64_t g = 0; g < j.g; ++g) {
    float* row = sc + g * j.s;
    float mx = row[0];
    for (int64_t i = 1; i < n; ++i) mx = std::max(mx, row[i]);
    v16 sum = v16{};
    int64_t i = 0;
    for (; i + kW <= n; i += kW) {
      v16 p = exp_nonpositive(load(row + i) - splat(mx));
      store(row + i, p);
      sum += p;
    }
    if (i < n) {
      float buf[kW];
      std::fill(buf, buf + kW, -1e30f);
      std::memcpy(buf, row + i, (n - i) * sizeof(float));
      v16 p = exp_nonpositive(load(buf) - splat(mx));
      store(buf, p);
      std::memcpy(row + i, buf, (n - i) * sizeof(float));
      sum += p;
    }
    float total = 0;
    for (int c = 0; c < kW; ++c) total += sum[c];
    const float inv = 1.0f / total;
    for (int64_t t = 0; t < n; ++t) row[t] *= inv;
  }
}

// out[g] = sum_i p[g][i] * v[lo + i] for one (slot, kv head); e is a multiple of 16.
void values(const Job& j, const float* p, const float* v, int64_t lo, int64_t n, float* out) {
  constexpr int kEBlock = 4;  // vectors of the head dim per register block
  for (int64_t g0 = 0; g0 < j.g; g0 += kGBlock) {
    const int gn = static_cast<int>(std::min<int64_t>(kGBlock, j.g - g0));
    for (int64_t e0 = 0; e0 < j.e; e0 += kEBlock * kW) {
      const int en = static_cast<int>(std::min<int64_t>(kEBlock, (j.e - e0) / kW));
      v16 acc[kGBlock][kEBlock] = {};
      for (int64_t i = 0; i < n; ++i) {
        const float* row = v + (lo + i) * j.e + e0;
        v16 vr[kEBlock];
        for (int c = 0; c < en; ++c) vr[c] = load(row + c * kW);
        for (int g = 0; g < gn; ++g) {
          const float pg = p[(g0 + g) * j.s + i];
          for (int c = 0; c < en; ++c) acc[g][c] += pg * vr[c];
        }
      }
      for (int g = 0; g < gn; ++g)
        for (int c = 0; c < en; ++c) store(out + (g0 + g) * j.e + e0 + c * kW, acc[g][c]);
    }
  }
}

void run_item(const Job& j, int64_t item, std::vector<float>& scratch) {
  const int64_t b = item / j.kv;
  if (j.at[b] >= 0 && j.at[b] < j.s) {  // out of range: the slot writes nothing (finished or free)
    float* k = j.k + item * j.e * j.s + j.at[b];
    const float* k_new = j.k_new + item * j.e;
    for (int64_t e = 0; e < j.e; ++e) k[e * j.s] = k_new[e];
    std::memcpy(j.v + (item * j.s + j.at[b]) * j.e, j.v_new + item * j.e, j.e * sizeof(float));
  }
  const int64_t lo = std::clamp<int64_t>(j.lo[b], 0, j.s), hi = std::clamp<int64_t>(j.hi[b], 0, j.s);
  float* out = j.out + item * j.g * j.e;
  if (hi <= lo) {  // nothing to attend to (a free slot): zeros, never garbage
    std::memset(out, 0, j.g * j.e * sizeof(float));
    return;
  }
  scratch.resize(j.g * j.s + j.e * kSBlock);
  float* sc = scratch.data();
  const float* q = j.q + item * j.g * j.e;
  scores(j, q, j.k + item * j.e * j.s, lo, hi - lo, sc, sc + j.g * j.s);
  softmax(j, sc, hi - lo);
  values(j, sc, j.v + item * j.s * j.e, lo, hi - lo, out);
}

ffi::Error DecodeAttention(ffi::ThreadPool pool, Floats4 q, Floats3 k_new, Floats3 v_new, Floats4 k_in,
                           Floats4 v_in, Ints1 lo, Ints1 hi, Ints1 at, Out4 out, Out4 k, Out4 v, float scale) {
  const auto qd = q.dimensions(), kd = k->dimensions(), vd = v->dimensions();
  const int64_t b = qd[0], kv = qd[1], g = qd[2], e = qd[3], s = kd[3];
  if (kd[0] != b || kd[1] != kv || kd[2] != e || vd[0] != b || vd[1] != kv || vd[2] != s || vd[3] != e ||
      k_new.element_count() != b * kv * e || v_new.element_count() != b * kv * e || lo.element_count() != b ||
      hi.element_count() != b || at.element_count() != b || e % kW != 0) {
    return ffi::Error::InvalidArgument(
        "magjax_decode_attention: expected q[B, KV, G, E], new k and v [B, KV, E], caches k[B, KV, E, S] and "
        "v[B, KV, S, E], lo, hi and at [B], E a multiple of 16");
  }
  // The caches' outputs alias their inputs; should XLA have had to copy instead, start
  // from the inputs.
  if (k->typed_data() != k_in.typed_data())
    std::memcpy(k->typed_data(), k_in.typed_data(), k_in.element_count() * sizeof(float));
  if (v->typed_data() != v_in.typed_data())
    std::memcpy(v->typed_data(), v_in.typed_data(), v_in.element_count() * sizeof(float));
  Job job{q.typed_data(), k_new.typed_data(), v_new.typed_data(), k->typed_data(), v->typed_data(),
          lo.typed_data(), hi.typed_data(), at.typed_data(), out->typed_data(), scale, b, kv, g, e, s};
  const bool small = 2 * b * kv * g * e * s < kMinParallel;
  magjax::parallel_for(pool, small ? 1 : pool.num_threads(), b * kv, [&job](int64_t begin, int64_t end) {
    std::vector<float> scratch;
    for (int64_t item = begin; item < end; ++item) run_item(job, item, scratch);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MagjaxDecodeAttention, DecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Floats4>()  // q
                                  .Arg<Floats3>()  // new key
                                  .Arg<Floats3>()  // new value
                                  .Arg<Floats4>()  // key cache
                                  .Arg<Floats4>()  // value cache
                                  .Arg<Ints1>()    // lo
                                  .Arg<Ints1>()    // hi
                                  .Arg<Ints1>()    // at: where each slot writes
                                  .Ret<Floats4>()  // attention output
                                  .Ret<Floats4>()  // key cache, updated
                                  .Ret<Floats4>()  // value cache, updated
                                  .Attr<float>("scale"));
