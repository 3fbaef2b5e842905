/// @file rounding.hpp
/// @brief Rounding policies: how a scaled value becomes an integer.
///
/// Each policy has a scalar `apply(float) -> float` (returns an integral float) used by the
/// reference kernel. SIMD kernels implement the same function and are tested bit-identical.
#pragma once

#include <cmath>
#include <concepts>

namespace orbitq
{
    /// @brief Round half to even (banker's rounding): std::nearbyint in the default FP
    ///        environment. The default; matches PyTorch, coremltools (np.round) and ONNX.
    struct half_to_even
    {
        static constexpr const char* name = "half_to_even";
        static float apply(float v) noexcept { return std::nearbyint(v); }
    };

    /// @brief Round half away from zero: std::round / C roundf. Matches ggml's Q8_0 reference.
    struct half_away_from_zero
    {
        static constexpr const char* name = "half_away_from_zero";
        static float apply(float v) noexcept { return std::round(v); }
    };

    /// @brief A rounding policy: a static `apply(float) -> float` and a `name`.
    template <class R>
    concept rounding_policy = requires(float v) {
        { R::apply(v) } -> std::same_as<float>;
        { R::name } -> std::convertible_to<const char*>;
    };

    static_assert(rounding_policy<half_to_even> && rounding_policy<half_away_from_zero>);
}
