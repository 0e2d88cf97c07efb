// y = x @ (q * scale).T for a few rows of x and a row-major int8 weight (the output head).
//
// x: [M, K] bfloat16, M <= INT8_MM_MAX_ROWS; q: [N, K] int8; scale: [N] bfloat16.
// Returns y [M, N] bfloat16. Each weight row is read once for all M rows of x: 16 int8
// at a time are widened to float32 (exact) and multiplied into M float32 accumulators
// against x in float32 (exact), so the only roundings are float32 sums and the output.
// Rows of the weight are split over threads in blocks; each row's lanes are summed once
// at its end. Needs AVX-512 (`int8_mm_supported()`); elsewhere torch's kernel runs.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define RADIXLM_INT8_MM 1
#endif

#include <vector>

constexpr int64_t INT8_MM_MAX_ROWS = 8;

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
  TORCH_CHECK(m >= 1 && m <= INT8_MM_MAX_ROWS, "int8_mm takes 1 to 8 rows of x");
  auto xf = x.to(torch::kFloat32).contiguous();
  auto y = torch::empty({m, n}, x.options());
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* xp = xf.data_ptr<float>();
  const at::BFloat16* sp = scale.data_ptr<at::BFloat16>();
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  at::parallel_for(0, n, 256, [&](int64_t lo, int64_t hi) {
    switch (m) {
      case 1: rows_of<1>(qp, xp, k, lo, hi, sp, yp, n); break;
      case 2: rows_of<2>(qp, xp, k, lo, hi, sp, yp, n); break;
      case 3: rows_of<3>(qp, xp, k, lo, hi, sp, yp, n); break;
      case 4: rows_of<4>(qp, xp, k, lo, hi, sp, yp, n); break;
      case 5: rows_of<5>(qp, xp, k, lo, hi, sp, yp, n); break;
      case 6: rows_of<6>(qp, xp, k, lo, hi, sp, yp, n); break;
      case 7: rows_of<7>(qp, xp, k, lo, hi, sp, yp, n); break;
      default: rows_of<8>(qp, xp, k, lo, hi, sp, yp, n); break;
    }
  });
  return y;
#else
  TORCH_CHECK(false, "int8_mm was built without AVX-512");
#endif
}
