// Exactness of the bfloat16 / binary16 conversions.
#include <doctest/doctest.h>

#include <orbitq/core/float16.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

using namespace orbitq;

TEST_CASE("bf16: every bit pattern widens exactly and narrows back to itself")
{
    for (std::uint32_t b = 0; b < 65536; ++b)
    {
        const bfloat16_t h{static_cast<std::uint16_t>(b)};
        const float f = to_float(h);
        CHECK(std::bit_cast<std::uint32_t>(f) == b << 16);
        if (!std::isnan(f)) CHECK(to_bfloat16(f).bits == b);
        else CHECK(std::isnan(to_float(to_bfloat16(f))));
    }
}

TEST_CASE("bf16 narrowing rounds to nearest, ties to even")
{
    CHECK(to_bfloat16(std::bit_cast<float>(0x3f808000u)).bits == 0x3f80);  // tie, even stays
    CHECK(to_bfloat16(std::bit_cast<float>(0x3f818000u)).bits == 0x3f82);  // tie, odd rounds up
    CHECK(to_bfloat16(std::bit_cast<float>(0x3f808001u)).bits == 0x3f81);  // above the tie
    CHECK(to_bfloat16(std::bit_cast<float>(0x3f807fffu)).bits == 0x3f80);  // below the tie
    CHECK(to_bfloat16(std::numeric_limits<float>::max()).bits == 0x7f80);  // overflow to inf
    CHECK(to_bfloat16(-0.0f).bits == 0x8000);
}

TEST_CASE("f16: every bit pattern widens exactly and narrows back to itself")
{
    for (std::uint32_t b = 0; b < 65536; ++b)
    {
        const float16_t h{static_cast<std::uint16_t>(b)};
        const float f = to_float(h);
#if defined(__FLT16_MAX__)
        const float hw = static_cast<float>(std::bit_cast<_Float16>(h.bits));
        if (!std::isnan(hw)) CHECK(f == hw);
#endif
        if (!std::isnan(f)) CHECK(to_float16(f).bits == b);
        else CHECK(std::isnan(to_float(to_float16(f))));
    }
    CHECK(to_float(float16_t{0x3c00}) == 1.0f);
    CHECK(to_float(float16_t{0x0001}) == std::ldexp(1.0f, -24));
    CHECK(to_float(float16_t{0x7bff}) == 65504.0f);
}

TEST_CASE("f16 narrowing agrees with the compiler's round-to-nearest-even conversion")
{
    CHECK(to_float16(65519.0f).bits == 0x7bff);
    CHECK(to_float16(65520.0f).bits == 0x7c00);                 // rounds to inf
    CHECK(to_float16(std::ldexp(1.0f, -25)).bits == 0x0000);    // tie between 0 and the smallest subnormal
    CHECK(to_float16(std::ldexp(1.5f, -25)).bits == 0x0001);
    CHECK(to_float16(std::ldexp(3.0f, -25)).bits == 0x0002);    // tie 1.5 ulp -> even (2)
#if defined(__FLT16_MAX__)
    std::mt19937 gen(11);
    for (int i = 0; i < 2000000; ++i)
    {
        // exponents around the binary16 range, random mantissas
        const std::uint32_t u = (gen() & 0x807fffffu) | ((96u + gen() % 64u) << 23);
        const float f = std::bit_cast<float>(u);
        const auto hw = std::bit_cast<std::uint16_t>(static_cast<_Float16>(f));
        REQUIRE(to_float16(f).bits == hw);
    }
#endif
}
