// y = x @ W.T for many rows of x (prefill) and an int4 weight in the layout of int4_mm.cpp,
// with x quantized to int8 per row and group of G inputs (llama.cpp's Q8 activations) so
// that the products are summed exactly in int32 by vpdpbusd: 64 multiply-adds an
// instruction, twice vdpbf16ps's.
//
// packed: [N, K/2] uint8, output rows in blocks of 64; for input k, byte j of a block holds
// row j (low nibble) and row j + 32 (high nibble). scales_zeros: [K/G, N, 2] bfloat16,
// w = (q - 8) * scale + zero. x: [M, K] bfloat16. Returns y [M, N] bfloat16.
//
// Activations: per row and group, sa = max|x| / 127 and xq = round(x / sa) in [-127, 127],
// so x ~ sa * xq (a relative error of ~1/254 of the group's largest value). Then
//   y[m, n] = sum_g sa[m, g] * (scale[n, g] * sum_k xq * q + off[n, g] * sum_k xq)
// with off = zero - 8 * scale. sum_k xq * q is exact in int32 (|xq * q| <= 127 * 15);
// each row's output depends on that row alone, whatever the other rows of the batch.
//
// Tiles: half h of a block is rows 16h..16h+15 (low nibbles) and 32+16h..32+16h+15 (high).
// One vpermt2b over the 128 bytes of inputs kk..kk+3 gives dword lane r = the four bytes
// of row 16h + r; masking the nibbles makes the u8 weights of both row sets, and each of
// ROWS rows of xq adds its broadcast four bytes into two int32 accumulators per step.
// Needs AVX512-VNNI, AVX512-VBMI and AVX512-BF16 (`int4_mm_q8_supported()`).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX512VNNI__) && defined(__AVX512VBMI__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define RADIXLM_INT4_MM_Q8 1
#endif

#include <algorithm>
#include <cstring>

bool int4_mm_q8_supported() {
#ifdef RADIXLM_INT4_MM_Q8
  return true;
#else
  return false;
#endif
}

#ifdef RADIXLM_INT4_MM_Q8
namespace {

constexpr int ROWS = 6;          // rows of x per pass over a tile: 24 accumulators
constexpr int64_t M_CHUNK = 48;  // rows of x per task (the weight tile is reread per chunk)
constexpr int64_t MAX_GROUP = 256;

// vpermt2b index for half h: dword lane r = byte 16h + r of inputs kk, kk+1, kk+2, kk+3
__m512i quad_index(int h) {
  alignas(64) uint8_t idx[64];
  for (int r = 0; r < 16; ++r)
    for (int t = 0; t < 4; ++t) idx[4 * r + t] = static_cast<uint8_t>(32 * t + 16 * h + r);
  return _mm512_load_si512(idx);
}

// xq [M, K] = round(x / sa); sa [M, K/G] = max|x| / 127 and xsum [M, K/G] = sa * sum(xq),
// per group. G % 16 == 0, G <= MAX_GROUP.
void quantize_rows(const uint16_t* x, int64_t m, int64_t k, int64_t group, int8_t* xq,
                   float* sa, float* xsum) {
  const int64_t groups = k / group, vecs = group / 16;
  at::parallel_for(0, m, 16, [&](int64_t lo, int64_t hi) {
    __m512 v[MAX_GROUP / 16];
    for (int64_t r = lo; r < hi; ++r)
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t base = r * k + g * group;
        __m512 amax = _mm512_setzero_ps();
        for (int64_t i = 0; i < vecs; ++i) {  // bfloat16 -> float32: the bits shifted up
          const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + base + 16 * i));
          v[i] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
          amax = _mm512_max_ps(amax, _mm512_abs_ps(v[i]));
        }
        const float a = _mm512_reduce_max_ps(amax);
        const __m512 inv = _mm512_set1_ps(a > 0.f ? 127.f / a : 0.f);
        __m512i sum = _mm512_setzero_si512();
        for (int64_t i = 0; i < vecs; ++i) {
          const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v[i], inv));  // nearest, even
          sum = _mm512_add_epi32(sum, q);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + base + 16 * i), _mm512_cvtepi32_epi8(q));
        }
        sa[r * groups + g] = a / 127.f;
        xsum[r * groups + g] = a / 127.f * static_cast<float>(_mm512_reduce_add_epi32(sum));
      }
  });
}

// The 2 x 16 outputs of one half tile for rows [0, MR) of xq, sa, xsum (row strides k,
// groups, groups) into y (row stride n). wb: the block's bytes; sz: scales_zeros at the
// half's first row of group 0.
template <int MR>
void tile_rows(const uint8_t* wb, const uint16_t* sz, int64_t n, const int8_t* xq,
               const float* sa, const float* xsum, int64_t k, int64_t group, uint16_t* y,
               __m512i idx) {
  const __m512i nibble = _mm512_set1_epi8(0x0F), high = _mm512_set1_epi32(0xFFFF0000);
  const int64_t groups = k / group;
  __m512 out[MR][2];
  for (int m = 0; m < MR; ++m) out[m][0] = out[m][1] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i acc[MR][2];
    for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_si512();
    for (int64_t kk = g * group; kk < (g + 1) * group; kk += 4) {
      const __m512i p = _mm512_permutex2var_epi8(_mm512_loadu_si512(wb + kk * 32), idx,
                                                 _mm512_loadu_si512(wb + kk * 32 + 64));
      const __m512i lo = _mm512_and_si512(p, nibble);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(p, 4), nibble);
      for (int m = 0; m < MR; ++m) {
        int32_t quad;
        std::memcpy(&quad, xq + m * k + kk, 4);
        const __m512i a = _mm512_set1_epi32(quad);
        acc[m][0] = _mm512_dpbusd_epi32(acc[m][0], lo, a);
        acc[m][1] = _mm512_dpbusd_epi32(acc[m][1], hi, a);
      }
    }
    // dword lane r of the 16 (scale, zero) pairs: scale in the low half, zero in the high
    const uint16_t* s = sz + g * n * 2;
    __m512 sc[2], off[2];
    for (int j = 0; j < 2; ++j) {
      const __m512i pairs = _mm512_loadu_si512(s + 64 * j);
      sc[j] = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
      off[j] = _mm512_fnmadd_ps(_mm512_set1_ps(8.f), sc[j],
                                _mm512_castsi512_ps(_mm512_and_si512(pairs, high)));
    }
    for (int m = 0; m < MR; ++m) {
      const __m512 sv = _mm512_set1_ps(sa[m * groups + g]);
      const __m512 xs = _mm512_set1_ps(xsum[m * groups + g]);
      for (int j = 0; j < 2; ++j) {
        out[m][j] = _mm512_fmadd_ps(off[j], xs, out[m][j]);
        out[m][j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[m][j]), sv), sc[j],
                                    out[m][j]);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 2; ++j)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + m * n + 32 * j),
                          (__m256i)_mm512_cvtneps_pbh(out[m][j]));
}

using TileFn = void (*)(const uint8_t*, const uint16_t*, int64_t, const int8_t*, const float*,
                        const float*, int64_t, int64_t, uint16_t*, __m512i);
constexpr TileFn TILES[ROWS + 1] = {nullptr, tile_rows<1>, tile_rows<2>, tile_rows<3>,
                                    tile_rows<4>, tile_rows<5>, tile_rows<6>};

}  // namespace
#endif

torch::Tensor int4_mm_q8(torch::Tensor x, torch::Tensor packed, torch::Tensor scales_zeros,
                         int64_t group) {
#ifdef RADIXLM_INT4_MM_Q8
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kBFloat16, "x must be [M, K] bfloat16");
  const int64_t m = x.size(0), k = x.size(1), n = scales_zeros.size(1), groups = k / group;
  TORCH_CHECK(n % 64 == 0 && group % 16 == 0 && group <= MAX_GROUP && k % group == 0,
              "unsupported int4 shape");
  TORCH_CHECK(packed.numel() == n * k / 2 && packed.is_contiguous(), "bad packed weight");
  TORCH_CHECK(scales_zeros.scalar_type() == torch::kBFloat16 && scales_zeros.is_contiguous() &&
                  scales_zeros.size(0) == groups,
              "bad scales_zeros");
  auto xc = x.contiguous();
  auto xq = torch::empty({m, k}, torch::kInt8);
  auto sa = torch::empty({m, groups}, torch::kFloat32);
  auto xsum = torch::empty({m, groups}, torch::kFloat32);
  quantize_rows(reinterpret_cast<const uint16_t*>(xc.data_ptr()), m, k, group,
                xq.data_ptr<int8_t>(), sa.data_ptr<float>(), xsum.data_ptr<float>());
  auto y = torch::empty({m, n}, x.options());
  const uint8_t* w = reinterpret_cast<const uint8_t*>(packed.data_ptr());
  const uint16_t* szp = reinterpret_cast<const uint16_t*>(scales_zeros.data_ptr());
  const int8_t* xqp = xq.data_ptr<int8_t>();
  const float* sap = sa.data_ptr<float>();
  const float* xsp = xsum.data_ptr<float>();
  uint16_t* yp = reinterpret_cast<uint16_t*>(y.data_ptr());
  const __m512i idx[2] = {quad_index(0), quad_index(1)};
  const int64_t halves = n / 32, chunks = (m + M_CHUNK - 1) / M_CHUNK;
  // tasks: (chunk of rows, half tile); consecutive tasks share the chunk's rows of xq
  at::parallel_for(0, halves * chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t half = t % halves, chunk = t / halves, h = half % 2;
      const int64_t col = (half / 2) * 64 + 16 * h;  // the half's first output row
      const uint8_t* wb = w + (half / 2) * 64 * k / 2;
      const int64_t end = std::min(m, (chunk + 1) * M_CHUNK);
      for (int64_t m0 = chunk * M_CHUNK; m0 < end; m0 += ROWS)
        TILES[std::min<int64_t>(ROWS, end - m0)](wb, szp + col * 2, n, xqp + m0 * k,
                                                 sap + m0 * groups, xsp + m0 * groups, k,
                                                 group, yp + m0 * n + col, idx[h]);
    }
  });
  return y;
#else
  TORCH_CHECK(false, "int4_mm_q8 was built without AVX512-VNNI, AVX512-VBMI and AVX512-BF16");
#endif
}
