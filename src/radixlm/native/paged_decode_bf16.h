// The vdpbf16ps chunk of paged_decode.cpp (included there, inside its namespace, after the
// helpers it uses: PREFETCH, prefetch_row, sum16, softmax_partial; part of the build key).
//
// On a bfloat16 pool with AVX512-BF16, d = 32 * NB: vdpbf16ps multiplies bfloat16 pairs
// exactly and adds in float32, so K and V are never widened to float32; the probabilities
// are rounded to bfloat16 for the V sum, as flash-attention kernels do. With all K/V in
// cache this took a batch-32 step over 1,000 tokens from ~22 to ~17 ms; from DRAM the
// step stays bound by reading K/V (~50 ms either way, benchmarks/epyc_zen4.md).
#pragma once

#if defined(__AVX512BF16__)
// scores[h * n + t] = scale * (q_h . k_row(t)), q unscaled bfloat16 [G, D] (its products
// with K are exact; only the float32 sums differ from the widened path).
template <int NB>
void qk_scores_bf16(const uint16_t* q, const uint16_t* k, const int64_t* idx, int64_t n,
                    int64_t row_stride, int64_t g, float scale, float* scores) {
  constexpr int MAX_G = 16;
  __m512 part[MAX_G][16];
  const __m512 sv = _mm512_set1_ps(scale);
  for (int64_t t0 = 0; t0 < n; t0 += 16) {
    const int64_t m = std::min<int64_t>(16, n - t0);
    for (int64_t j = 0; j < m; ++j) {
      const uint16_t* kr = k + idx[t0 + j] * row_stride;
      if (t0 + j + PREFETCH < n) prefetch_row(k + idx[t0 + j + PREFETCH] * row_stride, 32 * NB);
      __m512bh x[NB];
      for (int i = 0; i < NB; ++i) x[i] = (__m512bh)_mm512_loadu_si512(kr + 32 * i);
      for (int64_t h = 0; h < g; ++h) {
        __m512 a = _mm512_setzero_ps();
        for (int i = 0; i < NB; ++i)
          a = _mm512_dpbf16_ps(a, x[i], (__m512bh)_mm512_loadu_si512(q + h * 32 * NB + 32 * i));
        part[h][j] = a;
      }
    }
    for (int64_t h = 0; h < g; ++h) {
      for (int64_t j = m; j < 16; ++j) part[h][j] = _mm512_setzero_ps();
      const __m512 sums = _mm512_mul_ps(sum16(part[h]), sv);
      _mm512_mask_storeu_ps(scores + h * n + t0, static_cast<__mmask16>((1u << m) - 1), sums);
    }
  }
}

// acc[h] (h < HB, [D] float32) = sum_t p[h * ps + t] * v_row(t), with p the probabilities
// rounded to bfloat16 ([HB][ps], ps >= n even, p = 0 past n). Rows t, t + 1 are interleaved
// into (v[t][i], v[t + 1][i]) pairs, one vdpbf16ps per 16 dimensions per head; the pairs'
// dimension order (within 128-bit lanes, low then high halves) is undone at the end.
template <int NB, int HB>
void weighted_sum_bf16(const uint16_t* v, const int64_t* idx, int64_t n, int64_t row_stride,
                       const uint16_t* p, int64_t ps, float* acc) {
  __m512 a[HB][2 * NB];
  for (int h = 0; h < HB; ++h)
    for (int j = 0; j < 2 * NB; ++j) a[h][j] = _mm512_setzero_ps();
  for (int64_t t = 0; t < n; t += 2) {
    const uint16_t* r0 = v + idx[t] * row_stride;
    const uint16_t* r1 = t + 1 < n ? v + idx[t + 1] * row_stride : r0;  // its p is 0
    if (t + PREFETCH < n) prefetch_row(v + idx[t + PREFETCH] * row_stride, 32 * NB);
    if (t + 1 + PREFETCH < n) prefetch_row(v + idx[t + 1 + PREFETCH] * row_stride, 32 * NB);
    __m512bh x[2 * NB];
    for (int i = 0; i < NB; ++i) {
      const __m512i x0 = _mm512_loadu_si512(r0 + 32 * i), x1 = _mm512_loadu_si512(r1 + 32 * i);
      x[2 * i] = (__m512bh)_mm512_unpacklo_epi16(x0, x1);
      x[2 * i + 1] = (__m512bh)_mm512_unpackhi_epi16(x0, x1);
    }
    for (int h = 0; h < HB; ++h) {
      int32_t pair;
      std::memcpy(&pair, p + h * ps + t, sizeof(pair));
      const __m512bh w = (__m512bh)_mm512_set1_epi32(pair);
      for (int j = 0; j < 2 * NB; ++j) a[h][j] = _mm512_dpbf16_ps(a[h][j], x[j], w);
    }
  }
  // lane 4c + r of a[h][2i] is dimension 32i + 8c + r, of a[h][2i + 1] dimension 32i + 8c + 4 + r
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29,
                                           30, 31);
  for (int h = 0; h < HB; ++h)
    for (int i = 0; i < NB; ++i) {
      float* o = acc + h * 32 * NB + 32 * i;
      _mm512_storeu_ps(o, _mm512_permutex2var_ps(a[h][2 * i], first, a[h][2 * i + 1]));
      _mm512_storeu_ps(o + 16, _mm512_permutex2var_ps(a[h][2 * i], second, a[h][2 * i + 1]));
    }
}

// attend_chunk for a bfloat16 pool with d = 32 * NB and g <= 16; pb: [g][CHUNK + 2] scratch.
template <int NB>
void attend_chunk_bf16(const uint16_t* q, const uint16_t* k, const uint16_t* v,
                       const int64_t* idx, int64_t n, int64_t row_stride, int64_t g,
                       float scale, float* scores, uint16_t* pb, float* m_out, float* l_out,
                       float* acc) {
  constexpr int64_t d = 32 * NB;
  const int64_t ps = n + (n & 1);
  qk_scores_bf16<NB>(q, k, idx, n, row_stride, g, scale, scores);
  for (int64_t t = 0; t < std::min(PREFETCH, n); ++t) prefetch_row(v + idx[t] * row_stride, d);
  for (int64_t h = 0; h < g; ++h) {
    float* sh = scores + h * n;
    softmax_partial(sh, n, m_out + h, l_out + h);
    uint16_t* ph = pb + h * ps;
    int64_t t = 0;
    for (; t + 16 <= n; t += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ph + t),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(sh + t)));
    for (; t < n; ++t) {
      const c10::BFloat16 b(sh[t]);
      std::memcpy(ph + t, &b, sizeof(b));
    }
    if (n & 1) ph[n] = 0;
  }
  for (int64_t h = 0; h < g; h += 4) {
    const uint16_t* ph = pb + h * ps;
    float* ah = acc + h * d;
    switch (std::min<int64_t>(4, g - h)) {
      case 4: weighted_sum_bf16<NB, 4>(v, idx, n, row_stride, ph, ps, ah); break;
      case 3: weighted_sum_bf16<NB, 3>(v, idx, n, row_stride, ph, ps, ah); break;
      case 2: weighted_sum_bf16<NB, 2>(v, idx, n, row_stride, ph, ps, ah); break;
      default: weighted_sum_bf16<NB, 1>(v, idx, n, row_stride, ph, ps, ah); break;
    }
  }
}
#endif

// Whether `run` takes the vdpbf16ps chunk (bfloat16 pool, AVX512-BF16, d 64 or 128, g <= 16).
template <typename T>
bool use_dpbf16(int64_t d, int64_t g) {
#if defined(__AVX512BF16__)
  return std::is_same_v<T, c10::BFloat16> && (d == 64 || d == 128) && g <= 16;
#else
  return false;
#endif
}

// The vdpbf16ps chunk for d 64 or 128 (`use_dpbf16`), k and v offset to the kv head.
template <typename T>
void attend_chunk_dp(const uint16_t* q, const T* k, const T* v, const int64_t* idx, int64_t n,
                     int64_t row_stride, int64_t head_off, int64_t g, int64_t d, float scale,
                     float* scores, uint16_t* pb, float* m_out, float* l_out, float* acc) {
#if defined(__AVX512BF16__)
  const uint16_t* kb = reinterpret_cast<const uint16_t*>(k) + head_off;
  const uint16_t* vb = reinterpret_cast<const uint16_t*>(v) + head_off;
  if (d == 64)
    attend_chunk_bf16<2>(q, kb, vb, idx, n, row_stride, g, scale, scores, pb, m_out, l_out, acc);
  else
    attend_chunk_bf16<4>(q, kb, vb, idx, n, row_stride, g, scale, scores, pb, m_out, l_out, acc);
#endif
}
