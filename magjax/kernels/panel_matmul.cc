// y[M, N] = x[M, K] @ w for the sampler's few-row products, with w packed into panels.
//
// Why this exists: a decode step multiplies a handful of rows (one per slot) by every
// weight matrix, so it is bound by streaming the weights from memory. XLA:CPU's library
// kernels are tuned for many rows and read the weights at 6-8 GB/s on such shapes, a
// quarter of what the memory delivers. Here the weights are laid out once per version as
// panels w[P, K, 16] (16 output columns, contiguous along K), so each panel streams
// sequentially while up to kRows rows accumulate against it in registers.
//
// Written with GCC/Clang vector extensions and compiled on the machine that runs it
// (-march=native): the same source becomes AVX-512, AVX2 or NEON code.

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>

#include "ffi_types.h"
#include "parallel.h"
#include "vec.h"
#include "xla/ffi/api/ffi.h"

using namespace magjax;  // NOLINT: the kernels' vector and FFI buffer types

namespace {

constexpr int kPanel = 16;        // output columns per panel (one vector)
constexpr int kRows = kAccumulators;  // rows accumulated together in registers: 16 with AVX-512, 6 with AVX2
constexpr int64_t kDepth = 256;   // K per block: the block's panel slice and rows stay in L1
constexpr int64_t kPrefetch = 1024;  // floats ahead in the panel stream (4 KiB)
constexpr int64_t kMinParallel = int64_t{1} << 21;  // multiply-adds below which one thread runs it

// Rows [0, R) of x (stride ldx) times one panel block w[kb, 16] into y (stride ldy),
// adding to what y holds unless `first`. Only `cols` (<= 16) columns of y exist.
template <int R>
void tile(const float* x, int64_t ldx, const float* w, int64_t kb, float* y, int64_t ldy, bool first,
          int cols) {
  v16 acc[R];
  float edge[kPanel];
  for (int r = 0; r < R; ++r) {
    if (first) {
      acc[r] = v16{};
    } else if (cols == kPanel) {
      acc[r] = load(y + r * ldy);
    } else {
      std::memset(edge, 0, sizeof edge);
      std::memcpy(edge, y + r * ldy, cols * sizeof(float));
      acc[r] = load(edge);
    }
  }
  for (int64_t k = 0; k < kb; ++k) {
    v16 wk = load(w + k * kPanel);
    __builtin_prefetch(w + k * kPanel + kPrefetch);
    for (int r = 0; r < R; ++r) acc[r] += x[r * ldx + k] * wk;
  }
  for (int r = 0; r < R; ++r) {
    if (cols == kPanel) {
      store(y + r * ldy, acc[r]);
    } else {
      store(edge, acc[r]);
      std::memcpy(y + r * ldy, edge, cols * sizeof(float));
    }
  }
}

using TileFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, bool, int);

template <int... R>
constexpr std::array<TileFn, sizeof...(R)> tiles(std::integer_sequence<int, R...>) {
  return {&tile<R + 1>...};
}
constexpr auto kTiles = tiles(std::make_integer_sequence<int, kRows>{});

// One call's operands: x[m, k], the panels of w, y[m, n].
struct Job {
  const float* x;
  const float* w;
  float* y;
  int64_t m, k, n, panels;
};

void run_panel(const Job& j, int64_t p) {
  const int cols = static_cast<int>(std::min<int64_t>(kPanel, j.n - p * kPanel));
  for (int64_t k0 = 0; k0 < j.k; k0 += kDepth) {
    const int64_t kb = std::min(kDepth, j.k - k0);
    for (int64_t m0 = 0; m0 < j.m; m0 += kRows) {
      const int64_t rows = std::min<int64_t>(kRows, j.m - m0);
      kTiles[rows - 1](j.x + m0 * j.k + k0, j.k, j.w + (p * j.k + k0) * kPanel, kb, j.y + m0 * j.n + p * kPanel,
                       j.n, k0 == 0, cols);
    }
  }
}

ffi::Error PanelMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 3 || yd.size() != 2 || wd[2] != kPanel || wd[1] != xd[1] ||
      yd[0] != xd[0] || (yd[1] + kPanel - 1) / kPanel != wd[0]) {
    return ffi::Error::InvalidArgument(
        "magjax_panel_matmul: expected x[M, K], w[ceil(N / 16), K, 16] and y[M, N]");
  }
  Job job{x.typed_data(), w.typed_data(), y->typed_data(), xd[0], xd[1], yd[1], wd[0]};
  if (job.m == 0 || job.n == 0) return ffi::Error::Success();
  if (job.k == 0) {
    std::memset(job.y, 0, job.m * job.n * sizeof(float));
    return ffi::Error::Success();
  }
  const bool small = job.m * job.k * job.n < kMinParallel;
  magjax::parallel_for(pool, small ? 1 : pool.num_threads(), job.panels, [&job](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) run_panel(job, p);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MagjaxPanelMatmul, PanelMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
