// Direct float32 convolution kernels for XLA:CPU, called through the XLA FFI.
//
// Why by hand: XLA:CPU runs a 3x3 convolution with 64 channels at about 100 GFLOP/s and
// derives its kernel gradient at 30-90 GFLOP/s on a 2-core AVX-512 machine, while the same
// cores sustain about 300 GFLOP/s in a matrix product. These kernels reach the matrix-product
// speed on ResNet's layers (measured in benchmarks/results/conv-grad-cpu.md).
//
// Layout: channels-last. x: [N, Hp, Wp, C] (already padded), w: [KH, KW, C, O],
// y: [N, Ho, Wo, O] with Ho = (Hp - (KH - 1) dh - 1) / sh + 1 (likewise Wo):
//
//   y[n, h, v, o] = sum_{i, j, c} x[n, h sh + i dh, v sw + j dw, c] w[i, j, c, o].
//
// Forward: the output pixels (n, h, v) are flattened to one index p and cut into blocks of R
// consecutive pixels; the output channels into blocks of 16 V (V AVX-512 vectors). A
// micro-kernel keeps an R x V block of the output in registers (R V <= 28 accumulators) and
// adds, for every tap (i, j) and input channel c, the broadcast input value of each pixel
// times V vectors of the packed kernel. Blocks are shared among the XLA intra-op threads.
//
// Kernel gradient: dw[i, j, c, o] = sum_p x[p + tap(i, j), c] dy[p, o]. The same micro-kernel
// shape with the roles swapped: R input channels x V output-channel vectors in registers,
// reduced over a chunk of pixels; every thread sums its chunks into a private copy of dw, and
// the copies are added at the end.
//
// The input gradient is the forward kernel applied to the padded output gradient and the
// flipped, transposed kernel; it is set up in Python (jaxconv/ops/_native.py).

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Shape {
  int64_t n, hp, wp, c;  // padded input
  int64_t kh, kw, o;     // kernel
  int64_t ho, wo;        // output
  int64_t sh, sw, dh, dw;
};

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

// R output pixels (input offsets `offs`) x 16 V output channels; packed w: [KH][KW][C][16 V].
template <int R, int V>
inline void fwd_micro(const float* __restrict x, const int64_t* __restrict offs, const float* __restrict w,
                      float* __restrict y, const Shape& s, int64_t o_valid) {
  __m512 acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  const int64_t C = s.c;
  const float* xs[R];
  for (int r = 0; r < R; ++r) xs[r] = x + offs[r];
  for (int64_t i = 0; i < s.kh; ++i) {
    for (int64_t j = 0; j < s.kw; ++j) {
      const int64_t toff = (i * s.dh * s.wp + j * s.dw) * C;
      const float* wr = w + (i * s.kw + j) * C * (16 * V);
      for (int64_t c = 0; c < C; ++c) {
        __m512 wv[V];
        for (int v = 0; v < V; ++v) wv[v] = _mm512_loadu_ps(wr + c * 16 * V + 16 * v);
        for (int r = 0; r < R; ++r) {
          const __m512 b = _mm512_set1_ps(xs[r][toff + c]);
          for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(b, wv[v], acc[r][v]);
        }
      }
    }
  }
  for (int v = 0; v < V; ++v) {
    const int64_t left = o_valid - 16 * v;
    if (left >= 16) {
      for (int r = 0; r < R; ++r) _mm512_storeu_ps(y + r * s.o + 16 * v, acc[r][v]);
    } else if (left > 0) {
      const __mmask16 m = static_cast<__mmask16>((1u << left) - 1);
      for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(y + r * s.o + 16 * v, m, acc[r][v]);
    }
  }
}

template <int V, int RMAX, int R = RMAX>
inline void fwd_dispatch(int64_t np, const float* x, const int64_t* offs, const float* w, float* y, const Shape& s,
                         int64_t o_valid) {
  if constexpr (R > 0) {
    if (np == R) return fwd_micro<R, V>(x, offs, w, y, s, o_valid);
    return fwd_dispatch<V, RMAX, R - 1>(np, x, offs, w, y, s, o_valid);
  }
}

template <int V, int RMAX>
void fwd_range(const float* x, const float* wpk, float* y, const Shape& s, int64_t b0, int64_t b1) {
  const int64_t OB = 16 * V, P = s.n * s.ho * s.wo, nob = (s.o + OB - 1) / OB;
  const int64_t wsize = s.kh * s.kw * s.c * OB;
  int64_t offs[RMAX];
  for (int64_t ob = 0; ob < nob; ++ob) {
    const float* w = wpk + ob * wsize;
    const int64_t o_valid = std::min(OB, s.o - ob * OB);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t p0 = b * RMAX, np = std::min<int64_t>(RMAX, P - p0);
      for (int64_t r = 0; r < np; ++r) {
        const int64_t p = p0 + r, v = p % s.wo, t = p / s.wo, h = t % s.ho, n = t / s.ho;
        offs[r] = ((n * s.hp + h * s.sh) * s.wp + v * s.sw) * s.c;
      }
      fwd_dispatch<V, RMAX>(np, x, offs, w, y + p0 * s.o + ob * OB, s, o_valid);
    }
  }
}

// [KH, KW, C, O] -> [ceil(O / OB)][KH][KW][C][OB], zero-filled past O.
std::vector<float> pack_kernel(const float* w, const Shape& s, int64_t OB) {
  const int64_t nob = (s.o + OB - 1) / OB, taps = s.kh * s.kw * s.c;
  std::vector<float> out(nob * taps * OB, 0.0f);
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t o = 0; o < s.o; ++o) out[((o / OB) * taps + t) * OB + o % OB] = w[t * s.o + o];
  return out;
}

template <int V, int RMAX>
void forward(ffi::ThreadPool& pool, const float* x, const float* w, float* y, const Shape& s) {
  const std::vector<float> wpk = pack_kernel(w, s, 16 * V);
  const int64_t P = s.n * s.ho * s.wo, blocks = (P + RMAX - 1) / RMAX;
  // 64 pixel blocks per chunk: the chunk's input stays in L2 while each output-channel block's
  // packed kernel is streamed over it (measured best of 1, 8, 64 and all blocks).
  Parallel::run(pool, blocks, 64, [&](int64_t, int64_t b0, int64_t b1) {
    fwd_range<V, RMAX>(x, wpk.data(), y, s, b0, b1);
  });
}

ffi::Error ConvForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t dh, int64_t dw) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4 || wd[2] != xd[3])
    return ffi::Error::InvalidArgument("jaxconv_conv_forward: expected x [N,H,W,C], w [KH,KW,C,O]");
  const Shape s{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], yd[1], yd[2], sh, sw, dh, dw};
  if (yd[0] != s.n || yd[3] != s.o || s.ho != (s.hp - (s.kh - 1) * dh - 1) / sh + 1 ||
      s.wo != (s.wp - (s.kw - 1) * dw - 1) / sw + 1)
    return ffi::Error::InvalidArgument("jaxconv_conv_forward: output shape does not match");
  if (s.n * s.ho * s.wo == 0 || s.o == 0) return ffi::Error::Success();
  if (s.c == 0) {
    std::memset(y->typed_data(), 0, sizeof(float) * s.n * s.ho * s.wo * s.o);
    return ffi::Error::Success();
  }
  if (s.o % 64 == 0 || s.o > 48) {
    forward<4, 7>(pool, x.typed_data(), w.typed_data(), y->typed_data(), s);
  } else if (s.o > 16) {
    forward<2, 14>(pool, x.typed_data(), w.typed_data(), y->typed_data(), s);
  } else {
    forward<1, 28>(pool, x.typed_data(), w.typed_data(), y->typed_data(), s);
  }
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------------------
// Kernel gradient.

// acc[r][v] += sum over the chunk's pixels of x[offs[p] + c0 + r] * dy[p, o0 + 16 v ...]. The
// accumulators start at zero in registers and are added to memory once at the end (loading
// them from memory first made GCC keep them on the stack).
template <int R, int V, bool kMasked>
inline void dw_micro(const float* __restrict x, const int64_t* __restrict offs, const float* __restrict dy,
                     int64_t np, int64_t o_stride, float* __restrict acc_out, int64_t acc_stride, int64_t o_valid) {
  __m512 acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  __mmask16 mask[V];
  for (int v = 0; v < V; ++v) {
    const int64_t left = std::min<int64_t>(16, std::max<int64_t>(0, o_valid - 16 * v));
    mask[v] = static_cast<__mmask16>((1u << left) - 1);
  }
  for (int64_t p = 0; p < np; ++p) {
    const float* xs = x + offs[p];
    const float* g = dy + p * o_stride;
    __m512 gv[V];
    for (int v = 0; v < V; ++v) gv[v] = kMasked ? _mm512_maskz_loadu_ps(mask[v], g + 16 * v) : _mm512_loadu_ps(g + 16 * v);
    for (int r = 0; r < R; ++r) {
      const __m512 b = _mm512_set1_ps(xs[r]);
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
inline void dw_dispatch(int64_t nc, const float* x, const int64_t* offs, const float* dy, int64_t np, int64_t o_stride,
                        float* acc, int64_t acc_stride, int64_t o_valid) {
  if constexpr (R > 0) {
    if (nc == R) {
      if (o_valid >= 16 * V) return dw_micro<R, V, false>(x, offs, dy, np, o_stride, acc, acc_stride, o_valid);
      return dw_micro<R, V, true>(x, offs, dy, np, o_stride, acc, acc_stride, o_valid);
    }
    return dw_dispatch<V, RMAX, R - 1>(nc, x, offs, dy, np, o_stride, acc, acc_stride, o_valid);
  }
}

// Private accumulator layout: [KH][KW][C][O_pad] with O_pad a multiple of 16 V.
template <int V, int RMAX>
void kernel_grad(ffi::ThreadPool& pool, const float* x, const float* dy, float* dw, const Shape& s) {
  const int64_t OB = 16 * V, nob = (s.o + OB - 1) / OB, opad = nob * OB;
  const int64_t P = s.n * s.ho * s.wo, acc_size = s.kh * s.kw * s.c * opad;
  // Pixels per chunk: about 1 MiB of x and dy rows, so a chunk stays in L2 while every
  // (tap, channel block, output block) sweeps it.
  const int64_t grain = std::max<int64_t>(32, (int64_t{1} << 15) / (s.c + s.o));
  const int64_t workers = Parallel::max_workers(pool);
  std::vector<std::unique_ptr<float[]>> accs(workers);
  Parallel::run(pool, P, grain, [&](int64_t worker, int64_t p0, int64_t p1) {
    if (!accs[worker]) {
      accs[worker].reset(new float[acc_size]);
      std::memset(accs[worker].get(), 0, sizeof(float) * acc_size);
    }
    float* acc = accs[worker].get();
    std::vector<int64_t> offs(p1 - p0);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t v = p % s.wo, t = p / s.wo, h = t % s.ho, n = t / s.ho;
      offs[p - p0] = ((n * s.hp + h * s.sh) * s.wp + v * s.sw) * s.c;
    }
    const float* g = dy + p0 * s.o;
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j) {
        const int64_t toff = (i * s.dh * s.wp + j * s.dw) * s.c;
        for (int64_t c0 = 0; c0 < s.c; c0 += RMAX) {
          const int64_t nc = std::min<int64_t>(RMAX, s.c - c0);
          for (int64_t ob = 0; ob < nob; ++ob) {
            float* a = acc + ((i * s.kw + j) * s.c + c0) * opad + ob * OB;
            dw_dispatch<V, RMAX>(nc, x + toff + c0, offs.data(), g + ob * OB, p1 - p0, s.o, a, opad,
                                 s.o - ob * OB);
          }
        }
      }
  });
  const int64_t rows = s.kh * s.kw * s.c;
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t o = 0; o < s.o; ++o) {
      float sum = 0.0f;
      for (const auto& a : accs)
        if (a) sum += a[t * opad + o];
      dw[t * s.o + o] = sum;
    }
}

ffi::Error ConvKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t dh, int64_t dwd) {
  const auto xd = x.dimensions(), gd = dy.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 4 || wd[2] != xd[3] || wd[3] != gd[3] || gd[0] != xd[0])
    return ffi::Error::InvalidArgument("jaxconv_conv_kernel_grad: expected x [N,H,W,C], dy [N,Ho,Wo,O]");
  const Shape s{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], gd[1], gd[2], sh, sw, dh, dwd};
  if (s.ho != (s.hp - (s.kh - 1) * dh - 1) / sh + 1 || s.wo != (s.wp - (s.kw - 1) * dwd - 1) / sw + 1)
    return ffi::Error::InvalidArgument("jaxconv_conv_kernel_grad: output gradient shape does not match");
  if (s.kh * s.kw * s.c * s.o == 0) return ffi::Error::Success();
  if (s.o % 64 == 0 || s.o > 48) {
    kernel_grad<4, 7>(pool, x.typed_data(), dy.typed_data(), dw->typed_data(), s);
  } else if (s.o > 16) {
    kernel_grad<2, 14>(pool, x.typed_data(), dy.typed_data(), dw->typed_data(), s);
  } else {
    kernel_grad<1, 28>(pool, x.typed_data(), dy.typed_data(), dw->typed_data(), s);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvConvForward, ConvForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("dh")
                                  .Attr<int64_t>("dw"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvConvKernelGrad, ConvKernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("dh")
                                  .Attr<int64_t>("dw"));
