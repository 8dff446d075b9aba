// 16-float vectors with GCC/Clang vector extensions, shared by the kernels.
//
// Compiled with -march=native, a v16 is one AVX-512 register, two AVX2 registers or four
// NEON registers: one source for every host.
#pragma once

#include <cstdint>

namespace magjax {

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t vi16 __attribute__((vector_size(64), aligned(4)));

constexpr int kW = 16;  // floats per vector

inline v16 load(const float* p) { return *reinterpret_cast<const v16*>(p); }
inline vi16 load(const int32_t* p) { return *reinterpret_cast<const vi16*>(p); }
inline void store(float* p, v16 v) { *reinterpret_cast<v16*>(p) = v; }
inline v16 splat(float x) { return v16{} + x; }

// e^x for x <= 0 (softmax inputs after subtracting the max), within ~2 ulp down to
// e^-87, flushed to 0 below: range reduction x = n ln2 + r, a degree-6 polynomial in r,
// and 2^n assembled in the exponent bits.
inline v16 exp_nonpositive(v16 x) {
  const v16 lo = splat(-87.0f);
  const vi16 under = x < lo;
  x = x < lo ? lo : x;
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
  const vi16 bits = (__builtin_convertvector(n, vi16) + 127) << 23;
  v16 y = p * reinterpret_cast<const v16&>(bits);
  return under ? v16{} : y;
}

}  // namespace magjax
