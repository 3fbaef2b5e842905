// The run-time quantize dispatch of this project's own tests, examples and benchmarks, compiled
// once (see orbitq/quantize_extern.hpp, which CMake force-includes in the programs linking
// orbitq_quantize_instances).
#include <orbitq/quantize_instances.hpp>
