// The gemv/gemm kernel dispatch for the three activation types and the register tiles it runs,
// compiled once for this project's tests, examples and benchmarks (see orbitq/gemv_extern.hpp,
// which CMake force-includes in the programs linking orbitq_gemv_instances); a target of its own,
// so a sanitizer build can optimize it alone (the MoE forward pass runs through it).
#include <orbitq/gemv_instances.hpp>
