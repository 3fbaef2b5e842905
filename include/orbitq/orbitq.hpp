/// @file orbitq.hpp
/// @brief Umbrella header: the whole core library (quantizers, statistics, metrics, xtensor adaptors).
#pragma once

#include "orbitq/algebra/orbits.hpp"
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
