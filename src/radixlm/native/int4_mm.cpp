// y = x @ W.T for a few rows of x and an int4 weight in the layout of
// aten._weight_int4pack_mm_for_cpu, reading each weight byte once for all rows.
//
// packed: [N, K/2] uint8; output rows in blocks of 64; for input k, byte j of a block
// holds row j (low nibble) and row j + 32 (high nibble), so inputs k and k + 1 of a
// block are 64 consecutive bytes. scales_zeros: [K/G, N, 2] bfloat16, w = (q - 8) *
// scale + zero per group of G inputs. x: [M, K] bfloat16. Returns y [M, N] bfloat16.
//
// Per 64 bytes (64 rows x inputs k, k + 1): one permute puts each row's two bytes side
// by side, the nibbles are masked out and widened to 16 bits with 0x43 as the high byte,
// which makes them the bfloat16 values 128 + q exactly; one vdpbf16ps per 16 rows then
// adds x[k] * (128 + q[k]) + x[k+1] * (128 + q[k+1]) in float32. At the end of a group,
// y += scale * acc + (zero - 136 * scale) * sum(x over the group): the same
// w = (q - 8) * scale + zero. Rows of x are taken ROWS at a time over one block, so a
// block's bytes are decoded once per ROWS rows and stay in L1 for the next ones.
// Needs AVX512-BF16 and AVX512-VBMI; `int4_mm_supported()` says whether it was built.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX512BF16__) && defined(__AVX512VBMI__)
#include <immintrin.h>
#define RADIXLM_INT4_MM 1
#endif

#include <algorithm>
#include <cstring>
#include <vector>

bool int4_mm_supported() {
#ifdef RADIXLM_INT4_MM
  return true;
#else
  return false;
#endif
}

#ifdef RADIXLM_INT4_MM
namespace {

constexpr int ROWS = 4;  // rows of x per pass over a block
constexpr int64_t PREFETCH_BYTES = 4096;  // weight bytes ahead (1024 and 8192 measured no faster)

// vpermb index: bytes A (input k, 0..31) and B (input k + 1, 32..63) of a block reordered
// so that unpacklo/unpackhi_epi8 with the 0x43 bytes (which work within 128-bit lanes)
// leave row r's pair in dword lane r (unpacklo: rows 0..15, unpackhi: rows 16..31).
__m512i pair_index() {
  alignas(64) uint8_t idx[64];
  for (int r = 0; r < 32; ++r) {
    const int l = r % 16, lane = l / 4, p = l % 4;
    const int pos = 16 * lane + (r < 16 ? 0 : 8) + 2 * p;
    idx[pos] = static_cast<uint8_t>(r);
    idx[pos + 1] = static_cast<uint8_t>(32 + r);
  }
  return _mm512_load_si512(idx);
}

// acc[m][j] += x[m][kk..kk+1] . (128 + q) for the 64 bytes at p (inputs kk, kk + 1).
template <int MR>
inline void pair_step(const uint8_t* p, const uint16_t* x, int64_t k, int64_t kk, __m512i perm,
                      __m512 (&acc)[MR][4]) {
  const __m512i mask = _mm512_set1_epi8(0x0F), hi43 = _mm512_set1_epi8(0x43);
  const __m512i pairs = _mm512_permutexvar_epi8(perm, _mm512_loadu_si512(p));
  const __m512i lo = _mm512_and_si512(pairs, mask);                        // rows 0..31
  const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(pairs, 4), mask);  // rows 32..63
  const __m512bh w[4] = {
      (__m512bh)_mm512_unpacklo_epi8(lo, hi43), (__m512bh)_mm512_unpackhi_epi8(lo, hi43),
      (__m512bh)_mm512_unpacklo_epi8(hi, hi43), (__m512bh)_mm512_unpackhi_epi8(hi, hi43)};
  for (int m = 0; m < MR; ++m) {
    int32_t xp;
    std::memcpy(&xp, x + m * k + kk, 4);
    const __m512bh xv = (__m512bh)_mm512_set1_epi32(xp);
    for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_dpbf16_ps(acc[m][j], w[j], xv);
  }
}

// One block of 64 output rows for rows [m0, m0 + mr) of x.
// xs: [M, K/G] float32 sums of x over each group.
template <int MR>
void block_rows(const uint8_t* wb, const uint16_t* szb, int64_t n, const uint16_t* x,
                const float* xs, int64_t k, int64_t group, uint16_t* y, __m512i perm) {
  const __m512 c136 = _mm512_set1_ps(136.0f);
  __m512 out[MR][4];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) out[m][j] = _mm512_setzero_ps();
  const int64_t groups = k / group;
  for (int64_t g = 0; g < groups; ++g) {
    __m512 acc[MR][4];
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_setzero_ps();
    for (int64_t kk = g * group; kk < (g + 1) * group; kk += 2) {
      _mm_prefetch(reinterpret_cast<const char*>(wb + kk * 32 + PREFETCH_BYTES), _MM_HINT_T0);
      pair_step<MR>(wb + kk * 32, x, k, kk, perm, acc);
    }
    // scales_zeros of this group's 64 rows: dword lane r = (scale, zero) of row r
    const uint16_t* s = szb + g * n * 2;
    for (int j = 0; j < 4; ++j) {
      const __m512i sz = _mm512_loadu_si512(s + j * 32);
      const __m512 sc = _mm512_castsi512_ps(_mm512_slli_epi32(sz, 16));
      const __m512 ze = _mm512_castsi512_ps(_mm512_and_si512(sz, _mm512_set1_epi32(0xFFFF0000)));
      const __m512 off = _mm512_fnmadd_ps(c136, sc, ze);  // zero - 136 * scale
      for (int m = 0; m < MR; ++m) {
        out[m][j] = _mm512_fmadd_ps(sc, acc[m][j], out[m][j]);
        out[m][j] = _mm512_fmadd_ps(off, _mm512_set1_ps(xs[m * groups + g]), out[m][j]);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + m * n + j * 16),
                          (__m256i)_mm512_cvtneps_pbh(out[m][j]));
}

}  // namespace
#endif

torch::Tensor int4_mm(torch::Tensor x, torch::Tensor packed, torch::Tensor scales_zeros,
                      int64_t group) {
#ifdef RADIXLM_INT4_MM
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kBFloat16, "x must be [M, K] bfloat16");
  const int64_t m = x.size(0), k = x.size(1), n = scales_zeros.size(1);
  TORCH_CHECK(n % 64 == 0 && group % 2 == 0 && k % group == 0, "unsupported int4 shape");
  TORCH_CHECK(packed.numel() == n * k / 2 && packed.is_contiguous(), "bad packed weight");
  TORCH_CHECK(scales_zeros.scalar_type() == torch::kBFloat16 && scales_zeros.is_contiguous() &&
                  scales_zeros.size(0) == k / group,
              "bad scales_zeros");
  auto xc = x.contiguous();
  auto y = torch::empty({m, n}, x.options());
  const uint8_t* w = reinterpret_cast<const uint8_t*>(packed.data_ptr());
  const uint16_t* sz = reinterpret_cast<const uint16_t*>(scales_zeros.data_ptr());
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(xc.data_ptr());
  const at::BFloat16* xb = xc.data_ptr<at::BFloat16>();
  std::vector<float> xs(m * (k / group), 0.0f);  // [M, K/G] sums of x over each group
  for (int64_t i = 0; i < m * k; ++i) xs[i / group] += static_cast<float>(xb[i]);
  const float* xsp = xs.data();
  uint16_t* yp = reinterpret_cast<uint16_t*>(y.data_ptr());
  const __m512i perm = pair_index();
  const int64_t groups = k / group;
  at::parallel_for(0, n / 64, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t nb = lo; nb < hi; ++nb) {
      const uint8_t* wb = w + nb * 64 * k / 2;
      const uint16_t* szb = sz + nb * 64 * 2;
      for (int64_t m0 = 0; m0 < m; m0 += ROWS) {
        const uint16_t* xr = xp + m0 * k;
        const float* xsr = xsp + m0 * groups;
        uint16_t* yr = yp + m0 * n + nb * 64;
        switch (std::min<int64_t>(ROWS, m - m0)) {
          case 1: block_rows<1>(wb, szb, n, xr, xsr, k, group, yr, perm); break;
          case 2: block_rows<2>(wb, szb, n, xr, xsr, k, group, yr, perm); break;
          case 3: block_rows<3>(wb, szb, n, xr, xsr, k, group, yr, perm); break;
          default: block_rows<4>(wb, szb, n, xr, xsr, k, group, yr, perm); break;
        }
      }
    }
  });
  return y;
#else
  TORCH_CHECK(false, "int4_mm was built without AVX512-BF16 and AVX512-VBMI");
#endif
}
