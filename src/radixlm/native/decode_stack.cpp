// Every decoder layer of one decode step in a single call from Python.
//
// At batch 1 the kernels of a SmolLM2 layer take ~90 us, and the Python around them
// (module calls, views, the K/V write's two index_copy_) ~50 us more. DecodeStack
// runs the layers of `models.llama.DecoderLayer` over a `PagedContext` decode batch
// with the same kernels, called in the same order on the same values, so its output
// is bit-identical to that path; `models.decode_stack` decides when it applies.
//
// Built once per model from each layer's two norm weights and four linears
// (q/k/v, o, gate/up, down). A linear is (kind, tensors, group, native_rows, outliers,
// outlier_ratio):
//   DENSE [weight] or [weight, bias]: at::linear;
//   INT4  [packed, scales_zeros(, bias)]: radixlm's int4_mm up to native_rows rows of x,
//         torch's _weight_int4pack_mm_for_cpu above;
//   INT4_Q8 [packed, scales_zeros(, bias)]: int4_mm_q8 (int8 activations) at any rows;
//   INT8  [q, scale(, bias)]: int8_mm up to native_rows rows, torch's _weight_int8pack_mm above.
// `run` takes the residual stream x [T, hidden] (updated in place), the rope tables
// (cos, signed sin) [T, 1, D], the pool's K and V [layers, slots, Hkv, D] (`KVPool.k_buffer`:
// any slot and head strides, unit stride along D, the dtype of x), the new tokens' slots [T] int64,
// the decode batch's own keys (kv_indptr [B + 1], kv_indices) and, for shared runs,
// {rows, qo_indptr, kv_indptr, slots} (else empty). It returns the last layer's output,
// which the caller adds into x.

#include <ATen/record_function.h>
#include <torch/extension.h>

#include <cstring>
#include <tuple>
#include <vector>

#include "kernels.h"

namespace {

enum Kind : int64_t { DENSE = 0, INT4 = 1, INT8 = 2, INT4_Q8 = 3 };
using LinearSpec =
    std::tuple<int64_t, std::vector<torch::Tensor>, int64_t, int64_t, int64_t, double>;

struct Linear {
  int64_t kind = DENSE, group = 0, native_rows = 0, outliers = 0;
  double outlier_ratio = 0;
  torch::Tensor a, b, bias;  // DENSE: weight; INT4(_Q8): packed, scales_zeros; INT8: q, scale

  explicit Linear(const LinearSpec& spec) {
    const auto& [k, tensors, g, rows, out, ratio] = spec;
    kind = k, group = g, native_rows = rows, outliers = out, outlier_ratio = ratio;
    const size_t own = kind == DENSE ? 1 : 2;
    TORCH_CHECK(kind >= DENSE && kind <= INT4_Q8 && (tensors.size() == own ||
                tensors.size() == own + 1), "bad linear spec");
    a = tensors[0];
    if (kind != DENSE) b = tensors[1];
    if (tensors.size() > own) bias = tensors[own];
  }

  // x [M, K] -> [M, N], as the Python module computes it (nn.Linear or WeightOnlyLinear)
  torch::Tensor operator()(const torch::Tensor& x) const {
    if (kind == DENSE) return at::linear(x, a, bias.defined() ? c10::optional(bias) : c10::nullopt);
    const bool ours = x.size(0) <= native_rows;
    torch::Tensor y;
    {
      RECORD_FUNCTION(kind == INT8 ? "native::int8_mm" : "native::int4_mm",
                      std::vector<c10::IValue>());
      if (kind == INT4_Q8) {
        y = int4_mm_q8(x, a, b, group, outliers, outlier_ratio);
      } else if (kind == INT4) {
        y = ours ? int4_mm(x, a, b, group) : at::_weight_int4pack_mm_for_cpu(x, a, group, b);
      } else {
        y = ours ? int8_mm(x, a, b) : at::_weight_int8pack_mm(x, a, b);
      }
    }
    return bias.defined() ? y + bias : y;
  }
};

// k, v [T, Hkv, D] (views into qkv) into the pool rows `slots` of one layer.
void store_kv(const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& k_layer,
              const torch::Tensor& v_layer, const torch::Tensor& slots) {
  const int64_t t = k.size(0), hkv = k.size(1), bytes = k.size(2) * k.element_size();
  const int64_t* s = slots.data_ptr<int64_t>();
  auto* kd = static_cast<char*>(k_layer.data_ptr());
  auto* vd = static_cast<char*>(v_layer.data_ptr());
  const auto* ks = static_cast<const char*>(k.data_ptr());
  const auto* vs = static_cast<const char*>(v.data_ptr());
  const int64_t es = k.element_size();
  for (int64_t i = 0; i < t; ++i) {
    TORCH_CHECK(s[i] >= 0 && s[i] < k_layer.size(0), "slot out of the pool's range");
    for (int64_t h = 0; h < hkv; ++h) {
      const int64_t dst = (s[i] * k_layer.stride(0) + h * k_layer.stride(1)) * es;
      const int64_t src = (i * k.stride(0) + h * k.stride(1)) * es;
      std::memcpy(kd + dst, ks + src, bytes);
      std::memcpy(vd + dst, vs + src, bytes);
    }
  }
}

// attention.cascade.merge_partials, op for op: out[rows] becomes the attention over both
// key sets (out/lse: [T, H, D] / [T, H] over the own keys; o2/lse2 at rows over the run).
void merge_partials(torch::Tensor& out, const torch::Tensor& lse, const torch::Tensor& rows,
                    const torch::Tensor& o2, const torch::Tensor& lse2) {
  auto o1 = out.index_select(0, rows).to(torch::kFloat32);
  auto lse1 = lse.index_select(0, rows);
  auto m = at::maximum(lse1, lse2);
  auto w1 = (lse1 - m).exp_();
  auto w2 = (lse2 - m).exp_();
  auto denom = w1 + w2;
  auto merged = o1.mul_((w1 / denom).unsqueeze(-1))
                    .add_(o2.to(torch::kFloat32) * (w2 / denom).unsqueeze(-1));
  out.index_copy_(0, rows, merged.to(out.scalar_type()));
}

}  // namespace

class DecodeStack {
 public:
  DecodeStack(std::vector<torch::Tensor> norms, std::vector<LinearSpec> linears, int64_t heads,
              int64_t kv_heads, int64_t head_dim, double eps, double scale)
      : norms_(std::move(norms)), h_(heads), hkv_(kv_heads), d_(head_dim), eps_(eps),
        scale_(scale) {
    TORCH_CHECK(linears.size() == 2 * norms_.size() && !norms_.empty() && norms_.size() % 2 == 0,
                "need two norms and four linears per layer");
    for (const auto& spec : linears) linears_.emplace_back(spec);
  }

  int64_t num_layers() const { return static_cast<int64_t>(norms_.size() / 2); }

  torch::Tensor run(torch::Tensor x, torch::Tensor cos, torch::Tensor sin,
                    torch::Tensor k_pool, torch::Tensor v_pool, torch::Tensor out_loc, torch::Tensor kv_indptr, torch::Tensor kv_indices,
                    std::vector<torch::Tensor> shared) {
    const int64_t layers = num_layers(), t = x.size(0);
    TORCH_CHECK(k_pool.dim() == 4 && k_pool.size(0) == layers && v_pool.sizes() == k_pool.sizes(),
                "the pool's K and V must be [layers, slots, Hkv, D]");
    TORCH_CHECK(k_pool.scalar_type() == x.scalar_type() && k_pool.size(2) == hkv_ &&
                    k_pool.size(3) == d_ && k_pool.stride(3) == 1 &&
                    k_pool.strides() == v_pool.strides(),
                "the pool must match x's dtype and the heads, with unit stride along D, "
                "K and V in one layout");
    TORCH_CHECK(shared.empty() || shared.size() == 4, "shared runs: rows, qo, kv, slots");
    TORCH_CHECK(out_loc.scalar_type() == torch::kInt64 && out_loc.is_contiguous() &&
                    out_loc.numel() == t, "out_loc must be [T] int64");
    torch::Tensor delta;
    for (int64_t l = 0; l < layers; ++l) {
      const Linear* lin = &linears_[4 * l];
      auto h = delta.defined() ? add_rms_norm(x, delta, norms_[2 * l], eps_)
                               : rms_norm(x, norms_[2 * l], eps_);
      auto qkv = lin[0](h).view({t, h_ + 2 * hkv_, d_});
      rope_(qkv, cos, sin, h_ + hkv_);
      auto out = attend(qkv, k_pool.select(0, l), v_pool.select(0, l), out_loc, kv_indptr,
                        kv_indices, shared);
      h = add_rms_norm(x, lin[1](out.reshape({t, h_ * d_})), norms_[2 * l + 1], eps_);
      delta = lin[3](silu_mul(lin[2](h)));
    }
    return delta;
  }

 private:
  // PagedContext.attend's native decode path for qkv [T, H + 2 Hkv, D]; returns [T, H, D].
  torch::Tensor attend(const torch::Tensor& qkv, const torch::Tensor& k_layer,
                       const torch::Tensor& v_layer, const torch::Tensor& out_loc,
                       const torch::Tensor& kv_indptr, const torch::Tensor& kv_indices,
                       const std::vector<torch::Tensor>& shared) const {
    RECORD_FUNCTION("native::attention", std::vector<c10::IValue>());
    auto q = qkv.narrow(1, 0, h_);
    store_kv(qkv.narrow(1, h_, hkv_), qkv.narrow(1, h_ + hkv_, hkv_), k_layer, v_layer, out_loc);
    auto parts = paged_decode(q, k_layer, v_layer, kv_indptr, kv_indices, scale_);
    if (shared.empty()) return parts[0];
    const auto& rows = shared[0];
    auto run = paged_extend(q.index_select(0, rows), k_layer, v_layer, shared[1], shared[2],
                            shared[3], scale_, false);
    merge_partials(parts[0], parts[1], rows, run[0], run[1]);
    return parts[0];
  }

  std::vector<torch::Tensor> norms_;  // per layer: input norm, post-attention norm
  std::vector<Linear> linears_;       // per layer: qkv, o, gate_up, down
  int64_t h_, hkv_, d_;
  double eps_, scale_;
};

void bind_decode_stack(pybind11::module& m) {
  pybind11::class_<DecodeStack>(m, "DecodeStack")
      .def(pybind11::init<std::vector<torch::Tensor>, std::vector<LinearSpec>, int64_t, int64_t,
                          int64_t, double, double>())
      .def("num_layers", &DecodeStack::num_layers)
      .def("run", &DecodeStack::run, "every layer of one decode step; returns the last's output");
}
