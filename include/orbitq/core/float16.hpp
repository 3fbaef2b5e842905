/// @file float16.hpp
/// @brief Exact conversions between float32 and the two 16-bit float formats used by checkpoints:
///        bfloat16 (1-8-7) and IEEE binary16 (1-5-10).
///
/// Widening (16 -> 32 bit) is exact for every input, NaN payloads included.
/// Narrowing (32 -> 16 bit) rounds to nearest, ties to even, like the hardware instructions and
/// PyTorch; overflow goes to infinity, NaN stays NaN (quiet).
#pragma once

#include <bit>
#include <cstdint>

namespace orbitq
{
    /// @brief A bfloat16 value held as its bit pattern. Trivially copyable, 2 bytes, so a
    ///        memory-mapped bf16 tensor can be viewed as an array of it without a copy.
    struct bfloat16_t
    {
        std::uint16_t bits;
    };

    /// @brief An IEEE 754 binary16 value held as its bit pattern.
    struct float16_t
    {
        std::uint16_t bits;
    };

    static_assert(sizeof(bfloat16_t) == 2 && sizeof(float16_t) == 2);

    /// @brief Widens bfloat16 to float32 (exact: bf16 is the top half of a float32).
    constexpr float to_float(bfloat16_t h) noexcept
    {
        return std::bit_cast<float>(static_cast<std::uint32_t>(h.bits) << 16);
    }

    /// @brief Identity overload so generic code can call `to_float` on any element type.
    constexpr float to_float(float f) noexcept { return f; }

    /// @brief Narrows float32 to bfloat16, round to nearest even; NaN stays a quiet NaN.
    constexpr bfloat16_t to_bfloat16(float f) noexcept
    {
        const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
        if ((u & 0x7fffffffu) > 0x7f800000u)  // NaN: keep sign, force quiet bit
        {
            return bfloat16_t{static_cast<std::uint16_t>((u >> 16) | 0x0040u)};
        }
        const std::uint32_t rounding_bias = 0x7fffu + ((u >> 16) & 1u);
        return bfloat16_t{static_cast<std::uint16_t>((u + rounding_bias) >> 16)};
    }

    /// @brief Widens IEEE binary16 to float32; exact for normals, subnormals, inf and NaN.
    constexpr float to_float(float16_t h) noexcept
    {
        const std::uint32_t sign = static_cast<std::uint32_t>(h.bits & 0x8000u) << 16;
        const std::uint32_t exp = (h.bits >> 10) & 0x1fu;
        std::uint32_t mant = h.bits & 0x3ffu;
        std::uint32_t out = 0;
        if (exp == 0x1fu)
        {
            out = sign | 0x7f800000u | (mant << 13);
        }
        else if (exp != 0)
        {
            out = sign | ((exp + 112u) << 23) | (mant << 13);
        }
        else if (mant != 0)
        {
            // subnormal: normalise the mantissa
            std::uint32_t e = 113;
            while ((mant & 0x400u) == 0)
            {
                mant <<= 1;
                --e;
            }
            out = sign | (e << 23) | ((mant & 0x3ffu) << 13);
        }
        else
        {
            out = sign;
        }
        return std::bit_cast<float>(out);
    }

    /// @brief Narrows float32 to IEEE binary16, round to nearest even; overflow to +-inf,
    ///        underflow through the subnormals to +-0, NaN to a quiet NaN.
    constexpr float16_t to_float16(float f) noexcept
    {
        const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
        const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
        const std::uint32_t a = u & 0x7fffffffu;
        if (a > 0x7f800000u)
        {
            return float16_t{static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu))};
        }
        if (a >= 0x477ff000u)  // rounds to >= 65520 -> inf (also catches inf)
        {
            return float16_t{static_cast<std::uint16_t>(sign | 0x7c00u)};
        }
        if (a < 0x38800000u)  // below the smallest normal half (2^-14): subnormal or zero
        {
            if (a < 0x33000000u)  // below half the smallest subnormal (2^-25): rounds to 0
            {
                return float16_t{sign};
            }
            const std::uint32_t e = a >> 23;
            const std::uint32_t m = (a & 0x7fffffu) | 0x800000u;
            const std::uint32_t shift = 126u - e;  // 14..24
            const std::uint32_t q = m >> shift;
            const std::uint32_t rem = m & ((1u << shift) - 1u);
            const std::uint32_t half = 1u << (shift - 1u);
            const std::uint32_t r = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
            return float16_t{static_cast<std::uint16_t>(sign | r)};
        }
        const std::uint32_t rebased = a - (112u << 23);
        const std::uint32_t rounded = rebased + 0xfffu + ((rebased >> 13) & 1u);
        return float16_t{static_cast<std::uint16_t>(sign | (rounded >> 13))};
    }

    /// @brief Rounds a float32 through bfloat16 and back.
    constexpr float round_to_bfloat16(float f) noexcept { return to_float(to_bfloat16(f)); }
    /// @brief Rounds a float32 through binary16 and back.
    constexpr float round_to_float16(float f) noexcept { return to_float(to_float16(f)); }
}
