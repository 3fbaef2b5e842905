#pragma once
/// @file
/// @brief The instances that orbitq/quantize_extern.hpp declares: include this header in
///        exactly one translation unit of a program whose other translation units include
///        quantize_extern.hpp.
#include "quantize_extern.hpp"

namespace orbitq
{
    template void quantize_into<float>(const matrix_view<float>&, quantized_tensor&, const quant_spec&, unsigned);
    template void quantize_into<bfloat16_t>(const matrix_view<bfloat16_t>&, quantized_tensor&, const quant_spec&, unsigned);
    template void quantize_into<float16_t>(const matrix_view<float16_t>&, quantized_tensor&, const quant_spec&, unsigned);
    template void detail::quantize_float<float>(const matrix_view<float>&, quantized_tensor&, const quant_spec&, unsigned, float);
    template void detail::quantize_float<bfloat16_t>(const matrix_view<bfloat16_t>&, quantized_tensor&, const quant_spec&, unsigned, float);
    template void detail::quantize_float<float16_t>(const matrix_view<float16_t>&, quantized_tensor&, const quant_spec&, unsigned, float);
    template void detail::quantize_searched<float>(const matrix_view<float>&, quantized_tensor&, const quant_spec&, unsigned);
    template void detail::quantize_searched<bfloat16_t>(const matrix_view<bfloat16_t>&, quantized_tensor&, const quant_spec&, unsigned);
    template void detail::quantize_searched<float16_t>(const matrix_view<float16_t>&, quantized_tensor&, const quant_spec&, unsigned);
}
