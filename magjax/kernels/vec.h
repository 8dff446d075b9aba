// 16-lane vectors shared by the kernels: v16 (float) and vi16 (int32), with the
// operators of GCC/Clang vector extensions and a few named helpers (select, to_int,
// as_float, iota16, sum_lanes, max_lanes) that read the same for every host.
//
// Compiled with -march=native. With AVX-512 a v16 is one register, a plain 64-byte
// vector type. Elsewhere it is an array of the host's own vectors (two AVX2 registers,
// four SSE or NEON ones) and every operator a loop over them that the compiler unrolls:
// GCC lowers a 64-byte vector type on narrower hardware through the stack, which made
// the kernels 1.1-8.8x slower than XLA's own code on AVX2 (on an Intel Xeon built with
// -march=haswell, and on an AMD EPYC before that).
//
// kAccumulators is how many v16 a register block may keep live: the kernels size their
// tiles from it so that the accumulators, and the operands they are multiplied by, stay
// in registers (32 with AVX-512, 16 with AVX2: spilling one costs more than a smaller tile).
#pragma once

#include <cstdint>
#include <type_traits>

namespace magjax {

constexpr int kW = 16;  // lanes per vector

#if defined(__AVX512F__)

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t vi16 __attribute__((vector_size(64), aligned(4)));
constexpr int kAccumulators = 16;

inline v16 select(vi16 mask, v16 a, v16 b) { return mask ? a : b; }
inline vi16 to_int(v16 x) { return __builtin_convertvector(x, vi16); }

#else

// Accumulators: 12 of AVX2's 16 registers (6 measured best for the panel product on a
// Xeon built for haswell: 82 GFLOP/s, against 67 with 8 and 51-64 with 16); for 128-bit
// vectors, by the same count, 24 of AArch64's 32 registers or 12 of SSE's 16 (untimed).
#if defined(__AVX__)
constexpr int kLanes = 8;  // a 256-bit register
constexpr int kAccumulators = 6;
#elif defined(__aarch64__)
constexpr int kLanes = 4;  // a 128-bit NEON register
constexpr int kAccumulators = 6;
#else
constexpr int kLanes = 4;  // a 128-bit register (SSE)
constexpr int kAccumulators = 3;
#endif
constexpr int kParts = kW / kLanes;

// kW lanes as kParts of the host's vectors V.
template <typename V>
struct Wide {
  V part[kParts];
  auto operator[](int i) const { return part[i / kLanes][i % kLanes]; }
};

// No alignment attribute: a comparison's result type must be vint itself.
typedef float vfloat __attribute__((vector_size(kLanes * 4)));
typedef int32_t vint __attribute__((vector_size(kLanes * 4)));
typedef Wide<vfloat> v16;
typedef Wide<vint> vi16;

// Binary operators: Wide op Wide, Wide op scalar, scalar op Wide; comparisons give
// Wide<mask>, as the vector extensions do.
#define MAGJAX_WIDE_OP(op)                                                              \
  template <typename V>                                                                 \
  auto operator op(const Wide<V>& a, const Wide<V>& b) {                               \
    Wide<decltype(a.part[0] op b.part[0])> r;                                           \
    for (int i = 0; i < kParts; ++i) r.part[i] = a.part[i] op b.part[i];                \
    return r;                                                                           \
  }                                                                                     \
  template <typename V, typename S, typename = std::enable_if_t<std::is_arithmetic_v<S>>> \
  auto operator op(const Wide<V>& a, S s) {                                             \
    Wide<decltype(a.part[0] op s)> r;                                                   \
    for (int i = 0; i < kParts; ++i) r.part[i] = a.part[i] op s;                        \
    return r;                                                                           \
  }                                                                                     \
  template <typename V, typename S, typename = std::enable_if_t<std::is_arithmetic_v<S>>> \
  auto operator op(S s, const Wide<V>& a) {                                             \
    Wide<decltype(s op a.part[0])> r;                                                   \
    for (int i = 0; i < kParts; ++i) r.part[i] = s op a.part[i];                        \
    return r;                                                                           \
  }
MAGJAX_WIDE_OP(+)
MAGJAX_WIDE_OP(-)
MAGJAX_WIDE_OP(*)
MAGJAX_WIDE_OP(&)
MAGJAX_WIDE_OP(<<)
MAGJAX_WIDE_OP(<)
MAGJAX_WIDE_OP(<=)
MAGJAX_WIDE_OP(>)
MAGJAX_WIDE_OP(==)
#undef MAGJAX_WIDE_OP

#define MAGJAX_WIDE_ASSIGN(op)                                       \
  template <typename V, typename S>                                  \
  Wide<V>& operator op##=(Wide<V>& a, const S& b) {                   \
    a = a op b;                                                      \
    return a;                                                        \
  }
MAGJAX_WIDE_ASSIGN(+)
MAGJAX_WIDE_ASSIGN(-)
MAGJAX_WIDE_ASSIGN(*)
MAGJAX_WIDE_ASSIGN(&)
#undef MAGJAX_WIDE_ASSIGN

inline v16 select(const vi16& mask, const v16& a, const v16& b) {
  v16 r;
  for (int i = 0; i < kParts; ++i) r.part[i] = mask.part[i] ? a.part[i] : b.part[i];
  return r;
}
inline vi16 to_int(const v16& x) {
  vi16 r;
  for (int i = 0; i < kParts; ++i) r.part[i] = __builtin_convertvector(x.part[i], vint);
  return r;
}

#endif

#if defined(__AVX512F__)
inline v16 load(const float* p) { return *reinterpret_cast<const v16*>(p); }
inline vi16 load(const int32_t* p) { return *reinterpret_cast<const vi16*>(p); }
inline void store(float* p, v16 v) { *reinterpret_cast<v16*>(p) = v; }
inline v16 as_float(vi16 bits) { return reinterpret_cast<const v16&>(bits); }
#else
// Unaligned views of the host's vectors: a load or store is one instruction per part.
typedef float vfloat_u __attribute__((vector_size(kLanes * 4), aligned(4)));
typedef int32_t vint_u __attribute__((vector_size(kLanes * 4), aligned(4)));
inline v16 load(const float* p) {
  v16 v;
  for (int i = 0; i < kParts; ++i) v.part[i] = *reinterpret_cast<const vfloat_u*>(p + i * kLanes);
  return v;
}
inline vi16 load(const int32_t* p) {
  vi16 v;
  for (int i = 0; i < kParts; ++i) v.part[i] = *reinterpret_cast<const vint_u*>(p + i * kLanes);
  return v;
}
inline void store(float* p, const v16& v) {
  for (int i = 0; i < kParts; ++i) *reinterpret_cast<vfloat_u*>(p + i * kLanes) = v.part[i];
}
inline v16 as_float(const vi16& bits) {
  v16 v;
  for (int i = 0; i < kParts; ++i) v.part[i] = reinterpret_cast<const vfloat&>(bits.part[i]);
  return v;
}
#endif
inline v16 splat(float x) { return v16{} + x; }
// Lanes 0, 1, ..., 15 plus `from`.
inline vi16 iota16(int32_t from) {
  static constexpr int32_t kIndex[kW] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  return load(kIndex) + from;
}
inline float sum_lanes(const v16& v) {
  float total = 0.0f;
  for (int c = 0; c < kW; ++c) total += v[c];
  return total;
}
inline float max_lanes(const v16& v) {
  float m = v[0];
  for (int c = 1; c < kW; ++c) m = m < v[c] ? v[c] : m;
  return m;
}

// e^x for x <= 0 (softmax inputs after subtracting the max), within ~2 ulp down to
// e^-87, flushed to 0 below: range reduction x = n ln2 + r, a degree-6 polynomial in r,
// and 2^n assembled in the exponent bits.
inline v16 exp_nonpositive(v16 x) {
  const v16 lo = splat(-87.0f);
  const vi16 under = x < lo;
  x = select(under, lo, x);
  const v16 shifter = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  v16 n = x * splat(1.44269504088896341f) + shifter;
  n -= shifter;
  v16 r = x - n * splat(0.693145751953125f);
  r -= n * splat(1.428606765330187045e-06f);
  v16 p = splat(1.0f / 720);
  p = p * r + splat(1.0f / 120);
  p = p * r + splat(1.0f / 24);
  p = p * r + splat(1.0f / 6);
  p = p * r + splat(0.5f);
  p = p * r + splat(1.0f);
  p = p * r + splat(1.0f);
  const vi16 bits = (to_int(n) + 127) << 23;
  return select(under, v16{}, p * as_float(bits));
}

}  // namespace magjax
