// Splitting one kernel call over XLA's intra-op thread pool.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace magjax {

// Calls run(begin, end) over [0, items) in chunks, on the calling thread and up to
// `threads - 1` pool helpers, and returns when every item is done. Chunks are claimed from
// a shared counter, so a helper that starts late (or never) costs nothing: the caller
// takes what is left. The state is shared-owned: a helper that starts after the call has
// returned finds no chunk left and never calls `run` (whose buffers are gone by then).
template <typename Run>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t threads, int64_t items, Run run) {
  struct State {
    State(Run r, int64_t n, int64_t per) : run(std::move(r)), items(n), per_chunk(per),
                                           chunks((n + per - 1) / per) {}
    void work() {
      for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
        run(c * per_chunk, std::min(items, (c + 1) * per_chunk));
        done.fetch_add(1, std::memory_order_release);
      }
    }
    Run run;
    const int64_t items, per_chunk, chunks;
    std::atomic<int64_t> next{0}, done{0};
  };
  if (items <= 0) return;
  threads = std::max<int64_t>(1, threads);
  // A few chunks per thread, so a thread slowed by other work does not hold up the call.
  auto state = std::make_shared<State>(std::move(run), items, std::max<int64_t>(1, items / (threads * 4)));
  for (int64_t t = 1; t < std::min(threads, state->chunks); ++t) pool.Schedule([state] { state->work(); });
  state->work();
  // Every chunk is claimed by now; wait for the ones helpers are still running. Spin
  // briefly (a chunk takes microseconds), then yield: with more busy threads than cores (a
  // trainer beside the sampler), a spinning caller must not keep a helper off its core.
  for (int spins = 0; state->done.load(std::memory_order_acquire) < state->chunks; ++spins) {
    if (spins < 4096) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }
}

}  // namespace magjax
