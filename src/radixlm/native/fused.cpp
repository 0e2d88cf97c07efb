// Fused elementwise ops of the decoder layer (CPU): each reads and writes its tensors once,
// computes in float32 and rounds once to the tensor's dtype (float32 or bfloat16).
//
// rms_norm(x [T, H], w [H], eps) -> [T, H]:      w * round(x / rms(x))
// add_rms_norm(x, delta, w, eps) -> [T, H]:      x += delta (in place), then rms_norm(x)
// rope_(qkv [T, heads, D], cos [T, D], sin [T, D], rotary_heads): in place on the first
//     rotary_heads heads, x * cos + roll(x, D/2) * sin (sin signed, HF rotate-half layout)
// silu_mul(gu [T, 2I]) -> [T, I]:                silu(gu[:, :I]) * gu[:, I:]

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "vec.h"
#include <cstring>

namespace {

inline float ld(const float* p, int64_t i) { return p[i]; }
inline float ld(const c10::BFloat16* p, int64_t i) {
  uint32_t bits = static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(p)[i]) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline void st(float* p, int64_t i, float v) { p[i] = v; }
inline void st(c10::BFloat16* p, int64_t i, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  reinterpret_cast<uint16_t*>(p)[i] =
      static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}
// The value v takes once stored in T (the reference rounds the normalised row to x's dtype).
inline float round_to(float v, const float*) { return v; }
inline float round_to(float v, const c10::BFloat16*) {
  c10::BFloat16 b;
  st(&b, 0, v);
  return ld(&b, 0);
}

template <typename T>
void norm_rows(T* x, const T* delta, const T* w, T* out, int64_t rows, int64_t h, double eps) {
  at::parallel_for(0, rows, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      T* xr = x + r * h;
      if (delta != nullptr) {
        const T* dr = delta + r * h;
#pragma omp simd
        for (int64_t i = 0; i < h; ++i) st(xr, i, ld(xr, i) + ld(dr, i));
      }
      float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < h; ++i) ss += ld(xr, i) * ld(xr, i);
      const float inv = 1.f / std::sqrt(ss / static_cast<float>(h) + static_cast<float>(eps));
      T* o = out + r * h;
#pragma omp simd
      for (int64_t i = 0; i < h; ++i) st(o, i, ld(w, i) * round_to(ld(xr, i) * inv, xr));
    }
  });
}

void check_rows(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous [T, H] tensor");
  TORCH_CHECK(w.dim() == 1 && w.size(0) == x.size(1) && w.scalar_type() == x.scalar_type(),
              "weight must be [H] in x's dtype");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16,
              "float32 or bfloat16 only");
}

// silu(g[i]) * u[i] into o[i], 16 lanes at a time, for bfloat16 with AVX512-BF16 (exp16, one
// rounding of the float32 result, as `st`); returns how many leading i it wrote (float32
// and other CPUs: none, so the scalar loop with std::exp does them all).
inline int64_t silu_mul16(const float*, const float*, float*, int64_t) { return 0; }
inline int64_t silu_mul16(const c10::BFloat16* g, const c10::BFloat16* u, c10::BFloat16* o,
                          int64_t n) {
#ifdef __AVX512BF16__
  const auto widen = [](const c10::BFloat16* p) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
  };
  const __m512 one = _mm512_set1_ps(1.f);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 gv = widen(g + i);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
    const __m512 y = _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(one, e)), widen(u + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + i), (__m256i)_mm512_cvtneps_pbh(y));
  }
  return i;
#else
  return 0;
#endif
}

template <typename F>
void dispatch(const torch::Tensor& x, F&& f) {
  if (x.scalar_type() == torch::kFloat32) {
    f(static_cast<float*>(nullptr));
  } else {
    f(static_cast<c10::BFloat16*>(nullptr));
  }
}

}  // namespace

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps) {
  check_rows(x, w);
  auto wc = w.contiguous();
  auto out = torch::empty_like(x);
  dispatch(x, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    norm_rows<T>(x.data_ptr<T>(), nullptr, wc.data_ptr<T>(), out.data_ptr<T>(), x.size(0),
                 x.size(1), eps);
  });
  return out;
}

torch::Tensor add_rms_norm(torch::Tensor x, torch::Tensor delta, torch::Tensor w, double eps) {
  check_rows(x, w);
  TORCH_CHECK(delta.sizes() == x.sizes() && delta.scalar_type() == x.scalar_type(),
              "delta must match x");
  auto dc = delta.contiguous();
  auto wc = w.contiguous();
  auto out = torch::empty_like(x);
  dispatch(x, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    norm_rows<T>(x.data_ptr<T>(), dc.data_ptr<T>(), wc.data_ptr<T>(), out.data_ptr<T>(),
                 x.size(0), x.size(1), eps);
  });
  return out;
}

void rope_(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, int64_t rotary_heads) {
  TORCH_CHECK(qkv.dim() == 3 && qkv.is_contiguous(), "qkv must be contiguous [T, heads, D]");
  TORCH_CHECK(qkv.scalar_type() == torch::kFloat32 || qkv.scalar_type() == torch::kBFloat16,
              "float32 or bfloat16 only");
  const int64_t t = qkv.size(0), heads = qkv.size(1), d = qkv.size(2), half = d / 2;
  TORCH_CHECK(rotary_heads <= heads && d % 2 == 0 && d <= 512, "bad rotary heads or head size");
  auto c = cos.to(torch::kFloat32).reshape({t, d}).contiguous();
  auto s = sin.to(torch::kFloat32).reshape({t, d}).contiguous();
  const float* cp = c.data_ptr<float>();
  const float* sp = s.data_ptr<float>();
  dispatch(qkv, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    T* base = qkv.data_ptr<T>();
    at::parallel_for(0, t * rotary_heads, 64, [&](int64_t lo, int64_t hi) {
      float row[512];
      for (int64_t w = lo; w < hi; ++w) {
        const int64_t r = w / rotary_heads, hd = w % rotary_heads;
        T* x = base + (r * heads + hd) * d;
        const float* cr = cp + r * d;
        const float* sr = sp + r * d;
        for (int64_t i = 0; i < d; ++i) row[i] = ld(x, i);
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) {
          const int64_t j = i < half ? i + half : i - half;
          st(x, i, row[i] * cr[i] + row[j] * sr[i]);
        }
      }
    });
  });
}

torch::Tensor silu_mul(torch::Tensor gu) {
  TORCH_CHECK(gu.dim() == 2 && gu.is_contiguous() && gu.size(1) % 2 == 0,
              "gate_up must be a contiguous [T, 2I] tensor");
  TORCH_CHECK(gu.scalar_type() == torch::kFloat32 || gu.scalar_type() == torch::kBFloat16,
              "float32 or bfloat16 only");
  const int64_t t = gu.size(0), inter = gu.size(1) / 2;
  auto out = torch::empty({t, inter}, gu.options());
  dispatch(gu, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* in = gu.data_ptr<T>();
    T* o = out.data_ptr<T>();
    at::parallel_for(0, t, 4, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const T* g = in + r * 2 * inter;
        const T* u = g + inter;
        const int64_t done = silu_mul16(g, u, o + r * inter, inter);
#pragma omp simd
        for (int64_t i = done; i < inter; ++i) {
          const float gv = ld(g, i);
          st(o + r * inter, i, gv / (1.f + std::exp(-gv)) * ld(u, i));
        }
      }
    });
  });
  return out;
}
