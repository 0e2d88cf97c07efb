// y = x @ W.T for many rows of x (prefill) and an int4 weight in the layout of int4_mm.cpp,
// with x quantized to int8 per row and group of G inputs (llama.cpp's Q8 activations) so
// that the products are summed exactly in int32 by vpdpbusd: 64 multiply-adds an
// instruction, twice vdpbf16ps's.
//
// packed: [N, K/2] uint8, output rows in blocks of 64; for input k, byte j of a block holds
// row j (low nibble) and row j + 32 (high nibble). scales_zeros: [K/G, N, 2] bfloat16,
// w = (q - 8) * scale + zero. x: [M, K] bfloat16. Returns y [M, N] bfloat16.
//
// Outliers: up to `outliers` inputs of each row above `outlier_ratio` times the row's RMS,
// the largest (ties: the lower index), are taken out before quantizing and multiplied in
// float32 against the dequantized weight column, LLM.int8()'s decomposition per row. The residual stream of a
// transformer has a few channels tens of times the others (SmolLM2: 10-30x in the
// inputs of every qkv and gate/up projection); left in, each one sets its group's
// scale and costs the other 31 inputs most of their bits.
//
// Activations: per row and group of the rest, sa = max|x| / 127 and xq = round(x / sa)
// in [-127, 127], so x ~ sa * xq (a relative error of ~1/254 of the group's largest
// value). Then
//   y[m, n] = sum_g sa[m, g] * (scale[n, g] * sum_k xq * q + off[n, g] * sum_k xq)
//           + sum_o x[m, c_o] * w[n, c_o]
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
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

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
constexpr int64_t MAX_OUTLIERS = 32;

// vpermt2b index for half h: dword lane r = byte 16h + r of inputs kk, kk+1, kk+2, kk+3
__m512i quad_index(int h) {
  alignas(64) uint8_t idx[64];
  for (int r = 0; r < 16; ++r)
    for (int t = 0; t < 4; ++t) idx[4 * r + t] = static_cast<uint8_t>(32 * t + 16 * h + r);
  return _mm512_load_si512(idx);
}

// Up to `count` entries of `row` (K float32) with |x| above `ratio` times the row's RMS,
// the largest first (ties: the lower index): their indices into oi and values into ov;
// returns how many. The count-th largest of the 16 lane-wise maxima is a floor under the
// answer (those maxima are `count` entries at least that large), so only the few entries
// above both are inserted.
int32_t select_outliers(const float* row, int64_t k, int64_t count, float ratio, int32_t* oi,
                        float* ov) {
  __m512 lanes = _mm512_setzero_ps(), squares = _mm512_setzero_ps();
  for (int64_t i0 = 0; i0 < k; i0 += 16) {
    const __m512 v = _mm512_loadu_ps(row + i0);
    lanes = _mm512_max_ps(lanes, _mm512_abs_ps(v));
    squares = _mm512_fmadd_ps(v, v, squares);
  }
  const float bar = ratio * std::sqrt(_mm512_reduce_add_ps(squares) / static_cast<float>(k));
  float lane_max[16];
  _mm512_storeu_ps(lane_max, lanes);
  float floor = 0.f;  // entries under it cannot be among the `count` largest
  if (count <= 16) {
    std::nth_element(lane_max, lane_max + count - 1, lane_max + 16, std::greater<float>());
    floor = lane_max[count - 1];
  }
  float mag[MAX_OUTLIERS];
  int64_t have = 0;
  for (int64_t i0 = 0; i0 < k; i0 += 16) {
    const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(row + i0));
    for (uint32_t bits = _mm512_cmp_ps_mask(a, _mm512_set1_ps(floor), _CMP_GE_OQ) &
                         _mm512_cmp_ps_mask(a, _mm512_set1_ps(bar), _CMP_GT_OQ);
         bits; bits &= bits - 1) {
      const int64_t i = i0 + __builtin_ctz(bits);
      const float v = std::fabs(row[i]);
      if (have == count && !(v > mag[count - 1])) continue;  // the lower index stays
      int64_t at = std::min(have, count - 1);
      while (at > 0 && mag[at - 1] < v) --at;  // after equal ones: the lower index first
      for (int64_t j = std::min(have, count - 1); j > at; --j) {
        mag[j] = mag[j - 1];
        oi[j] = oi[j - 1];
      }
      mag[at] = v;
      oi[at] = static_cast<int32_t>(i);
      have = std::min(have + 1, count);
    }
  }
  for (int64_t j = 0; j < have; ++j) ov[j] = row[oi[j]];
  return static_cast<int32_t>(have);
}

// xq [M, K] = round(x / sa); sa [M, K/G] = max|x| / 127 and xsum [M, K/G] = sa * sum(xq),
// per group, after each row's outliers (on [M] of them; oi, their groups og and ov:
// [M, outliers]) are set to zero. G % 16 == 0, G <= MAX_GROUP, K % 16 == 0.
void quantize_rows(const uint16_t* x, int64_t m, int64_t k, int64_t group, int64_t outliers,
                   float ratio, int8_t* xq, float* sa, float* xsum, int32_t* oi, int32_t* og,
                   float* ov, int32_t* on) {
  const int64_t groups = k / group, vecs = group / 16;
  at::parallel_for(0, m, 16, [&](int64_t lo, int64_t hi) {
    std::vector<float> row(k);
    for (int64_t r = lo; r < hi; ++r) {
      for (int64_t i = 0; i < k; i += 16) {  // bfloat16 -> float32: the bits shifted up
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + r * k + i));
        _mm512_storeu_ps(row.data() + i,
                         _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16)));
      }
      on[r] = outliers > 0 ? select_outliers(row.data(), k, outliers, ratio, oi + r * outliers,
                                              ov + r * outliers)
                           : 0;
      for (int64_t j = r * outliers; j < r * outliers + on[r]; ++j) {
        row[oi[j]] = 0.f;
        og[j] = static_cast<int32_t>(oi[j] / group);
      }
      for (int64_t g = 0; g < groups; ++g) {
        const float* v = row.data() + g * group;
        __m512 amax = _mm512_setzero_ps();
        for (int64_t i = 0; i < vecs; ++i)
          amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(v + 16 * i)));
        const float a = _mm512_reduce_max_ps(amax);
        const __m512 inv = _mm512_set1_ps(a > 0.f ? 127.f / a : 0.f);
        __m512i sum = _mm512_setzero_si512();
        for (int64_t i = 0; i < vecs; ++i) {
          const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(v + 16 * i), inv));
          sum = _mm512_add_epi32(sum, q);  // nearest, ties to even
          _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + r * k + g * group + 16 * i),
                           _mm512_cvtepi32_epi8(q));
        }
        sa[r * groups + g] = a / 127.f;
        xsum[r * groups + g] = a / 127.f * static_cast<float>(_mm512_reduce_add_epi32(sum));
      }
    }
  });
}

// Lane r of sc / off: scale and zero - 8 * scale of output rows 16 at s (16 (scale, zero)
// bfloat16 pairs: scale in the low half of each dword, zero in the high).
inline void scale_offset(const uint16_t* s, __m512& sc, __m512& off) {
  const __m512i pairs = _mm512_loadu_si512(s);
  sc = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
  off = _mm512_fnmadd_ps(_mm512_set1_ps(8.f), sc,
                         _mm512_castsi512_ps(_mm512_and_si512(pairs, _mm512_set1_epi32(0xFFFF0000))));
}

// The rows' quantized inputs (xq, sa, xsum) and outliers for one half tile: row m has
// on[m] outliers, the o-th ov[m, o] times the weights of input oi[m, o] (in group og[m, o]).
struct Rows {
  const int8_t* xq;
  const float *sa, *xsum;
  const int32_t *oi, *og, *on;
  const float* ov;
  int64_t k, group, outliers;
};

// The 2 x 16 outputs of half h of a tile for rows [0, MR) of `x` into y (row stride n).
// wb: the block's bytes; sz: scales_zeros at the half's first row of group 0.
template <int MR>
void tile_rows(const uint8_t* wb, const uint16_t* sz, int64_t n, const Rows& x, uint16_t* y,
               int h, __m512i idx) {
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const int8_t* xq = x.xq;
  const int64_t k = x.k, group = x.group;
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
    __m512 sc[2], off[2];
    for (int j = 0; j < 2; ++j) scale_offset(sz + g * n * 2 + 64 * j, sc[j], off[j]);
    for (int m = 0; m < MR; ++m) {
      const __m512 sv = _mm512_set1_ps(x.sa[m * groups + g]);
      const __m512 xs = _mm512_set1_ps(x.xsum[m * groups + g]);
      for (int j = 0; j < 2; ++j) {
        out[m][j] = _mm512_fmadd_ps(off[j], xs, out[m][j]);
        out[m][j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[m][j]), sv), sc[j],
                                    out[m][j]);
      }
    }
  }
  // the outliers, in float32: byte 16h + r of input c holds the weights of rows r (low
  // nibble) and 32 + r (high) of this half
  for (int m = 0; m < MR; ++m)
    for (int64_t o = 0; o < x.on[m]; ++o) {
      const int64_t i = m * x.outliers + o;
      const __m512 v = _mm512_set1_ps(x.ov[i]);
      const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(
          reinterpret_cast<const __m128i*>(wb + static_cast<int64_t>(x.oi[i]) * 32 + 16 * h)));
      const __m512i q[2] = {_mm512_and_si512(b, _mm512_set1_epi32(15)), _mm512_srli_epi32(b, 4)};
      const uint16_t* s = sz + x.og[i] * n * 2;
      for (int j = 0; j < 2; ++j) {
        __m512 sc, off;
        scale_offset(s + 64 * j, sc, off);
        out[m][j] = _mm512_fmadd_ps(v, _mm512_fmadd_ps(_mm512_cvtepi32_ps(q[j]), sc, off),
                                    out[m][j]);
      }
    }
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 2; ++j)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + m * n + 32 * j),
                          (__m256i)_mm512_cvtneps_pbh(out[m][j]));
}

using TileFn = void (*)(const uint8_t*, const uint16_t*, int64_t, const Rows&, uint16_t*, int,
                        __m512i);
constexpr TileFn TILES[ROWS + 1] = {nullptr, tile_rows<1>, tile_rows<2>, tile_rows<3>,
                                    tile_rows<4>, tile_rows<5>, tile_rows<6>};

}  // namespace
#endif

torch::Tensor int4_mm_q8(torch::Tensor x, torch::Tensor packed, torch::Tensor scales_zeros,
                         int64_t group, int64_t outliers, double outlier_ratio) {
#ifdef RADIXLM_INT4_MM_Q8
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kBFloat16, "x must be [M, K] bfloat16");
  const int64_t m = x.size(0), k = x.size(1), n = scales_zeros.size(1), groups = k / group;
  TORCH_CHECK(n % 64 == 0 && group % 16 == 0 && group <= MAX_GROUP && k % group == 0,
              "unsupported int4 shape");
  TORCH_CHECK(outliers >= 0 && outliers <= std::min(MAX_OUTLIERS, k) && outlier_ratio >= 0,
              "outliers: 0 to 32, outlier_ratio >= 0");
  TORCH_CHECK(packed.numel() == n * k / 2 && packed.is_contiguous(), "bad packed weight");
  TORCH_CHECK(scales_zeros.scalar_type() == torch::kBFloat16 && scales_zeros.is_contiguous() &&
                  scales_zeros.size(0) == groups,
              "bad scales_zeros");
  auto xc = x.contiguous();
  // scratch kept between calls: with fresh tensors and an aten division per call, decode
  // steps on this kernel lost to int4_mm (benchmarks/epyc_zen4.md)
  thread_local std::vector<int8_t> xq;
  thread_local std::vector<float> sa, xsum, ov;
  thread_local std::vector<int32_t> oi, og, on;
  xq.resize(m * k), sa.resize(m * groups), xsum.resize(m * groups);
  oi.resize(m * outliers), og.resize(m * outliers), ov.resize(m * outliers), on.resize(m);
  quantize_rows(reinterpret_cast<const uint16_t*>(xc.data_ptr()), m, k, group, outliers,
                static_cast<float>(outlier_ratio), xq.data(), sa.data(), xsum.data(),
                oi.data(), og.data(), ov.data(), on.data());
  auto y = torch::empty({m, n}, x.options());
  const uint8_t* w = reinterpret_cast<const uint8_t*>(packed.data_ptr());
  const uint16_t* szp = reinterpret_cast<const uint16_t*>(scales_zeros.data_ptr());
  uint16_t* yp = reinterpret_cast<uint16_t*>(y.data_ptr());
  const Rows all{xq.data(), sa.data(), xsum.data(), oi.data(), og.data(), on.data(),
                 ov.data(), k, group, outliers};
  const __m512i idx[2] = {quad_index(0), quad_index(1)};
  const int64_t halves = n / 32, chunks = (m + M_CHUNK - 1) / M_CHUNK;
  // tasks: (chunk of rows, half tile); consecutive tasks share the chunk's rows of xq
  at::parallel_for(0, halves * chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t half = t % halves, chunk = t / halves, h = half % 2;
      const int64_t col = (half / 2) * 64 + 16 * h;  // the half's first output row
      const uint8_t* wb = w + (half / 2) * 64 * k / 2;
      const int64_t end = std::min(m, (chunk + 1) * M_CHUNK);
      for (int64_t m0 = chunk * M_CHUNK; m0 < end; m0 += ROWS) {
        const Rows rows{all.xq + m0 * k, all.sa + m0 * groups, all.xsum + m0 * groups,
                        all.oi + m0 * outliers, all.og + m0 * outliers, all.on + m0,
                        all.ov + m0 * outliers, k, group, outliers};
        TILES[std::min<int64_t>(ROWS, end - m0)](wb, szp + col * 2, n, rows, yp + m0 * n + col,
                                                 static_cast<int>(h), idx[h]);
      }
    }
  });
  return y;
#else
  TORCH_CHECK(false, "int4_mm_q8 was built without AVX512-VNNI, AVX512-VBMI and AVX512-BF16");
#endif
}
