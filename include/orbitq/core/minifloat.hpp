/// @file minifloat.hpp
/// @brief The small float formats of FP8 and FP4 checkpoints, as exact scalar conversions:
///        E4M3FN (OCP FP8, 1-4-3, bias 7, max 448, no infinities, NaN = S.1111.111),
///        E2M1 (OCP FP4, 1-2-1, bias 1: 0, 0.5, 1, 1.5, 2, 3, 4, 6 with a sign) and
///        E8M0 (the MX shared scale: 2^(byte - 127), byte 255 NaN).
///
/// Encoding rounds to nearest, ties to even, and saturates to the largest finite magnitude
/// (448, 6) as the conversions of compressed-tensors, torch (`saturate`) and the OCP
/// specifications' "saturating" mode do. The encoders are the scalar references of the SIMD
/// kernels (kernels/float_codes.hpp), which match them bit for bit.
#pragma once

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

namespace orbitq
{
    /// @brief Largest finite E4M3FN magnitude.
    inline constexpr float e4m3_max = 448.0f;
    /// @brief Largest E2M1 magnitude.
    inline constexpr float e2m1_max = 6.0f;

    namespace detail
    {
        constexpr std::array<float, 256> make_e4m3_values() noexcept
        {
            std::array<float, 256> t{};
            for (unsigned b = 0; b < 256; ++b)
            {
                const unsigned e = (b >> 3) & 15u, m = b & 7u;
                float v = 0.0f;
                if (e == 15u && m == 7u) v = std::numeric_limits<float>::quiet_NaN();
                else if (e == 0) v = static_cast<float>(m) / 512.0f;  // m * 2^-9
                else
                {
                    v = 1.0f + static_cast<float>(m) / 8.0f;
                    for (unsigned k = e; k > 7; --k) v *= 2.0f;
                    for (unsigned k = e; k < 7; ++k) v /= 2.0f;
                }
                t[b] = (b & 0x80u) ? -v : v;
            }
            return t;
        }
    }

    /// @brief The value of every E4M3FN byte (bytes 0x7f and 0xff are NaN).
    inline constexpr std::array<float, 256> e4m3_values = detail::make_e4m3_values();

    /// @brief The value of an E4M3FN byte.
    constexpr float e4m3_to_float(std::uint8_t b) noexcept { return e4m3_values[b]; }

    namespace detail
    {
        /// The magnitude code (exponent and mantissa bits) of |v| = a in a sign-magnitude float
        /// format with M mantissa bits and exponent bias B whose largest finite magnitude is
        /// `max`: nearest, ties to even, saturating. Below the smallest normal 2^(1-B) the
        /// codes are the multiples of 2^(1-B-M) in order (the code after the last subnormal is
        /// the smallest normal); above it, the float32 mantissa is rounded to M bits by integer
        /// addition (a carry into the exponent is the correct next binade) and the exponent
        /// rebased. @pre a >= 0, not NaN.
        template <int M, int B>
        inline std::uint32_t minifloat_magnitude(float a, float max) noexcept
        {
            if (a >= max) a = max;
            if (a < std::ldexp(1.0f, 1 - B)) return static_cast<std::uint32_t>(std::nearbyint(a * std::ldexp(1.0f, B - 1 + M)));
            const std::uint32_t u = std::bit_cast<std::uint32_t>(a);
            constexpr int drop = 23 - M;
            const std::uint32_t r = (u + ((1u << (drop - 1)) - 1u) + ((u >> drop) & 1u)) >> drop;
            return r - (static_cast<std::uint32_t>(127 - B) << M);
        }
    }

    /// @brief Rounds float32 to E4M3FN: nearest, ties to even, saturating at ±448; the sign is
    ///        kept (a value that rounds to zero gives ±0); NaN gives 0x7f (with the sign).
    inline std::uint8_t to_e4m3(float v) noexcept
    {
        const std::uint8_t sign = static_cast<std::uint8_t>((std::bit_cast<std::uint32_t>(v) >> 24) & 0x80u);
        if (std::isnan(v)) return sign | 0x7fu;
        return sign | static_cast<std::uint8_t>(detail::minifloat_magnitude<3, 7>(std::fabs(v), e4m3_max));
    }

    /// @brief The E2M1 magnitudes, by 3-bit magnitude code.
    inline constexpr std::array<float, 8> e2m1_magnitudes{0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

    /// @brief The value of an E2M1 code (low 4 bits of `nibble`: sign bit 3, magnitude bits 0-2).
    constexpr float e2m1_to_float(std::uint8_t nibble) noexcept
    {
        const float m = e2m1_magnitudes[nibble & 7u];
        return (nibble & 8u) ? -m : m;
    }

    /// @brief Rounds float32 to an E2M1 code (a nibble): nearest, ties to even, saturating at ±6.
    ///        A value that rounds to zero gives +0 (code 0): compressed-tensors' packing takes the
    ///        sign from the rounded value. @pre v is not NaN.
    inline std::uint8_t to_e2m1(float v) noexcept
    {
        const auto m = static_cast<std::uint8_t>(detail::minifloat_magnitude<1, 1>(std::fabs(v), e2m1_max));
        return static_cast<std::uint8_t>(m != 0 && v < 0.0f ? (m | 8u) : m);
    }

    /// @brief The value of an E8M0 byte: 2^(b - 127); byte 255 is NaN.
    inline float e8m0_to_float(std::uint8_t b) noexcept
    {
        if (b == 255u) return std::numeric_limits<float>::quiet_NaN();
        return std::ldexp(1.0f, static_cast<int>(b) - 127);
    }
}
