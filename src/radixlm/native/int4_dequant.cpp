// Dequantize an int4 weight held in the layout of aten._weight_int4pack_mm_for_cpu.
//
// packed: [N, K/2] uint8; output rows in blocks of 64; for input k, byte j of a block
// holds row j (low nibble) and row j + 32 (high nibble). scales_zeros: [K/G, N, 2]
// bfloat16 with w = (q - 8) * scale + zero per group of G inputs.
// Writes w into out ([N, K] bfloat16, contiguous; reused by the caller, so no fresh pages).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstring>

void int4_dequantize(torch::Tensor packed, torch::Tensor scales_zeros, torch::Tensor out,
                     int64_t group) {
  const int64_t n = out.size(0), k = out.size(1);
  TORCH_CHECK(out.scalar_type() == torch::kBFloat16 && out.is_contiguous(), "bad output");
  TORCH_CHECK(n % 64 == 0 && k % group == 0, "int4 weight of unsupported shape");
  TORCH_CHECK(packed.numel() == n * k / 2, "packed weight has the wrong size");
  TORCH_CHECK(scales_zeros.scalar_type() == torch::kBFloat16, "scales_zeros must be bfloat16");
  auto pc = packed.contiguous();
  auto sz = scales_zeros.to(torch::kFloat32).contiguous();  // [K/G, N, 2]
  const uint8_t* p = reinterpret_cast<const uint8_t*>(pc.data_ptr());
  const float* s = sz.data_ptr<float>();
  c10::BFloat16* o = out.data_ptr<c10::BFloat16>();
  // One tile = 64 rows x one group of columns: nibbles into q[64][G] (reading the block's
  // bytes in order), then each row scaled, rounded to bfloat16 and written contiguously.
  TORCH_CHECK(group <= 256, "int4 group size above 256");
  at::parallel_for(0, n / 64, 1, [&](int64_t lo, int64_t hi) {
    uint8_t q[64][256];
    uint16_t row_bits[256];
    for (int64_t nb = lo; nb < hi; ++nb) {
      const uint8_t* blk = p + nb * k * 32;
      for (int64_t g0 = 0; g0 < k; g0 += group) {
        for (int64_t c = 0; c < group; ++c) {
          const uint8_t* bytes = blk + (g0 + c) * 32;
          for (int64_t j = 0; j < 32; ++j) {
            q[j][c] = bytes[j] & 15;
            q[j + 32][c] = bytes[j] >> 4;
          }
        }
        for (int64_t r = 0; r < 64; ++r) {
          const int64_t row = nb * 64 + r;
          const float* szp = s + ((g0 / group) * n + row) * 2;
          const float scale = szp[0], zero = szp[1] - 8.f * szp[0];
#pragma omp simd
          for (int64_t c = 0; c < group; ++c) {
            const float w = static_cast<float>(q[r][c]) * scale + zero;
            uint32_t bits;
            std::memcpy(&bits, &w, 4);
            row_bits[c] = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
          }
          std::memcpy(o + row * k + g0, row_bits, group * 2);
        }
      }
    }
  });
}
