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
}
