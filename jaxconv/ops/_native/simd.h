// The vector type of the native kernels (conv.cc): simd::Vec, one hardware vector register of
// kLanes float32 lanes, in one of three implementations chosen by the macro the library is
// built with (jaxconv/ops/_native/_build.py):
//
//   JAXCONV_ISA_AVX512    __m512, 16 lanes; 32 registers; __mmask16 for partial vectors
//   JAXCONV_ISA_AVX2      __m256, 8 lanes (AVX2 + FMA); 16 registers
//   JAXCONV_ISA_PORTABLE  4 lanes of plain C++ (-march=x86-64: SSE2, 16 registers, no FMA): a
//                         GCC/Clang generic vector (vector_size(16), no intrinsics: it compiles
//                         for any target), or a float[4] with loops for other compilers
//
// With none of them defined the best one the compiler targets is taken. The kernels count
// channels in blocks of 16 (kPer16 = 16 / kLanes vectors each), so their index arithmetic is
// the same on every variant; only the register blocks differ (conv.cc).
//
// Operations: zero, set1 (broadcast), load/store (unaligned), load/store of the first n lanes
// through a Mask (first(n); lanes past n read as zero and are left unwritten, and memory past
// them is never touched), + - * on Vec, fma(a, b, c) = a b + c and fnma(a, b, c) = c - a b (one
// rounding with FMA, two on the portable variant).

#pragma once

#include <cstdint>
#include <cstring>

#if defined(JAXCONV_ISA_AVX512) + defined(JAXCONV_ISA_AVX2) + defined(JAXCONV_ISA_PORTABLE) > 1
#error "define at most one of JAXCONV_ISA_AVX512, JAXCONV_ISA_AVX2, JAXCONV_ISA_PORTABLE"
#endif
#if !defined(JAXCONV_ISA_AVX512) && !defined(JAXCONV_ISA_AVX2) && !defined(JAXCONV_ISA_PORTABLE)
#if defined(__AVX512F__)
#define JAXCONV_ISA_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#define JAXCONV_ISA_AVX2 1
#else
#define JAXCONV_ISA_PORTABLE 1
#endif
#endif
#if defined(JAXCONV_ISA_AVX512) && !defined(__AVX512F__)
#error "JAXCONV_ISA_AVX512 needs -mavx512f (e.g. -march=x86-64-v4)"
#endif
#if defined(JAXCONV_ISA_AVX2) && !(defined(__AVX2__) && defined(__FMA__))
#error "JAXCONV_ISA_AVX2 needs -mavx2 -mfma (e.g. -march=x86-64-v3)"
#endif

#if !defined(JAXCONV_ISA_PORTABLE)
#include <immintrin.h>
#endif

#define JAXCONV_INLINE inline __attribute__((always_inline))

namespace simd {

inline int64_t clamp_lanes(int64_t n, int64_t lanes) { return n < 0 ? 0 : n > lanes ? lanes : n; }

#if defined(JAXCONV_ISA_AVX512)

constexpr const char* kIsa = "avx512";
constexpr int kLanes = 16, kRegs = 32;
using Vec = __m512;  // + - * are GCC/Clang vector operators
struct Mask {
  __mmask16 m;
};

JAXCONV_INLINE Vec zero() { return _mm512_setzero_ps(); }
JAXCONV_INLINE Vec set1(float a) { return _mm512_set1_ps(a); }
JAXCONV_INLINE Vec load(const float* p) { return _mm512_loadu_ps(p); }
JAXCONV_INLINE void store(float* p, Vec a) { _mm512_storeu_ps(p, a); }
JAXCONV_INLINE Mask first(int64_t n) { return {static_cast<__mmask16>((1u << clamp_lanes(n, 16)) - 1)}; }
JAXCONV_INLINE Vec load(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m.m, p); }
JAXCONV_INLINE void store(float* p, Vec a, Mask m) { _mm512_mask_storeu_ps(p, m.m, a); }
JAXCONV_INLINE Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
JAXCONV_INLINE Vec fnma(Vec a, Vec b, Vec c) { return _mm512_fnmadd_ps(a, b, c); }

#elif defined(JAXCONV_ISA_AVX2)

constexpr const char* kIsa = "avx2";
constexpr int kLanes = 8, kRegs = 16;
using Vec = __m256;
// The lane count and the vmaskmov mask (used only for a partial vector: a masked store is
// slower than a plain one).
struct Mask {
  int64_t n;
  __m256i m;
};

JAXCONV_INLINE Vec zero() { return _mm256_setzero_ps(); }
JAXCONV_INLINE Vec set1(float a) { return _mm256_set1_ps(a); }
JAXCONV_INLINE Vec load(const float* p) { return _mm256_loadu_ps(p); }
JAXCONV_INLINE void store(float* p, Vec a) { _mm256_storeu_ps(p, a); }
JAXCONV_INLINE Mask first(int64_t n) {
  n = clamp_lanes(n, 8);
  return {n, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))};
}
JAXCONV_INLINE Vec load(const float* p, const Mask& m) { return m.n >= 8 ? load(p) : _mm256_maskload_ps(p, m.m); }
JAXCONV_INLINE void store(float* p, Vec a, const Mask& m) {
  if (m.n >= 8) store(p, a);
  else _mm256_maskstore_ps(p, m.m, a);
}
JAXCONV_INLINE Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
JAXCONV_INLINE Vec fnma(Vec a, Vec b, Vec c) { return _mm256_fnmadd_ps(a, b, c); }

#else  // JAXCONV_ISA_PORTABLE

constexpr const char* kIsa = "portable";
constexpr int kLanes = 4, kRegs = 16;
#if defined(__GNUC__)
typedef float Vec __attribute__((vector_size(16)));  // lanewise + - * by the compiler
#else
struct Vec {
  float f[4];
  float& operator[](int i) { return f[i]; }
  float operator[](int i) const { return f[i]; }
};
inline Vec operator+(Vec a, Vec b) { for (int i = 0; i < 4; ++i) a.f[i] += b.f[i]; return a; }
inline Vec operator-(Vec a, Vec b) { for (int i = 0; i < 4; ++i) a.f[i] -= b.f[i]; return a; }
inline Vec operator*(Vec a, Vec b) { for (int i = 0; i < 4; ++i) a.f[i] *= b.f[i]; return a; }
#endif
struct Mask {
  int64_t n;
};

JAXCONV_INLINE Vec set1(float a) { return Vec{a, a, a, a}; }
JAXCONV_INLINE Vec zero() { return set1(0.0f); }
JAXCONV_INLINE Vec load(const float* p) {
  Vec r;
  std::memcpy(&r, p, sizeof(Vec));
  return r;
}
JAXCONV_INLINE void store(float* p, Vec a) { std::memcpy(p, &a, sizeof(Vec)); }
JAXCONV_INLINE Mask first(int64_t n) { return {clamp_lanes(n, 4)}; }
JAXCONV_INLINE Vec load(const float* p, Mask m) {
  if (m.n >= 4) return load(p);
  Vec r = zero();
  for (int64_t i = 0; i < m.n; ++i) r[i] = p[i];
  return r;
}
JAXCONV_INLINE void store(float* p, Vec a, Mask m) {
  if (m.n >= 4) return store(p, a);
  for (int64_t i = 0; i < m.n; ++i) p[i] = a[i];
}
JAXCONV_INLINE Vec fma(Vec a, Vec b, Vec c) { return a * b + c; }
JAXCONV_INLINE Vec fnma(Vec a, Vec b, Vec c) { return c - a * b; }

#endif

// Vectors per block of 16 channels.
constexpr int kPer16 = 16 / kLanes;

}  // namespace simd
