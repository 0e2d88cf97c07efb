// The kernels' entry points, for the module definition and for kernels that call others
// (included by the .cpp files; part of the build key). Shapes: each .cpp file's header.
#pragma once

#include <torch/extension.h>

#include <vector>

std::vector<torch::Tensor> paged_decode(torch::Tensor q, torch::Tensor k_cache,
                                        torch::Tensor v_cache, torch::Tensor kv_indptr,
                                        torch::Tensor kv_indices, double scale);
std::vector<torch::Tensor> paged_extend(torch::Tensor q, torch::Tensor k_cache,
                                        torch::Tensor v_cache, torch::Tensor qo_indptr,
                                        torch::Tensor kv_indptr, torch::Tensor kv_indices,
                                        double scale, bool causal);  // paged_extend.cpp
bool paged_extend_supported(int64_t d);
void int4_dequantize(torch::Tensor packed, torch::Tensor scales_zeros, torch::Tensor out_t,
                     int64_t group);  // int4_dequant.cpp
torch::Tensor int4_mm(torch::Tensor x, torch::Tensor packed, torch::Tensor scales_zeros,
                      int64_t group);  // int4_mm.cpp
bool int4_mm_supported();
torch::Tensor int4_mm_q8(torch::Tensor x, torch::Tensor packed, torch::Tensor scales_zeros,
                         int64_t group, int64_t outliers, double outlier_ratio);  // int4_mm_q8.cpp
bool int4_mm_q8_supported();
torch::Tensor int8_mm(torch::Tensor x, torch::Tensor q, torch::Tensor scale);  // int8_mm.cpp
bool int8_mm_supported();

// fused.cpp
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps);
torch::Tensor add_rms_norm(torch::Tensor x, torch::Tensor delta, torch::Tensor w, double eps);
void rope_(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, int64_t rotary_heads);
torch::Tensor silu_mul(torch::Tensor gu);

// decode_stack.cpp: registers the DecodeStack class on the module
void bind_decode_stack(pybind11::module& m);
