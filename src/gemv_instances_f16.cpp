// The gemv/gemm kernel dispatch for float16_t activations, compiled once for this project's
// tests, examples and benchmarks (see orbitq/gemv_extern.hpp, which CMake force-includes in the
// programs linking orbitq_gemv_instances); a target of its own, so a sanitizer build can
// optimize it alone (the MoE forward pass runs through it).
#include <orbitq/gemv_extern.hpp>

template void orbitq::detail::gemv::multiply<orbitq::float16_t>(const orbitq::quantized_tensor&, std::size_t, std::size_t, std::span<const orbitq::float16_t>,
                                                    std::size_t, std::span<float>, unsigned, const char*, orbitq::gemv_arithmetic);
