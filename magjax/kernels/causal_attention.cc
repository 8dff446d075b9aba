// Causal self-attention over packed sequences, forward and backward, for the train step
// (and the sampler's prefill) on CPU.
//
// Why this exists: XLA:CPU runs attention as whole [t, t] score matrices per head,
// masked afterwards, with the probabilities kept for the backward pass and transposed
// between products: on the tiny preset about a third of the train step, on small an
// eighth. Here each (batch row, kv head) is one work item that reads its keys and values
// once, skips every key block a query block cannot see (causal limit, start of its
// packed segment), keeps only the log-sum-exp per row for the backward pass, and computes
// the gradients of its own keys and values without a race (FlashAttention-2's scheme,
// with a two-pass softmax per row block: rows are short enough to keep whole).
//
// Semantics are exactly `decoder.attention_mask`: key j is visible from query i when
// j <= i, segment[j] == segment[i], and (with a window) position[i] - position[j] < window.
// Queries and keys come in unrotated with the rotary tables cos, sin [B, T, E/2]: the
// kernel rotates each row as it reads it (rotate-half convention, as `decoder.apply_rope`)
// and rotates the gradients back, so the step spends no separate passes on it.
// Layouts are the model's: q[B, T, H, E], k and v [B, T, KV, E] with query head
// h = kv * G + gi; the log-sum-exp is [B, T, H]. E is a multiple of 16.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <unordered_map>
#include <vector>

#include "ffi_types.h"
#include "parallel.h"
#include "vec.h"
#include "xla/ffi/api/ffi.h"

using namespace magjax;  // NOLINT: the kernels' vector and FFI buffer types

namespace {

constexpr int64_t kBlockRows = 32;  // query rows ((position, head) pairs) per block
constexpr int64_t kKeyTile = 64;    // keys per score tile: 4 vectors
constexpr int kRowTile = std::max<int>(1, kAccumulators / (kKeyTile / kW));  // rows per register tile
constexpr int kKeyGroup = std::max(1, kAccumulators / 4);  // keys per register tile of the key-gradient products
constexpr int64_t kMinParallel = int64_t{1} << 18;  // multiply-adds below which one thread runs it

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Shape {
  int64_t b, t, h, kv, g, e;
  float scale;
  int64_t window;  // 0: none
  // Derived: positions per row block, rows per block (padded to whole register tiles) and
  // the padded key length of the per-item scratch (a whole tile past the last key, so a
  // tile that starts anywhere below t stays inside).
  int64_t block_positions, block_rows, tp;

  Shape(int64_t b_, int64_t t_, int64_t h_, int64_t kv_, int64_t e_, float scale_, int64_t window_)
      : b(b_), t(t_), h(h_), kv(kv_), g(h_ / kv_), e(e_), scale(scale_), window(window_) {
    block_positions = std::max<int64_t>(1, kBlockRows / g);
    block_rows = round_up(block_positions * g, kRowTile);
    tp = round_up(t, kW) + kKeyTile;
  }
  // Offsets of (batch row, position, head) in q/o/lse and of (batch row, position, kv head) in k/v.
  int64_t q_row(int64_t bi, int64_t ti, int64_t hi) const { return ((bi * t + ti) * h + hi) * e; }
  int64_t kv_row(int64_t bi, int64_t ti, int64_t ki) const { return ((bi * t + ti) * kv + ki) * e; }
};

// The rotary embedding of one model: cos, sin [B, T, E/2]. `apply` rotates a row of E
// (rotate-half: x1 c - x2 s, x2 c + x1 s); `undo` applies the transpose, which takes a
// gradient back to the unrotated input.
struct Rotary {
  const float *cos, *sin;
  int64_t t, half;
  void apply(int64_t bi, int64_t ti, const float* __restrict x, float* __restrict out) const {
    const float *c = cos + (bi * t + ti) * half, *s = sin + (bi * t + ti) * half;
    for (int64_t i = 0; i < half; ++i) {
      out[i] = x[i] * c[i] - x[i + half] * s[i];
      out[i + half] = x[i + half] * c[i] + x[i] * s[i];
    }
  }
  void undo(int64_t bi, int64_t ti, const float* __restrict y, float scale, float* __restrict out) const {
    const float *c = cos + (bi * t + ti) * half, *s = sin + (bi * t + ti) * half;
    for (int64_t i = 0; i < half; ++i) {
      out[i] = scale * (y[i] * c[i] + y[i + half] * s[i]);
      out[i + half] = scale * (y[i + half] * c[i] - y[i] * s[i]);
    }
  }
};

// One work item's state: a (batch row, kv head), its keys and values, its mask data, and
// the scratch of one row block.
struct Item {
  int64_t bi, ki;
  std::vector<float> kr;          // rotated keys [tp][e], zero past t
  std::vector<float> kt, vt;      // rotated keys / values transposed, [e][tp], zero past t
  std::vector<int32_t> seg, pos;  // [tp], readable past t (never visible: index > any row's)
  std::vector<int64_t> first;     // [t]: where each position's segment first occurs
  std::vector<float> a, b2, c;    // block rows [rows][e]: queries, output grads, outputs
  std::vector<float> s, d;        // [rows][tp]: scores -> probabilities; dP -> dS
  std::vector<float> row_stat;    // [rows]: lse, or D = dO . O
  std::vector<float> dk, dv;      // [tp][e] key / value gradient accumulators

  void start(const Shape& sh, int64_t item, const int32_t* seg_bt, const int32_t* pos_bt) {
    bi = item / sh.kv;
    ki = item % sh.kv;
    seg.assign(sh.tp, 0);
    pos.assign(sh.tp, 0);
    std::memcpy(seg.data(), seg_bt + bi * sh.t, sh.t * sizeof(int32_t));
    std::memcpy(pos.data(), pos_bt + bi * sh.t, sh.t * sizeof(int32_t));
    first.resize(sh.t);
    std::unordered_map<int32_t, int64_t> seen;
    for (int64_t i = 0; i < sh.t; ++i) first[i] = seen.emplace(seg[i], i).first->second;
    a.assign(sh.block_rows * sh.e, 0.0f);
    b2.assign(sh.block_rows * sh.e, 0.0f);
    c.assign(sh.block_rows * sh.e, 0.0f);
    s.assign(sh.block_rows * sh.tp, 0.0f);
    d.assign(sh.block_rows * sh.tp, 0.0f);
    row_stat.assign(sh.block_rows, 0.0f);
  }

  // The item's keys, rotated, into kr[tp][e] and transposed into kt[e][tp].
  void keys_in(const Shape& sh, const float* k, const Rotary& rot) {
    kr.assign(sh.tp * sh.e, 0.0f);
    for (int64_t j = 0; j < sh.t; ++j) rot.apply(bi, j, k + sh.kv_row(bi, j, ki), kr.data() + j * sh.e);
    transpose(sh, kr.data(), sh.e, kt);
  }

  // dst[e][tp] = rows [0, t) of src (row stride ld), transposed, zero past t.
  void transpose(const Shape& sh, const float* src, int64_t ld, std::vector<float>& dst) const {
    dst.assign(sh.e * sh.tp, 0.0f);
    for (int64_t j = 0; j < sh.t; ++j)
      for (int64_t i = 0; i < sh.e; ++i) dst[i * sh.tp + j] = src[j * ld + i];
  }

  // Copies the block's rows of src[B, T, H, E] (positions [t0, t1), this item's g heads,
  // which are contiguous per position) into dst[rows][e], rotated when `rot` is given;
  // padding rows stay zero.
  void gather(const Shape& sh, const float* src, int64_t t0, int64_t t1, std::vector<float>& dst,
              const Rotary* rot = nullptr) const {
    for (int64_t ti = t0; ti < t1; ++ti) {
      const float* from = src + sh.q_row(bi, ti, ki * sh.g);
      float* to = dst.data() + (ti - t0) * sh.g * sh.e;
      if (rot == nullptr) {
        std::memcpy(to, from, sh.g * sh.e * sizeof(float));
      } else {
        for (int64_t gi = 0; gi < sh.g; ++gi) rot->apply(bi, ti, from + gi * sh.e, to + gi * sh.e);
      }
    }
  }
};

// out[r][j] = sum_i a[r][i] * bt[i][j] for rows [0, rows) (a multiple of kRowTile) and keys j in
// whole 64-key tiles from lo (a multiple of 16) until past hi.
void times_transposed(const float* a, int64_t rows, const float* bt, const Shape& sh, int64_t lo, int64_t hi,
                      float* out) {
  for (int64_t j0 = lo; j0 < hi; j0 += kKeyTile) {
    for (int64_t r0 = 0; r0 < rows; r0 += kRowTile) {
      v16 acc[kRowTile][kKeyTile / kW] = {};
      const float* ar = a + r0 * sh.e;
      for (int64_t i = 0; i < sh.e; ++i) {
        v16 bv[kKeyTile / kW];
        for (int c = 0; c < kKeyTile / kW; ++c) bv[c] = load(bt + i * sh.tp + j0 + c * kW);
        for (int r = 0; r < kRowTile; ++r) {
          const float x = ar[r * sh.e + i];
          for (int c = 0; c < kKeyTile / kW; ++c) acc[r][c] += x * bv[c];
        }
      }
      for (int r = 0; r < kRowTile; ++r)
        for (int c = 0; c < kKeyTile / kW; ++c) store(out + (r0 + r) * sh.tp + j0 + c * kW, acc[r][c]);
    }
  }
}

// out[r][:] = sum_{j in [lo, hi)} p[r][j] * src[j * ld, + e) for rows [0, rows): the
// item's value rows (in the [B, T, KV, E] input) or rotated key rows. EN vectors of the
// head dim per pass.
template <int EN>
void rows_times_keys(const float* p, int64_t rows, const float* src, int64_t ld, const Shape& sh, int64_t lo,
                     int64_t hi, int64_t e0, float* out) {
  for (int64_t r0 = 0; r0 < rows; r0 += kRowTile) {
    v16 acc[kRowTile][EN] = {};
    const float* pr = p + r0 * sh.tp;
    for (int64_t j = lo; j < hi; ++j) {
      const float* row = src + j * ld + e0;
      v16 sv[EN];
      for (int c = 0; c < EN; ++c) sv[c] = load(row + c * kW);
      for (int r = 0; r < kRowTile; ++r) {
        const float x = pr[r * sh.tp + j];
        for (int c = 0; c < EN; ++c) acc[r][c] += x * sv[c];
      }
    }
    for (int r = 0; r < kRowTile; ++r)
      for (int c = 0; c < EN; ++c) store(out + (r0 + r) * sh.e + e0 + c * kW, acc[r][c]);
  }
}

void rows_times_keys(const float* p, int64_t rows, const float* src, int64_t ld, const Shape& sh, int64_t lo,
                     int64_t hi, float* out) {
  int64_t e0 = 0;
  for (; e0 + 4 * kW <= sh.e; e0 += 4 * kW) rows_times_keys<4>(p, rows, src, ld, sh, lo, hi, e0, out);
  for (; e0 < sh.e; e0 += kW) rows_times_keys<1>(p, rows, src, ld, sh, lo, hi, e0, out);
}

// acc[j][:] += scale * sum_r x[r][j] * y[r][:] for keys j in [lo, hi) (whole groups of kKeyGroup,
// x is zero where a key is not visible) and rows [0, rows).
template <int EN>
void keys_times_rows(const float* x, int64_t rows, const float* y, const Shape& sh, int64_t lo, int64_t hi,
                     int64_t e0, float scale, float* acc_out) {
  for (int64_t j0 = lo; j0 < hi; j0 += kKeyGroup) {
    v16 acc[kKeyGroup][EN] = {};
    for (int64_t r = 0; r < rows; ++r) {
      v16 yv[EN];
      for (int c = 0; c < EN; ++c) yv[c] = load(y + r * sh.e + e0 + c * kW);
      const float* xr = x + r * sh.tp + j0;
      for (int jj = 0; jj < kKeyGroup; ++jj) {
        const float xv = xr[jj];
        for (int c = 0; c < EN; ++c) acc[jj][c] += xv * yv[c];
      }
    }
    for (int jj = 0; jj < kKeyGroup; ++jj) {
      float* dst = acc_out + (j0 + jj) * sh.e + e0;
      for (int c = 0; c < EN; ++c) store(dst + c * kW, load(dst + c * kW) + splat(scale) * acc[jj][c]);
    }
  }
}

void keys_times_rows(const float* x, int64_t rows, const float* y, const Shape& sh, int64_t lo, int64_t hi,
                     float scale, float* acc_out) {
  int64_t e0 = 0;
  for (; e0 + 4 * kW <= sh.e; e0 += 4 * kW) keys_times_rows<4>(x, rows, y, sh, lo, hi, e0, scale, acc_out);
  for (; e0 < sh.e; e0 += kW) keys_times_rows<1>(x, rows, y, sh, lo, hi, e0, scale, acc_out);
}

// Which of the 16 keys from j0 row r of the block can see.
inline vi16 visible(const Shape& sh, const Item& it, int64_t j0, int64_t ti) {
  const vi16 index = iota16(static_cast<int32_t>(j0));
  vi16 ok = (index <= static_cast<int32_t>(ti)) & (load(it.seg.data() + j0) == it.seg[ti]);
  if (sh.window > 0) ok &= (it.pos[ti] - load(it.pos.data() + j0)) < static_cast<int32_t>(sh.window);
  return ok;
}

// A row block: its rows (positions from t0, g heads each) and the keys they may see,
// [lo, hi): from the earliest row's segment start (aligned down to a vector) to the last
// position; hi16 is hi rounded up to a vector.
struct Block {
  int64_t rows, lo, hi, hi16;
};

// The block of positions from t0, with its rows' rotated queries in it.a and their raw
// scores against its keys in it.s.
Block start_block(const Shape& sh, Item& it, const Rotary& rot, const float* q, int64_t t0) {
  const int64_t t1 = std::min(sh.t, t0 + sh.block_positions);
  int64_t first = t0;
  for (int64_t ti = t0; ti < t1; ++ti) first = std::min(first, it.first[ti]);
  const Block blk{(t1 - t0) * sh.g, first / kW * kW, t1, round_up(t1, kW)};
  std::fill(it.a.begin(), it.a.end(), 0.0f);
  it.gather(sh, q, t0, t1, it.a, &rot);
  times_transposed(it.a.data(), sh.block_rows, it.kt.data(), sh, blk.lo, blk.hi, it.s.data());
  return blk;
}

void forward_item(const Shape& sh, Item& it, const Rotary& rot, const float* q, const float* v, float* o,
                  float* lse) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t t0 = 0; t0 < sh.t; t0 += sh.block_positions) {
    const auto [rows, lo, hi, hi16] = start_block(sh, it, rot, q, t0);
    // Softmax of each row over its visible keys, unnormalised (the output is divided by
    // the row's sum instead); invisible keys and padding rows get 0.
    for (int64_t r = 0; r < sh.block_rows; ++r) {
      float* row = it.s.data() + r * sh.tp;
      if (r >= rows) {
        std::fill(row + lo, row + hi16, 0.0f);
        it.row_stat[r] = 1.0f;
        continue;
      }
      const int64_t ti = t0 + r / sh.g;
      v16 mx = splat(neg_inf);
      for (int64_t j = lo; j < hi16; j += kW) {
        const v16 x = select(visible(sh, it, j, ti), load(row + j) * splat(sh.scale), splat(neg_inf));
        store(row + j, x);
        mx = select(x > mx, x, mx);
      }
      const float m = max_lanes(mx);  // finite: a row always sees itself
      v16 sum = v16{};
      for (int64_t j = lo; j < hi16; j += kW) {
        const v16 x = load(row + j);
        const v16 p = select(x == splat(neg_inf), v16{}, exp_nonpositive(x - splat(m)));
        store(row + j, p);
        sum += p;
      }
      const float total = sum_lanes(sum);
      it.row_stat[r] = total;
      lse[sh.q_row(it.bi, ti, it.ki * sh.g + r % sh.g) / sh.e] = m + std::log(total);
    }
    rows_times_keys(it.s.data(), sh.block_rows, v + sh.kv_row(it.bi, 0, it.ki), sh.kv * sh.e, sh, lo, hi,
                    it.c.data());
    for (int64_t r = 0; r < rows; ++r) {
      const float inv = 1.0f / it.row_stat[r];
      float* dst = o + sh.q_row(it.bi, t0 + r / sh.g, it.ki * sh.g + r % sh.g);
      for (int64_t i = 0; i < sh.e; i += kW) store(dst + i, load(it.c.data() + r * sh.e + i) * splat(inv));
    }
  }
}

void backward_item(const Shape& sh, Item& it, const Rotary& rot, const float* q, const float* o, const float* lse,
                   const float* dout, float* dq, float* dk, float* dv) {
  it.dk.assign(sh.tp * sh.e, 0.0f);
  it.dv.assign(sh.tp * sh.e, 0.0f);
  for (int64_t t0 = 0; t0 < sh.t; t0 += sh.block_positions) {
    const auto [rows, lo, hi, hi16] = start_block(sh, it, rot, q, t0);  // scores in it.s
    const int64_t t1 = t0 + rows / sh.g;
    std::fill(it.b2.begin(), it.b2.end(), 0.0f);
    it.gather(sh, dout, t0, t1, it.b2);
    it.gather(sh, o, t0, t1, it.c);
    times_transposed(it.b2.data(), sh.block_rows, it.vt.data(), sh, lo, hi, it.d.data());  // dP = dO . v
    // P = exp(scale * s - lse) on visible keys; dS = P * (dP - dO . O). Padding rows: 0.
    for (int64_t r = 0; r < sh.block_rows; ++r) {
      float* p_row = it.s.data() + r * sh.tp;
      float* d_row = it.d.data() + r * sh.tp;
      if (r >= rows) {
        std::fill(p_row + lo, p_row + hi16, 0.0f);
        std::fill(d_row + lo, d_row + hi16, 0.0f);
        continue;
      }
      const int64_t ti = t0 + r / sh.g;
      const float row_lse = lse[sh.q_row(it.bi, ti, it.ki * sh.g + r % sh.g) / sh.e];
      v16 dot = v16{};
      for (int64_t i = 0; i < sh.e; i += kW) dot += load(it.b2.data() + r * sh.e + i) * load(it.c.data() + r * sh.e + i);
      const float delta = sum_lanes(dot);
      for (int64_t j = lo; j < hi16; j += kW) {
        const v16 p = select(visible(sh, it, j, ti),
                             exp_nonpositive(load(p_row + j) * splat(sh.scale) - splat(row_lse)), v16{});
        store(p_row + j, p);
        store(d_row + j, p * (load(d_row + j) - splat(delta)));
      }
    }
    // dQ = scale * dS . K for the block's rows, rotated back.
    rows_times_keys(it.d.data(), sh.block_rows, it.kr.data(), sh.e, sh, lo, hi, it.c.data());
    for (int64_t r = 0; r < rows; ++r)
      rot.undo(it.bi, t0 + r / sh.g, it.c.data() + r * sh.e, sh.scale,
               dq + sh.q_row(it.bi, t0 + r / sh.g, it.ki * sh.g + r % sh.g));
    keys_times_rows(it.s.data(), sh.block_rows, it.b2.data(), sh, lo, hi, 1.0f, it.dv.data());     // dV += P^T dO
    keys_times_rows(it.d.data(), sh.block_rows, it.a.data(), sh, lo, hi, sh.scale, it.dk.data());  // dK += dS^T Q
  }
  for (int64_t j = 0; j < sh.t; ++j) {
    rot.undo(it.bi, j, it.dk.data() + j * sh.e, 1.0f, dk + sh.kv_row(it.bi, j, it.ki));
    std::memcpy(dv + sh.kv_row(it.bi, j, it.ki), it.dv.data() + j * sh.e, sh.e * sizeof(float));
  }
}

ffi::Error check(const char* name, Floats4& q, Floats4& k, Floats4& v, Ints2& seg, Ints2& pos, Floats3& cos,
                 Floats3& sin) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  const int64_t bt = qd[0] * qd[1];
  const bool ok = kd[0] == qd[0] && kd[1] == qd[1] && kd[3] == qd[3] && kd[2] > 0 && qd[2] % kd[2] == 0 &&
                  vd[0] == kd[0] && vd[1] == kd[1] && vd[2] == kd[2] && vd[3] == kd[3] && qd[3] % kW == 0 &&
                  seg.element_count() == bt && pos.element_count() == bt &&
                  cos.element_count() == bt * qd[3] / 2 && sin.element_count() == bt * qd[3] / 2;
  if (ok) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(std::string(name) +
                                     ": expected q[B, T, H, E], k and v [B, T, KV, E] with H a multiple of KV "
                                     "and E of 16, segment ids and positions [B, T], cos and sin [B, T, E/2]");
}

int64_t threads_for(ffi::ThreadPool& pool, const Shape& sh) {
  const int64_t work = sh.b * sh.h * sh.t * sh.t * sh.e;  // twice the causal multiply-adds
  return work < kMinParallel ? 1 : pool.num_threads();
}

// Checks the inputs, then calls per_item(shape, rotary, item) for every (batch row, kv
// head) with the item's mask data and rotated keys in place, split over the pool.
template <typename PerItem>
ffi::Error for_each_item(const char* name, ffi::ThreadPool& pool, Floats4& q, Floats4& k, Floats4& v, Ints2& seg,
                         Ints2& pos, Floats3& cos, Floats3& sin, float scale, int64_t window, PerItem per_item) {
  if (auto e = check(name, q, k, v, seg, pos, cos, sin); e.failure()) return e;
  const auto qd = q.dimensions();
  const Shape sh(qd[0], qd[1], qd[2], k.dimensions()[2], qd[3], scale, window);
  const Rotary rot{cos.typed_data(), sin.typed_data(), sh.t, sh.e / 2};
  magjax::parallel_for(pool, threads_for(pool, sh), sh.b * sh.kv, [&](int64_t begin, int64_t end) {
    Item it;
    for (int64_t item = begin; item < end; ++item) {
      it.start(sh, item, seg.typed_data(), pos.typed_data());
      it.keys_in(sh, k.typed_data(), rot);
      per_item(sh, rot, it);
    }
  });
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, Floats4 q, Floats4 k, Floats4 v, Ints2 seg, Ints2 pos, Floats3 cos,
                   Floats3 sin, Out4 o, Out3 lse, float scale, int64_t window) {
  return for_each_item("magjax_attention_forward", pool, q, k, v, seg, pos, cos, sin, scale, window,
                       [&](const Shape& sh, const Rotary& rot, Item& it) {
                         forward_item(sh, it, rot, q.typed_data(), v.typed_data(), o->typed_data(),
                                      lse->typed_data());
                       });
}

ffi::Error Backward(ffi::ThreadPool pool, Floats4 q, Floats4 k, Floats4 v, Ints2 seg, Ints2 pos, Floats3 cos,
                    Floats3 sin, Floats4 o, Floats3 lse, Floats4 dout, Out4 dq, Out4 dk, Out4 dv, float scale,
                    int64_t window) {
  return for_each_item("magjax_attention_backward", pool, q, k, v, seg, pos, cos, sin, scale, window,
                       [&](const Shape& sh, const Rotary& rot, Item& it) {
                         it.transpose(sh, v.typed_data() + sh.kv_row(it.bi, 0, it.ki), sh.kv * sh.e, it.vt);
                         backward_item(sh, it, rot, q.typed_data(), o.typed_data(), lse.typed_data(),
                                       dout.typed_data(), dq->typed_data(), dk->typed_data(), dv->typed_data());
                       });
}


// The inputs both passes take, in order.
auto bind_inputs() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<Floats4>()   // q
      .Arg<Floats4>()   // k
      .Arg<Floats4>()   // v
      .Arg<Ints2>()     // segment ids
      .Arg<Ints2>()     // positions
      .Arg<Floats3>()   // rotary cos
      .Arg<Floats3>();  // rotary sin
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MagjaxAttentionForward, Forward,
                              bind_inputs()
                                  .Ret<Floats4>()  // output
                                  .Ret<Floats3>()  // log-sum-exp of each row's scores
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("window"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MagjaxAttentionBackward, Backward,
                              bind_inputs()
                                  .Arg<Floats4>()  // forward output
                                  .Arg<Floats3>()  // forward log-sum-exp
                                  .Arg<Floats4>()  // output gradient
                                  .Ret<Floats4>()  // dq
                                  .Ret<Floats4>()  // dk
                                  .Ret<Floats4>()  // dv
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("window"));
