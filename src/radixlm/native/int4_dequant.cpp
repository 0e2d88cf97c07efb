// Dequantize an int4 weight held in the layout of aten._weight_int4pack_mm_for_cpu.
//
// packed: [N, K/2] uint8; output rows in blocks of 64; for input k, byte j of a block
// holds row j (low nibble) and row j + 32 (high nibble). scales_zeros: [K/G, N, 2]
// bfloat16 with w = (q - 8) * scale + zero per group of G inputs.
// Writes the transpose: out_t ([K, N] bfloat16, contiguous) = w.T. In that order each
// input k of a block is 32 bytes in and 64 consecutive values out, which vectorizes;
// the caller reuses out_t (fresh pages per call cost more than the work).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

void int4_dequantize(torch::Tensor packed, torch::Tensor scales_zeros, torch::Tensor out_t,
                     int64_t group) {
  const int64_t k = out_t.size(0), n = out_t.size(1);
  TORCH_CHECK(out_t.scalar_type() == torch::kBFloat16 && out_t.is_contiguous(), "bad output");
  TORCH_CHECK(n % 64 == 0 && k % group == 0, "int4 weight of unsupported shape");
  TORCH_CHECK(packed.numel() == n * k / 2, "packed weight has the wrong size");
  TORCH_CHECK(scales_zeros.scalar_type() == torch::kBFloat16, "scales_zeros must be bfloat16");
  auto pc = packed.contiguous();
  auto sz = scales_zeros.to(torch::kFloat32);  // [K/G, N, 2]
  // w = q * scale + (zero - 8 * scale), as two contiguous [K/G, N] tables
  auto scale = sz.select(2, 0).contiguous();
  auto offset = (sz.select(2, 1) - 8 * sz.select(2, 0)).contiguous();
  const uint8_t* p = reinterpret_cast<const uint8_t*>(pc.data_ptr());
  const float* sp = scale.data_ptr<float>();
  const float* op = offset.data_ptr<float>();
  uint16_t* o = reinterpret_cast<uint16_t*>(out_t.data_ptr());
  at::parallel_for(0, k, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const float* sg = sp + (c / group) * n;
      const float* og = op + (c / group) * n;
      uint16_t* dst = o + c * n;
      for (int64_t nb = 0; nb < n / 64; ++nb) {
        const uint8_t* bytes = p + (nb * k + c) * 32;
        const float* s = sg + nb * 64;
        const float* z = og + nb * 64;
        uint16_t* d = dst + nb * 64;
#pragma omp simd
        for (int64_t j = 0; j < 64; ++j) {
          const int q = j < 32 ? (bytes[j] & 15) : (bytes[j - 32] >> 4);
          const float w = static_cast<float>(q) * s[j] + z[j];
          uint32_t bits;
          std::memcpy(&bits, &w, 4);
          d[j] = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
        }
      }
    }
  });
}
