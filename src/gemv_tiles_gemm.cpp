// gemm's register tiles (several tokens), float and int8-dot arithmetic: see src/gemv_instances.cpp.
#include <orbitq/gemv_extern.hpp>

namespace orbitq::detail::gemv
{
    template void run<gemm_rows, gemm_tokens>(const quantized_tensor&, const plan&, std::size_t, std::size_t, const float*, std::size_t,
                                              float*, unsigned);
    template void run_int8_dot_tiles<gemm_rows, gemm_tokens>(const quantized_tensor&, std::size_t, std::size_t,
                                                             const kernels::int4_dot::activation_blocks&, std::size_t, float*, unsigned);
}
