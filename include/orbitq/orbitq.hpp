/// @file orbitq.hpp
/// @brief Umbrella header: the whole core library (quantizers, statistics, analysis, metrics, xtensor adaptors).
/// The kernels for inference (gemv.hpp) and the safetensors I/O (io/, needs nlohmann_json) are included separately.
#pragma once

#include "orbitq/algebra/orbits.hpp"
#include "orbitq/analyze.hpp"
#include "orbitq/algebra/statistics.hpp"
#include "orbitq/core/error.hpp"
#include "orbitq/core/float16.hpp"
#include "orbitq/core/parallel.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/metrics.hpp"
#include "orbitq/policy/granularity.hpp"
#include "orbitq/policy/rounding.hpp"
#include "orbitq/policy/scheme.hpp"
#include "orbitq/quantize.hpp"
#include "orbitq/xtensor.hpp"
