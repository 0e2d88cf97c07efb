// Paged attention for new tokens over cached and new keys (prefill and extend), bfloat16,
// AVX512-BF16; keys and values are read from the pool rows in place.
//
// Sequence b has E_b = qo_indptr[b+1] - qo_indptr[b] new queries (rows of q) and
// L_b = kv_indptr[b+1] - kv_indptr[b] keys at the pool rows kv_indices[kv_indptr[b] ..),
// its cached prefix first, its new tokens last (E_b <= L_b). With `causal`, query j
// (0-based) of the sequence sees keys t <= L_b - E_b + j: the causal mask aligned at the
// bottom right. Without, every query sees all L_b >= 1 keys (the queries of several
// sequences over the prefix they share, for a cascade).
//
// Two passes. Pack: each (sequence, kv head)'s keys are copied once into
//   K blocks of 16 keys, [D/2 dimension pairs][16 keys] 32-bit lanes, and
//   V pairs of keys,     [D dimensions] 32-bit lanes (V[2u][c] low, V[2u+1][c] high),
// zero-padded to a multiple of KB keys, so that one vdpbf16ps adds one dimension pair
// of 16 keys for one query (QK) or two keys' weighted values in 16 dimensions (PV).
// Attend: an item is (sequence, kv head, block of query rows); its rows times the G =
// H / Hkv query heads of the kv head (at most MAX_QUERIES; more heads take several items)
// walk the visible keys KB at a time with the online softmax in float32 (the running
// maximum moves only by more than RESCALE_GAP). Products of bfloat16 are exact in float32; the weights P
// are rounded to bfloat16 (relative 2^-9) for PV, as a bfloat16 flash kernel does.
// Items are taken from a shared counter, longest first, so the causal mask's uneven
// items do not leave a thread idle.
//
// Inputs: q [T, H, D]; k_cache, v_cache [S, Hkv, D], all bfloat16, D = 64 or 128, unit stride
// along D (KVPool's slot-major or head-major layout);
// qo_indptr, kv_indptr [B + 1] int64; kv_indices int64; scale; causal.
// Returns out [T, H, D] bfloat16 and lse [T, H] float32 (natural log).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#define RADIXLM_EXTEND_BF16 1
#endif
#include "vec.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

bool paged_extend_supported(int64_t d) {
#ifdef RADIXLM_EXTEND_BF16
  return d == 64 || d == 128;
#else
  (void)d;
  return false;
#endif
}

#ifdef RADIXLM_EXTEND_BF16
namespace {

constexpr int64_t KB = 32;         // keys per softmax step (two K blocks of 16)
constexpr int64_t MAX_QUERIES = 48;  // queries per item (rows x query heads of one kv head)
constexpr int QN = 8;              // queries per QK register block
constexpr int QV = 4;              // queries per PV register block

// Where one (sequence, kv head)'s packed keys start, in 32-bit words: keys are padded to
// a multiple of KB, and K and V each take D / 2 words per key.
struct Layout {
  std::vector<int64_t> padded_start;  // [B + 1] padded key offsets
  int64_t hkv, d;
  int64_t base(int64_t b, int64_t kh) const {
    const int64_t len = padded_start[b + 1] - padded_start[b];
    return (padded_start[b] * hkv + kh * len) * (d / 2);
  }
};

// Pack keys [t0, t0 + KB) of one (sequence, kv head); rows past `n` are zeros.
void pack_block(const uint16_t* k, const uint16_t* v, const int64_t* idx, int64_t t0,
                int64_t n, int64_t row_stride, int64_t d, uint32_t* kt, uint32_t* vp) {
  const int64_t np = d / 2;
  for (int64_t half = 0; half < KB / 16; ++half) {
    uint32_t* blk = kt + (t0 + 16 * half) * np;  // [np][16]
    for (int64_t r = 0; r < 16; ++r) {
      const int64_t t = t0 + 16 * half + r;
      const uint32_t* row = t < n ? reinterpret_cast<const uint32_t*>(k + idx[t] * row_stride)
                                  : nullptr;
      for (int64_t p = 0; p < np; ++p) blk[p * 16 + r] = row ? row[p] : 0u;
    }
  }
  for (int64_t u = 0; u < KB / 2; ++u) {
    const int64_t t = t0 + 2 * u;
    uint32_t* out = vp + (t / 2) * d;  // [d]
    const uint16_t* r0 = t < n ? v + idx[t] * row_stride : nullptr;
    const uint16_t* r1 = t + 1 < n ? v + idx[t + 1] * row_stride : nullptr;
    for (int64_t c = 0; c < d; ++c)
      out[c] = (r0 ? r0[c] : 0u) | (static_cast<uint32_t>(r1 ? r1[c] : 0u) << 16);
  }
}

// s[i * KB + t] = scale * q_i . key t for n <= QN queries (q: [n][D] bfloat16) and the
// KB keys whose packed blocks start at kt.
template <int NP, int N>
inline void qk_block(const uint32_t* kt, const uint16_t* q, float scale, float* s) {
  constexpr int64_t d = 2 * NP;
  __m512 a0[N], a1[N];
  for (int i = 0; i < N; ++i) a0[i] = a1[i] = _mm512_setzero_ps();
  for (int p = 0; p < NP; ++p) {
    const __m512bh k0 = (__m512bh)_mm512_loadu_si512(kt + p * 16);
    const __m512bh k1 = (__m512bh)_mm512_loadu_si512(kt + (NP + p) * 16);
    for (int i = 0; i < N; ++i) {
      int32_t pair;
      std::memcpy(&pair, q + i * d + 2 * p, 4);
      const __m512bh w = (__m512bh)_mm512_set1_epi32(pair);
      a0[i] = _mm512_dpbf16_ps(a0[i], k0, w);
      a1[i] = _mm512_dpbf16_ps(a1[i], k1, w);
    }
  }
  const __m512 sv = _mm512_set1_ps(scale);
  for (int i = 0; i < N; ++i) {
    _mm512_storeu_ps(s + i * KB, _mm512_mul_ps(a0[i], sv));
    _mm512_storeu_ps(s + i * KB + 16, _mm512_mul_ps(a1[i], sv));
  }
}

template <int NP>
void qk_all(const uint32_t* kt, const uint16_t* q, int64_t nq, float scale, float* s) {
  int64_t i = 0;
  for (; i + QN <= nq; i += QN) qk_block<NP, QN>(kt, q + i * 2 * NP, scale, s + i * KB);
  for (; i < nq; ++i) qk_block<NP, 1>(kt, q + i * 2 * NP, scale, s + i * KB);
}

// o[i] += sum over the KB keys of p[i][t] v_t, for n <= QV queries; p as bfloat16 pairs
// [n][KB / 2], vp the packed value pairs, o [n][D] float32.
template <int NP, int N>
inline void pv_block(const uint32_t* vp, const uint32_t* p, float* o) {
  constexpr int64_t d = 2 * NP, nc = d / 16;
  __m512 acc[N][nc];
  for (int i = 0; i < N; ++i)
    for (int c = 0; c < nc; ++c) acc[i][c] = _mm512_loadu_ps(o + i * d + 16 * c);
  for (int u = 0; u < KB / 2; ++u) {
    __m512bh vr[nc];
    for (int c = 0; c < nc; ++c) vr[c] = (__m512bh)_mm512_loadu_si512(vp + u * d + 16 * c);
    for (int i = 0; i < N; ++i) {
      const __m512bh w = (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(p[i * (KB / 2) + u]));
      for (int c = 0; c < nc; ++c) acc[i][c] = _mm512_dpbf16_ps(acc[i][c], vr[c], w);
    }
  }
  for (int i = 0; i < N; ++i)
    for (int c = 0; c < nc; ++c) _mm512_storeu_ps(o + i * d + 16 * c, acc[i][c]);
}

template <int NP>
void pv_all(const uint32_t* vp, const uint32_t* p, int64_t nq, float* o) {
  constexpr int QB = NP == 32 ? QV : 2;  // keep 2 * QB * D / 16 accumulators in registers
  int64_t i = 0;
  for (; i + QB <= nq; i += QB) pv_block<NP, QB>(vp, p + i * (KB / 2), o + i * 2 * NP);
  for (; i < nq; ++i) pv_block<NP, 1>(vp, p + i * (KB / 2), o + i * 2 * NP);
}

// One softmax step for query i: scores s[KB] (keys t0 + lane), of which the first `vis`
// are visible. Updates m, l and o, writes the weights exp(s - m) as bfloat16 pairs.
// Hidden lanes count as -inf for the maximum and get weight 0; their scores are finite
// (zero-padded keys), so no lane computes inf - inf. The running maximum m moves only
// when a score exceeds it by more than RESCALE_GAP (then l and o are rescaled): any m
// gives the same softmax, and weights of at most e^RESCALE_GAP cannot overflow.
constexpr float RESCALE_GAP = 8.f;

inline void softmax_step(const float* s, int64_t vis, float& m, float& l, float* o, int64_t d,
                         uint32_t* p) {
  const auto keep = [](int64_t k) {
    return static_cast<__mmask16>(k <= 0 ? 0u : k >= 16 ? 0xFFFFu : (1u << k) - 1);
  };
  const __mmask16 k0 = keep(vis), k1 = keep(vis - 16);
  const __m512 s0 = _mm512_loadu_ps(s), s1 = _mm512_loadu_ps(s + 16);
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512 top = _mm512_max_ps(_mm512_mask_blend_ps(k0, ninf, s0),
                                   _mm512_mask_blend_ps(k1, ninf, s1));
  const float block_max = _mm512_reduce_max_ps(top);  // -inf when every lane is hidden
  if (block_max > m + RESCALE_GAP) {  // always on the first step (m = -inf): key 0 is visible
    const float corr = std::exp(m - block_max);  // 0 on the first step
    l *= corr;
    const __m512 cv = _mm512_set1_ps(corr);
    for (int64_t c = 0; c < d; c += 16)
      _mm512_storeu_ps(o + c, _mm512_mul_ps(_mm512_loadu_ps(o + c), cv));
    m = block_max;
  }
  const __m512 mv = _mm512_set1_ps(m);
  const __m512 e0 = _mm512_maskz_mov_ps(k0, exp16(_mm512_sub_ps(s0, mv)));
  const __m512 e1 = _mm512_maskz_mov_ps(k1, exp16(_mm512_sub_ps(s1, mv)));
  l += _mm512_reduce_add_ps(_mm512_add_ps(e0, e1));
  _mm512_storeu_si512(p, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));  // keys 0..15 low
}

// Rows [row0, row0 + rows) of a sequence for query heads kh * g + [h0, h0 + gh).
struct Item {
  int64_t seq, kh, row0, rows, h0, gh;
};

template <int NP>
void attend_item(const Item& it, const uint16_t* q, const uint32_t* kt, const uint32_t* vp,
                 int64_t q_start, int64_t offset, int64_t n_keys, bool causal, int64_t h,
                 int64_t g, float scale, uint16_t* out, float* lse) {
  constexpr int64_t d = 2 * NP;
  const int64_t gh = it.gh, nq = it.rows * gh;  // query i: row i / gh, head i % gh
  alignas(64) uint16_t ql[MAX_QUERIES * d];
  alignas(64) float s[MAX_QUERIES * KB];
  alignas(64) uint32_t pw[MAX_QUERIES * KB / 2];
  alignas(64) float o[MAX_QUERIES * d];
  float m[MAX_QUERIES], l[MAX_QUERIES];
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t row = q_start + it.row0 + i / gh, head = it.kh * g + it.h0 + i % gh;
    std::memcpy(ql + i * d, q + (row * h + head) * d, d * 2);
    m[i] = -std::numeric_limits<float>::infinity();
    l[i] = 0.f;
  }
  std::fill(o, o + nq * d, 0.f);
  // row r sees keys [0, offset + row0 + r + 1) if causal, else all n_keys
  const int64_t first_vis = causal ? offset + it.row0 + 1 : n_keys;
  const int64_t last_vis = causal ? first_vis + it.rows - 1 : n_keys;
  for (int64_t t0 = 0; t0 < last_vis; t0 += KB) {
    qk_all<NP>(kt + t0 * NP, ql, nq, scale, s);
    for (int64_t i = 0; i < nq; ++i)
      softmax_step(s + i * KB, first_vis + (causal ? i / gh : 0) - t0, m[i], l[i], o + i * d, d,
                   pw + i * (KB / 2));
    pv_all<NP>(vp + (t0 / 2) * d, pw, nq, o);
  }
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t row = q_start + it.row0 + i / gh, head = it.kh * g + it.h0 + i % gh;
    const __m512 inv = _mm512_set1_ps(1.f / l[i]);
    uint16_t* dst = out + (row * h + head) * d;
    for (int64_t c = 0; c < d; c += 16) {
      const __m256bh r = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(o + i * d + c), inv));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c), (__m256i)r);
    }
    lse[row * h + head] = m[i] + std::log(l[i]);
  }
}

template <int NP>
void run(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
         const int64_t* qo, const int64_t* kvp, const int64_t* idx, int64_t b, double scale,
         bool causal, torch::Tensor& out, torch::Tensor& lse) {
  constexpr int64_t d = 2 * NP;
  const int64_t h = q.size(1), hkv = k_cache.size(1), g = h / hkv;
  // an item holds up to MAX_QUERIES queries: bq rows of gh heads (more heads: several items)
  const int64_t gh = std::min(g, MAX_QUERIES), bq = MAX_QUERIES / gh;
  Layout lay{std::vector<int64_t>(b + 1, 0), hkv, d};
  for (int64_t s = 0; s < b; ++s)
    lay.padded_start[s + 1] = lay.padded_start[s] + (kvp[s + 1] - kvp[s] + KB - 1) / KB * KB;
  auto packed = torch::empty({2, lay.padded_start[b] * hkv * (d / 2)}, torch::kInt32);
  uint32_t* kt = reinterpret_cast<uint32_t*>(packed[0].data_ptr<int32_t>());
  uint32_t* vp = reinterpret_cast<uint32_t*>(packed[1].data_ptr<int32_t>());
  const auto* kc = reinterpret_cast<const uint16_t*>(k_cache.data_ptr<at::BFloat16>());
  const auto* vc = reinterpret_cast<const uint16_t*>(v_cache.data_ptr<at::BFloat16>());
  const int64_t row_stride = k_cache.stride(0), head_stride = k_cache.stride(1);
  std::vector<int64_t> pack_seq, pack_t0;  // one pack item per (sequence, KB keys)
  for (int64_t s = 0; s < b; ++s)
    for (int64_t t0 = 0; t0 < kvp[s + 1] - kvp[s]; t0 += KB) {
      pack_seq.push_back(s);
      pack_t0.push_back(t0);
    }
  at::parallel_for(0, static_cast<int64_t>(pack_seq.size()), 8, [&](int64_t lo, int64_t hi) {
    for (int64_t w = lo; w < hi; ++w) {
      const int64_t s = pack_seq[w], n = kvp[s + 1] - kvp[s];
      for (int64_t kh = 0; kh < hkv; ++kh) {
        const int64_t base = lay.base(s, kh);
        pack_block(kc + kh * head_stride, vc + kh * head_stride, idx + kvp[s], pack_t0[w], n,
                   row_stride, d, kt + base, vp + base);
      }
    }
  });
  std::vector<Item> items;
  for (int64_t s = 0; s < b; ++s)
    for (int64_t r = 0; r < qo[s + 1] - qo[s]; r += bq)
      for (int64_t kh = 0; kh < hkv; ++kh)
        for (int64_t h0 = 0; h0 < g; h0 += gh)
          items.push_back({s, kh, r, std::min(bq, qo[s + 1] - qo[s] - r), h0, std::min(gh, g - h0)});
  const auto keys_seen = [&](const Item& it) {  // the item's work, for the order
    const int64_t n = kvp[it.seq + 1] - kvp[it.seq];
    return causal ? n - (qo[it.seq + 1] - qo[it.seq]) + it.row0 + it.rows : n;
  };
  std::stable_sort(items.begin(), items.end(),
                   [&](const Item& a, const Item& c) { return keys_seen(a) > keys_seen(c); });
  const auto* qp = reinterpret_cast<const uint16_t*>(q.data_ptr<at::BFloat16>());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  float* lp = lse.data_ptr<float>();
  std::atomic<int64_t> next{0};
  const int64_t count = static_cast<int64_t>(items.size());
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    for (int64_t w = next++; w < count; w = next++) {
      const Item& it = items[w];
      const int64_t n = kvp[it.seq + 1] - kvp[it.seq];
      const int64_t offset = n - (qo[it.seq + 1] - qo[it.seq]);
      attend_item<NP>(it, qp, kt + lay.base(it.seq, it.kh), vp + lay.base(it.seq, it.kh),
                      qo[it.seq], offset, n, causal, h, g, static_cast<float>(scale), op, lp);
    }
  });
}

}  // namespace
#endif

std::vector<torch::Tensor> paged_extend(torch::Tensor q, torch::Tensor k_cache,
                                        torch::Tensor v_cache, torch::Tensor qo_indptr,
                                        torch::Tensor kv_indptr, torch::Tensor kv_indices,
                                        double scale, bool causal) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 3 && v_cache.dim() == 3, "bad ranks");
  TORCH_CHECK(q.scalar_type() == torch::kBFloat16 && k_cache.scalar_type() == torch::kBFloat16 &&
                  v_cache.scalar_type() == torch::kBFloat16,
              "paged_extend needs bfloat16 q, k_cache and v_cache");
  TORCH_CHECK(k_cache.stride(2) == 1 && k_cache.strides() == v_cache.strides(),
              "caches need unit stride along head_dim and one layout");
  TORCH_CHECK(paged_extend_supported(q.size(2)) && q.size(2) == k_cache.size(2),
              "paged_extend is not built for this head_dim");
  TORCH_CHECK(q.size(1) % k_cache.size(1) == 0, "query heads must be a multiple of kv heads");
  TORCH_CHECK(qo_indptr.scalar_type() == torch::kInt64 && kv_indptr.scalar_type() == torch::kInt64 &&
                  kv_indices.scalar_type() == torch::kInt64,
              "indices must be int64");
  TORCH_CHECK(qo_indptr.numel() == kv_indptr.numel() && qo_indptr.numel() >= 1,
              "qo_indptr and kv_indptr need B + 1 entries each");
  auto qc = q.contiguous();
  auto qo = qo_indptr.contiguous(), kvp = kv_indptr.contiguous(), idx = kv_indices.contiguous();
  const int64_t b = qo.numel() - 1;
  const int64_t* qop = qo.data_ptr<int64_t>();
  const int64_t* kvpp = kvp.data_ptr<int64_t>();
  TORCH_CHECK(qop[b] == q.size(0) && kvpp[b] <= idx.numel(), "indptr ends disagree with inputs");
  for (int64_t s = 0; s < b; ++s) {
    const int64_t e = qop[s + 1] - qop[s], n = kvpp[s + 1] - kvpp[s];
    TORCH_CHECK(e >= 0 && n >= (causal ? e : 1),
                causal ? "every sequence needs at least as many keys as new queries"
                       : "every sequence needs at least one key");
  }
  auto out = torch::empty_like(qc);
  auto lse = torch::empty({q.size(0), q.size(1)}, torch::kFloat32);
#ifdef RADIXLM_EXTEND_BF16
  if (q.size(2) == 64)
    run<32>(qc, k_cache, v_cache, qop, kvpp, idx.data_ptr<int64_t>(), b, scale, causal, out, lse);
  else
    run<64>(qc, k_cache, v_cache, qop, kvpp, idx.data_ptr<int64_t>(), b, scale, causal, out, lse);
#endif
  return {out, lse};
}
