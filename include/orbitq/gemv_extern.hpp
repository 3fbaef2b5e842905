#pragma once
/// @file
/// @brief Declares the gemv/gemm kernel dispatch `detail::gemv::multiply` for the three
///        activation types, and the register tiles it runs (`run`, `run_int8_dot_tiles`, the same
///        for every activation type), as instantiated elsewhere in the program, so that a
///        translation unit including this header (the MoE forward pass, the validation) does not
///        compile them again.
///
/// The same contract as orbitq/quantize_extern.hpp: exactly one translation unit of the program
/// defines the instances (orbitq/gemv_instances.hpp, or the explicit instantiations it makes),
/// compiled with the same target flags (-march) as the others.
#include "gemv.hpp"

namespace orbitq::detail::gemv
{
    extern template void multiply<float>(const quantized_tensor&, std::size_t, std::size_t, std::span<const float>, std::size_t,
                                         std::span<float>, unsigned, const char*, gemv_arithmetic);
    extern template void multiply<bfloat16_t>(const quantized_tensor&, std::size_t, std::size_t, std::span<const bfloat16_t>,
                                              std::size_t, std::span<float>, unsigned, const char*, gemv_arithmetic);
    extern template void multiply<float16_t>(const quantized_tensor&, std::size_t, std::size_t, std::span<const float16_t>,
                                             std::size_t, std::span<float>, unsigned, const char*, gemv_arithmetic);
    extern template void run<gemv_rows, 1>(const quantized_tensor&, const plan&, std::size_t, std::size_t, const float*, std::size_t, float*,
                                           unsigned);
    extern template void run<gemm_rows, gemm_tokens>(const quantized_tensor&, const plan&, std::size_t, std::size_t, const float*,
                                                     std::size_t, float*, unsigned);
    extern template void run_int8_dot_tiles<gemv_rows, 1>(const quantized_tensor&, std::size_t, std::size_t,
                                                          const kernels::int4_dot::activation_blocks&, std::size_t, float*, unsigned);
    extern template void run_int8_dot_tiles<gemm_rows, gemm_tokens>(const quantized_tensor&, std::size_t, std::size_t,
                                                                    const kernels::int4_dot::activation_blocks&, std::size_t, float*,
                                                                    unsigned);
}
