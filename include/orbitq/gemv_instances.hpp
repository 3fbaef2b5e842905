#pragma once
/// @file
/// @brief The instances that orbitq/gemv_extern.hpp declares: include this header in exactly one
///        translation unit of a program whose other translation units include gemv_extern.hpp.
#include "gemv_extern.hpp"

namespace orbitq::detail::gemv
{
    template void multiply<float>(const quantized_tensor&, std::size_t, std::size_t, std::span<const float>, std::size_t,
                                  std::span<float>, unsigned, const char*, gemv_arithmetic);
    template void multiply<bfloat16_t>(const quantized_tensor&, std::size_t, std::size_t, std::span<const bfloat16_t>, std::size_t,
                                       std::span<float>, unsigned, const char*, gemv_arithmetic);
    template void multiply<float16_t>(const quantized_tensor&, std::size_t, std::size_t, std::span<const float16_t>, std::size_t,
                                      std::span<float>, unsigned, const char*, gemv_arithmetic);
    template void run<gemv_rows, 1>(const quantized_tensor&, const plan&, std::size_t, std::size_t, const float*, std::size_t, float*,
                                    unsigned);
    template void run<gemm_rows, gemm_tokens>(const quantized_tensor&, const plan&, std::size_t, std::size_t, const float*, std::size_t,
                                              float*, unsigned);
    template void run_int8_dot_tiles<gemv_rows, 1>(const quantized_tensor&, std::size_t, std::size_t, const kernels::int4_dot::activation_blocks&,
                                                   std::size_t, float*, unsigned);
    template void run_int8_dot_tiles<gemm_rows, gemm_tokens>(const quantized_tensor&, std::size_t, std::size_t,
                                                             const kernels::int4_dot::activation_blocks&, std::size_t, float*, unsigned);
}
