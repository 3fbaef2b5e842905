// The run-time quantize dispatch for float inputs, compiled once for this project's tests,
// examples and benchmarks (see orbitq/quantize_extern.hpp, which CMake force-includes in the
// programs linking orbitq_quantize_instances); one file per element type, so they compile side
// by side.
#include <orbitq/quantize_extern.hpp>

template void orbitq::quantize_into<float>(const orbitq::matrix_view<float>&, orbitq::quantized_tensor&, const orbitq::quant_spec&, unsigned);
template void orbitq::detail::quantize_float<float>(const orbitq::matrix_view<float>&, orbitq::quantized_tensor&, const orbitq::quant_spec&, unsigned, float);
