// The gemv/gemm kernel dispatch for the three activation types, compiled once for this
// project's tests, examples and benchmarks (see orbitq/gemv_extern.hpp, which CMake
// force-includes in the programs linking orbitq_gemv_instances); a target of its own, so a
// sanitizer build can optimize it alone (the MoE forward pass runs through it). The register
// tiles, the same for every activation type, are in gemv_tiles_gemv.cpp and gemv_tiles_gemm.cpp,
// which compile side by side.
#include <orbitq/gemv_extern.hpp>

namespace orbitq::detail::gemv
{
    template void multiply<float>(const quantized_tensor&, std::size_t, std::size_t, std::span<const float>, std::size_t,
                                  std::span<float>, unsigned, const char*, gemv_arithmetic);
    template void multiply<bfloat16_t>(const quantized_tensor&, std::size_t, std::size_t, std::span<const bfloat16_t>, std::size_t,
                                       std::span<float>, unsigned, const char*, gemv_arithmetic);
    template void multiply<float16_t>(const quantized_tensor&, std::size_t, std::size_t, std::span<const float16_t>, std::size_t,
                                      std::span<float>, unsigned, const char*, gemv_arithmetic);
}
