// y = x @ (q * scale).T for a row-major int8 weight (the output head).
//
// x: [M, K] bfloat16; q: [N, K] int8; scale: [N] bfloat16. Returns y [M, N] bfloat16.
//
// Up to SMALL_ROWS rows of x (decode at a small batch, bound by reading the weight): each
// weight row is read once for all M rows: 16 int8 at a time are widened to float32 (exact)
// and multiplied into M float32 accumulators against x in float32 (exact), so the only
// roundings are float32 sums and the output. Each row's lanes are summed once at its end.
//
// More rows (bound by arithmetic), with AVX512-BF16 and K % 32 == 0: each block of
// BLOCK_N weight rows is widened once to bfloat16 (exact: |q| <= 127) into an L1-resident
// buffer, then every 4 x 4 tile of (x rows, weight rows) runs vdpbf16ps along K into 16
// float32 accumulators, which one transpose-and-add tree sums into the tile's 16 outputs.
// Without AVX512-BF16 the float32 path runs over the rows 8 at a time.
//
// Rows of the weight are split over threads in blocks. Needs AVX-512
// (`int8_mm_supported()`); elsewhere torch's kernel runs.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define RADIXLM_INT8_MM 1
#endif
#include "vec.h"

#include <algorithm>
#include <cstring>
#include <vector>

constexpr int64_t SMALL_ROWS = 8;

bool int8_mm_supported() {
#ifdef RADIXLM_INT8_MM
  return true;
#else
  return false;
#endif
}

#ifdef RADIXLM_INT8_MM
namespace {

constexpr int64_t PREFETCH_BYTES = 2048;  // weight bytes ahead of the row being read

// y[m][n] for rows n of q (K % 16 == 0), MR rows of x as float32 ([MR][K]).
template <int MR>
void rows_of(const int8_t* q, const float* xf, int64_t k, int64_t n0, int64_t n1,
             const at::BFloat16* scale, at::BFloat16* y, int64_t n) {
  for (int64_t r = n0; r < n1; ++r) {
    const int8_t* w = q + r * k;
    __m512 acc[MR];
    for (int m = 0; m < MR; ++m) acc[m] = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 16) {
      _mm_prefetch(reinterpret_cast<const char*>(w + i + PREFETCH_BYTES), _MM_HINT_T0);
      const __m512 wv = _mm512_cvtepi32_ps(
          _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i))));
      for (int m = 0; m < MR; ++m) acc[m] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xf + m * k + i), acc[m]);
    }
    const float s = static_cast<float>(scale[r]);
    for (int m = 0; m < MR; ++m) y[m * n + r] = static_cast<at::BFloat16>(_mm512_reduce_add_ps(acc[m]) * s);
  }
}


#ifdef __AVX512BF16__
constexpr int64_t BLOCK_N = 16;  // weight rows widened to bfloat16 at a time (K = 576: 18 KiB)
constexpr int TILE = 4;          // x rows and weight rows per tile

// wb[r][0..K) = q[n0 + r][0..K) as bfloat16 for r < rows; rows..BLOCK_N are zero.
void widen_block(const int8_t* q, int64_t k, int64_t n0, int64_t rows, uint16_t* wb) {
  for (int64_t r = 0; r < BLOCK_N; ++r) {
    uint16_t* dst = wb + r * k;
    if (r >= rows) {
      std::memset(dst, 0, k * sizeof(uint16_t));
      continue;
    }
    const int8_t* src = q + (n0 + r) * k;
    for (int64_t i = 0; i < k; i += 32) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
      const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b)));
      const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1)));
      _mm512_storeu_si512(dst + i, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

// y[m][n0 + j] for the block in wb (rows valid of BLOCK_N), every row m of xb ([mp][K]
// bfloat16, mp % TILE == 0, rows >= m zero).
void block_rows(const uint16_t* xb, const uint16_t* wb, int64_t k, int64_t m, int64_t mp,
                int64_t n0, int64_t valid, const at::BFloat16* scale, at::BFloat16* y,
                int64_t n) {
  for (int64_t j0 = 0; j0 < BLOCK_N; j0 += TILE) {
    if (j0 >= valid) break;
    alignas(64) float sc[16];
    for (int i = 0; i < TILE; ++i)
      for (int j = 0; j < TILE; ++j)
        sc[i * TILE + j] = j0 + j < valid ? static_cast<float>(scale[n0 + j0 + j]) : 0.f;
    const __m512 scv = _mm512_load_ps(sc);
    for (int64_t i0 = 0; i0 < mp; i0 += TILE) {
      __m512 acc[TILE * TILE];
      for (auto& a : acc) a = _mm512_setzero_ps();
      for (int64_t kk = 0; kk < k; kk += 32) {
        __m512bh xv[TILE], wv[TILE];
        for (int i = 0; i < TILE; ++i)
          xv[i] = (__m512bh)_mm512_loadu_si512(xb + (i0 + i) * k + kk);
        for (int j = 0; j < TILE; ++j)
          wv[j] = (__m512bh)_mm512_loadu_si512(wb + (j0 + j) * k + kk);
        for (int i = 0; i < TILE; ++i)
          for (int j = 0; j < TILE; ++j)
            acc[i * TILE + j] = _mm512_dpbf16_ps(acc[i * TILE + j], xv[i], wv[j]);
      }
      alignas(64) at::BFloat16 out[16];
      _mm256_store_si256(reinterpret_cast<__m256i*>(out),
                         (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(sum16(acc), scv)));
      for (int i = 0; i < TILE && i0 + i < m; ++i)
        for (int j = 0; j < TILE && j0 + j < valid; ++j)
          y[(i0 + i) * n + n0 + j0 + j] = out[i * TILE + j];
    }
  }
}

void tiled(const torch::Tensor& x, const int8_t* q, const at::BFloat16* sp, at::BFloat16* yp,
           int64_t m, int64_t k, int64_t n) {
  const int64_t mp = (m + TILE - 1) / TILE * TILE;
  auto xb = torch::zeros({mp, k}, x.options());
  xb.narrow(0, 0, m).copy_(x);
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(xb.data_ptr<at::BFloat16>());
  const int64_t blocks = (n + BLOCK_N - 1) / BLOCK_N;
  at::parallel_for(0, blocks, 16, [&](int64_t lo, int64_t hi) {
    std::vector<uint16_t> wb(BLOCK_N * k);
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t n0 = b * BLOCK_N, valid = std::min(BLOCK_N, n - n0);
      widen_block(q, k, n0, valid, wb.data());
      block_rows(xp, wb.data(), k, m, mp, n0, valid, sp, yp, n);
    }
  });
}
#endif

}  // namespace
#endif

torch::Tensor int8_mm(torch::Tensor x, torch::Tensor q, torch::Tensor scale) {
#ifdef RADIXLM_INT8_MM
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kBFloat16, "x must be [M, K] bfloat16");
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == torch::kInt8 && q.is_contiguous(),
              "q must be a contiguous [N, K] int8 tensor");
  TORCH_CHECK(scale.scalar_type() == torch::kBFloat16 && scale.is_contiguous() &&
                  scale.numel() == q.size(0),
              "scale must be [N] bfloat16");
  const int64_t m = x.size(0), k = x.size(1), n = q.size(0);
  TORCH_CHECK(q.size(1) == k && k % 16 == 0, "int8_mm needs K % 16 == 0 and matching K");
  TORCH_CHECK(m >= 1, "int8_mm needs at least one row of x");
  auto y = torch::empty({m, n}, x.options());
  const int8_t* qp = q.data_ptr<int8_t>();
  const at::BFloat16* sp = scale.data_ptr<at::BFloat16>();
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
#ifdef __AVX512BF16__
  if (m > SMALL_ROWS && k % 32 == 0) {
    tiled(x, qp, sp, yp, m, k, n);
    return y;
  }
#endif
  auto xf = x.to(torch::kFloat32).contiguous();
  const float* xp = xf.data_ptr<float>();
  for (int64_t m0 = 0; m0 < m; m0 += SMALL_ROWS) {  // SMALL_ROWS rows of x per pass
    const int64_t rows = std::min(SMALL_ROWS, m - m0);
    const float* xr = xp + m0 * k;
    at::BFloat16* yr = yp + m0 * n;
    at::parallel_for(0, n, 256, [&](int64_t lo, int64_t hi) {
      switch (rows) {
        case 1: rows_of<1>(qp, xr, k, lo, hi, sp, yr, n); break;
        case 2: rows_of<2>(qp, xr, k, lo, hi, sp, yr, n); break;
        case 3: rows_of<3>(qp, xr, k, lo, hi, sp, yr, n); break;
        case 4: rows_of<4>(qp, xr, k, lo, hi, sp, yr, n); break;
        case 5: rows_of<5>(qp, xr, k, lo, hi, sp, yr, n); break;
        case 6: rows_of<6>(qp, xr, k, lo, hi, sp, yr, n); break;
        case 7: rows_of<7>(qp, xr, k, lo, hi, sp, yr, n); break;
        default: rows_of<8>(qp, xr, k, lo, hi, sp, yr, n); break;
      }
    });
  }
  return y;
#else
  TORCH_CHECK(false, "int8_mm was built without AVX-512");
#endif
}
