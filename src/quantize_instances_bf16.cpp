// The run-time quantize dispatch for bfloat16_t inputs, compiled once for this project's tests,
// examples and benchmarks (see orbitq/quantize_extern.hpp, which CMake force-includes in the
// programs linking orbitq_quantize_instances); one file per element type, so they compile side
// by side.
#include <orbitq/quantize_extern.hpp>

template void orbitq::quantize_into<orbitq::bfloat16_t>(const orbitq::matrix_view<orbitq::bfloat16_t>&, orbitq::quantized_tensor&, const orbitq::quant_spec&, unsigned);
template void orbitq::detail::quantize_float<orbitq::bfloat16_t>(const orbitq::matrix_view<orbitq::bfloat16_t>&, orbitq::quantized_tensor&, const orbitq::quant_spec&, unsigned, float);
