/// @file reference.hpp
/// @brief Scalar reference kernels: the definition every SIMD kernel must match bit for bit.
///
/// Encoding of one value x of an orbit with parameters p (all float32):
///   v = x * p.inv_scale          (scale_application::multiply_inverse, the default)
///   v = x / p.scale, 0 if p.scale == 0   (scale_application::divide, numpy/coremltools style)
///   code = (int) clamp(R::apply(v) + p.zero_point, qmin, qmax), a NaN giving qmin (as the SIMD
///          kernels' max(v, qmin) does; quantize never encodes one: it refuses non-finite orbits)
#pragma once

#include "orbitq/algebra/statistics.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/policy/rounding.hpp"
#include "orbitq/policy/scheme.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>

namespace orbitq
{
    /// @brief How the scale is applied to a value before rounding.
    enum class scale_application
    {
        multiply_inverse,  ///< x * (1/scale), inverse computed once in f32 (FBGEMM, ggml, PyTorch)
        divide             ///< x / scale (numpy-style peers)
    };

    /// @brief The per-orbit constants a quantize kernel needs.
    struct encode_params
    {
        quant_params params;
        int qmin = -127;
        int qmax = 127;
        scale_application mode = scale_application::multiply_inverse;
    };
}

namespace orbitq::kernels::reference
{
    /// @brief Encodes one value. See the file brief for the formula.
    template <rounding_policy R>
    inline std::int8_t encode(float x, const encode_params& e) noexcept
    {
        float v = 0.0f;
        if (e.mode == scale_application::multiply_inverse) v = x * e.params.inv_scale;
        else v = e.params.scale != 0.0f ? x / e.params.scale : 0.0f;
        float r = R::apply(v) + static_cast<float>(e.params.zero_point);
        const float lo = static_cast<float>(e.qmin);
        const float hi = static_cast<float>(e.qmax);
        r = !(r >= lo) ? lo : (r > hi ? hi : r);  // NaN (never met by quantize, which refuses it) -> qmin
        return static_cast<std::int8_t>(static_cast<std::int32_t>(r));
    }

    /// @brief min and max of n values; also reports whether all were finite.
    /// @pre n > 0.
    template <weight_element T>
    min_max min_max_span(const T* x, std::size_t n, bool& all_finite) noexcept
    {
        min_max s = min_max::identity();
        all_finite = true;
        for (std::size_t i = 0; i < n; ++i)
        {
            const float v = to_float(x[i]);
            if (!std::isfinite(v)) all_finite = false;
            s = combine(s, min_max::observe(v));
        }
        return s;
    }

    /// @brief Encodes n values of one orbit into n int8 codes.
    template <rounding_policy R, weight_element T>
    void quantize_span(const T* x, std::size_t n, const encode_params& e, std::int8_t* out) noexcept
    {
        for (std::size_t i = 0; i < n; ++i) out[i] = encode<R>(to_float(x[i]), e);
    }

    /// @brief Index of the first non-finite value, if any.
    template <weight_element T>
    std::optional<std::size_t> find_non_finite(const T* x, std::size_t n) noexcept
    {
        for (std::size_t i = 0; i < n; ++i)
        {
            if (!std::isfinite(to_float(x[i]))) return i;
        }
        return std::nullopt;
    }
}
