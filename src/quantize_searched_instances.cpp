// The scale search (scale_search::mse) for the three element types, compiled once for this
// project's tests, examples and benchmarks (see orbitq/quantize_extern.hpp), beside the
// quantize dispatch's instance files.
#include <orbitq/quantize_extern.hpp>

template void orbitq::detail::quantize_searched<float>(const orbitq::matrix_view<float>&, orbitq::quantized_tensor&, const orbitq::quant_spec&,
                                                       unsigned);
template void orbitq::detail::quantize_searched<orbitq::bfloat16_t>(const orbitq::matrix_view<orbitq::bfloat16_t>&, orbitq::quantized_tensor&,
                                                                    const orbitq::quant_spec&, unsigned);
template void orbitq::detail::quantize_searched<orbitq::float16_t>(const orbitq::matrix_view<orbitq::float16_t>&, orbitq::quantized_tensor&,
                                                                   const orbitq::quant_spec&, unsigned);
