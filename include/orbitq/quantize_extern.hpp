#pragma once
/// @file
/// @brief Declares the run-time dispatch `quantize_into(view, q, spec, threads)`, the float
///        formats (`detail::quantize_float`, which the MoE validation also calls with a whole
///        tensor's amax) and the scale search (`detail::quantize_searched`) for the three
///        element types as instantiated elsewhere in the program, so that a translation unit
///        including this header does not compile them again.
///
/// The dispatch instantiates every (granularity, scheme, bits, rounding) kernel for its element
/// type, a large compile cost in each translation unit that calls `quantize(view, spec)` or a
/// header that does (analyze, the MoE validation). With this header, `quantize<Q>` on one of
/// the dispatch's quantizers calls the dispatch too (detail::dispatch_compiled_elsewhere), so it
/// compiles no kernel either. A program that includes this header
/// (first, or through a forced include) must have exactly one translation unit that includes
/// orbitq/quantize_instances.hpp, compiled with the same target flags (-march) as the others:
/// the kernels are inline templates, and all translation units of one program must agree on them.
#include "quantize.hpp"

namespace orbitq
{
    namespace detail
    {
        template <>
        inline constexpr bool dispatch_compiled_elsewhere<float> = true;
        template <>
        inline constexpr bool dispatch_compiled_elsewhere<bfloat16_t> = true;
        template <>
        inline constexpr bool dispatch_compiled_elsewhere<float16_t> = true;
    }

    extern template void quantize_into<float>(const matrix_view<float>&, quantized_tensor&, const quant_spec&, unsigned);
    extern template void quantize_into<bfloat16_t>(const matrix_view<bfloat16_t>&, quantized_tensor&, const quant_spec&, unsigned);
    extern template void quantize_into<float16_t>(const matrix_view<float16_t>&, quantized_tensor&, const quant_spec&, unsigned);
    extern template void detail::quantize_float<float>(const matrix_view<float>&, quantized_tensor&, const quant_spec&, unsigned, float);
    extern template void detail::quantize_float<bfloat16_t>(const matrix_view<bfloat16_t>&, quantized_tensor&, const quant_spec&, unsigned, float);
    extern template void detail::quantize_float<float16_t>(const matrix_view<float16_t>&, quantized_tensor&, const quant_spec&, unsigned, float);
    extern template void detail::quantize_searched<float>(const matrix_view<float>&, quantized_tensor&, const quant_spec&, unsigned);
    extern template void detail::quantize_searched<bfloat16_t>(const matrix_view<bfloat16_t>&, quantized_tensor&, const quant_spec&, unsigned);
    extern template void detail::quantize_searched<float16_t>(const matrix_view<float16_t>&, quantized_tensor&, const quant_spec&, unsigned);
}
