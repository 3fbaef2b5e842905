// Helpers shared by the kernel tests (test_kernels.cpp: spans and groups; test_kernel_tiles.cpp:
// tiles and streaming): input patterns and the reference comparisons.
#pragma once

#include <doctest/doctest.h>

#include <orbitq/kernels/reference.hpp>
#include <orbitq/kernels/simd.hpp>
#include <orbitq/quantize.hpp>

#include <cstdint>
#include <random>
#include <vector>

namespace kernel_tests
{
    using namespace orbitq;
    inline constexpr std::size_t lengths[] = {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 704, 1000};

    template <class T>
    T from_float(float x)
    {
        if constexpr (std::same_as<T, float>) return x;
        else if constexpr (std::same_as<T, bfloat16_t>) return to_bfloat16(x);
        else return to_float16(x);
    }

    /// normal * sigma with ~1% outliers x20, converted to T.
    template <class T>
    std::vector<T> random_values(std::size_t n, unsigned seed, float sigma = 0.02f)
    {
        std::mt19937 gen(seed);
        std::normal_distribution<float> d(0.0f, sigma);
        std::vector<T> v(n);
        for (auto& x : v) x = from_float<T>(d(gen) * (gen() % 97 == 0 ? 20.0f : 1.0f));
        return v;
    }

    /// Values whose scaled value (with inv_scale 1 or 1/0.5) sits exactly on a .5 tie, both
    /// signs, and values far outside the code range (they clamp). Exact in bf16 and f16.
    template <class T>
    std::vector<T> tie_and_clamp_values(std::size_t n)
    {
        static const float pattern[] = {0.5f,  -0.5f, 1.5f,  -1.5f, 2.5f,   -2.5f,  3.5f,   -3.5f,   6.5f,   -6.5f,  7.5f,
                                        -7.5f, 8.5f,  -8.5f, 126.5f, -126.5f, 127.5f, -127.5f, -128.5f, 1000.0f, -1000.0f, 0.0f,
                                        -0.0f, 0.25f, -0.75f, 64.5f, -64.5f, 3.0f,  -4.0f,  96.5f,  -100.5f};
        std::vector<T> v(n);
        for (std::size_t i = 0; i < n; ++i) v[i] = from_float<T>(pattern[(i * 7) % std::size(pattern)]);
        return v;
    }

    template <class S>
    encode_params params_for(const min_max& s, scale_application mode)
    {
        return encode_params{S::make_params(s), S::qmin, S::qmax, mode};
    }

    /// First index where the two code arrays differ, or n.
    inline std::size_t first_difference(const std::vector<std::int8_t>& a, const std::vector<std::int8_t>& b)
    {
        for (std::size_t i = 0; i < a.size(); ++i)
        {
            if (a[i] != b[i]) return i;
        }
        return a.size();
    }

    template <rounding_policy R, class T>
    void check_quantize_span(const std::vector<T>& x, const encode_params& e)
    {
        std::vector<std::int8_t> want(x.size(), 99);
        std::vector<std::int8_t> got(x.size(), 99);
        kernels::reference::quantize_span<R>(x.data(), x.size(), e, want.data());
        kernels::simd::quantize_span<R>(x.data(), x.size(), e, got.data());
        const std::size_t i = first_difference(want, got);
        CAPTURE(i);
        CAPTURE(e.params.scale);
        CAPTURE(e.params.zero_point);
        REQUIRE(i == x.size());
    }

}
