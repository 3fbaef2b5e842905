// Helpers shared by the kernel tests (test_kernels.cpp: spans and groups; test_kernel_tiles.cpp:
// tiles; test_kernel_passes.cpp: streamed codes and quantize's fast paths): input patterns, two
// schemes of a user's own, and the reference comparisons.
#pragma once

#include <doctest/doctest.h>

#include <orbitq/kernels/reference.hpp>
#include <orbitq/kernels/simd.hpp>
#include <orbitq/quantize.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <tuple>
#include <type_traits>
#include <vector>

// The kernel tests instantiate every kernel for each element type they cover. The build makes
// one executable per element type of each (tests/CMakeLists.txt defines ORBITQ_TEST_ELEMENT as
// 0 for f32, which also runs the untyped cases, 1 for bf16, 2 for f16), so the three compile
// side by side; a file compiled without it covers all three.
#ifndef ORBITQ_TEST_ELEMENT
#define ORBITQ_TEST_ELEMENT -1
#endif

namespace kernel_tests
{
    using namespace orbitq;

    /// The element types of this executable, for TEST_CASE_TEMPLATE_APPLY.
    using all_elements = std::tuple<float, bfloat16_t, float16_t>;
    using test_elements = std::conditional_t<(ORBITQ_TEST_ELEMENT < 0), all_elements,
                                             std::tuple<std::tuple_element_t<(ORBITQ_TEST_ELEMENT < 0 ? 0 : ORBITQ_TEST_ELEMENT), all_elements>>>;
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

    /// Schemes of a user's own (not builtin, so the tiles take their generic paths: statistics
    /// as float min and max or bf16 ordered keys, parameters lane by lane through make_params,
    /// a float32 clamp before rounding). Their scales are too small for the values' range, so
    /// the clamp bites at both ends: the asymmetric one spreads a group over 300 steps around a
    /// zero point that centres it, the symmetric one puts max |x| at code 9 (codes -8..7).
    struct user_asymmetric
    {
        static constexpr int bits = 8;
        static constexpr int qmin = -128;
        static constexpr int qmax = 127;
        static constexpr bool has_zero_point = true;

        static quant_params make_params(const min_max& s) noexcept
        {
            const float scale = (s.max - s.min) / 300.0f;
            if (!(scale > 0.0f)) return {};
            const float zp = std::clamp(-std::nearbyint((s.max + s.min) * 0.5f / scale), float(qmin), float(qmax));
            return {scale, 1.0f / scale, static_cast<std::int32_t>(zp)};
        }
    };

    struct user_symmetric_int4
    {
        static constexpr int bits = 4;
        static constexpr int qmin = -8;
        static constexpr int qmax = 7;
        static constexpr bool has_zero_point = false;

        static quant_params make_params(const min_max& s) noexcept
        {
            const float scale = std::max(-s.min, s.max) / 9.0f;
            if (!(scale > 0.0f)) return {};
            return {scale, 1.0f / scale, 0};
        }
    };
    static_assert(scheme_policy<user_asymmetric> && !is_builtin_scheme<user_asymmetric>);
    static_assert(scheme_policy<user_symmetric_int4> && !is_builtin_scheme<user_symmetric_int4>);

    /// quantize_groups_with_params against the reference, group by group: codes, scales and
    /// zero points, and the groups it hands to on_group (only those outside whole clean tiles).
    /// @return how many groups went through on_group
    /// Stream: the codes are streamed where the tiles can, into a line-aligned buffer at
    /// `offset` bytes from its start (a misaligned one must fall back to plain stores).
    template <rounding_policy R, class S, class T, bool Stream = false>
    std::size_t check_groups_with_params(const std::vector<T>& x, std::size_t group, std::size_t offset = 0)
    {
        std::size_t handed = 0;
        const std::size_t n = x.size();
        const std::size_t groups = (n + group - 1) / group;
        code_vector buffer(offset + n, 99);
        std::vector<float> scales(groups, -1.0f);
        std::vector<std::int32_t> zps(groups, -1000);
        kernels::simd::quantize_groups_with_params<R, S, Stream>(x.data(), n, group, scales.data(), S::has_zero_point ? zps.data() : nullptr,
                                                                  buffer.data() + offset, [&](std::size_t g, const min_max& s, bool finite) {
                                                              REQUIRE(finite);
                                                              ++handed;
                                                              const quant_params p = S::make_params(s);
                                                              scales[g] = p.scale;
                                                              zps[g] = p.zero_point;
                                                              return encode_params{p, S::qmin, S::qmax, scale_application::multiply_inverse};
                                                          });
        kernels::simd::store_fence();
        REQUIRE(std::all_of(buffer.begin(), buffer.begin() + offset, [](std::int8_t c) { return c == 99; }));
        const std::vector<std::int8_t> got(buffer.begin() + offset, buffer.end());
        std::vector<std::int8_t> want(n, 99);
        for (std::size_t g = 0; g < groups; ++g)
        {
            const std::size_t c0 = g * group;
            const std::size_t m = std::min(group, n - c0);
            bool f = false;
            const quant_params p = S::make_params(kernels::reference::min_max_span(x.data() + c0, m, f));
            CAPTURE(g);
            REQUIRE(scales[g] == p.scale);
            if (S::has_zero_point) REQUIRE(zps[g] == p.zero_point);
            kernels::reference::quantize_span<R>(x.data() + c0, m, encode_params{p, S::qmin, S::qmax, scale_application::multiply_inverse},
                                                 want.data() + c0);
        }
        const std::size_t i = first_difference(want, got);
        CAPTURE(i);
        CHECK(i == n);
        return handed;
    }

    template <class T, bool Stream = false>
    void check_all_schemes_with_params(const std::vector<T>& x, std::size_t group, std::size_t offset = 0)
    {
        check_groups_with_params<half_to_even, symmetric<8>, T, Stream>(x, group, offset);
        check_groups_with_params<half_away_from_zero, symmetric<8>, T, Stream>(x, group, offset);
        check_groups_with_params<half_to_even, symmetric<8, symmetric_range::full>, T, Stream>(x, group, offset);
        check_groups_with_params<half_to_even, symmetric<4>, T, Stream>(x, group, offset);
        check_groups_with_params<half_away_from_zero, symmetric<4, symmetric_range::full>, T, Stream>(x, group, offset);
        check_groups_with_params<half_to_even, asymmetric<8>, T, Stream>(x, group, offset);
        check_groups_with_params<half_away_from_zero, asymmetric<8>, T, Stream>(x, group, offset);
        check_groups_with_params<half_to_even, asymmetric<4>, T, Stream>(x, group, offset);
        check_groups_with_params<half_to_even, user_asymmetric, T, Stream>(x, group, offset);
        check_groups_with_params<half_away_from_zero, user_symmetric_int4, T, Stream>(x, group, offset);
    }
}
