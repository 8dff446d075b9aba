// One decode step's attention over a paged cache: each slot writes its new key and value
// at its position, then attends with its few query heads to its own valid positions,
// read through its row of the page table.
//
// Why this exists: XLA:CPU runs this step as broadcast products and reductions over the
// whole cache (masked), or as gathers of whole pages, several passes over memory where one
// suffices. Here each (slot, kv head) reads exactly its valid key and value rows once:
// scores, a softmax with a vector exp, then the value sum. The pools are updated in place
// (XLA aliases them to the outputs): the new key's column write, a scatter XLA runs element
// by element, is 64 stores here.
//
// Layouts: keys k[P, KV, E, page] (positions last, so a score block is a row sweep) and
// values v[P, KV, page, E] (head dim last, so a value row is contiguous); the page table
// t[B, N] names the pool page of each `page` positions of a slot (entries outside [0, P):
// no page, never read or written). A dense cache is the special case of one page of
// max_len per slot and the table [[0], [1], ...]: one kernel serves both.

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
constexpr int kGBlock = std::max(1, kAccumulators / 4);  // query heads per register block, by 4 vectors
constexpr int64_t kMinParallel = int64_t{1} << 16;  // multiply-adds below which one thread runs it

struct Job {
  const float *q, *k_new, *v_new;
  float *k, *v;  // the pools, written at `at` and read
  const int32_t *lo, *hi, *at, *table;
  float* out;
  float scale;
  int64_t b, kv, g, e;
  int64_t pages, page, n;  // pool pages, positions per page, table entries per slot

  int64_t span() const { return n * page; }  // positions a slot's table can name
  // The pool page holding `pos` of slot `b`, or -1 where the table names none.
  int64_t page_of(int64_t b, int64_t pos) const {
    const int64_t p = table[b * n + pos / page];
    return p >= 0 && p < pages ? p : -1;
  }
  const float* k_page(int64_t p, int64_t h) const { return k + (p * kv + h) * e * page; }
  const float* v_page(int64_t p, int64_t h) const { return v + (p * kv + h) * page * e; }
};

// A run of a slot's positions inside one pool page: that page, the first offset in it,
// how many positions.
struct Segment {
  int64_t page, offset, len;
};

// sc[g * ld_sc + i] = scale * q[g] . k[:, i] for the NV * 16 positions at kb[e * ld + i]:
// one score block, NV vectors wide, stored for its first w positions.
template <int NV>
void score_block(const Job& j, const float* q, const float* kb, int64_t ld, int64_t w, float* sc, int64_t ld_sc) {
  for (int64_t g0 = 0; g0 < j.g; g0 += kGBlock) {
    const int gn = static_cast<int>(std::min<int64_t>(kGBlock, j.g - g0));
    v16 acc[kGBlock][NV] = {};
    for (int64_t e = 0; e < j.e; ++e) {
      v16 kv[NV];
      for (int c = 0; c < NV; ++c) kv[c] = load(kb + e * ld + c * kW);
      for (int g = 0; g < gn; ++g) {
        const float qg = q[(g0 + g) * j.e + e];
        for (int c = 0; c < NV; ++c) acc[g][c] += qg * kv[c];
      }
    }
    float block[kSBlock];
    for (int g = 0; g < gn; ++g) {
      for (int c = 0; c < NV; ++c) store(block + c * kW, acc[g][c] * splat(j.scale));
      std::memcpy(sc + (g0 + g) * ld_sc, block, w * sizeof(float));
    }
  }
}

// sc[g * ld_sc + i] = scale * q[g] . k[:, i] for i in [0, n): one segment's keys, whose
// position i lies at kb0[e * ld + i]. Blocks of up to 64 positions; a block as narrow as
// a small page's run takes as few vectors as cover it.
void scores(const Job& j, const float* q, const float* kb0, int64_t ld, int64_t n, float* sc, int64_t ld_sc,
            float* tail) {
  for (int64_t s0 = 0; s0 < n; s0 += kSBlock) {
    const int64_t w = std::min<int64_t>(kSBlock, n - s0);
    const int nv = static_cast<int>((w + kW - 1) / kW);
    const float* kb = kb0 + s0;
    int64_t ldb = ld;
    if (w % kW) {  // a part vector at the end: copy the block out, zero-padded, to keep whole vectors
      for (int64_t e = 0; e < j.e; ++e) {
        std::memset(tail + e * nv * kW, 0, nv * kW * sizeof(float));
        std::memcpy(tail + e * nv * kW, kb + e * ld, w * sizeof(float));
      }
      kb = tail;
      ldb = nv * kW;
    }
    switch (nv) {
      case 1: score_block<1>(j, q, kb, ldb, w, sc + s0, ld_sc); break;
      case 2: score_block<2>(j, q, kb, ldb, w, sc + s0, ld_sc); break;
      case 3: score_block<3>(j, q, kb, ldb, w, sc + s0, ld_sc); break;
      default: score_block<4>(j, q, kb, ldb, w, sc + s0, ld_sc); break;
    }
  }
}

// Softmax of each row (stride n) in place over [0, n); rows sum to 1.
void softmax(const Job& j, float* sc, int64_t n) {
  for (int64_t g = 0; g < j.g; ++g) {
    float* row = sc + g * n;
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
    const float inv = 1.0f / sum_lanes(sum);
    for (int64_t t = 0; t < n; ++t) row[t] *= inv;
  }
}

// out[g] = sum_i p[g][i] * v[i] over the segments' positions, in order (p rows have
// stride n); e is a multiple of 16.
void values(const Job& j, int64_t h, const std::vector<Segment>& segs, const float* p, int64_t n, float* out) {
  constexpr int kEBlock = 4;  // vectors of the head dim per register block
  for (int64_t g0 = 0; g0 < j.g; g0 += kGBlock) {
    const int gn = static_cast<int>(std::min<int64_t>(kGBlock, j.g - g0));
    for (int64_t e0 = 0; e0 < j.e; e0 += kEBlock * kW) {
      const int en = static_cast<int>(std::min<int64_t>(kEBlock, (j.e - e0) / kW));
      v16 acc[kGBlock][kEBlock] = {};
      int64_t i0 = 0;
      for (const Segment& seg : segs) {
        const float* v = j.v_page(seg.page, h) + seg.offset * j.e + e0;
        const float* ps = p + g0 * n + i0;
        for (int64_t i = 0; i < seg.len; ++i) {
          const float* row = v + i * j.e;
          v16 vr[kEBlock];
          for (int c = 0; c < en; ++c) vr[c] = load(row + c * kW);
          for (int g = 0; g < gn; ++g) {
            const float pg = ps[g * n + i];
            for (int c = 0; c < en; ++c) acc[g][c] += pg * vr[c];
          }
        }
        i0 += seg.len;
      }
      for (int g = 0; g < gn; ++g)
        for (int c = 0; c < en; ++c) store(out + (g0 + g) * j.e + e0 + c * kW, acc[g][c]);
    }
  }
}

// Each slot's new key and value into its page at `at` (nowhere when `at` is negative,
// past the table, or its entry names no page). All writes land before any slot reads, as
// a scatter then a gather would: a slot may read a page another slot writes.
void write_new(const Job& j) {
  for (int64_t b = 0; b < j.b; ++b) {
    const int64_t at = j.at[b];
    if (at < 0 || at >= j.span()) continue;
    const int64_t p = j.page_of(b, at);
    if (p < 0) continue;
    const int64_t off = at % j.page;
    for (int64_t h = 0; h < j.kv; ++h) {
      float* k = j.k + (p * j.kv + h) * j.e * j.page + off;
      const float* k_new = j.k_new + (b * j.kv + h) * j.e;
      for (int64_t e = 0; e < j.e; ++e) k[e * j.page] = k_new[e];
      std::memcpy(j.v + ((p * j.kv + h) * j.page + off) * j.e, j.v_new + (b * j.kv + h) * j.e, j.e * sizeof(float));
    }
  }
}

void run_item(const Job& j, int64_t item, std::vector<float>& scratch, std::vector<Segment>& segs) {
  const int64_t b = item / j.kv, h = item % j.kv;
  const int64_t lo = std::clamp<int64_t>(j.lo[b], 0, j.span()), hi = std::clamp<int64_t>(j.hi[b], 0, j.span());
  // The range [lo, hi) as runs within pages; positions whose table entry names no page
  // are left out (never read).
  segs.clear();
  int64_t n = 0;
  for (int64_t pos = lo; pos < hi;) {
    const int64_t off = pos % j.page, len = std::min(j.page - off, hi - pos), p = j.page_of(b, pos);
    if (p >= 0) {
      segs.push_back({p, off, len});
      n += len;
    }
    pos += len;
  }
  float* out = j.out + item * j.g * j.e;
  if (n == 0) {  // nothing to attend to (a free slot): zeros, never garbage
    std::memset(out, 0, j.g * j.e * sizeof(float));
    return;
  }
  scratch.resize(j.g * n + j.e * kSBlock);
  float *sc = scratch.data(), *tail = sc + j.g * n;
  const float* q = j.q + item * j.g * j.e;
  int64_t i0 = 0;
  for (const Segment& seg : segs) {
    scores(j, q, j.k_page(seg.page, h) + seg.offset, j.page, seg.len, sc + i0, n, tail);
    i0 += seg.len;
  }
  softmax(j, sc, n);
  values(j, h, segs, sc, n, out);
}

ffi::Error DecodeAttention(ffi::ThreadPool pool, Floats4 q, Floats3 k_new, Floats3 v_new, Floats4 k_in,
                           Floats4 v_in, Ints1 lo, Ints1 hi, Ints1 at, Ints2 table, Out4 out, Out4 k, Out4 v,
                           float scale) {
  const auto qd = q.dimensions(), kd = k->dimensions(), vd = v->dimensions(), td = table.dimensions();
  const int64_t b = qd[0], kv = qd[1], g = qd[2], e = qd[3], pages = kd[0], page = kd[3], n = td[1];
  if (kd[1] != kv || kd[2] != e || vd[0] != pages || vd[1] != kv || vd[2] != page || vd[3] != e || td[0] != b ||
      page < 1 || k_new.element_count() != b * kv * e || v_new.element_count() != b * kv * e ||
      lo.element_count() != b || hi.element_count() != b || at.element_count() != b || e % kW != 0) {
    return ffi::Error::InvalidArgument(
        "magjax_decode_attention: expected q[B, KV, G, E], new k and v [B, KV, E], pools k[P, KV, E, page] and "
        "v[P, KV, page, E], lo, hi and at [B], a page table [B, N], E a multiple of 16");
  }
  // The pools' outputs alias their inputs; should XLA have had to copy instead, start
  // from the inputs.
  if (k->typed_data() != k_in.typed_data())
    std::memcpy(k->typed_data(), k_in.typed_data(), k_in.element_count() * sizeof(float));
  if (v->typed_data() != v_in.typed_data())
    std::memcpy(v->typed_data(), v_in.typed_data(), v_in.element_count() * sizeof(float));
  Job job{q.typed_data(), k_new.typed_data(), v_new.typed_data(), k->typed_data(), v->typed_data(),
          lo.typed_data(), hi.typed_data(), at.typed_data(), table.typed_data(), out->typed_data(), scale,
          b, kv, g, e, pages, page, n};
  write_new(job);
  const bool small = 2 * b * kv * g * e * job.span() < kMinParallel;
  magjax::parallel_for(pool, small ? 1 : pool.num_threads(), b * kv, [&job](int64_t begin, int64_t end) {
    std::vector<float> scratch;
    std::vector<Segment> segs;
    for (int64_t item = begin; item < end; ++item) run_item(job, item, scratch, segs);
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
                                  .Arg<Floats4>()  // key pool
                                  .Arg<Floats4>()  // value pool
                                  .Arg<Ints1>()    // lo
                                  .Arg<Ints1>()    // hi
                                  .Arg<Ints1>()    // at: where each slot writes
                                  .Arg<Ints2>()    // page table
                                  .Ret<Floats4>()  // attention output
                                  .Ret<Floats4>()  // key pool, updated
                                  .Ret<Floats4>()  // value pool, updated
                                  .Attr<float>("scale"));
