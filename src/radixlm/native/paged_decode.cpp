// Paged decode attention on the CPU: one new query per sequence, keys read in place.
//
// Sequence b attends to the pool rows kv_indices[kv_indptr[b] .. kv_indptr[b+1]) of
// one layer's K and V ([num_slots, Hkv, D]); nothing is gathered into a copy.
// Each key or value row is asked for PREFETCH rows ahead of its use (rows of a chunk
// are scattered pool rows: the hardware prefetcher cannot guess them), which took a
// batch-8 decode at 1,000 tokens of context from ~9 to ~15 GB/s on a 2-core VM.
// Work is split into (sequence, chunk of CHUNK keys) items run in parallel;
// each item computes, for each kv head and the G = H / Hkv query heads on it,
// the chunk's max score, exp-sum and exp-weighted V sum (float32), and a merge
// pass combines the chunks of each (sequence, head) exactly by log-sum-exp.
//
// Inputs: q [B, H, D]; k_cache, v_cache [S, Hkv, D] (q's dtype: float32 or bfloat16), unit
// stride along D, any row and head strides (KVPool's slot-major or head-major layout);
// kv_indptr [B + 1] int64; kv_indices [N] int64. Every sequence has >= 1 key.
// Returns out [B, H, D] in q's dtype and lse [B, H] float32 (natural log).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include "kernels.h"
#include "vec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t CHUNK = 256;
constexpr int64_t MAX_D = 256;

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) { return static_cast<float>(x); }

#if defined(__AVX512F__)
constexpr int64_t PREFETCH = 32;  // rows ahead: a key's slice is fetched while earlier ones run

// Ask for the cache lines of `d` values at p (one head's slice of a K or V row).
template <typename T>
inline void prefetch_row(const T* p, int64_t d) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < d * static_cast<int64_t>(sizeof(T)); off += 64)
    _mm_prefetch(c + off, _MM_HINT_T0);
}

// 16 values at p as float32 lanes.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

#endif

// exp(x - m) of n scores in place; returns their sum.
inline float exp_sum(float* x, int64_t n, float m) {
  float l = 0.f;
  int64_t t = 0;
#if defined(__AVX512F__)
  __m512 sum = _mm512_setzero_ps();
  const __m512 mv = _mm512_set1_ps(m);
  for (; t + 16 <= n; t += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + t), mv));
    _mm512_storeu_ps(x + t, e);
    sum = _mm512_add_ps(sum, e);
  }
  l = _mm512_reduce_add_ps(sum);
#endif
  for (; t < n; ++t) {
    x[t] = std::exp(x[t] - m);
    l += x[t];
  }
  return l;
}

// One head's scores sh[0..n) become exp(s - m) in place; m_out = m (their max), l_out =
// their sum: the chunk's partial softmax.
inline void softmax_partial(float* sh, int64_t n, float* m_out, float* l_out) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < n; ++t) m = std::max(m, sh[t]);
  *m_out = m;
  *l_out = exp_sum(sh, n, m);
}

#if defined(__AVX512F__)
// acc[h] (h < HB) += sum_t p[h * n + t] * v_row(t), for D = 16 * NV, accumulators in registers.
template <typename T, int NV, int HB>
void weighted_sum(const T* v, const int64_t* idx, int64_t n, int64_t row_stride,
                  const float* p, float* acc, int64_t d) {
  __m512 a[HB][NV];
  for (int h = 0; h < HB; ++h)
    for (int j = 0; j < NV; ++j) a[h][j] = _mm512_setzero_ps();
  for (int64_t t = 0; t < n; ++t) {
    const T* vr = v + idx[t] * row_stride;
    if (t + PREFETCH < n) prefetch_row(v + idx[t + PREFETCH] * row_stride, 16 * NV);
    __m512 x[NV];
    for (int j = 0; j < NV; ++j) x[j] = load16(vr + 16 * j);
    for (int h = 0; h < HB; ++h) {
      const __m512 w = _mm512_set1_ps(p[h * n + t]);
      for (int j = 0; j < NV; ++j) a[h][j] = _mm512_fmadd_ps(w, x[j], a[h][j]);
    }
  }
  for (int h = 0; h < HB; ++h)
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(acc + h * d + 16 * j, a[h][j]);
}

template <typename T, int NV>
void weighted_sum_heads(const T* v, const int64_t* idx, int64_t n, int64_t row_stride,
                        const float* p, float* acc, int64_t g, int64_t d) {
  for (int64_t h = 0; h < g; h += 4) {
    const float* ph = p + h * n;
    float* ah = acc + h * d;
    switch (std::min<int64_t>(4, g - h)) {
      case 4: weighted_sum<T, NV, 4>(v, idx, n, row_stride, ph, ah, d); break;
      case 3: weighted_sum<T, NV, 3>(v, idx, n, row_stride, ph, ah, d); break;
      case 2: weighted_sum<T, NV, 2>(v, idx, n, row_stride, ph, ah, d); break;
      default: weighted_sum<T, NV, 1>(v, idx, n, row_stride, ph, ah, d); break;
    }
  }
}
#endif

#if defined(__AVX512F__)
// scores[h * n + t] = q_h . k_row(t) for G heads, D = 16 * NV: each key row is read and
// widened once for all G heads; the per-key partial vectors of 16 keys are reduced
// together by `sum16`.
template <typename T, int NV>
void qk_scores(const float* q, const T* k, const int64_t* idx, int64_t n, int64_t row_stride,
               int64_t g, float* scores) {
  constexpr int MAX_G = 16;
  __m512 part[MAX_G][16];
  const int64_t d = 16 * NV;
  for (int64_t t0 = 0; t0 < n; t0 += 16) {
    const int64_t m = std::min<int64_t>(16, n - t0);
    for (int64_t j = 0; j < m; ++j) {
      const T* kr = k + idx[t0 + j] * row_stride;
      if (t0 + j + PREFETCH < n) prefetch_row(k + idx[t0 + j + PREFETCH] * row_stride, d);
      __m512 x[NV];
      for (int i = 0; i < NV; ++i) x[i] = load16(kr + 16 * i);
      for (int64_t h = 0; h < g; ++h) {
        __m512 a = _mm512_mul_ps(x[0], _mm512_loadu_ps(q + h * d));
        for (int i = 1; i < NV; ++i) a = _mm512_fmadd_ps(x[i], _mm512_loadu_ps(q + h * d + 16 * i), a);
        part[h][j] = a;
      }
    }
    for (int64_t h = 0; h < g; ++h) {
      for (int64_t j = m; j < 16; ++j) part[h][j] = _mm512_setzero_ps();
      const __m512 sums = sum16(part[h]);
      _mm512_mask_storeu_ps(scores + h * n + t0, static_cast<__mmask16>((1u << m) - 1), sums);
    }
  }
}
#endif

#include "paged_decode_bf16.h"


// One (sequence, kv head, chunk): partial max, sum and accumulators for G heads.
// q: [G, D] scaled queries (float32); idx: the chunk's n pool rows; scores: [G * n] scratch.
template <typename T>
void attend_chunk(const float* q, const T* k, const T* v, const int64_t* idx, int64_t n,
                  int64_t row_stride, int64_t head_off, int64_t g, int64_t d, float* scores,
                  float* m_out, float* l_out, float* acc) {
#if defined(__AVX512F__)
  const bool vec = d % 16 == 0;
#else
  const bool vec = false;
#endif
#if defined(__AVX512F__)
  if (g <= 16 && (d == 64 || d == 128)) {
    if (d == 64) qk_scores<T, 4>(q, k + head_off, idx, n, row_stride, g, scores);
    else qk_scores<T, 8>(q, k + head_off, idx, n, row_stride, g, scores);
  } else
#endif
  for (int64_t t = 0; t < n; ++t) {
    const T* kr = k + idx[t] * row_stride + head_off;
    for (int64_t h = 0; h < g; ++h) {
      const float* qh = q + h * d;
      float s = 0.f;
      if (vec) {
#if defined(__AVX512F__)
        __m512 sum = _mm512_setzero_ps();
        for (int64_t i = 0; i < d; i += 16) sum = _mm512_fmadd_ps(load16(kr + i), load16(qh + i), sum);
        s = _mm512_reduce_add_ps(sum);
#endif
      } else {
        for (int64_t i = 0; i < d; ++i) s += qh[i] * to_float(kr[i]);
      }
      scores[h * n + t] = s;
    }
  }
#if defined(__AVX512F__)
  for (int64_t t = 0; t < std::min(PREFETCH, n); ++t)  // the V rows the softmax will not cover
    prefetch_row(v + head_off + idx[t] * row_stride, d);
#endif
  for (int64_t h = 0; h < g; ++h) {
    softmax_partial(scores + h * n, n, m_out + h, l_out + h);
    std::fill(acc + h * d, acc + (h + 1) * d, 0.f);
  }
#if defined(__AVX512F__)
  if (d == 64) return weighted_sum_heads<T, 4>(v + head_off, idx, n, row_stride, scores, acc, g, d);
  if (d == 128) return weighted_sum_heads<T, 8>(v + head_off, idx, n, row_stride, scores, acc, g, d);
#endif
  for (int64_t t = 0; t < n; ++t) {
    const T* vr = v + idx[t] * row_stride + head_off;
    for (int64_t h = 0; h < g; ++h) {
      const float p = scores[h * n + t];
      for (int64_t i = 0; i < d; ++i) acc[h * d + i] += p * to_float(vr[i]);
    }
  }
}

template <typename T>
void run(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
         const torch::Tensor& kv_indptr, const torch::Tensor& kv_indices, double scale,
         torch::Tensor& out, torch::Tensor& lse) {
  const int64_t b = q.size(0), h = q.size(1), d = q.size(2), hkv = k_cache.size(1);
  const int64_t g = h / hkv;
  const int64_t* indptr = kv_indptr.data_ptr<int64_t>();
  const int64_t* indices = kv_indices.data_ptr<int64_t>();
  // Work items: (sequence, chunk) pairs, times kv heads.
  std::vector<int64_t> item_seq, item_start;
  std::vector<int64_t> first_item(b + 1);
  for (int64_t s = 0; s < b; ++s) {
    first_item[s] = static_cast<int64_t>(item_seq.size());
    for (int64_t t = indptr[s]; t < indptr[s + 1]; t += CHUNK) {
      item_seq.push_back(s);
      item_start.push_back(t);
    }
  }
  const int64_t chunks = static_cast<int64_t>(item_seq.size());
  first_item[b] = chunks;
  // Partials per (chunk, kv head): G maxima, G sums, G * D accumulators.
  auto part_m = torch::empty({chunks, hkv, g}, torch::kFloat32);
  auto part_l = torch::empty({chunks, hkv, g}, torch::kFloat32);
  auto part_acc = torch::empty({chunks, hkv, g, d}, torch::kFloat32);
  const bool dp = use_dpbf16<T>(d, g);  // the vdpbf16ps chunk reads q as it is
  torch::Tensor qf = dp ? q : (q.to(torch::kFloat32) * scale).contiguous();
  const float* qp = dp ? nullptr : qf.data_ptr<float>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  float* pm = part_m.data_ptr<float>();
  float* pl = part_l.data_ptr<float>();
  float* pa = part_acc.data_ptr<float>();
  // [S, Hkv, D] with unit stride along D: slot-major or head-major (KVPool's layouts)
  const int64_t row_stride = k_cache.stride(0), head_stride = k_cache.stride(1);
  // One item per chunk, all its kv heads in turn: the chunk's rows are read front to back.
  const uint16_t* qb = reinterpret_cast<const uint16_t*>(q.data_ptr());
  at::parallel_for(0, chunks, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> scores(static_cast<size_t>(g * CHUNK));
    std::vector<uint16_t> pb(static_cast<size_t>(g * (CHUNK + 2)));
    for (int64_t c = lo; c < hi; ++c) {
      const int64_t s = item_seq[c], start = item_start[c];
      const int64_t n = std::min(CHUNK, indptr[s + 1] - start);
      for (int64_t kh = 0; kh < hkv; ++kh) {
        const int64_t w = c * hkv + kh, qoff = (s * h + kh * g) * d;
        if (dp) {
          attend_chunk_dp(qb + qoff, kp, vp, indices + start, n, row_stride, kh * head_stride, g, d,
                          static_cast<float>(scale), scores.data(), pb.data(), pm + w * g,
                          pl + w * g, pa + w * g * d);
          continue;
        }
        attend_chunk<T>(qp + qoff, kp, vp, indices + start, n, row_stride, kh * head_stride, g, d,
                        scores.data(), pm + w * g, pl + w * g, pa + w * g * d);
      }
    }
  });
  T* op = out.data_ptr<T>();
  float* lp = lse.data_ptr<float>();
  at::parallel_for(0, b * h, 16, [&](int64_t lo, int64_t hi) {
    std::vector<float> acc(static_cast<size_t>(d));
    for (int64_t w = lo; w < hi; ++w) {
      const int64_t s = w / h, head = w % h, kh = head / g, gh = head % g;
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t c = first_item[s]; c < first_item[s + 1]; ++c)
        m = std::max(m, pm[(c * hkv + kh) * g + gh]);
      float l = 0.f;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t c = first_item[s]; c < first_item[s + 1]; ++c) {
        const int64_t p = (c * hkv + kh) * g + gh;
        const float f = std::exp(pm[p] - m);
        l += f * pl[p];
        const float* a = pa + p * d;
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) acc[i] += f * a[i];
      }
      const float inv = 1.f / l;
      for (int64_t i = 0; i < d; ++i) op[w * d + i] = static_cast<T>(acc[i] * inv);
      lp[w] = m + std::log(l);
    }
  });
}

}  // namespace

std::vector<torch::Tensor> paged_decode(torch::Tensor q, torch::Tensor k_cache,
                                        torch::Tensor v_cache, torch::Tensor kv_indptr,
                                        torch::Tensor kv_indices, double scale) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 3 && v_cache.dim() == 3, "bad ranks");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() &&
                  k_cache.scalar_type() == v_cache.scalar_type(),
              "q, k_cache and v_cache need one dtype");
  TORCH_CHECK(k_cache.stride(2) == 1 && k_cache.strides() == v_cache.strides(),
              "caches need unit stride along head_dim and one layout");
  TORCH_CHECK(q.size(2) == k_cache.size(2) && q.size(2) <= MAX_D, "head_dim mismatch");
  TORCH_CHECK(q.size(1) % k_cache.size(1) == 0, "query heads must be a multiple of kv heads");
  TORCH_CHECK(kv_indptr.scalar_type() == torch::kInt64 &&
                  kv_indices.scalar_type() == torch::kInt64,
              "indices must be int64");
  TORCH_CHECK(kv_indptr.numel() == q.size(0) + 1, "kv_indptr needs B + 1 entries");
  auto qc = q.contiguous();
  auto indptr = kv_indptr.contiguous();
  auto indices = kv_indices.contiguous();
  auto out = torch::empty_like(qc);
  auto lse = torch::empty({q.size(0), q.size(1)}, torch::kFloat32);
  if (q.scalar_type() == torch::kFloat32) {
    run<float>(qc, k_cache, v_cache, indptr, indices, scale, out, lse);
  } else if (q.scalar_type() == torch::kBFloat16) {
    run<c10::BFloat16>(qc, k_cache, v_cache, indptr, indices, scale, out, lse);
  } else {
    TORCH_CHECK(false, "paged_decode supports float32 and bfloat16");
  }
  return {out, lse};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm", &rms_norm, "RMSNorm (CPU)");
  m.def("add_rms_norm", &add_rms_norm, "x += delta, then RMSNorm (CPU)");
  m.def("rope_", &rope_, "rotary embedding in place (CPU)");
  m.def("silu_mul", &silu_mul, "silu(gate) * up (CPU)");
  m.def("paged_decode", &paged_decode, "paged decode attention (CPU)");
  m.def("paged_extend", &paged_extend, "paged prefill/extend attention, bfloat16 (CPU)");
  m.def("paged_extend_supported", &paged_extend_supported, "whether paged_extend was built for d");
  m.def("int4_dequantize", &int4_dequantize, "int4 kernel-layout weight -> bfloat16 (CPU)");
  m.def("int4_mm", &int4_mm, "x @ W.T for an int4 kernel-layout weight, few rows of x (CPU)");
  m.def("int8_mm", &int8_mm, "x @ (q * scale).T for an int8 [N, K] weight (CPU)");
  m.def("int8_mm_supported", &int8_mm_supported, "whether int8_mm was built here");
  m.def("int4_mm_supported", &int4_mm_supported, "whether int4_mm was built here");
  m.def("int4_mm_q8", &int4_mm_q8, "x @ W.T for an int4 weight, x quantized to int8 (CPU)");
  m.def("int4_mm_q8_supported", &int4_mm_q8_supported, "whether int4_mm_q8 was built here");
  bind_decode_stack(m);
}
