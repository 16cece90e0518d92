// Direct float32 convolution kernels for XLA:CPU, called through the XLA FFI.
//
// Why by hand: XLA:CPU runs a 3x3 convolution with 64 channels at about 100 GFLOP/s and
// derives its kernel gradient at 30-90 GFLOP/s on a 2-core AVX-512 machine, while the same
// cores sustain about 300 GFLOP/s in a matrix product. These kernels reach the matrix-product
// speed on ResNet's layers (measured in benchmarks/results/conv-grad-cpu.md).
//
// Layout: channels-last. x: [N, H, W, C], w: [KH, KW, C, O], y: [N, Ho, Wo, O], zero padding
// ph/pw before the first row/column (the output size, given by y, implies the padding after):
//
//   y[n, h, v, o] = sum_{i, j, c} x[n, h sh + i dh - ph, v sw + j dw - pw, c] w[i, j, c, o],
//
// with x read as zero outside [0, H) x [0, W).
//
// Forward: the output pixels (n, h, v) are flattened to one index p and cut into blocks of R
// consecutive pixels; the output channels into blocks of 16 V (V AVX-512 vectors). A
// micro-kernel keeps an R x V block of the output in registers (R V = 24 accumulators, plus V
// kernel vectors and one broadcast: 29 of the 32 vector registers; R = 7 spilled two) and
// adds, for every tap (i, j) and input channel c, the broadcast input value of each pixel
// times V vectors of the packed kernel. Input channels are processed in blocks so that one
// output block's kernel slice stays in L2. A tap that falls in the padding reads a row of
// zeros, so no padded copy of x is made. Blocks of pixels are shared among the XLA intra-op
// threads.
//
// Kernel gradient: dw[i, j, c, o] = sum_p x[p + tap(i, j), c] dy[p, o]. The same micro-kernel
// shape with the roles swapped: R input channels x V output-channel vectors in registers,
// reduced over a chunk of pixels; every thread sums its chunks into a private copy of dw, and
// the copies are added at the end.
//
// The input gradient is the forward kernel applied to the output gradient with the flipped,
// channel-swapped kernel (one call per stride phase); it is set up in Python
// (jaxconv/ops/_native.py).
//
// For 3x3 kernels with stride 1 and no dilation there are Winograd F(4x4, 3x3) versions of the
// forward and of the kernel gradient (4x fewer multiplications; see their section below). They
// run the same register blocks on transformed tiles: 1.7-2.9x the direct kernels on ResNet's
// 3x3 layers at batch 128, with a float32 error of a few 1e-6 of the largest output.
// Depthwise convolutions (one input channel per group, multiplier 1) have their own forward and
// kernel gradient (last section): per tap a multiply-add over channels, no matrix product.

#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

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

// Calls f(std::integral_constant<int, V>()) with the number V of 16-lane vectors per output
// block: 4 (64 channels), or 2 or 1 for outputs of 48 channels or fewer (fewer idle lanes).
template <typename F>
void by_width(int64_t o, F&& f) {
  if (o > 48) {
    f(std::integral_constant<int, 4>());
  } else if (o > 16) {
    f(std::integral_constant<int, 2>());
  } else {
    f(std::integral_constant<int, 1>());
  }
}

// Rows of the R x V register block: R V = 24 accumulators, which with V kernel vectors and one
// broadcast fit the 32 vector registers (R = 7 with V = 4 spilled two accumulators). For V = 1
// the rows are capped at `cap`: the forward keeps one input pointer per row.
constexpr int rows_for(int v, int cap) { return 24 / v < cap ? 24 / v : cap; }

// A buffer owned by the calling thread and kept between calls: fresh allocations of several MiB
// per call cost page faults on every step.
inline float* scratch(std::vector<float>& buf, int64_t size) {
  if (static_cast<int64_t>(buf.size()) < size) buf.resize(size);
  return buf.data();
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

// Runs work(worker, begin, end) over [0, total) in chunks of `grain`, on the calling thread and
// on the XLA intra-op pool. Chunks are handed out dynamically, so a pool task that starts late
// (or never, if the pool is busy) costs nothing and nothing waits on it; the caller returns only
// when every chunk that was taken is finished. `worker` is a slot in [0, max_workers()).
class Parallel {
 public:
  // As many workers as pool threads, the caller included: one more (measured) oversubscribes
  // the cores and costs 10%.
  static int64_t max_workers(ffi::ThreadPool& pool) { return std::max<int64_t>(1, pool.num_threads()); }

  template <typename F>
  static void run(ffi::ThreadPool& pool, int64_t total, int64_t grain, F work) {
    struct State {
      std::atomic<int64_t> next{0}, active{0}, slot{1};
    };
    auto state = std::make_shared<State>();
    const int64_t chunks = (total + grain - 1) / grain;
    auto body = [state, chunks, total, grain](F& f, int64_t worker) {
      for (;;) {
        state->active.fetch_add(1);
        const int64_t k = state->next.fetch_add(1);
        if (k >= chunks) {
          state->active.fetch_sub(1);
          return;
        }
        f(worker, k * grain, std::min(total, (k + 1) * grain));
        state->active.fetch_sub(1);
      }
    };
    const int64_t helpers = std::min<int64_t>(max_workers(pool) - 1, chunks - 1);
    // Pool tasks copy the work functor; they touch the caller's buffers only while they hold a
    // chunk, and every chunk is finished before this function returns.
    for (int64_t t = 0; t < helpers; ++t) {
      pool.Schedule([state, body, work]() mutable {
        const int64_t worker = state->slot.fetch_add(1);
        body(work, worker);
      });
    }
    body(work, 0);
    while (state->active.load() != 0) std::this_thread::yield();
  }
};

// ------------------------------------------------------------------------------------------
// Forward.

// R output pixels x 16 V output channels, summed over the input channels [c0, c1) of every
// tap; packed w: [KH][KW][C][16 V]. With `accumulate` the sums are added to y (a later
// channel block), else they are stored.
template <int R, int V>
inline void fwd_micro(const float* __restrict x, const float* __restrict zeros, const Pix* __restrict pix,
                      const float* __restrict w, float* __restrict y, const Shape& s, int64_t o_valid, int64_t c0,
                      int64_t c1, bool accumulate) {
  __m512 acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  const int64_t C = s.c;
  for (int64_t i = 0; i < s.kh; ++i) {
    for (int64_t j = 0; j < s.kw; ++j) {
      const float* xs[R];
      for (int r = 0; r < R; ++r) xs[r] = tap_ptr(x, zeros, s, pix[r], i, j);
      const float* wr = w + (i * s.kw + j) * C * (16 * V);
      for (int64_t c = c0; c < c1; ++c) {
        __m512 wv[V];
        for (int v = 0; v < V; ++v) wv[v] = _mm512_loadu_ps(wr + c * 16 * V + 16 * v);
        for (int r = 0; r < R; ++r) {
          const __m512 b = _mm512_set1_ps(xs[r][c]);
          for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(b, wv[v], acc[r][v]);
        }
      }
    }
  }
  for (int v = 0; v < V; ++v) {
    const int64_t left = std::min<int64_t>(16, o_valid - 16 * v);
    if (left <= 0) continue;
    const __mmask16 m = static_cast<__mmask16>((1u << left) - 1);
    for (int r = 0; r < R; ++r) {
      float* dst = y + r * s.o + 16 * v;
      __m512 a = acc[r][v];
      if (accumulate) a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(m, dst));
      _mm512_mask_storeu_ps(dst, m, a);
    }
  }
}

template <int V, int RMAX, int R = RMAX>
inline void fwd_dispatch(int64_t np, const float* x, const float* zeros, const Pix* pix, const float* w, float* y,
                         const Shape& s, int64_t o_valid, int64_t c0, int64_t c1, bool accumulate) {
  if constexpr (R > 0) {
    if (np == R) return fwd_micro<R, V>(x, zeros, pix, w, y, s, o_valid, c0, c1, accumulate);
    return fwd_dispatch<V, RMAX, R - 1>(np, x, zeros, pix, w, y, s, o_valid, c0, c1, accumulate);
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
  std::vector<Pix> pix((b1 - b0) * RMAX);
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t r = 0; r < RMAX && b * RMAX + r < P; ++r) pix[(b - b0) * RMAX + r] = pixel(s, b * RMAX + r);
  for (int64_t c0 = 0; c0 < s.c; c0 += cb) {
    const int64_t c1 = std::min(s.c, c0 + cb);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t p0 = b * RMAX, np = std::min<int64_t>(RMAX, P - p0);
      fwd_dispatch<V, RMAX>(np, x, zeros, pix.data() + (b - b0) * RMAX, w, y + p0 * s.o + ob * OB, s, o_valid, c0,
                            c1, c0 > 0);
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
void forward(ffi::ThreadPool& pool, const float* x, const float* w, float* y, const Shape& s) {
  thread_local std::vector<float> pack_buf, zeros_buf;
  const int64_t OB = 16 * V;
  float* wpk = scratch(pack_buf, ((s.o + OB - 1) / OB) * s.kh * s.kw * s.c * OB);
  pack_kernel(w, s, OB, wpk);
  float* zeros = scratch(zeros_buf, s.c);
  std::fill(zeros, zeros + s.c, 0.0f);
  const int64_t P = s.n * s.ho * s.wo, blocks = (P + RMAX - 1) / RMAX, nob = (s.o + OB - 1) / OB;
  // Work items: (chunk of pixel blocks, output block). 64 blocks per chunk (measured best of 1,
  // 8, 64 and all blocks at batch 128), fewer when that leaves under 4 items per worker: a
  // 4x4x512 layer at batch 16 is 43 blocks, which ran on one core.
  int64_t grain = 64;
  while (grain > 1 && nob * ((blocks + grain - 1) / grain) < 4 * Parallel::max_workers(pool)) grain /= 2;
  const int64_t chunks = (blocks + grain - 1) / grain;
  Parallel::run(pool, chunks * nob, 1, [&](int64_t, int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b0 = (t / nob) * grain;
      fwd_range<V, RMAX>(x, zeros, wpk, y, s, b0, std::min(blocks, b0 + grain), t % nob);
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

ffi::Error ConvForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t ph,
                       int64_t pw) {
  Shape s;
  if (auto e = make_shape("jaxconv_conv_forward", x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, dh, dw,
                          ph, pw, s);
      e.failure())
    return e;
  if (!start_output(y->typed_data(), s)) return ffi::Error::Success();
  by_width(s.o, [&](auto v) {
    constexpr int V = decltype(v)::value;
    forward<V, rows_for(V, 14)>(pool, x.typed_data(), w.typed_data(), y->typed_data(), s);
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
inline void wino_bt(const __m512* d, __m512* r) {
  const __m512 four = _mm512_set1_ps(4.0f), five = _mm512_set1_ps(5.0f), two = _mm512_set1_ps(2.0f);
  const __m512 d4_d2 = _mm512_sub_ps(d[4], d[2]);                 // d4 - d2
  const __m512 d3_d1 = _mm512_sub_ps(d[3], d[1]);                 // d3 - d1
  r[0] = _mm512_fmadd_ps(four, d[0], _mm512_fnmadd_ps(five, d[2], d[4]));        // 4d0 - 5d2 + d4
  const __m512 a = _mm512_fnmadd_ps(four, d[2], d[4]);            // d4 - 4d2
  const __m512 b = _mm512_fnmadd_ps(four, d[1], d[3]);            // d3 - 4d1
  r[1] = _mm512_add_ps(a, b);                                     // -4d1 - 4d2 + d3 + d4
  r[2] = _mm512_sub_ps(a, b);                                     // 4d1 - 4d2 - d3 + d4
  r[3] = _mm512_fmadd_ps(two, d3_d1, d4_d2);                      // -2d1 - d2 + 2d3 + d4
  r[4] = _mm512_fnmadd_ps(two, d3_d1, d4_d2);                     // 2d1 - d2 - 2d3 + d4
  r[5] = _mm512_fmadd_ps(four, d[1], _mm512_fnmadd_ps(five, d[3], d[5]));        // 4d1 - 5d3 + d5
}

// A^T m over six vectors -> four.
inline void wino_at(const __m512* m, __m512* o) {
  const __m512 s12 = _mm512_add_ps(m[1], m[2]), d12 = _mm512_sub_ps(m[1], m[2]);
  const __m512 s34 = _mm512_add_ps(m[3], m[4]), d34 = _mm512_sub_ps(m[3], m[4]);
  o[0] = _mm512_add_ps(_mm512_add_ps(m[0], s12), s34);
  o[1] = _mm512_fmadd_ps(_mm512_set1_ps(2.0f), d34, d12);
  o[2] = _mm512_fmadd_ps(_mm512_set1_ps(4.0f), s34, s12);
  o[3] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0f), d34, d12), m[5]);
}

// G g over three vectors -> six.
inline void wino_g(const __m512* g, __m512* u) {
  const __m512 sum = _mm512_add_ps(g[0], g[2]);
  const __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(0.25f), g[0], g[2]);  // g0 / 4 + g2
  u[0] = _mm512_mul_ps(_mm512_set1_ps(0.25f), g[0]);
  u[1] = _mm512_mul_ps(_mm512_set1_ps(-1.0f / 6), _mm512_add_ps(sum, g[1]));
  u[2] = _mm512_mul_ps(_mm512_set1_ps(-1.0f / 6), _mm512_sub_ps(sum, g[1]));
  u[3] = _mm512_mul_ps(_mm512_set1_ps(1.0f / 6), _mm512_fmadd_ps(_mm512_set1_ps(0.5f), g[1], q));
  u[4] = _mm512_mul_ps(_mm512_set1_ps(1.0f / 6), _mm512_fnmadd_ps(_mm512_set1_ps(0.5f), g[1], q));
  u[5] = g[2];
}

inline __mmask16 lanes(int64_t n) { return static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << std::max<int64_t>(n, 0)) - 1); }

// U = G w G^T for every (c, o): w [3][3][C][O] -> [nob][36][C][OB], zero past O.
void wino_pack_kernel(ffi::ThreadPool& pool, const float* w, int64_t C, int64_t O, int64_t OB, float* u) {
  const int64_t nob = (O + OB - 1) / OB, vecs = OB / 16;
  Parallel::run(pool, C, std::max<int64_t>(1, 256 / nob), [&](int64_t, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t ob = 0; ob < nob; ++ob)
        for (int64_t v = 0; v < vecs; ++v) {
          const int64_t o = ob * OB + 16 * v;
          const __mmask16 m = lanes(O - o);
          __m512 g[3][3], t[6][3], r[6], col[3];
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) g[i][j] = _mm512_maskz_loadu_ps(m, w + ((i * 3 + j) * C + c) * O + o);
          for (int j = 0; j < 3; ++j) {  // t = G g (over rows i), column j
            for (int i = 0; i < 3; ++i) col[i] = g[i][j];
            wino_g(col, r);
            for (int a = 0; a < 6; ++a) t[a][j] = r[a];
          }
          for (int a = 0; a < 6; ++a) {  // U[a][b] = (t G^T)[a][b]
            wino_g(t[a], r);
            for (int b = 0; b < 6; ++b) _mm512_storeu_ps(u + (((ob * 36) + a * 6 + b) * C + c) * OB + 16 * v, r[b]);
          }
        }
  });
}

// c[r][16 V] = sum_k a[r][k] b[k][16 V] for R rows of a (row stride lda) and packed b.
template <int R, int V>
inline void gemm_micro(const float* __restrict a, int64_t lda, const float* __restrict b, int64_t K,
                       float* __restrict c, int64_t ldc) {
  __m512 acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 bv[V];
    for (int v = 0; v < V; ++v) bv[v] = _mm512_loadu_ps(b + k * 16 * V + 16 * v);
    for (int r = 0; r < R; ++r) {
      const __m512 s = _mm512_set1_ps(a[r * lda + k]);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(s, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
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
    for (int64_t c = 0; c < s.c; c += 16) {
      const __mmask16 m = lanes(s.c - c);
      __m512 d[6][6], t6[6][6], col[6], r[6];
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 6; ++j) d[i][j] = _mm512_maskz_loadu_ps(m, src[i * 6 + j] + c);
      for (int j = 0; j < 6; ++j) {  // B^T d, column j
        for (int i = 0; i < 6; ++i) col[i] = d[i][j];
        wino_bt(col, r);
        for (int a = 0; a < 6; ++a) t6[a][j] = r[a];
      }
      for (int a = 0; a < 6; ++a) {  // (B^T d) B, row a
        wino_bt(t6[a], r);
        for (int b = 0; b < 6; ++b) _mm512_mask_storeu_ps(v + (a * 6 + b) * ps + tt * s.c + c, m, r[b]);
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
    for (int64_t o = 0; o < s.o; o += 16) {
      const __mmask16 msk = lanes(s.o - o);
      __m512 t6[6][6], r4[4], q[4][6];
      for (int a = 0; a < 6; ++a)
        for (int b = 0; b < 6; ++b) t6[a][b] = _mm512_loadu_ps(mm + (a * 6 + b) * ps + tt * opad + o);
      for (int b = 0; b < 6; ++b) {  // A^T M, column b
        __m512 col[6];
        for (int a = 0; a < 6; ++a) col[a] = t6[a][b];
        wino_at(col, r4);
        for (int i = 0; i < 4; ++i) q[i][b] = r4[i];
      }
      for (int64_t i = 0; i < rows; ++i) {  // (A^T M) A, row i
        wino_at(q[i], r4);
        float* dst = y + ((n * s.ho + ty * 4 + i) * s.wo + tx * 4) * s.o + o;
        for (int64_t j = 0; j < cols; ++j) _mm512_mask_storeu_ps(dst + j * s.o, msk, r4[j]);
      }
    }
  }
}

template <int V, int RMAX>
void winograd(ffi::ThreadPool& pool, const float* x, const float* w, float* y, const Shape& s) {
  thread_local std::vector<float> pack_buf, zeros_buf;
  const int64_t OB = 16 * V, nob = (s.o + OB - 1) / OB, opad = nob * OB;
  float* u = scratch(pack_buf, nob * 36 * s.c * OB);
  wino_pack_kernel(pool, w, s.c, s.o, OB, u);
  float* zeros = scratch(zeros_buf, s.c + 16);
  std::fill(zeros, zeros + s.c + 16, 0.0f);
  const Tiles g{(s.ho + 3) / 4, (s.wo + 3) / 4};
  const int64_t T = s.n * g.th * g.tw, workers = Parallel::max_workers(pool);
  // Tiles per chunk: at most 96 (16 row blocks; the per-position slices of V and M stay in L2),
  // with the chunk count a multiple of the workers so that few chunks still balance.
  int64_t chunks = (T + 95) / 96;
  chunks = ((chunks + workers - 1) / workers) * workers;
  int64_t tb = (T + chunks - 1) / chunks;
  tb = std::max<int64_t>(RMAX, (tb + RMAX - 1) / RMAX * RMAX);
  chunks = (T + tb - 1) / tb;
  Parallel::run(pool, chunks, 1, [&](int64_t, int64_t k0, int64_t k1) {
    thread_local std::vector<float> v_buf, m_buf;
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t t0 = k * tb, nt = std::min(tb, T - t0);
      const int64_t vps = point_stride(nt, s.c), mps = point_stride(nt, opad);
      float* v = scratch(v_buf, 36 * vps);
      float* mm = scratch(m_buf, 36 * mps);
      wino_input(x, zeros, s, g, t0, nt, v);
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
  by_width(s.o, [&](auto v) {
    constexpr int V = decltype(v)::value;
    winograd<V, rows_for(V, 6)>(pool, x.typed_data(), w.typed_data(), y->typed_data(), s);
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
  __m512 acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  __mmask16 mask[V];
  for (int v = 0; v < V; ++v) {
    const int64_t left = std::min<int64_t>(16, std::max<int64_t>(0, o_valid - 16 * v));
    mask[v] = static_cast<__mmask16>((1u << left) - 1);
  }
  for (int64_t p = 0; p < np; ++p) {
    const float* xp = xs[p] + c0;
    const float* g = dy + p * o_stride;
    __m512 gv[V];
    for (int v = 0; v < V; ++v) gv[v] = kMasked ? _mm512_maskz_loadu_ps(mask[v], g + 16 * v) : _mm512_loadu_ps(g + 16 * v);
    for (int r = 0; r < R; ++r) {
      const __m512 b = _mm512_set1_ps(xp[r]);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(b, gv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) {
      float* a = acc_out + r * acc_stride + 16 * v;
      _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), acc[r][v]));
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

// Adds tap (i, j)'s contribution of pixels [p0, p1) to acc ([KH][KW][C][O_pad]).
template <int V, int RMAX>
void dw_chunk(const float* x, const float* zeros, const float* dy, float* acc, const Shape& s, int64_t p0,
              int64_t p1, int64_t i, int64_t j, std::vector<const float*>& xs) {
  const int64_t OB = 16 * V, nob = (s.o + OB - 1) / OB, opad = nob * OB, np = p1 - p0;
  xs.resize(np);
  for (int64_t p = 0; p < np; ++p) xs[p] = tap_ptr(x, zeros, s, pixel(s, p0 + p), i, j);
  const float* g = dy + p0 * s.o;
  for (int64_t c0 = 0; c0 < s.c; c0 += RMAX) {
    const int64_t nc = std::min<int64_t>(RMAX, s.c - c0);
    for (int64_t ob = 0; ob < nob; ++ob) {
      float* a = acc + ((i * s.kw + j) * s.c + c0) * opad + ob * OB;
      dw_dispatch<V, RMAX>(nc, xs.data(), c0, g + ob * OB, np, s.o, a, opad, s.o - ob * OB);
    }
  }
}

// The work is split over pixels: every worker sums its chunks of pixels into a private
// [KH][KW][C][O_pad] copy of dw, and the copies are added at the end. (Splitting over (tap,
// output block) instead, with one shared copy, reads x and dy once per item: measured 1.5x
// slower even where the copies outweigh the data, e.g. a 4x4x512 layer at batch 16.)
template <int V, int RMAX>
void kernel_grad(ffi::ThreadPool& pool, const float* x, const float* dy, float* dw, const Shape& s) {
  thread_local std::vector<float> acc_buf, zeros_buf;
  const int64_t OB = 16 * V, nob = (s.o + OB - 1) / OB, opad = nob * OB;
  const int64_t P = s.n * s.ho * s.wo, acc_size = s.kh * s.kw * s.c * opad;
  // Pixels per chunk: about 128 KiB of x and dy rows (measured: 32 KiB to 1 MiB within noise).
  const int64_t grain = std::max<int64_t>(32, (int64_t{1} << 15) / (s.c + s.o));
  const int64_t workers = Parallel::max_workers(pool);
  float* zeros = scratch(zeros_buf, s.c);
  std::fill(zeros, zeros + s.c, 0.0f);
  float* accs = scratch(acc_buf, workers * acc_size);
  std::vector<char> used(workers, 0);
  Parallel::run(pool, P, grain, [&](int64_t worker, int64_t p0, int64_t p1) {
    thread_local std::vector<const float*> xs;
    float* acc = accs + worker * acc_size;
    if (!used[worker]) {
      used[worker] = 1;
      std::memset(acc, 0, sizeof(float) * acc_size);
    }
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j) dw_chunk<V, RMAX>(x, zeros, dy, acc, s, p0, p1, i, j, xs);
  });
  const int64_t rows = s.kh * s.kw * s.c;
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t o = 0; o < s.o; ++o) {
      float sum = 0.0f;
      for (int64_t k = 0; k < workers; ++k)
        if (used[k]) sum += accs[k * acc_size + t * opad + o];
      dw[t * s.o + o] = sum;
    }
}

ffi::Error ConvKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t dh, int64_t dwd, int64_t ph,
                          int64_t pw) {
  Shape s;
  // make_shape reads (x, w, y) shapes; here w is the result and y the output gradient.
  if (auto e = make_shape("jaxconv_conv_kernel_grad", x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw,
                          dh, dwd, ph, pw, s);
      e.failure())
    return e;
  if (s.kh * s.kw * s.c * s.o == 0) return ffi::Error::Success();
  if (s.n * s.ho * s.wo == 0) {
    std::memset(dw->typed_data(), 0, sizeof(float) * s.kh * s.kw * s.c * s.o);
    return ffi::Error::Success();
  }
  // The rows here are input channels, read from one pointer: V = 1 can keep 24 of them.
  by_width(s.o, [&](auto v) {
    constexpr int V = decltype(v)::value;
    kernel_grad<V, rows_for(V, 24)>(pool, x.typed_data(), dy.typed_data(), dw->typed_data(), s);
  });
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------------------
// Winograd F(4x4, 3x3) kernel gradient: the transpose of the Winograd forward in w. With
// V = B^T d B per input tile and dM = A dY A^T per 4x4 output-gradient tile (zero past the
// output), dU_k [C, O] = sum over tiles V_k^T dM_k for the 36 positions k, and dw = G^T dU G.
// The products run on the direct kernel gradient's micro-kernel (rows: input channels,
// reduced over the tiles of a chunk); every worker sums its chunks into a private dU.

// A g over four vectors -> six (the transpose of wino_at).
inline void wino_a(const __m512* g, __m512* m) {
  const __m512 s02 = _mm512_add_ps(g[0], g[2]), s13 = _mm512_add_ps(g[1], g[3]);
  const __m512 f02 = _mm512_fmadd_ps(_mm512_set1_ps(4.0f), g[2], g[0]);   // g0 + 4 g2
  const __m512 f13 = _mm512_fmadd_ps(_mm512_set1_ps(4.0f), g[3], g[1]);   // g1 + 4 g3
  m[0] = g[0];
  m[1] = _mm512_add_ps(s02, s13);
  m[2] = _mm512_sub_ps(s02, s13);
  m[3] = _mm512_fmadd_ps(_mm512_set1_ps(2.0f), f13, f02);
  m[4] = _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), f13, f02);
  m[5] = g[3];
}

// G^T u over six vectors -> three (the transpose of wino_g).
inline void wino_gt(const __m512* u, __m512* w) {
  const __m512 s12 = _mm512_add_ps(u[1], u[2]), d12 = _mm512_sub_ps(u[2], u[1]);
  const __m512 s34 = _mm512_add_ps(u[3], u[4]), d34 = _mm512_sub_ps(u[3], u[4]);
  const __m512 sixth = _mm512_set1_ps(1.0f / 6);
  // w0 = u0/4 - (u1+u2)/6 + (u3+u4)/24; w1 = (u2-u1)/6 + (u3-u4)/12; w2 = (u3+u4-u1-u2)/6 + u5.
  w[0] = _mm512_fmadd_ps(_mm512_set1_ps(0.25f), u[0],
                         _mm512_mul_ps(sixth, _mm512_fmadd_ps(_mm512_set1_ps(0.25f), s34, _mm512_sub_ps(_mm512_setzero_ps(), s12))));
  w[1] = _mm512_mul_ps(sixth, _mm512_fmadd_ps(_mm512_set1_ps(0.5f), d34, d12));
  w[2] = _mm512_fmadd_ps(sixth, _mm512_sub_ps(s34, s12), u[5]);
}

// Output-gradient tiles [t0, t0 + nt) of dy -> dm [36][nt][opad] (zero past O).
void wino_grad_tiles(const float* dy, const Shape& s, const Tiles& g, int64_t t0, int64_t nt, int64_t opad,
                     float* dm) {
  const int64_t ps = point_stride(nt, opad);
  for (int64_t tt = 0; tt < nt; ++tt) {
    const int64_t t = t0 + tt, tx = t % g.tw, ty = (t / g.tw) % g.th, n = t / (g.tw * g.th);
    const int64_t rows = std::min<int64_t>(4, s.ho - ty * 4), cols = std::min<int64_t>(4, s.wo - tx * 4);
    for (int64_t o = 0; o < opad; o += 16) {
      const __mmask16 msk = lanes(s.o - o);
      __m512 d[4][4], q[6][4], col[4], r[6];
      for (int64_t i = 0; i < 4; ++i)
        for (int64_t j = 0; j < 4; ++j)
          d[i][j] = (i < rows && j < cols)
                        ? _mm512_maskz_loadu_ps(msk, dy + ((n * s.ho + ty * 4 + i) * s.wo + tx * 4 + j) * s.o + o)
                        : _mm512_setzero_ps();
      for (int j = 0; j < 4; ++j) {  // A g, column j
        for (int i = 0; i < 4; ++i) col[i] = d[i][j];
        wino_a(col, r);
        for (int a = 0; a < 6; ++a) q[a][j] = r[a];
      }
      for (int a = 0; a < 6; ++a) {  // (A g) A^T, row a
        wino_a(q[a], r);
        for (int b = 0; b < 6; ++b) _mm512_storeu_ps(dm + (a * 6 + b) * ps + tt * opad + o, r[b]);
      }
    }
  }
}

template <int V, int RMAX>
void winograd_kernel_grad(ffi::ThreadPool& pool, const float* x, const float* dy, float* dw, const Shape& s) {
  thread_local std::vector<float> acc_buf, zeros_buf;
  const int64_t OB = 16 * V, nob = (s.o + OB - 1) / OB, opad = nob * OB, du_size = 36 * s.c * opad;
  const Tiles g{(s.ho + 3) / 4, (s.wo + 3) / 4};
  const int64_t T = s.n * g.th * g.tw, workers = Parallel::max_workers(pool);
  float* zeros = scratch(zeros_buf, s.c + 16);
  std::fill(zeros, zeros + s.c + 16, 0.0f);
  // Chunks of 96 tiles (as in the forward). No more private copies than chunks: a copy of dU is
  // 36 C O floats, 38 MiB for 512 channels.
  const int64_t tb = 96, chunks = (T + tb - 1) / tb, copies = std::min(workers, chunks);
  float* accs = scratch(acc_buf, copies * du_size);
  std::vector<char> used(copies, 0);
  Parallel::run(pool, chunks, 1, [&](int64_t worker, int64_t k0, int64_t k1) {
    thread_local std::vector<float> v_buf, m_buf;
    thread_local std::vector<const float*> rows;
    float* du = accs + worker * du_size;
    if (!used[worker]) {
      used[worker] = 1;
      std::memset(du, 0, sizeof(float) * du_size);
    }
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t t0 = k * tb, nt = std::min(tb, T - t0);
      const int64_t vps = point_stride(nt, s.c), mps = point_stride(nt, opad);
      float* v = scratch(v_buf, 36 * vps);
      float* dm = scratch(m_buf, 36 * mps);
      wino_input(x, zeros, s, g, t0, nt, v);
      wino_grad_tiles(dy, s, g, t0, nt, opad, dm);
      rows.resize(nt);
      for (int64_t p = 0; p < 36; ++p) {
        for (int64_t tt = 0; tt < nt; ++tt) rows[tt] = v + p * vps + tt * s.c;
        for (int64_t c0 = 0; c0 < s.c; c0 += RMAX) {
          const int64_t nc = std::min<int64_t>(RMAX, s.c - c0);
          for (int64_t ob = 0; ob < nob; ++ob)
            dw_dispatch<V, RMAX>(nc, rows.data(), c0, dm + p * mps + ob * OB, nt, opad,
                                 du + (p * s.c + c0) * opad + ob * OB, opad, opad);
        }
      }
    }
  });
  // dw = G^T (sum of the workers' dU) G, per input channel.
  Parallel::run(pool, s.c, 8, [&](int64_t, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t o = 0; o < s.o; o += 16) {
        const __mmask16 msk = lanes(s.o - o);
        __m512 u[6][6], t[3][6], r[3];
        for (int a = 0; a < 36; ++a) {
          __m512 sum = _mm512_setzero_ps();
          for (int64_t k = 0; k < copies; ++k)
            if (used[k]) sum = _mm512_add_ps(sum, _mm512_loadu_ps(accs + k * du_size + (a * s.c + c) * opad + o));
          u[a / 6][a % 6] = sum;
        }
        for (int b = 0; b < 6; ++b) {  // G^T dU, column b
          __m512 col[6];
          for (int a = 0; a < 6; ++a) col[a] = u[a][b];
          wino_gt(col, r);
          for (int i = 0; i < 3; ++i) t[i][b] = r[i];
        }
        for (int i = 0; i < 3; ++i) {  // (G^T dU) G, row i
          wino_gt(t[i], r);
          for (int j = 0; j < 3; ++j) _mm512_mask_storeu_ps(dw + ((i * 3 + j) * s.c + c) * s.o + o, msk, r[j]);
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
  by_width(s.o, [&](auto v) {
    constexpr int V = decltype(v)::value;
    winograd_kernel_grad<V, rows_for(V, 24)>(pool, x.typed_data(), dy.typed_data(), dw->typed_data(), s);
  });
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------------------
// Depthwise convolution (one input channel per group, multiplier 1): w [KH, KW, 1, C],
//   y[n, h, v, c] = sum_{i, j} x[n, h sh + i dh - ph, v sw + j dw - pw, c] w[i, j, 0, c].
// No matrix product: per tap a multiply-add over channels. The forward keeps R output pixels x
// 16 V channels in registers; the kernel gradient keeps up to 8 taps x 16 channels and reduces
// over a chunk of pixels into per-thread copies of dw. The input pointers of every (pixel, tap)
// are computed once per chunk of pixels and reused for every block of channels.

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

template <int R, int V>
inline void dwise_micro(const float* const* __restrict ptr, int64_t T, const float* __restrict w, int64_t c0,
                        int64_t C, float* __restrict y) {
  __m512 acc[R][V];
  __mmask16 m[V];
  for (int v = 0; v < V; ++v) m[v] = lanes(C - c0 - 16 * v);
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t t = 0; t < T; ++t) {
    __m512 wv[V];
    for (int v = 0; v < V; ++v) wv[v] = _mm512_maskz_loadu_ps(m[v], w + t * C + c0 + 16 * v);
    for (int r = 0; r < R; ++r) {
      const float* xp = ptr[r * T + t] + c0;
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m[v], xp + 16 * v), wv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) _mm512_mask_storeu_ps(y + r * C + c0 + 16 * v, m[v], acc[r][v]);
}

template <int V, int RMAX, int R = RMAX>
inline void dwise_dispatch(int64_t nr, const float* const* ptr, int64_t T, const float* w, int64_t c0, int64_t C,
                           float* y) {
  if constexpr (R > 0) {
    if (nr == R) return dwise_micro<R, V>(ptr, T, w, c0, C, y);
    return dwise_dispatch<V, RMAX, R - 1>(nr, ptr, T, w, c0, C, y);
  }
}

void depthwise_forward(ffi::ThreadPool& pool, const float* x, const float* w, float* y, const Shape& s) {
  thread_local std::vector<float> zeros_buf;
  constexpr int V = 4, RMAX = 6;
  float* zeros = scratch(zeros_buf, s.c);
  std::fill(zeros, zeros + s.c, 0.0f);
  const int64_t P = s.n * s.ho * s.wo, T = s.kh * s.kw, C = s.c;
  // Chunks of pixels: about 64 KiB of input rows per tap table, at least 4 chunks per worker.
  int64_t grain = std::max<int64_t>(RMAX, ((int64_t{1} << 14) / std::max<int64_t>(C, 16)) / RMAX * RMAX);
  while (grain > RMAX && (P + grain - 1) / grain < 4 * Parallel::max_workers(pool)) grain = grain / 2 / RMAX * RMAX;
  Parallel::run(pool, P, std::max<int64_t>(grain, RMAX), [&](int64_t, int64_t p0, int64_t p1) {
    thread_local std::vector<const float*> ptr;
    tap_table(x, zeros, s, p0, p1, ptr);
    for (int64_t c0 = 0; c0 < C; c0 += 16 * V) {
      // The last block of channels uses as few vectors as it needs.
      const int64_t left = C - c0;
      for (int64_t p = p0; p < p1; p += RMAX) {
        const int64_t nr = std::min<int64_t>(RMAX, p1 - p);
        const float* const* pp = ptr.data() + (p - p0) * T;
        float* yp = y + p * C;
        if (left > 32) dwise_dispatch<4, RMAX>(nr, pp, T, w, c0, C, yp);
        else if (left > 16) dwise_dispatch<2, RMAX>(nr, pp, T, w, c0, C, yp);
        else dwise_dispatch<1, RMAX>(nr, pp, T, w, c0, C, yp);
      }
    }
  });
}

// acc[t] += sum over the chunk's pixels of x[tap t] * g, for NT taps from t0 and 16 channels.
template <int NT>
inline void dwise_grad_micro(const float* const* __restrict ptr, int64_t T, int64_t t0, const float* __restrict g,
                             int64_t np, int64_t c0, int64_t C, float* __restrict acc_out) {
  __m512 acc[NT];
  const __mmask16 m = lanes(C - c0);
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t p = 0; p < np; ++p) {
    const __m512 gv = _mm512_maskz_loadu_ps(m, g + p * C + c0);
    const float* const* pp = ptr + p * T + t0;
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, pp[t] + c0), gv, acc[t]);
  }
  for (int t = 0; t < NT; ++t) {
    float* a = acc_out + (t0 + t) * C + c0;
    _mm512_mask_storeu_ps(a, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, a), acc[t]));
  }
}

template <int NT = 8>
inline void dwise_grad_dispatch(int64_t nt, const float* const* ptr, int64_t T, int64_t t0, const float* g,
                                int64_t np, int64_t c0, int64_t C, float* acc) {
  if constexpr (NT > 0) {
    if (nt == NT) return dwise_grad_micro<NT>(ptr, T, t0, g, np, c0, C, acc);
    return dwise_grad_dispatch<NT - 1>(nt, ptr, T, t0, g, np, c0, C, acc);
  }
}

void depthwise_kernel_grad(ffi::ThreadPool& pool, const float* x, const float* dy, float* dw, const Shape& s) {
  thread_local std::vector<float> acc_buf, zeros_buf;
  const int64_t P = s.n * s.ho * s.wo, T = s.kh * s.kw, C = s.c, size = T * C;
  float* zeros = scratch(zeros_buf, C);
  std::fill(zeros, zeros + C, 0.0f);
  const int64_t grain = std::max<int64_t>(16, (int64_t{1} << 14) / std::max<int64_t>(C, 16));
  const int64_t copies = std::min(Parallel::max_workers(pool), (P + grain - 1) / grain);
  float* accs = scratch(acc_buf, copies * size);
  std::fill(accs, accs + copies * size, 0.0f);
  Parallel::run(pool, P, grain, [&](int64_t worker, int64_t p0, int64_t p1) {
    thread_local std::vector<const float*> ptr;
    tap_table(x, zeros, s, p0, p1, ptr);
    float* acc = accs + worker * size;
    for (int64_t c0 = 0; c0 < C; c0 += 16)
      for (int64_t t0 = 0; t0 < T; t0 += 8)
        dwise_grad_dispatch(std::min<int64_t>(8, T - t0), ptr.data(), T, t0, dy + p0 * C, p1 - p0, c0, C, acc);
  });
  for (int64_t k = 0; k < size; ++k) {
    float sum = 0.0f;
    for (int64_t w = 0; w < copies; ++w) sum += accs[w * size + k];
    dw[k] = sum;
  }
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
  depthwise_forward(pool, x.typed_data(), w.typed_data(), y->typed_data(), s);
  return ffi::Error::Success();
}

ffi::Error DepthwiseKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                               ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t dh, int64_t dwd,
                               int64_t ph, int64_t pw) {
  Shape s;
  if (auto e = make_shape("jaxconv_depthwise_kernel_grad", x.dimensions(), dw->dimensions(), dy.dimensions(), sh,
                          sw, dh, dwd, ph, pw, s, /*depthwise=*/true);
      e.failure())
    return e;
  if (s.kh * s.kw * s.c == 0) return ffi::Error::Success();
  if (s.n * s.ho * s.wo == 0) {
    std::memset(dw->typed_data(), 0, sizeof(float) * s.kh * s.kw * s.c);
    return ffi::Error::Success();
  }
  depthwise_kernel_grad(pool, x.typed_data(), dy.typed_data(), dw->typed_data(), s);
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
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvConvWinograd, ConvWinograd, winograd_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvConvKernelGradWinograd, ConvKernelGradWinograd, winograd_binding());
#pragma GCC visibility pop
