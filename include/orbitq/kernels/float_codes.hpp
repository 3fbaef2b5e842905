/// @file float_codes.hpp
/// @brief Encoding values into small-float codes (E4M3FN bytes, E2M1 nibbles): the scalar
///        reference and the SIMD kernels that match it bit for bit.
///
/// Encoding of one value x of an orbit with scale s (float32): v = x / s (s = 0: the code of 0),
/// then the nearest code, ties to even, saturating (core/minifloat.hpp). Codes leave as int8:
/// an E4M3 byte's bit pattern, or an E2M1 nibble read as a two's complement int4 (sign-magnitude
/// 1.mmm becomes mmm - 8, so kernels::simd::pack_int4 packs the nibble itself).
///
/// The SIMD form rounds in integers on the float32 bits, as minifloat.hpp's encoders do: below
/// the smallest normal the magnitude times 2^(bias - 1 + M) is rounded by the conversion to
/// int32 (ties to even); above it, the mantissa is rounded to M bits by an integer addition and
/// the exponent rebased. Where the scale is a power of two (MX scales) it multiplies by the
/// inverse, which is exact and so equal to the division.
#pragma once

#include "orbitq/core/minifloat.hpp"
#include "orbitq/kernels/int4_packing.hpp"

#include <cstring>

namespace orbitq::kernels
{
    /// @brief The small-float code formats.
    enum class float_code
    {
        e4m3,  ///< OCP E4M3FN, one byte a value
        e2m1   ///< OCP E2M1, a nibble a value
    };

    namespace reference
    {
        /// @brief The int8 form of the code of v in format F (see the file brief).
        template <float_code F>
        inline std::int8_t encode_float(float v) noexcept
        {
            if constexpr (F == float_code::e4m3) return static_cast<std::int8_t>(to_e4m3(v));
            else
            {
                const std::uint8_t n = to_e2m1(v);
                return static_cast<std::int8_t>(n < 8 ? n : static_cast<int>(n) - 16);
            }
        }

        /// @brief Encodes n values of one orbit with scale `scale` into n int8 codes of format F.
        /// @pre the values are finite.
        template <float_code F, weight_element T>
        void encode_float_span(const T* x, std::size_t n, float scale, std::int8_t* out) noexcept
        {
            for (std::size_t i = 0; i < n; ++i) out[i] = encode_float<F>(scale != 0.0f ? to_float(x[i]) / scale : 0.0f);
        }
    }

    namespace simd
    {
        namespace detail
        {
            /// The int8 form of the codes of a batch (reference::encode_float for each lane).
            template <float_code F>
            [[gnu::always_inline]] inline int_batch float_codes(const float_batch& v) noexcept
            {
                constexpr int M = F == float_code::e4m3 ? 3 : 1, B = F == float_code::e4m3 ? 7 : 1, drop = 23 - M;
                constexpr std::int32_t max_bits = F == float_code::e4m3 ? 0x43e00000 : 0x40c00000;  // 448, 6
                constexpr std::int32_t min_normal_bits = (127 + 1 - B) << 23;
                const int_batch bits = xsimd::bitwise_cast<int_batch>(v);
                const int_batch u = xsimd::min(bits & int_batch(0x7fffffff), int_batch(max_bits));
                const int_batch sub = xsimd::nearbyint_as_int(xsimd::bitwise_cast<float_batch>(u) * float_batch(float(1 << (B - 1 + M))));
                const int_batch normal = ((u + int_batch((1 << (drop - 1)) - 1) + ((u >> drop) & int_batch(1))) >> drop) - int_batch((127 - B) << M);
                const int_batch m = xsimd::select(u < int_batch(min_normal_bits), sub, normal);
                if constexpr (F == float_code::e4m3) return xsimd::select(bits < int_batch(0), m - int_batch(128), m);
                else return xsimd::select((bits < int_batch(0)) && (m != int_batch(0)), m - int_batch(8), m);
            }

            /// x / scale as the reference computes it: a division, or a multiplication by the
            /// inverse where that is exact (a power-of-two scale).
            struct float_scaler
            {
                float_batch scale;
                float_batch inv;
                bool multiply;

                explicit float_scaler(float s) noexcept
                    : scale(s)
                    , inv(1.0f / s)
                    , multiply(s > 0.0f && std::isfinite(1.0f / s) && (std::bit_cast<std::uint32_t>(s) & 0x7fffffu) == 0
                               && std::bit_cast<std::uint32_t>(s) >= 0x00800000u)
                {
                }
                [[gnu::always_inline]] float_batch operator()(const float_batch& x) const noexcept { return multiply ? x * inv : x / scale; }
            };
        }

        /// @brief reference::encode_float_span, bit for bit.
        template <float_code F, weight_element T>
        void encode_float_span(const T* x, std::size_t n, float scale, std::int8_t* out) noexcept
        {
            if (scale == 0.0f)
            {
                std::memset(out, 0, n);
                return;
            }
            const detail::float_scaler scaled(scale);
            std::size_t i = 0;
            for (; i + width <= n; i += width) detail::store_int8(detail::float_codes<F>(scaled(detail::load(x + i, arch_type{}))), out + i, arch_type{});
            if (i < n) reference::encode_float_span<F>(x + i, n - i, scale, out + i);
        }

        /// @brief The fused pass over whole groups of NB batches of one row range: each group is
        ///        loaded once, its max |x| reduced, `on_group(g, amax, finite)` gives its scale
        ///        (0: a zero orbit), and its codes are encoded from registers into out + g * group.
        template <float_code F, std::size_t NB, weight_element T, class OnGroup>
        void encode_float_groups(const T* x, std::size_t groups, std::int8_t* out, OnGroup&& on_group)
        {
            constexpr std::size_t group = NB * width;
            for (std::size_t g = 0; g < groups; ++g)
            {
                const T* p = x + g * group;
                float_batch b[NB];
                for (std::size_t k = 0; k < NB; ++k) b[k] = detail::load(p + k * width, arch_type{});
                auto bad = detail::non_finite(b[0], arch_type{});
                float_batch a = xsimd::abs(b[0]);
                for (std::size_t k = 1; k < NB; ++k)
                {
                    bad = bad || detail::non_finite(b[k], arch_type{});
                    a = xsimd::max(a, xsimd::abs(b[k]));
                }
                const float scale = on_group(g, detail::reduce_max(a, arch_type{}), !xsimd::any(bad));
                std::int8_t* o = out + g * group;
                if (scale == 0.0f)
                {
                    std::memset(o, 0, group);
                    continue;
                }
                const detail::float_scaler scaled(scale);
                for (std::size_t k = 0; k < NB; ++k) detail::store_int8(detail::float_codes<F>(scaled(b[k])), o + k * width, arch_type{});
            }
        }
    }
}
