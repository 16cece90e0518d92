// Direct float32 convolution kernels for XLA:CPU, called through the XLA FFI.
//
// Why by hand: XLA:CPU runs a 3x3 convolution with 64 channels at about 100 GFLOP/s and
// derives its kernel gradient at 30-90 GFLOP/s on a 2-core AVX-512 machine, while the same
// cores sustain about 300 GFLOP/s in a matrix product. These kernels reach the matrix-product
// speed on ResNet's layers (measured in benchmarks/results/conv-grad-cpu.md).
//
// Variants: this one source is compiled three times (jaxconv/ops/_native/_build.py), with
// -DJAXCONV_ISA_AVX512 (-march=x86-64-v4), -DJAXCONV_ISA_AVX2 (-march=x86-64-v3) or
// -DJAXCONV_ISA_PORTABLE (-march=x86-64, plain C++ without intrinsics). The kernels are written
// once on simd::Vec (simd.h), one vector register: 16 float32 lanes on AVX-512, 8 on AVX2, 4
// on the portable build (a generic vector the compiler lowers to SSE2, no intrinsics). Channels
// are counted in blocks of 16 everywhere (kPer16 = 1, 2 or 4 registers each), so the index
// arithmetic is shared; only the register blocks differ per variant (kAcc, kMaxV and friends
// below): an R x V block of accumulators that, with the kernel vectors and a broadcast, fits
// the 32 (AVX-512) or 16 vector registers.
//
// Layout: channels-last. x: [N, H, W, C], w: [KH, KW, C, O], y: [N, Ho, Wo, O], zero padding
// ph/pw before the first row/column (the output size, given by y, implies the padding after):
//
//   y[n, h, v, o] = sum_{i, j, c} x[n, h sh + i dh - ph, v sw + j dw - pw, c] w[i, j, c, o],
//
// with x read as zero outside [0, H) x [0, W).
//
// Forward: the output pixels (n, h, v) are flattened to one index p and cut into blocks of R
// consecutive pixels; the output channels into blocks of 16 V (V vectors). A micro-kernel keeps
// an R x V block of the output in registers and adds, for every tap (i, j) and input channel c,
// the broadcast input value of each pixel times V vectors of the packed kernel. Input channels
// are processed in blocks so that one output block's kernel slice stays in L2. A tap that falls
// in the padding reads a row of zeros, so no padded copy of x is made. Blocks of pixels are
// shared among the XLA intra-op threads.
//
// Kernel gradient: dw[i, j, c, o] = sum_p x[p + tap(i, j), c] dy[p, o]. The same micro-kernel
// shape with the roles swapped: R input channels x V output-channel vectors in registers,
// reduced over a chunk of pixels into a partial copy of dw; the copies are added at the end.
//
// The input gradient is the forward kernel applied to the output gradient with the flipped,
// channel-swapped kernel (one call per stride phase); it is set up in Python
// (jaxconv/ops/_native/__init__.py).
//
// For 3x3 kernels with stride 1 and no dilation there are Winograd F(4x4, 3x3) versions of the
// forward and of the kernel gradient (4x fewer multiplications; see their section below). They
// run the same register blocks on transformed tiles: 1.7-2.9x the direct kernels on ResNet's
// 3x3 layers at batch 128, with a float32 error of a few 1e-6 of the largest output.
// Depthwise convolutions (one input channel per group, multiplier 1) have their own forward and
// kernel gradient (last section): per tap a multiply-add over channels, no matrix product.
//
// Determinism: identical inputs give identical bits whatever the threads' timing. Every output
// element of a forward (direct, Winograd, depthwise) is computed and written by one work item,
// in an order that does not depend on which thread runs it or on how the work is cut. The
// kernel gradients reduce over pixels (or tiles): the chunks of pixels are split statically into
// G groups of consecutive chunks (plan_groups: G depends only on the problem size, the worker
// count and the scratch cap), each group summed in chunk order into its own partial copy of dw
// by whichever thread takes it, and the copies added element by element in group order. (The
// worker count and the cap are fixed for a process unless jaxconv_set_limits changes them; the
// bits may differ between worker counts. The variants differ from each other in rounding.)
//
// Resources (jaxconv_set_limits, called from Python): a cap on the worker threads (0: the XLA
// intra-op pool's size) and a cap on the scratch memory kept between calls by all threads
// together (default 256 MiB). Scratch buffers (packed kernels, transformed tiles, partial copies)
// are kept per thread to avoid page faults on every call while a process-wide count of their
// bytes stays under the cap; a buffer that does not fit is allocated for the call only. The
// number of partial copies of a kernel gradient is bounded by half the cap, so a many-core host
// takes fewer groups (each then cut into slices of dw that threads fill side by side) instead of
// a copy per core.

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using simd::kLanes;
using simd::kPer16;
using simd::Mask;
using simd::Vec;
using simd::fma;
using simd::fnma;
using simd::load;
using simd::set1;
using simd::store;

// ------------------------------------------------------------------------------------------
// Register blocks per variant. kAcc is R x V, the accumulators of a matrix-product block in
// 16-channel units (kPer16 registers each); kMaxV the widest V; the depthwise forward keeps
// kDwiseR pixels x kDwiseV units, its kernel gradient kDwiseTaps taps x one unit. Measured on
// Zen 4 (AVX-512 double-pumped, so AVX2 comes close to it when blocked as well):
//   AVX-512:  R x V = 6 x 4 (64 channels): 24 zmm accumulators, 4 kernel zmm and a broadcast
//             of 32.
//   AVX2:     6 x 1 = 12 ymm accumulators, 2 kernel ymm and a broadcast of 16: the classic
//             6 x 16 sgemm block (3 x 2 ran the direct forward 1.3x slower).
//   portable: 3 x 1 = 12 xmm accumulators, a broadcast and the kernel partly read from memory
//             (SSE2 has no FMA: a multiply and an add per lane; 2 x 1 was no faster).
#if defined(JAXCONV_ISA_AVX512)
constexpr int kAcc = 24, kMaxV = 4, kDwiseV = 4, kDwiseR = 6, kDwiseTaps = 8;
#elif defined(JAXCONV_ISA_AVX2)
constexpr int kAcc = 6, kMaxV = 1, kDwiseV = 1, kDwiseR = 6, kDwiseTaps = 6;
#else
constexpr int kAcc = 3, kMaxV = 1, kDwiseV = 1, kDwiseR = 3, kDwiseTaps = 3;
#endif

// Calls f(std::integral_constant<int, V>()) with the number V of 16-lane vectors per output
// block: up to kMaxV (4 for 64 channels on AVX-512), fewer for outputs of 48 channels or fewer
// (fewer idle lanes).
template <typename F>
void by_width(int64_t o, F&& f) {
  if (kMaxV >= 4 && o > 48) {
    f(std::integral_constant<int, (kMaxV >= 4 ? 4 : 1)>());
  } else if (kMaxV >= 2 && o > 16) {
    f(std::integral_constant<int, (kMaxV >= 2 ? 2 : 1)>());
  } else {
    f(std::integral_constant<int, 1>());
  }
}

// Rows of the R x V register block: R V = kAcc accumulators. The rows are capped at `cap`
// (the forward keeps one input pointer per row).
constexpr int rows_for(int v, int cap) { return kAcc / v < cap ? kAcc / v : cap; }

// A load of the lanes that `m` selects, or a plain load where all are known to be valid.
template <bool kFull>
JAXCONV_INLINE Vec load_lanes(const float* p, const Mask& m) {
  if constexpr (kFull) return load(p);
  else return load(p, m);
}

// ------------------------------------------------------------------------------------------
// Limits: worker threads and kept scratch memory (jaxconv_set_limits).

std::atomic<int64_t> g_thread_cap{0};                    // 0: the pool's size
std::atomic<int64_t> g_scratch_cap{int64_t{256} << 20};  // bytes kept between calls, all threads
std::atomic<int64_t> g_kept{0};                          // bytes kept now
std::atomic<int64_t> g_generation{0};                    // bumped by every jaxconv_set_limits

class KeptBuffer;

// Every live KeptBuffer, so that jaxconv_set_limits can free those of every thread. The mutex
// also guards a buffer's fields against that: its owner takes it for a few instructions when it
// borrows or returns the buffer (per call and buffer, not per element).
// Both are leaked on purpose: pool threads may end (and destroy their buffers) after static
// destructors have run at process exit.
std::mutex& g_registry_mutex = *new std::mutex;
std::vector<KeptBuffer*>& g_registry = *new std::vector<KeptBuffer*>;

// A buffer owned by one thread and kept between calls (fresh allocations of several MiB per
// call cost page faults on every step), counted in g_kept. Freed when the thread ends, or, when
// the limits change, at once if it is idle (else when the call using it returns it).
class KeptBuffer {
 public:
  KeptBuffer() {
    std::lock_guard<std::mutex> lock(g_registry_mutex);
    g_registry.push_back(this);
  }
  ~KeptBuffer() {
    std::lock_guard<std::mutex> lock(g_registry_mutex);
    g_registry.erase(std::find(g_registry.begin(), g_registry.end(), this));
    release();
  }
  KeptBuffer(const KeptBuffer&) = delete;
  KeptBuffer& operator=(const KeptBuffer&) = delete;
  void release() {  // with g_registry_mutex held, or by the owner while it borrows the buffer
    if (p_ != nullptr) {
      std::free(p_);
      g_kept.fetch_sub(bytes_);
      p_ = nullptr;
      bytes_ = 0;
    }
  }

 private:
  friend class Scratch;
  friend void free_idle_buffers();
  float* p_ = nullptr;
  int64_t bytes_ = 0, generation_ = 0;
  bool busy_ = false;  // borrowed by a Scratch of the owner thread
};

// Frees the kept buffers of every thread that no call is using now (after a change of limits).
void free_idle_buffers() {
  std::lock_guard<std::mutex> lock(g_registry_mutex);
  for (KeptBuffer* b : g_registry)
    if (!b->busy_) b->release();
}

inline float* allocate(int64_t bytes) {
  void* p = std::aligned_alloc(64, static_cast<size_t>(bytes));
  if (p == nullptr) throw std::bad_alloc();
  return static_cast<float*>(p);
}

// `floats` floats of scratch for the current call: the thread's kept buffer when it is large
// enough or can grow within the cap, else a buffer of its own, freed with this object.
class Scratch {
 public:
  Scratch(KeptBuffer& kept, int64_t floats) : kept_(&kept) {
    {
      std::lock_guard<std::mutex> lock(g_registry_mutex);
      kept.busy_ = true;
    }
    const int64_t bytes = (std::max<int64_t>(floats, 1) * int64_t{sizeof(float)} + 63) / 64 * 64;
    const int64_t generation = g_generation.load();
    if (kept.generation_ != generation) {  // the cap changed: give the memory back first
      kept.release();
      kept.generation_ = generation;
    }
    if (kept.bytes_ >= bytes) {
      p_ = kept.p_;
      return;
    }
    kept.release();
    if (g_kept.fetch_add(bytes) + bytes <= g_scratch_cap.load()) {
      kept.p_ = allocate(bytes);
      kept.bytes_ = bytes;
      p_ = kept.p_;
      return;
    }
    g_kept.fetch_sub(bytes);
    own_ = p_ = allocate(bytes);
  }
  ~Scratch() {
    std::free(own_);
    std::lock_guard<std::mutex> lock(g_registry_mutex);
    kept_->busy_ = false;
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* get() const { return p_; }

 private:
  KeptBuffer* kept_;
  float* p_ = nullptr;
  float* own_ = nullptr;
};

// A row of zeros, c + 64 floats (a tap in the padding reads it), in the thread's kept buffer.
class Zeros : public Scratch {
 public:
  Zeros(KeptBuffer& kept, int64_t c) : Scratch(kept, c + 64) { std::fill(get(), get() + c + 64, 0.0f); }
};

struct Shape {
  int64_t n, h, w, c;     // input (unpadded)
  int64_t kh, kw, o;      // kernel
  int64_t ho, wo;         // output
  int64_t sh, sw, dh, dw;
  int64_t ph, pw;         // padding before the first row/column (negative: rows skipped)
};

// Output pixel p = (n, h, v): the input row/column its first tap reads, in unpadded coordinates.
struct Pix {
  int64_t n, h, w;
};

inline Pix pixel(const Shape& s, int64_t p) {
  const int64_t v = p % s.wo, t = p / s.wo;
  return {t / s.ho, (t % s.ho) * s.sh - s.ph, v * s.sw - s.pw};
}

// The C input channels that tap (i, j) of pixel q reads, or a row of zeros in the padding: so
// the kernels pad on the fly instead of reading a padded copy of x (a copy cost 25% of a
// 64-channel layer's time).
inline const float* tap_ptr(const float* x, const float* zeros, const Shape& s, const Pix& q, int64_t i, int64_t j) {
  const int64_t hh = q.h + i * s.dh, ww = q.w + j * s.dw;
  if (hh < 0 || hh >= s.h || ww < 0 || ww >= s.w) return zeros;
  return x + ((q.n * s.h + hh) * s.w + ww) * s.c;
}

// Asks the kernel for transparent huge pages on the 2 MiB-aligned part of a large output that
// this call is about to write. XLA:CPU allocates its buffers afresh for every run, so a ResNet-18
// step on 4 KiB pages takes about 280,000 page faults.
inline void advise_huge_pages(void* p, int64_t bytes) {
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  if (bytes < int64_t{4} << 20) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

// Before a forward writes y (N Ho Wo O floats): an empty sum (no input channels or taps) is zero,
// and a large output asks for huge pages. False when nothing is left to compute.
inline bool start_output(float* y, const Shape& s) {
  const int64_t size = s.n * s.ho * s.wo * s.o;
  if (size == 0) return false;
  if (s.c * s.kh * s.kw == 0) {
    std::memset(y, 0, sizeof(float) * size);
    return false;
  }
  advise_huge_pages(y, sizeof(float) * size);
  return true;
}

// Runs work on the calling thread and on the XLA intra-op pool, with at most workers() threads
// (the pool's size, capped by jaxconv_set_limits; read once per call).
class Parallel {
 public:
  explicit Parallel(ffi::ThreadPool& pool) : pool_(pool) {
    // As many workers as pool threads, the caller included: one more (measured) oversubscribes
    // the cores and costs 10%.
    const int64_t n = std::max<int64_t>(1, pool.num_threads()), cap = g_thread_cap.load();
    workers_ = cap > 0 ? std::min(cap, n) : n;
  }
  int64_t workers() const { return workers_; }

  // Runs work(begin, end) over [0, total) in chunks of `grain`. Chunks are handed out
  // dynamically, so a pool task that starts late (or never, if the pool is busy) costs nothing
  // and nothing waits on it; the caller returns only when every chunk that was taken is finished.
  // Which thread runs a chunk must not change any result: a reduction uses run_groups.
  template <typename F>
  void run(int64_t total, int64_t grain, F work) const {
    struct State {
      std::atomic<int64_t> next{0}, active{0};
    };
    auto state = std::make_shared<State>();
    const int64_t chunks = (total + grain - 1) / grain;
    auto body = [state, chunks, total, grain](F& f) {
      for (;;) {
        state->active.fetch_add(1);
        const int64_t k = state->next.fetch_add(1);
        if (k >= chunks) {
          state->active.fetch_sub(1);
          return;
        }
        f(k * grain, std::min(total, (k + 1) * grain));
        state->active.fetch_sub(1);
      }
    };
    const int64_t helpers = std::min<int64_t>(workers_ - 1, chunks - 1);
    // Pool tasks copy the work functor; they touch the caller's buffers only while they hold a
    // chunk, and every chunk is finished before this function returns.
    for (int64_t t = 0; t < helpers; ++t) pool_.Schedule([body, work]() mutable { body(work); });
    body(work);
    while (state->active.load() != 0) std::this_thread::yield();
  }

  // A deterministic reduction over `chunks` chunks: runs work(g, s, k0, k1) for every group g in
  // [0, groups) and slice s in [0, slices), where group g is the chunks [k0, k1) =
  // [g chunks / groups, (g + 1) chunks / groups), processed in order by one thread. Group g sums
  // into its own partial copy; slice s is a part of the copy that only this item writes.
  template <typename F>
  void run_groups(int64_t chunks, int64_t groups, int64_t slices, F work) const {
    run(groups * slices, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t g = i / slices, s = i % slices;
        work(g, s, g * chunks / groups, (g + 1) * chunks / groups);
      }
    });
  }

 private:
  ffi::ThreadPool& pool_;
  int64_t workers_;
};

// The groups (partial copies of `copy_floats` floats) and slices of a reduction over `chunks`
// chunks; `max_slices` is how finely one copy can be cut. A multiple of the workers (for
// balance): up to 4 groups per worker (so that a late thread costs a quarter of its share, not
// all of it), 1 where the copies would exceed 8 MiB (zeroing and adding them costs memory
// traffic: 8 copies of a 128-channel Winograd dU cost 10% of its time), and copies of at most
// half the scratch cap in all. With fewer groups than workers each group is cut into slices, one
// per worker it lacks. Depends only on its arguments, the worker count and the cap, never on
// timing.
struct Groups {
  int64_t groups, slices;
};

inline Groups plan_groups(int64_t chunks, int64_t copy_floats, int64_t max_slices, int64_t workers) {
  const int64_t copy_bytes = std::max<int64_t>(1, copy_floats * int64_t{sizeof(float)});
  const int64_t fit = std::max<int64_t>(1, g_scratch_cap.load() / 2 / copy_bytes);
  const int64_t per_worker = std::clamp<int64_t>((int64_t{8} << 20) / (workers * copy_bytes), 1, 4);
  const int64_t groups = std::max<int64_t>(1, std::min({chunks, per_worker * workers, fit}));
  const int64_t slices = groups >= workers ? 1 : std::min(max_slices, (workers + groups - 1) / groups);
  return {groups, std::max<int64_t>(1, slices)};
}

// The part [s n / S, (s + 1) n / S) of n units in slice s of S.
inline std::pair<int64_t, int64_t> slice_of(int64_t n, int64_t s, int64_t slices) {
  return {s * n / slices, (s + 1) * n / slices};
}

// out[r, o] = sum over copies k in order of copies[k][r, o] (rows of `stride` floats, o < cols).
void add_copies(const Parallel& par, const float* copies, int64_t ncopies, int64_t copy_floats, int64_t rows,
                int64_t cols, int64_t stride, float* out) {
  par.run(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t o = 0;
      for (; o + kLanes <= cols; o += kLanes) {
        Vec sum = load(copies + r * stride + o);
        for (int64_t k = 1; k < ncopies; ++k) sum = sum + load(copies + k * copy_floats + r * stride + o);
        store(out + r * cols + o, sum);
      }
      for (; o < cols; ++o) {
        float sum = copies[r * stride + o];
        for (int64_t k = 1; k < ncopies; ++k) sum += copies[k * copy_floats + r * stride + o];
        out[r * cols + o] = sum;
      }
    }
  });
}

// ------------------------------------------------------------------------------------------
// Forward.

// Stores (or with `accumulate` adds) an R x NV block of vectors to rows of c (stride ldc), of
// which the first `valid` columns exist. Constant indices only, so that the accumulators stay
// in registers (a loop that skips vectors kept a copy of them on the stack).
template <int R, int NV>
JAXCONV_INLINE void store_block(const Vec (&acc)[R][NV], float* c, int64_t ldc, int64_t valid, bool accumulate) {
  if (valid >= NV * kLanes) {
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) {
        float* dst = c + r * ldc + kLanes * v;
        store(dst, accumulate ? acc[r][v] + load(dst) : acc[r][v]);
      }
    return;
  }
  for (int v = 0; v < NV; ++v) {
    const Mask m = simd::first(valid - kLanes * v);
    for (int r = 0; r < R; ++r) {
      float* dst = c + r * ldc + kLanes * v;
      store(dst, accumulate ? acc[r][v] + load(dst, m) : acc[r][v], m);
    }
  }
}

// R output pixels x 16 V output channels, summed over the input channels [c0, c1) of every
// tap; packed w: [KH][KW][C][16 V]. With `accumulate` the sums are added to y (a later
// channel block), else they are stored.
template <int R, int V>
inline void fwd_micro(const float* const* __restrict tab, int64_t stride, const float* __restrict w,
                      float* __restrict y, const Shape& s, int64_t o_valid, int64_t c0, int64_t c1, bool accumulate) {
  constexpr int NV = V * kPer16;  // vectors per row
  Vec acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = simd::zero();
  const int64_t C = s.c, T = s.kh * s.kw;
  for (int64_t t = 0; t < T; ++t) {
    const float* xs[R];
    for (int r = 0; r < R; ++r) xs[r] = tab[t * stride + r];
    const float* wr = w + t * C * (16 * V);
    for (int64_t c = c0; c < c1; ++c) {
      Vec wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = load(wr + c * 16 * V + kLanes * v);
      for (int r = 0; r < R; ++r) {
        const Vec b = set1(xs[r][c]);
        for (int v = 0; v < NV; ++v) acc[r][v] = fma(b, wv[v], acc[r][v]);
      }
    }
  }
  store_block<R, NV>(acc, y, s.o, o_valid, accumulate);
}

template <int V, int RMAX, int R = RMAX>
inline void fwd_dispatch(int64_t np, const float* const* tab, const float* w, float* y, const Shape& s,
                         int64_t o_valid, int64_t c0, int64_t c1, bool accumulate) {
  if constexpr (R > 0) {
    if (np == R) return fwd_micro<R, V>(tab, RMAX, w, y, s, o_valid, c0, c1, accumulate);
    return fwd_dispatch<V, RMAX, R - 1>(np, tab, w, y, s, o_valid, c0, c1, accumulate);
  }
}

// Pixel blocks [b0, b1) of output block ob.
template <int V, int RMAX>
void fwd_range(const float* x, const float* zeros, const float* wpk, float* y, const Shape& s, int64_t b0,
               int64_t b1, int64_t ob) {
  const int64_t OB = 16 * V, P = s.n * s.ho * s.wo;
  const float* w = wpk + ob * s.kh * s.kw * s.c * OB;
  const int64_t o_valid = std::min(OB, s.o - ob * OB);
  // Input channels per pass over the pixel blocks: the kernel slice of one output block for all
  // taps stays within about 256 KiB of L2 (the whole slice of a 512-channel 3x3 layer, 1.2 MiB,
  // did not, and ran at 70% of the speed of the 64-channel layers).
  const int64_t cb = std::max<int64_t>(16, (int64_t{1} << 16) / (s.kh * s.kw * OB));
  // The input row of every (block, tap, row of the block): tab[((b - b0) T + t) RMAX + r]. (Computed
  // in the micro-kernel's tap loop, the pointers took vector registers that the AVX2 and portable
  // blocks need for their accumulators.)
  const int64_t T = s.kh * s.kw;
  thread_local std::vector<const float*> tab;
  tab.resize((b1 - b0) * T * RMAX);
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t r = 0; r < RMAX; ++r) {
      const Pix q = pixel(s, std::min(P - 1, b * RMAX + r));
      const float** row = tab.data() + (b - b0) * T * RMAX + r;
      for (int64_t i = 0; i < s.kh; ++i)
        for (int64_t j = 0; j < s.kw; ++j) row[(i * s.kw + j) * RMAX] = tap_ptr(x, zeros, s, q, i, j);
    }
  for (int64_t c0 = 0; c0 < s.c; c0 += cb) {
    const int64_t c1 = std::min(s.c, c0 + cb);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t p0 = b * RMAX, np = std::min<int64_t>(RMAX, P - p0);
      fwd_dispatch<V, RMAX>(np, tab.data() + (b - b0) * T * RMAX, w, y + p0 * s.o + ob * OB, s, o_valid, c0, c1,
                            c0 > 0);
    }
  }
}

// [KH, KW, C, O] -> [ceil(O / OB)][KH][KW][C][OB], zero-filled past O.
void pack_kernel(const float* w, const Shape& s, int64_t OB, float* out) {
  const int64_t nob = (s.o + OB - 1) / OB, taps = s.kh * s.kw * s.c;
  for (int64_t ob = 0; ob < nob; ++ob) {
    const int64_t n = std::min(OB, s.o - ob * OB);
    for (int64_t t = 0; t < taps; ++t) {
      float* dst = out + (ob * taps + t) * OB;
      std::memcpy(dst, w + t * s.o + ob * OB, sizeof(float) * n);
      std::fill(dst + n, dst + OB, 0.0f);
    }
  }
}

template <int V, int RMAX>
void forward(const Parallel& par, const float* x, const float* w, float* y, const Shape& s) {
  thread_local KeptBuffer pack_buf, zeros_buf;
  const int64_t OB = 16 * V;
  Scratch pack(pack_buf, ((s.o + OB - 1) / OB) * s.kh * s.kw * s.c * OB);
  const float* wpk = pack.get();
  pack_kernel(w, s, OB, pack.get());
  Zeros zeros(zeros_buf, s.c);
  const int64_t P = s.n * s.ho * s.wo, blocks = (P + RMAX - 1) / RMAX, nob = (s.o + OB - 1) / OB;
  // Work items: (chunk of pixel blocks, output block). 64 blocks per chunk (measured best of 1,
  // 8, 64 and all blocks at batch 128), fewer when that leaves under 4 items per worker: a
  // 4x4x512 layer at batch 16 is 43 blocks, which ran on one core.
  int64_t grain = 64;
  while (grain > 1 && nob * ((blocks + grain - 1) / grain) < 4 * par.workers()) grain /= 2;
  const int64_t chunks = (blocks + grain - 1) / grain;
  par.run(chunks * nob, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b0 = (t / nob) * grain;
      fwd_range<V, RMAX>(x, zeros.get(), wpk, y, s, b0, std::min(blocks, b0 + grain), t % nob);
    }
  });
}

// Checks the buffers against each other and the attributes; fills `s`. A depthwise kernel is
// [KH, KW, 1, C] (then O = C).
ffi::Error make_shape(const char* name, ffi::Span<const int64_t> xd, ffi::Span<const int64_t> wd,
                      ffi::Span<const int64_t> yd, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t ph,
                      int64_t pw, Shape& s, bool depthwise = false) {
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4 || wd[2] != (depthwise ? 1 : xd[3]) ||
      (depthwise && wd[3] != xd[3]) || yd[0] != xd[0] || yd[3] != wd[3] || sh < 1 || sw < 1 || dh < 1 || dw < 1)
    return ffi::Error::InvalidArgument(std::string(name) + (depthwise
        ? ": expected x [N,H,W,C], w [KH,KW,1,C], y [N,Ho,Wo,C]" : ": expected x [N,H,W,C], w [KH,KW,C,O], y [N,Ho,Wo,O]"));
  s = Shape{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], yd[1], yd[2], sh, sw, dh, dw, ph, pw};
  return ffi::Error::Success();
}

// A kernel gradient's checks (make_shape, with w the result and y the output gradient) and empty
// cases: no kernel elements (nothing to write), or no pixels (dw = 0). `go` is false when
// nothing is left to compute.
ffi::Error start_kernel_grad(const char* name, ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& dy,
                             ffi::ResultBuffer<ffi::F32>& dw, int64_t sh, int64_t sw, int64_t dh, int64_t dwd,
                             int64_t ph, int64_t pw, Shape& s, bool& go, bool depthwise = false) {
  go = false;
  if (auto e = make_shape(name, x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, dh, dwd, ph, pw, s,
                          depthwise);
      e.failure())
    return e;
  const int64_t size = s.kh * s.kw * (depthwise ? 1 : s.c) * s.o;
  if (size == 0) return ffi::Error::Success();
  if (s.n * s.ho * s.wo == 0) {
    std::memset(dw->typed_data(), 0, sizeof(float) * size);
    return ffi::Error::Success();
  }
  go = true;
  return ffi::Error::Success();
}

ffi::Error ConvForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t ph,
                       int64_t pw) {
  Shape s;
  if (auto e = make_shape("jaxconv_conv_forward", x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, dh, dw,
                          ph, pw, s);
      e.failure())
    return e;
  if (!start_output(y->typed_data(), s)) return ffi::Error::Success();
  const Parallel par(pool);
  by_width(s.o, [&](auto v) {
    constexpr int V = decltype(v)::value;
    forward<V, rows_for(V, 14)>(par, x.typed_data(), w.typed_data(), y->typed_data(), s);
  });
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------------------
// Winograd F(4x4, 3x3) forward (3x3 kernels, stride 1, no dilation).
//
// Per 6x6 input tile d (tiles overlap by 2, one per 4x4 block of output) and per channel pair,
//   Y = A^T [ (G w G^T) . (B^T d B) ] A
// with B^T (6x6), G (6x3) and A^T (4x6) built on the points 0, +-1, +-2 and infinity (Lavin &
// Gray 2016; the same matrices as jaxconv/ops/_conv_grad.py). Over channels the elementwise
// product becomes 36 matrix products M_k [tiles, C] @ U_k [C, O], k over the 6x6 positions:
// 36 multiplies per tile and channel pair where direct summation needs 16 x 9 = 144. The
// products run on the same R x V register block as the direct forward (rows: tiles). Work items
// are chunks of tiles: each transforms its inputs once (V: [36][tiles][C]), runs the 36
// products for every output block (M: [36][tiles][O_pad]) and transforms the results back.

// B^T d over six vectors (one row or column of a tile).
inline void wino_bt(const Vec* d, Vec* r) {
  const Vec four = set1(4.0f), five = set1(5.0f), two = set1(2.0f);
  const Vec d4_d2 = d[4] - d[2];                     // d4 - d2
  const Vec d3_d1 = d[3] - d[1];                     // d3 - d1
  r[0] = fma(four, d[0], fnma(five, d[2], d[4]));      // 4d0 - 5d2 + d4
  const Vec a = fnma(four, d[2], d[4]);              // d4 - 4d2
  const Vec b = fnma(four, d[1], d[3]);              // d3 - 4d1
  r[1] = a + b;                                        // -4d1 - 4d2 + d3 + d4
  r[2] = a - b;                                        // 4d1 - 4d2 - d3 + d4
  r[3] = fma(two, d3_d1, d4_d2);                       // -2d1 - d2 + 2d3 + d4
  r[4] = fnma(two, d3_d1, d4_d2);                      // 2d1 - d2 - 2d3 + d4
  r[5] = fma(four, d[1], fnma(five, d[3], d[5]));      // 4d1 - 5d3 + d5
}

// A^T m over six vectors -> four.
inline void wino_at(const Vec* m, Vec* o) {
  const Vec s12 = m[1] + m[2], d12 = m[1] - m[2];
  const Vec s34 = m[3] + m[4], d34 = m[3] - m[4];
  o[0] = (m[0] + s12) + s34;
  o[1] = fma(set1(2.0f), d34, d12);
  o[2] = fma(set1(4.0f), s34, s12);
  o[3] = fma(set1(8.0f), d34, d12) + m[5];
}

// G g over three vectors -> six.
inline void wino_g(const Vec* g, Vec* u) {
  const Vec sum = g[0] + g[2];
  const Vec q = fma(set1(0.25f), g[0], g[2]);  // g0 / 4 + g2
  u[0] = set1(0.25f) * g[0];
  u[1] = set1(-1.0f / 6) * (sum + g[1]);
  u[2] = set1(-1.0f / 6) * (sum - g[1]);
  u[3] = set1(1.0f / 6) * fma(set1(0.5f), g[1], q);
  u[4] = set1(1.0f / 6) * fnma(set1(0.5f), g[1], q);
  u[5] = g[2];
}

// U = G w G^T for every (c, o): w [3][3][C][O] -> [nob][36][C][OB], zero past O.
void wino_pack_kernel(const Parallel& par, const float* w, int64_t C, int64_t O, int64_t OB, float* u) {
  const int64_t nob = (O + OB - 1) / OB, vecs = OB / kLanes;
  par.run(C, std::max<int64_t>(1, 256 / nob), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t ob = 0; ob < nob; ++ob)
        for (int64_t v = 0; v < vecs; ++v) {
          const int64_t o = ob * OB + kLanes * v;
          const Mask m = simd::first(O - o);
          Vec g[3][3], t[6][3], r[6], col[3];
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) g[i][j] = load(w + ((i * 3 + j) * C + c) * O + o, m);
          for (int j = 0; j < 3; ++j) {  // t = G g (over rows i), column j
            for (int i = 0; i < 3; ++i) col[i] = g[i][j];
            wino_g(col, r);
            for (int a = 0; a < 6; ++a) t[a][j] = r[a];
          }
          for (int a = 0; a < 6; ++a) {  // U[a][b] = (t G^T)[a][b]
            wino_g(t[a], r);
            for (int b = 0; b < 6; ++b) store(u + (((ob * 36) + a * 6 + b) * C + c) * OB + kLanes * v, r[b]);
          }
        }
  });
}

// c[r][16 V] = sum_k a[r][k] b[k][16 V] for R rows of a (row stride lda) and packed b.
template <int R, int V>
inline void gemm_micro(const float* __restrict a, int64_t lda, const float* __restrict b, int64_t K,
                       float* __restrict c, int64_t ldc) {
  constexpr int NV = V * kPer16;
  Vec acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = simd::zero();
  for (int64_t k = 0; k < K; ++k) {
    Vec bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load(b + k * 16 * V + kLanes * v);
    for (int r = 0; r < R; ++r) {
      const Vec s = set1(a[r * lda + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] = fma(s, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) store(c + r * ldc + kLanes * v, acc[r][v]);
}

template <int V, int RMAX, int R = RMAX>
inline void gemm_dispatch(int64_t nr, const float* a, int64_t lda, const float* b, int64_t K, float* c, int64_t ldc) {
  if constexpr (R > 0) {
    if (nr == R) return gemm_micro<R, V>(a, lda, b, K, c, ldc);
    return gemm_dispatch<V, RMAX, R - 1>(nr, a, lda, b, K, c, ldc);
  }
}

struct Tiles {
  int64_t th, tw;  // tiles per column and row of one image
};

// Floats from one transformed position to the next in V, M and dM ([36][nt][row]): one cache
// line more than nt rows, so that the 36 positions of a tile do not all fall in one L1 set
// (nt row is a multiple of 4 KiB for 64 channels and 96 tiles).
inline int64_t point_stride(int64_t nt, int64_t row) { return nt * row + 16; }

// Tiles [t0, t0 + nt) of x -> v [36][nt][C].
void wino_input(const float* x, const float* zeros, const Shape& s, const Tiles& g, int64_t t0, int64_t nt,
                float* v) {
  const int64_t ps = point_stride(nt, s.c);
  const float* src[36];
  for (int64_t tt = 0; tt < nt; ++tt) {
    const int64_t t = t0 + tt, tx = t % g.tw, ty = (t / g.tw) % g.th, n = t / (g.tw * g.th);
    for (int i = 0; i < 6; ++i)
      for (int j = 0; j < 6; ++j) {
        const int64_t h = ty * 4 + i - s.ph, w = tx * 4 + j - s.pw;
        src[i * 6 + j] = (h < 0 || h >= s.h || w < 0 || w >= s.w) ? zeros : x + ((n * s.h + h) * s.w + w) * s.c;
      }
    for (int64_t c = 0; c < s.c; c += kLanes) {
      const Mask m = simd::first(s.c - c);
      Vec d[6][6], t6[6][6], col[6], r[6];
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 6; ++j) d[i][j] = load(src[i * 6 + j] + c, m);
      for (int j = 0; j < 6; ++j) {  // B^T d, column j
        for (int i = 0; i < 6; ++i) col[i] = d[i][j];
        wino_bt(col, r);
        for (int a = 0; a < 6; ++a) t6[a][j] = r[a];
      }
      for (int a = 0; a < 6; ++a) {  // (B^T d) B, row a
        wino_bt(t6[a], r);
        for (int b = 0; b < 6; ++b) store(v + (a * 6 + b) * ps + tt * s.c + c, r[b], m);
      }
    }
  }
}

// m [36][nt][opad] -> y for tiles [t0, t0 + nt), clipped to the output.
void wino_output(const float* mm, const Shape& s, const Tiles& g, int64_t t0, int64_t nt, int64_t opad, float* y) {
  const int64_t ps = point_stride(nt, opad);
  for (int64_t tt = 0; tt < nt; ++tt) {
    const int64_t t = t0 + tt, tx = t % g.tw, ty = (t / g.tw) % g.th, n = t / (g.tw * g.th);
    const int64_t rows = std::min<int64_t>(4, s.ho - ty * 4), cols = std::min<int64_t>(4, s.wo - tx * 4);
    for (int64_t o = 0; o < s.o; o += kLanes) {
      const Mask msk = simd::first(s.o - o);
      Vec t6[6][6], r4[4], q[4][6];
      for (int a = 0; a < 6; ++a)
        for (int b = 0; b < 6; ++b) t6[a][b] = load(mm + (a * 6 + b) * ps + tt * opad + o);
      for (int b = 0; b < 6; ++b) {  // A^T M, column b
        Vec col[6];
        for (int a = 0; a < 6; ++a) col[a] = t6[a][b];
        wino_at(col, r4);
        for (int i = 0; i < 4; ++i) q[i][b] = r4[i];
      }
      for (int64_t i = 0; i < rows; ++i) {  // (A^T M) A, row i
        wino_at(q[i], r4);
        float* dst = y + ((n * s.ho + ty * 4 + i) * s.wo + tx * 4) * s.o + o;
        for (int64_t j = 0; j < cols; ++j) store(dst + j * s.o, r4[j], msk);
      }
    }
  }
}

template <int V, int RMAX>
void winograd(const Parallel& par, const float* x, const float* w, float* y, const Shape& s) {
  thread_local KeptBuffer pack_buf, zeros_buf;
  const int64_t OB = 16 * V, nob = (s.o + OB - 1) / OB, opad = nob * OB;
  Scratch pack(pack_buf, nob * 36 * s.c * OB);
  const float* u = pack.get();
  wino_pack_kernel(par, w, s.c, s.o, OB, pack.get());
  Zeros zeros(zeros_buf, s.c);
  const Tiles g{(s.ho + 3) / 4, (s.wo + 3) / 4};
  const int64_t T = s.n * g.th * g.tw, workers = par.workers();
  // Tiles per chunk: at most 96 (16 row blocks; the per-position slices of V and M stay in L2),
  // with the chunk count a multiple of the workers so that few chunks still balance.
  int64_t chunks = (T + 95) / 96;
  chunks = ((chunks + workers - 1) / workers) * workers;
  int64_t tb = (T + chunks - 1) / chunks;
  tb = std::max<int64_t>(RMAX, (tb + RMAX - 1) / RMAX * RMAX);
  chunks = (T + tb - 1) / tb;
  par.run(chunks, 1, [&](int64_t k0, int64_t k1) {
    thread_local KeptBuffer v_buf, m_buf;
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t t0 = k * tb, nt = std::min(tb, T - t0);
      const int64_t vps = point_stride(nt, s.c), mps = point_stride(nt, opad);
      Scratch vs(v_buf, 36 * vps), ms(m_buf, 36 * mps);
      float *v = vs.get(), *mm = ms.get();
      wino_input(x, zeros.get(), s, g, t0, nt, v);
      for (int64_t p = 0; p < 36; ++p)
        for (int64_t ob = 0; ob < nob; ++ob) {
          const float* up = u + (ob * 36 + p) * s.c * OB;
          for (int64_t r0 = 0; r0 < nt; r0 += RMAX)
            gemm_dispatch<V, RMAX>(std::min<int64_t>(RMAX, nt - r0), v + p * vps + r0 * s.c, s.c, up, s.c,
                                   mm + p * mps + r0 * opad + ob * OB, opad);
        }
      wino_output(mm, s, g, t0, nt, opad, y);
    }
  });
}

ffi::Error ConvWinograd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                        ffi::ResultBuffer<ffi::F32> y, int64_t ph, int64_t pw) {
  Shape s;
  if (auto e = make_shape("jaxconv_conv_winograd", x.dimensions(), w.dimensions(), y->dimensions(), 1, 1, 1, 1, ph,
                          pw, s);
      e.failure())
    return e;
  if (s.kh != 3 || s.kw != 3) return ffi::Error::InvalidArgument("jaxconv_conv_winograd: expected a 3x3 kernel");
  if (!start_output(y->typed_data(), s)) return ffi::Error::Success();
  const Parallel par(pool);
  by_width(s.o, [&](auto v) {
    constexpr int V = decltype(v)::value;
    winograd<V, rows_for(V, 6)>(par, x.typed_data(), w.typed_data(), y->typed_data(), s);
  });
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------------------
// Kernel gradient.

// acc[r][v] += sum over the chunk's pixels of xs[p][c0 + r] * dy[p, o0 + 16 v ...]. The
// accumulators start at zero in registers and are added to memory once at the end (loading
// them from memory first made GCC keep them on the stack).
template <int R, int V, bool kMasked>
inline void dw_micro(const float* const* __restrict xs, int64_t c0, const float* __restrict dy, int64_t np,
                     int64_t o_stride, float* __restrict acc_out, int64_t acc_stride, int64_t o_valid) {
  constexpr int NV = V * kPer16;
  Vec acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = simd::zero();
  Mask mask[NV];
  for (int v = 0; v < NV; ++v) mask[v] = simd::first(o_valid - kLanes * v);
  for (int64_t p = 0; p < np; ++p) {
    const float* xp = xs[p] + c0;
    const float* g = dy + p * o_stride;
    Vec gv[NV];
    for (int v = 0; v < NV; ++v) gv[v] = load_lanes<!kMasked>(g + kLanes * v, mask[v]);
    for (int r = 0; r < R; ++r) {
      const Vec b = set1(xp[r]);
      for (int v = 0; v < NV; ++v) acc[r][v] = fma(b, gv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      float* a = acc_out + r * acc_stride + kLanes * v;
      store(a, load(a) + acc[r][v]);
    }
}

template <int V, int RMAX, int R = RMAX>
inline void dw_dispatch(int64_t nc, const float* const* xs, int64_t c0, const float* dy, int64_t np,
                        int64_t o_stride, float* acc, int64_t acc_stride, int64_t o_valid) {
  if constexpr (R > 0) {
    if (nc == R) {
      if (o_valid >= 16 * V) return dw_micro<R, V, false>(xs, c0, dy, np, o_stride, acc, acc_stride, o_valid);
      return dw_micro<R, V, true>(xs, c0, dy, np, o_stride, acc, acc_stride, o_valid);
    }
    return dw_dispatch<V, RMAX, R - 1>(nc, xs, c0, dy, np, o_stride, acc, acc_stride, o_valid);
  }
}

// Adds the contribution of pixels [p0, p1) to the units [u0, u1) of acc ([KH][KW][C][O_pad]);
// unit u is tap u / ncb and the RMAX input channels of block u % ncb (ncb blocks per tap).
template <int V, int RMAX>
void dw_chunk(const float* x, const float* zeros, const float* dy, float* acc, const Shape& s, int64_t p0,
              int64_t p1, int64_t u0, int64_t u1, std::vector<const float*>& xs) {
  const int64_t OB = 16 * V, nob = (s.o + OB - 1) / OB, opad = nob * OB, np = p1 - p0;
  const int64_t ncb = (s.c + RMAX - 1) / RMAX;
  const float* g = dy + p0 * s.o;
  xs.resize(np);
  int64_t tap = -1;
  for (int64_t u = u0; u < u1; ++u) {
    if (u / ncb != tap) {
      tap = u / ncb;
      for (int64_t p = 0; p < np; ++p) xs[p] = tap_ptr(x, zeros, s, pixel(s, p0 + p), tap / s.kw, tap % s.kw);
    }
    const int64_t c0 = (u % ncb) * RMAX, nc = std::min<int64_t>(RMAX, s.c - c0);
    for (int64_t ob = 0; ob < nob; ++ob) {
      float* a = acc + (tap * s.c + c0) * opad + ob * OB;
      dw_dispatch<V, RMAX>(nc, xs.data(), c0, g + ob * OB, np, s.o, a, opad, s.o - ob * OB);
    }
  }
}

// The work is split over pixels: the chunks of pixels fall into groups (plan_groups), each
// summed into its own [KH][KW][C][O_pad] copy of dw, and the copies are added at the end.
// (Splitting over (tap, output block) instead, with one shared copy, reads x and dy once per
// item: measured 1.5x slower even where the copies outweigh the data, e.g. a 4x4x512 layer at
// batch 16; so slices of a copy are used only where memory leaves fewer groups than workers.)
template <int V, int RMAX>
void kernel_grad(const Parallel& par, const float* x, const float* dy, float* dw, const Shape& s) {
  thread_local KeptBuffer acc_buf, zeros_buf;
  const int64_t OB = 16 * V, nob = (s.o + OB - 1) / OB, opad = nob * OB;
  const int64_t P = s.n * s.ho * s.wo, acc_size = s.kh * s.kw * s.c * opad;
  // Pixels per chunk: about 128 KiB of x and dy rows (measured: 32 KiB to 1 MiB within noise).
  const int64_t grain = std::max<int64_t>(32, (int64_t{1} << 15) / (s.c + s.o));
  const int64_t chunks = (P + grain - 1) / grain, units = s.kh * s.kw * ((s.c + RMAX - 1) / RMAX);
  const Groups plan = plan_groups(chunks, acc_size, units, par.workers());
  Zeros zeros(zeros_buf, s.c);
  Scratch accs(acc_buf, plan.groups * acc_size);
  par.run_groups(chunks, plan.groups, plan.slices, [&](int64_t g, int64_t sl, int64_t k0, int64_t k1) {
    thread_local std::vector<const float*> xs;
    float* acc = accs.get() + g * acc_size;
    const auto [u0, u1] = slice_of(units, sl, plan.slices);
    const int64_t ncb = (s.c + RMAX - 1) / RMAX;
    // Zero the part of the copy that this slice owns (whole taps' rows of channels).
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t c0 = (u % ncb) * RMAX, nc = std::min<int64_t>(RMAX, s.c - c0);
      std::memset(acc + ((u / ncb) * s.c + c0) * opad, 0, sizeof(float) * nc * opad);
    }
    for (int64_t k = k0; k < k1; ++k)
      dw_chunk<V, RMAX>(x, zeros.get(), dy, acc, s, k * grain, std::min(P, (k + 1) * grain), u0, u1, xs);
  });
  add_copies(par, accs.get(), plan.groups, acc_size, s.kh * s.kw * s.c, s.o, opad, dw);
}

ffi::Error ConvKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t dh, int64_t dwd, int64_t ph,
                          int64_t pw) {
  Shape s;
  bool go;
  if (auto e = start_kernel_grad("jaxconv_conv_kernel_grad", x, dy, dw, sh, sw, dh, dwd, ph, pw, s, go); !go) return e;
  const Parallel par(pool);
  // The rows here are input channels, read from one pointer: V = 1 can keep kAcc of them.
  by_width(s.o, [&](auto v) {
    constexpr int V = decltype(v)::value;
    kernel_grad<V, rows_for(V, 24)>(par, x.typed_data(), dy.typed_data(), dw->typed_data(), s);
  });
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------------------
// Winograd F(4x4, 3x3) kernel gradient: the transpose of the Winograd forward in w. With
// V = B^T d B per input tile and dM = A dY A^T per 4x4 output-gradient tile (zero past the
// output), dU_k [C, O] = sum over tiles V_k^T dM_k for the 36 positions k, and dw = G^T dU G.
// The products run on the direct kernel gradient's micro-kernel (rows: input channels,
// reduced over the tiles of a chunk); the chunks fall into groups, each summed into its own
// partial dU, as in the direct kernel gradient.

// A g over four vectors -> six (the transpose of wino_at).
inline void wino_a(const Vec* g, Vec* m) {
  const Vec s02 = g[0] + g[2], s13 = g[1] + g[3];
  const Vec f02 = fma(set1(4.0f), g[2], g[0]);  // g0 + 4 g2
  const Vec f13 = fma(set1(4.0f), g[3], g[1]);  // g1 + 4 g3
  m[0] = g[0];
  m[1] = s02 + s13;
  m[2] = s02 - s13;
  m[3] = fma(set1(2.0f), f13, f02);
  m[4] = fnma(set1(2.0f), f13, f02);
  m[5] = g[3];
}

// G^T u over six vectors -> three (the transpose of wino_g).
inline void wino_gt(const Vec* u, Vec* w) {
  const Vec s12 = u[1] + u[2], d12 = u[2] - u[1];
  const Vec s34 = u[3] + u[4], d34 = u[3] - u[4];
  const Vec sixth = set1(1.0f / 6);
  // w0 = u0/4 - (u1+u2)/6 + (u3+u4)/24; w1 = (u2-u1)/6 + (u3-u4)/12; w2 = (u3+u4-u1-u2)/6 + u5.
  w[0] = fma(set1(0.25f), u[0], sixth * fma(set1(0.25f), s34, simd::zero() - s12));
  w[1] = sixth * fma(set1(0.5f), d34, d12);
  w[2] = fma(sixth, s34 - s12, u[5]);
}

// Output-gradient tiles [t0, t0 + nt) of dy -> dm [36][nt][opad] (zero past O).
void wino_grad_tiles(const float* dy, const Shape& s, const Tiles& g, int64_t t0, int64_t nt, int64_t opad,
                     float* dm) {
  const int64_t ps = point_stride(nt, opad);
  for (int64_t tt = 0; tt < nt; ++tt) {
    const int64_t t = t0 + tt, tx = t % g.tw, ty = (t / g.tw) % g.th, n = t / (g.tw * g.th);
    const int64_t rows = std::min<int64_t>(4, s.ho - ty * 4), cols = std::min<int64_t>(4, s.wo - tx * 4);
    for (int64_t o = 0; o < opad; o += kLanes) {
      const Mask msk = simd::first(s.o - o);
      Vec d[4][4], q[6][4], col[4], r[6];
      for (int64_t i = 0; i < 4; ++i)
        for (int64_t j = 0; j < 4; ++j)
          d[i][j] = (i < rows && j < cols) ? load(dy + ((n * s.ho + ty * 4 + i) * s.wo + tx * 4 + j) * s.o + o, msk)
                                           : simd::zero();
      for (int j = 0; j < 4; ++j) {  // A g, column j
        for (int i = 0; i < 4; ++i) col[i] = d[i][j];
        wino_a(col, r);
        for (int a = 0; a < 6; ++a) q[a][j] = r[a];
      }
      for (int a = 0; a < 6; ++a) {  // (A g) A^T, row a
        wino_a(q[a], r);
        for (int b = 0; b < 6; ++b) store(dm + (a * 6 + b) * ps + tt * opad + o, r[b]);
      }
    }
  }
}

template <int V, int RMAX>
void winograd_kernel_grad(const Parallel& par, const float* x, const float* dy, float* dw, const Shape& s) {
  thread_local KeptBuffer acc_buf, zeros_buf;
  const int64_t OB = 16 * V, nob = (s.o + OB - 1) / OB, opad = nob * OB, du_size = 36 * s.c * opad;
  const Tiles g{(s.ho + 3) / 4, (s.wo + 3) / 4};
  const int64_t T = s.n * g.th * g.tw;
  Zeros zeros(zeros_buf, s.c);
  // Chunks of 96 tiles (as in the forward). A copy of dU is 36 C O floats (38 MiB for 512
  // channels): plan_groups bounds their number. A slice is a range of (position, block of RMAX
  // input channels) units; each slice transforms its chunks' tiles itself (cheap next to the
  // products).
  const int64_t tb = 96, chunks = (T + tb - 1) / tb, ncb = (s.c + RMAX - 1) / RMAX, units = 36 * ncb;
  const Groups plan = plan_groups(chunks, du_size, units, par.workers());
  Scratch accs(acc_buf, plan.groups * du_size);
  par.run_groups(chunks, plan.groups, plan.slices, [&](int64_t gi, int64_t sl, int64_t k0, int64_t k1) {
    thread_local KeptBuffer v_buf, m_buf;
    thread_local std::vector<const float*> rows;
    float* du = accs.get() + gi * du_size;
    const auto [u0, u1] = slice_of(units, sl, plan.slices);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t p = u / ncb, c0 = (u % ncb) * RMAX, nc = std::min<int64_t>(RMAX, s.c - c0);
      std::memset(du + (p * s.c + c0) * opad, 0, sizeof(float) * nc * opad);
    }
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t t0 = k * tb, nt = std::min(tb, T - t0);
      const int64_t vps = point_stride(nt, s.c), mps = point_stride(nt, opad);
      Scratch vs(v_buf, 36 * vps), ms(m_buf, 36 * mps);
      float *v = vs.get(), *dm = ms.get();
      wino_input(x, zeros.get(), s, g, t0, nt, v);
      wino_grad_tiles(dy, s, g, t0, nt, opad, dm);
      rows.resize(nt);
      int64_t p = -1;
      for (int64_t u = u0; u < u1; ++u) {
        if (u / ncb != p) {
          p = u / ncb;
          for (int64_t tt = 0; tt < nt; ++tt) rows[tt] = v + p * vps + tt * s.c;
        }
        const int64_t c0 = (u % ncb) * RMAX, nc = std::min<int64_t>(RMAX, s.c - c0);
        for (int64_t ob = 0; ob < nob; ++ob)
          dw_dispatch<V, RMAX>(nc, rows.data(), c0, dm + p * mps + ob * OB, nt, opad,
                               du + (p * s.c + c0) * opad + ob * OB, opad, opad);
      }
    }
  });
  // dw = G^T (sum of the groups' dU, in group order) G, per input channel.
  const float* accp = accs.get();
  par.run(s.c, 8, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t o = 0; o < s.o; o += kLanes) {
        const Mask msk = simd::first(s.o - o);
        Vec u[6][6], t[3][6], r[3];
        for (int a = 0; a < 36; ++a) {
          Vec sum = load(accp + (a * s.c + c) * opad + o);
          for (int64_t k = 1; k < plan.groups; ++k) sum = sum + load(accp + k * du_size + (a * s.c + c) * opad + o);
          u[a / 6][a % 6] = sum;
        }
        for (int b = 0; b < 6; ++b) {  // G^T dU, column b
          Vec col[6];
          for (int a = 0; a < 6; ++a) col[a] = u[a][b];
          wino_gt(col, r);
          for (int i = 0; i < 3; ++i) t[i][b] = r[i];
        }
        for (int i = 0; i < 3; ++i) {  // (G^T dU) G, row i
          wino_gt(t[i], r);
          for (int j = 0; j < 3; ++j) store(dw + ((i * 3 + j) * s.c + c) * s.o + o, r[j], msk);
        }
      }
  });
}

ffi::Error ConvKernelGradWinograd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                                  ffi::ResultBuffer<ffi::F32> dw, int64_t ph, int64_t pw) {
  Shape s;
  if (auto e = make_shape("jaxconv_conv_kernel_grad_winograd", x.dimensions(), dw->dimensions(), dy.dimensions(), 1,
                          1, 1, 1, ph, pw, s);
      e.failure())
    return e;
  if (s.kh != 3 || s.kw != 3)
    return ffi::Error::InvalidArgument("jaxconv_conv_kernel_grad_winograd: expected a 3x3 kernel");
  if (s.c * s.o == 0) return ffi::Error::Success();
  if (s.n * s.ho * s.wo == 0) {
    std::memset(dw->typed_data(), 0, sizeof(float) * 9 * s.c * s.o);
    return ffi::Error::Success();
  }
  const Parallel par(pool);
  by_width(s.o, [&](auto v) {
    constexpr int V = decltype(v)::value;
    winograd_kernel_grad<V, rows_for(V, 24)>(par, x.typed_data(), dy.typed_data(), dw->typed_data(), s);
  });
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------------------
// Narrow convolutions: few output channels (LeNet's 5x5 1->6 layer, and the input gradient
// 16->6 of its 6->16 layer). The direct kernels put 16 output channels in a vector, so most
// lanes would idle; these put consecutive output columns in a vector instead. Per image, x is
// copied into a planar, zero-padded layout split by the phase of the column stride,
//
//   plane[c][r][t][u] = x[n, t - ph, u sw + r - pw, c]   (zero outside the input),
//
// so that tap (i, j) of output columns v, v + 1, ... reads consecutive floats of row
// t = h sh + i dh in phase r = (j dw) mod sw, from u = v + (j dw) div sw. The copy has rows and
// columns of zeros past what the outputs need, so a block may read whole vectors (and whole
// blocks of rows) past the last output and discard them.
//
// Forward: an R x OB register block (R output rows of one vector of columns, times OB output
// channels) adds, for every input channel and tap, R row vectors times OB broadcast kernel
// values; the kernel is padded with zero channels to a multiple of OB. Work items are (image,
// rows) pairs, each writing its own outputs. Kernel gradient: per input channel and kernel row
// i, a JB x OB block of vector accumulators (JB taps j of that row, OB output channels) sums
// x-row vectors times output-gradient row vectors (dy copied planar per image, zero past the
// last column) over the rows of an image; the blocks are added into per-group vector copies of
// dw (groups of images, as plan_groups), reduced in group order and then over lanes in lane
// order. The input gradient is the forward of the output gradient (jaxconv/ops/_native).
//
// Register blocks per variant (accumulators + row vectors + a broadcast fit the register file):
#if defined(JAXCONV_ISA_AVX512)
constexpr int kNarrowAcc = 24, kNarrowRows = 8, kNarrowOut = 16;
#elif defined(JAXCONV_ISA_AVX2)
constexpr int kNarrowAcc = 12, kNarrowRows = 6, kNarrowOut = 8;
#else
constexpr int kNarrowAcc = 8, kNarrowRows = 4, kNarrowOut = 8;
#endif
constexpr int kNarrowMaxOB = 8;  // forward: output channels per block, 1..8 (rows: kNarrowAcc / OB)
constexpr int kNarrowMaxJB = 7;  // kernel gradient: taps per block, 1..7 (channels: kNarrowAcc / JB)

constexpr int narrow_rows(int ob) { return kNarrowAcc / ob < kNarrowRows ? kNarrowAcc / ob : kNarrowRows; }
constexpr int narrow_outs(int jb) { return kNarrowAcc / jb < kNarrowOut ? kNarrowAcc / jb : kNarrowOut; }

// The planar copy of one image: C x sw phases x rows x cols floats.
struct Plane {
  int64_t rows, cols, nvec;  // nvec: vectors of output columns per row
  int64_t floats() const { return rows * cols; }
};

// rows: enough for `row_block` output rows past the last; cols: every tap of `taps` columns
// (the kernel's, or more for a kernel gradient's padded tap blocks) over nvec whole vectors.
inline Plane make_plane(const Shape& s, int64_t row_block, int64_t taps) {
  const int64_t nvec = (s.wo + kLanes - 1) / kLanes;
  const int64_t ho = (s.ho + row_block - 1) / row_block * row_block;
  return {(ho - 1) * s.sh + (s.kh - 1) * s.dh + 1, nvec * kLanes + ((taps - 1) * s.dw) / s.sw + 1, nvec};
}

// Fills the planes of image n (C sw planes of pl.rows x pl.cols) from x.
void fill_plane(const float* x, const Shape& s, const Plane& pl, int64_t n, float* out) {
  const float* xn = x + n * s.h * s.w * s.c;
  std::memset(out, 0, sizeof(float) * s.c * s.sw * pl.floats());
  for (int64_t t = 0; t < pl.rows; ++t) {
    const int64_t row = t - s.ph;
    if (row < 0 || row >= s.h) continue;
    for (int64_t col = 0; col < s.w; ++col) {
      const int64_t q = col + s.pw;  // = u sw + r; negative where padding crops the input
      if (q < 0) continue;
      const int64_t u = q / s.sw, r = q % s.sw;
      if (u >= pl.cols) continue;
      const float* src = xn + (row * s.w + col) * s.c;
      for (int64_t c = 0; c < s.c; ++c) out[((c * s.sw + r) * pl.rows + t) * pl.cols + u] = src[c];
    }
  }
}

template <int OB>
void narrow_forward_block(const float* plane, const Plane& pl, const Shape& s, const float* wpk, int64_t opad,
                          int64_t h0, int64_t vb, int64_t o0, float* stage) {
  constexpr int R = narrow_rows(OB);
  Vec acc[R][OB];
  for (int r = 0; r < R; ++r)
    for (int k = 0; k < OB; ++k) acc[r][k] = simd::zero();
  const int64_t rstep = s.sh * pl.cols;
  for (int64_t c = 0; c < s.c; ++c)
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j) {
        const int64_t jd = j * s.dw;
        const float* p = plane + ((c * s.sw + jd % s.sw) * pl.rows + h0 * s.sh + i * s.dh) * pl.cols + jd / s.sw +
                         vb * kLanes;
        const float* wk = wpk + ((i * s.kw + j) * s.c + c) * opad + o0;
        Vec xv[R];
        for (int r = 0; r < R; ++r) xv[r] = load(p + r * rstep);
        for (int k = 0; k < OB; ++k) {
          const Vec b = set1(wk[k]);
          for (int r = 0; r < R; ++r) acc[r][k] = fma(xv[r], b, acc[r][k]);
        }
      }
  for (int r = 0; r < R; ++r)
    for (int k = 0; k < OB; ++k) store(stage + (r * OB + k) * kLanes, acc[r][k]);
}

template <int OB>
void narrow_forward(const Parallel& par, const float* x, const float* w, float* y, const Shape& s) {
  constexpr int R = narrow_rows(OB);
  thread_local KeptBuffer pack_buf;
  const int64_t opad = (s.o + OB - 1) / OB * OB;
  Scratch pack(pack_buf, s.kh * s.kw * s.c * opad);
  float* wpk = pack.get();
  for (int64_t t = 0; t < s.kh * s.kw * s.c; ++t) {
    std::memcpy(wpk + t * opad, w + t * s.o, sizeof(float) * s.o);
    std::fill(wpk + t * opad + s.o, wpk + (t + 1) * opad, 0.0f);
  }
  const Plane pl = make_plane(s, R, s.kw);
  const int64_t row_blocks = (s.ho + R - 1) / R;
  // Split an image's rows among items only when there are too few images for the workers.
  const int64_t per_image = std::clamp<int64_t>((4 * par.workers() + s.n - 1) / s.n, 1, row_blocks);
  par.run(s.n * per_image, 1, [&](int64_t t0, int64_t t1) {
    thread_local KeptBuffer plane_buf;
    Scratch plane(plane_buf, s.c * s.sw * pl.floats() + R * OB * kLanes);
    float* stage = plane.get() + s.c * s.sw * pl.floats();
    int64_t filled = -1;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / per_image, part = t % per_image;
      if (n != filled) {
        fill_plane(x, s, pl, n, plane.get());
        filled = n;
      }
      const auto [b0, b1] = slice_of(row_blocks, part, per_image);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t h0 = b * R, nr = std::min<int64_t>(R, s.ho - h0);
        for (int64_t vb = 0; vb < pl.nvec; ++vb) {
          const int64_t v0 = vb * kLanes, nv = std::min<int64_t>(kLanes, s.wo - v0);
          for (int64_t o0 = 0; o0 < s.o; o0 += OB) {
            narrow_forward_block<OB>(plane.get(), pl, s, wpk, opad, h0, vb, o0, stage);
            const int64_t no = std::min<int64_t>(OB, s.o - o0);
            for (int64_t r = 0; r < nr; ++r) {
              float* yr = y + ((n * s.ho + h0 + r) * s.wo + v0) * s.o + o0;
              for (int64_t l = 0; l < nv; ++l)
                for (int64_t k = 0; k < no; ++k) yr[l * s.o + k] = stage[(r * OB + k) * kLanes + l];
            }
          }
        }
      }
    }
  });
}

// The number of output channels per forward block: the one that wastes the fewest padded
// channels, the widest among those.
inline int64_t narrow_ob(int64_t o) {
  int64_t best = 1;
  for (int64_t ob = 1; ob <= kNarrowMaxOB; ++ob)
    if ((o + ob - 1) / ob * ob <= (o + best - 1) / best * best) best = ob;
  return best;
}

template <int JB>
JAXCONV_INLINE void narrow_grad_block(const float* xrow, int64_t phases, int64_t j0, int64_t dwd, const float* g,
                                      int64_t gstep, int64_t nvec, int64_t ho, int64_t xrows_step,
                                      int64_t prow_floats, float* out) {
  constexpr int OB = narrow_outs(JB);
  Vec acc[JB][OB];
  for (int a = 0; a < JB; ++a)
    for (int k = 0; k < OB; ++k) acc[a][k] = simd::zero();
  const float* xp[JB];
  for (int a = 0; a < JB; ++a) {
    const int64_t jd = (j0 + a) * dwd;
    xp[a] = xrow + (jd % phases) * prow_floats + jd / phases;
  }
  for (int64_t h = 0; h < ho; ++h)
    for (int64_t vb = 0; vb < nvec; ++vb) {
      Vec xv[JB];
      for (int a = 0; a < JB; ++a) xv[a] = load(xp[a] + h * xrows_step + vb * kLanes);
      for (int k = 0; k < OB; ++k) {
        const Vec d = load(g + k * gstep + (h * nvec + vb) * kLanes);
        for (int a = 0; a < JB; ++a) acc[a][k] = fma(xv[a], d, acc[a][k]);
      }
    }
  for (int a = 0; a < JB; ++a)
    for (int k = 0; k < OB; ++k) {
      float* q = out + (a * OB + k) * kLanes;
      store(q, load(q) + acc[a][k]);
    }
}

// dy of image n, planar: [opad][ho][nvec lanes-vectors], zero past the last column and channel.
void fill_grad_plane(const float* dy, const Shape& s, int64_t nvec, int64_t opad, int64_t n, float* out) {
  std::memset(out, 0, sizeof(float) * opad * s.ho * nvec * kLanes);
  const float* g = dy + n * s.ho * s.wo * s.o;
  for (int64_t h = 0; h < s.ho; ++h)
    for (int64_t v = 0; v < s.wo; ++v)
      for (int64_t o = 0; o < s.o; ++o) out[(o * s.ho + h) * nvec * kLanes + v] = g[(h * s.wo + v) * s.o + o];
}

template <int JB>
void narrow_kernel_grad(const Parallel& par, const float* x, const float* dy, float* dw, const Shape& s) {
  constexpr int OB = narrow_outs(JB);
  thread_local KeptBuffer acc_buf;
  const int64_t kwpad = (s.kw + JB - 1) / JB * JB, opad = (s.o + OB - 1) / OB * OB;
  const Plane pl = make_plane(s, 1, kwpad);
  // A group's copy: [KH][kwpad / JB][C][opad / OB][JB][OB] vectors.
  const int64_t copy = s.kh * kwpad * s.c * opad * kLanes;
  const Groups plan{plan_groups(s.n, copy, 1, par.workers()).groups, 1};
  Scratch accs(acc_buf, plan.groups * copy);
  par.run_groups(s.n, plan.groups, 1, [&](int64_t grp, int64_t, int64_t k0, int64_t k1) {
    thread_local KeptBuffer plane_buf;
    const int64_t gfloats = opad * s.ho * pl.nvec * kLanes;
    Scratch plane(plane_buf, s.c * s.sw * pl.floats() + gfloats);
    float* gp = plane.get() + s.c * s.sw * pl.floats();
    float* acc = accs.get() + grp * copy;
    std::memset(acc, 0, sizeof(float) * copy);
    for (int64_t n = k0; n < k1; ++n) {
      fill_plane(x, s, pl, n, plane.get());
      fill_grad_plane(dy, s, pl.nvec, opad, n, gp);
      float* out = acc;
      for (int64_t i = 0; i < s.kh; ++i)
        for (int64_t j0 = 0; j0 < kwpad; j0 += JB)
          for (int64_t c = 0; c < s.c; ++c) {
            const float* xrow = plane.get() + (c * s.sw * pl.rows + i * s.dh) * pl.cols;
            for (int64_t o0 = 0; o0 < opad; o0 += OB, out += JB * OB * kLanes)
              narrow_grad_block<JB>(xrow, s.sw, j0, s.dw, gp + o0 * s.ho * pl.nvec * kLanes,
                                    s.ho * pl.nvec * kLanes, pl.nvec, s.ho, s.sh * pl.cols, pl.rows * pl.cols, out);
          }
    }
  });
  // dw[i, j, c, o] = lanes summed in order of (copies summed in group order).
  const int64_t nj = kwpad / JB, no = opad / OB;
  par.run(s.kh * s.kw * s.c, 64, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      const int64_t c = e % s.c, j = (e / s.c) % s.kw, i = e / (s.c * s.kw);
      for (int64_t o = 0; o < s.o; ++o) {
        const int64_t at = (((((i * nj + j / JB) * s.c + c) * no + o / OB) * JB + j % JB) * OB + o % OB) * kLanes;
        Vec sum = load(accs.get() + at);
        for (int64_t g = 1; g < plan.groups; ++g) sum = sum + load(accs.get() + g * copy + at);
        float lanes[kLanes];
        store(lanes, sum);
        float total = lanes[0];
        for (int l = 1; l < kLanes; ++l) total += lanes[l];
        dw[((i * s.kw + j) * s.c + c) * s.o + o] = total;
      }
    }
  });
}

// The taps per kernel-gradient block: the fewest padded (tap, channel) pairs, then most taps.
inline int64_t narrow_jb(int64_t kw, int64_t o) {
  int64_t best = 1, best_cost = -1;
  for (int64_t jb = 1; jb <= kNarrowMaxJB; ++jb) {
    const int64_t ob = std::min<int64_t>(kNarrowOut, kNarrowAcc / jb);
    const int64_t cost = (kw + jb - 1) / jb * jb * ((o + ob - 1) / ob * ob);
    if (best_cost < 0 || cost <= best_cost) best = jb, best_cost = cost;
  }
  return best;
}

template <int K, typename F>
JAXCONV_INLINE void by_count(int64_t k, F&& f) {  // f(integral_constant<k>) for k in 1..K
  if constexpr (K >= 1) {
    if (k == K) return f(std::integral_constant<int, K>());
    by_count<K - 1>(k, f);
  }
}

ffi::Error NarrowForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t ph,
                         int64_t pw) {
  Shape s;
  if (auto e = make_shape("jaxconv_narrow_forward", x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, dh, dw,
                          ph, pw, s);
      e.failure())
    return e;
  if (!start_output(y->typed_data(), s)) return ffi::Error::Success();
  const Parallel par(pool);
  by_count<kNarrowMaxOB>(narrow_ob(s.o), [&](auto ob) {
    narrow_forward<decltype(ob)::value>(par, x.typed_data(), w.typed_data(), y->typed_data(), s);
  });
  return ffi::Error::Success();
}

ffi::Error NarrowKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                            ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t dh, int64_t dwd, int64_t ph,
                            int64_t pw) {
  Shape s;
  bool go;
  if (auto e = start_kernel_grad("jaxconv_narrow_kernel_grad", x, dy, dw, sh, sw, dh, dwd, ph, pw, s, go); !go)
    return e;
  const Parallel par(pool);
  by_count<kNarrowMaxJB>(narrow_jb(s.kw, s.o), [&](auto jb) {
    narrow_kernel_grad<decltype(jb)::value>(par, x.typed_data(), dy.typed_data(), dw->typed_data(), s);
  });
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------------------
// Depthwise convolution (one input channel per group, multiplier 1): w [KH, KW, 1, C],
//   y[n, h, v, c] = sum_{i, j} x[n, h sh + i dh - ph, v sw + j dw - pw, c] w[i, j, 0, c].
// No matrix product: per tap a multiply-add over channels. The forward keeps R output pixels x
// 16 V channels in registers (kDwiseR x kDwiseV); the kernel gradient keeps up to kDwiseTaps
// taps x 16 channels and reduces over a chunk of pixels into per-group copies of dw (as in the
// direct kernel gradient). The input pointers of every (pixel, tap) are computed once per chunk
// of pixels and reused for every block of channels.

// Fills ptr[p * T + t] with tap t's input row for pixels [p0, p1) (zeros in the padding).
void tap_table(const float* x, const float* zeros, const Shape& s, int64_t p0, int64_t p1,
               std::vector<const float*>& ptr) {
  const int64_t T = s.kh * s.kw;
  ptr.resize((p1 - p0) * T);
  for (int64_t p = p0; p < p1; ++p) {
    const Pix q = pixel(s, p);
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j) ptr[(p - p0) * T + i * s.kw + j] = tap_ptr(x, zeros, s, q, i, j);
  }
}

template <int R, int V, bool kFull>
inline void dwise_micro(const float* const* __restrict ptr, int64_t T, const float* __restrict w, int64_t c0,
                        int64_t C, float* __restrict y) {
  constexpr int NV = V * kPer16;
  Vec acc[R][NV];
  Mask m[NV];
  for (int v = 0; v < NV; ++v) m[v] = simd::first(C - c0 - kLanes * v);
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = simd::zero();
  for (int64_t t = 0; t < T; ++t) {
    Vec wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = load_lanes<kFull>(w + t * C + c0 + kLanes * v, m[v]);
    for (int r = 0; r < R; ++r) {
      const float* xp = ptr[r * T + t] + c0;
      for (int v = 0; v < NV; ++v) acc[r][v] = fma(load_lanes<kFull>(xp + kLanes * v, m[v]), wv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      if constexpr (kFull) store(y + r * C + c0 + kLanes * v, acc[r][v]);
      else store(y + r * C + c0 + kLanes * v, acc[r][v], m[v]);
    }
}

// Pixels [0, nr) of a block of R (nr <= RMAX), channels [c0, c0 + 16 V) of which `left` exist.
template <int V, int RMAX, int R = RMAX>
inline void dwise_dispatch(int64_t nr, const float* const* ptr, int64_t T, const float* w, int64_t c0, int64_t C,
                           float* y) {
  if constexpr (R > 0) {
    if (nr == R) {
      if (C - c0 >= 16 * V) return dwise_micro<R, V, true>(ptr, T, w, c0, C, y);
      return dwise_micro<R, V, false>(ptr, T, w, c0, C, y);
    }
    return dwise_dispatch<V, RMAX, R - 1>(nr, ptr, T, w, c0, C, y);
  }
}

void depthwise_forward(const Parallel& par, const float* x, const float* w, float* y, const Shape& s) {
  thread_local KeptBuffer zeros_buf;
  constexpr int V = kDwiseV, RMAX = kDwiseR;
  Zeros zeros(zeros_buf, s.c);
  const int64_t P = s.n * s.ho * s.wo, T = s.kh * s.kw, C = s.c;
  // Chunks of pixels: about 64 KiB of input rows per tap table, at least 4 chunks per worker.
  int64_t grain = std::max<int64_t>(RMAX, ((int64_t{1} << 14) / std::max<int64_t>(C, 16)) / RMAX * RMAX);
  while (grain > RMAX && (P + grain - 1) / grain < 4 * par.workers()) grain = grain / 2 / RMAX * RMAX;
  par.run(P, std::max<int64_t>(grain, RMAX), [&](int64_t p0, int64_t p1) {
    thread_local std::vector<const float*> ptr;
    tap_table(x, zeros.get(), s, p0, p1, ptr);
    for (int64_t c0 = 0; c0 < C; c0 += 16 * V) {
      // The last block of channels uses as few vectors as it needs.
      const int64_t left = C - c0;
      for (int64_t p = p0; p < p1; p += RMAX) {
        const int64_t nr = std::min<int64_t>(RMAX, p1 - p);
        const float* const* pp = ptr.data() + (p - p0) * T;
        float* yp = y + p * C;
        if (V >= 4 && left > 32) dwise_dispatch<(V >= 4 ? 4 : 1), RMAX>(nr, pp, T, w, c0, C, yp);
        else if (V >= 2 && left > 16) dwise_dispatch<(V >= 2 ? 2 : 1), RMAX>(nr, pp, T, w, c0, C, yp);
        else dwise_dispatch<1, RMAX>(nr, pp, T, w, c0, C, yp);
      }
    }
  });
}

// acc[t] += sum over the chunk's pixels of x[tap t] * g, for NT taps from t0 and 16 channels.
template <int NT, bool kFull>
inline void dwise_grad_micro(const float* const* __restrict ptr, int64_t T, int64_t t0, const float* __restrict g,
                             int64_t np, int64_t c0, int64_t C, float* __restrict acc_out) {
  Vec acc[NT][kPer16];
  Mask m[kPer16];
  for (int q = 0; q < kPer16; ++q) m[q] = simd::first(C - c0 - kLanes * q);
  for (int t = 0; t < NT; ++t)
    for (int q = 0; q < kPer16; ++q) acc[t][q] = simd::zero();
  for (int64_t p = 0; p < np; ++p) {
    Vec gv[kPer16];
    for (int q = 0; q < kPer16; ++q) gv[q] = load_lanes<kFull>(g + p * C + c0 + kLanes * q, m[q]);
    const float* const* pp = ptr + p * T + t0;
    for (int t = 0; t < NT; ++t)
      for (int q = 0; q < kPer16; ++q)
        acc[t][q] = fma(load_lanes<kFull>(pp[t] + c0 + kLanes * q, m[q]), gv[q], acc[t][q]);
  }
  for (int t = 0; t < NT; ++t)
    for (int q = 0; q < kPer16; ++q) {
      float* a = acc_out + (t0 + t) * C + c0 + kLanes * q;
      if constexpr (kFull) store(a, load(a) + acc[t][q]);
      else store(a, load(a, m[q]) + acc[t][q], m[q]);
    }
}

template <int NT = kDwiseTaps>
inline void dwise_grad_dispatch(int64_t nt, const float* const* ptr, int64_t T, int64_t t0, const float* g,
                                int64_t np, int64_t c0, int64_t C, float* acc) {
  if constexpr (NT > 0) {
    if (nt == NT) {
      if (C - c0 >= 16) return dwise_grad_micro<NT, true>(ptr, T, t0, g, np, c0, C, acc);
      return dwise_grad_micro<NT, false>(ptr, T, t0, g, np, c0, C, acc);
    }
    return dwise_grad_dispatch<NT - 1>(nt, ptr, T, t0, g, np, c0, C, acc);
  }
}

void depthwise_kernel_grad(const Parallel& par, const float* x, const float* dy, float* dw, const Shape& s) {
  thread_local KeptBuffer acc_buf, zeros_buf;
  const int64_t P = s.n * s.ho * s.wo, T = s.kh * s.kw, C = s.c, size = T * C;
  Zeros zeros(zeros_buf, C);
  const int64_t grain = std::max<int64_t>(16, (int64_t{1} << 14) / std::max<int64_t>(C, 16));
  const int64_t chunks = (P + grain - 1) / grain;
  // The copies are small (taps x channels): no slices.
  const Groups plan{plan_groups(chunks, size, 1, par.workers()).groups, 1};
  Scratch accs(acc_buf, plan.groups * size);
  par.run_groups(chunks, plan.groups, 1, [&](int64_t g, int64_t, int64_t k0, int64_t k1) {
    thread_local std::vector<const float*> ptr;
    float* acc = accs.get() + g * size;
    std::memset(acc, 0, sizeof(float) * size);
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t p0 = k * grain, p1 = std::min(P, p0 + grain);
      tap_table(x, zeros.get(), s, p0, p1, ptr);
      for (int64_t c0 = 0; c0 < C; c0 += 16)
        for (int64_t t0 = 0; t0 < T; t0 += kDwiseTaps)
          dwise_grad_dispatch(std::min<int64_t>(kDwiseTaps, T - t0), ptr.data(), T, t0, dy + p0 * C, p1 - p0, c0, C,
                              acc);
    }
  });
  add_copies(par, accs.get(), plan.groups, size, T, C, C, dw);
}

ffi::Error DepthwiseForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                            ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t ph,
                            int64_t pw) {
  Shape s;
  if (auto e = make_shape("jaxconv_depthwise_forward", x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, dh,
                          dw, ph, pw, s, /*depthwise=*/true);
      e.failure())
    return e;
  if (!start_output(y->typed_data(), s)) return ffi::Error::Success();
  depthwise_forward(Parallel(pool), x.typed_data(), w.typed_data(), y->typed_data(), s);
  return ffi::Error::Success();
}

ffi::Error DepthwiseKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                               ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t dh, int64_t dwd,
                               int64_t ph, int64_t pw) {
  Shape s;
  bool go;
  if (auto e = start_kernel_grad("jaxconv_depthwise_kernel_grad", x, dy, dw, sh, sw, dh, dwd, ph, pw, s, go,
                                 /*depthwise=*/true);
      !go)
    return e;
  depthwise_kernel_grad(Parallel(pool), x.typed_data(), dy.typed_data(), dw->typed_data(), s);
  return ffi::Error::Success();
}

// The direct and depthwise handlers: two float32 buffers in, one out, strides, dilations and
// leading pads.
auto binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("sh")
      .Attr<int64_t>("sw")
      .Attr<int64_t>("dh")
      .Attr<int64_t>("dw")
      .Attr<int64_t>("ph")
      .Attr<int64_t>("pw");
}

// Both Winograd handlers: two float32 buffers in, one out, and the leading pads.
auto winograd_binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("ph")
      .Attr<int64_t>("pw");
}

}  // namespace

// The library is built with hidden visibility (-fvisibility=hidden): only these symbols are
// exported.
#pragma GCC visibility push(default)
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvConvForward, ConvForward, binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvConvKernelGrad, ConvKernelGrad, binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvDepthwiseForward, DepthwiseForward, binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvDepthwiseKernelGrad, DepthwiseKernelGrad, binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvNarrowForward, NarrowForward, binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvNarrowKernelGrad, NarrowKernelGrad, binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvConvWinograd, ConvWinograd, winograd_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvConvKernelGradWinograd, ConvKernelGradWinograd, winograd_binding());

// Caps the worker threads (0: the XLA intra-op pool's size) and the scratch memory kept between
// calls by all threads together (bytes; at least 1). Kept buffers over a lowered cap are freed
// by their threads on their next use. Called by jaxconv/ops/_native/_build.py after loading and
// whenever the limits change.
// Bytes of scratch memory kept between calls now, over all threads (for tests and status).
extern "C" int64_t jaxconv_scratch_kept() { return g_kept.load(); }

extern "C" void jaxconv_set_limits(int64_t threads, int64_t scratch_bytes) {
  g_thread_cap.store(std::max<int64_t>(0, threads));
  g_scratch_cap.store(std::max<int64_t>(1, scratch_bytes));
  g_generation.fetch_add(1);
  free_idle_buffers();
}
#pragma GCC visibility pop
