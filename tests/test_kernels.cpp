// The xsimd kernels against the scalar reference: codes bit-identical, statistics equal, the same
// non-finite verdicts, on every length class (whole batches, tails, one element), every rounding,
// scheme, input type and scale application. Built for the native ISA and, in CI, for the
// baseline x86-64 (-DORBITQ_NATIVE=OFF: SSE2), so every kernel variant is checked. This file:
// span statistics, span encodes, the fused group pass; test_kernel_tiles.cpp: tiles of groups
// with vector parameters, int4 packing, streaming stores.
#include "kernel_test_support.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using namespace orbitq;
using namespace kernel_tests;

namespace
{
    /// span(x, n, finite) against the reference statistic of random finite values of length n
    /// (three seeds): both report them finite, and check(got, want) holds.
    template <class T, class Span, class Check>
    void check_random_spans(std::size_t n, Span span, Check check)
    {
        for (unsigned seed = 0; seed < 3; ++seed)
        {
            const auto x = random_values<T>(n, seed);
            bool f_ref = false;
            bool f = false;
            const min_max want = kernels::reference::min_max_span(x.data(), n, f_ref);
            const min_max got = span(x.data(), n, f);
            CHECK(f_ref);
            CHECK(f);
            check(got, want);
        }
    }
}

TEST_CASE_TEMPLATE("simd min_max_span equals the reference on every length", T, float, bfloat16_t, float16_t)
{
    for (std::size_t n : lengths)
    {
        CAPTURE(n);
        check_random_spans<T>(
            n, [](const T* p, std::size_t m, bool& f) { return kernels::simd::min_max_span(p, m, f); },
            [](const min_max& got, const min_max& want) { CHECK(got == want); });
        // the extreme at every position: the reduction sees every lane and the tail
        for (std::size_t pos = 0; pos < n; ++pos)
        {
            std::vector<T> x(n, from_float<T>(0.25f));
            x[pos] = from_float<T>(-3.0f);
            if (pos + 1 < n) x[pos + 1] = from_float<T>(5.0f);
            bool f = false;
            const min_max got = kernels::simd::min_max_span(x.data(), n, f);
            bool f_ref = false;
            REQUIRE(got == kernels::reference::min_max_span(x.data(), n, f_ref));
        }
        if constexpr (std::same_as<T, float>)
        {
            // finite values whose pairwise products overflow to both infinities (a NaN check on
            // products, unfused, would sum them to NaN): still finite
            for (float big : {1e20f, 3e38f, std::numeric_limits<float>::max()})
            {
                CAPTURE(big);
                std::vector<float> x(n);
                for (std::size_t i = 0; i < n; ++i) x[i] = (i / kernels::simd::width) % 4 == 3 ? -big : big;
                bool f = false;
                bool f_ref = false;
                const min_max got = kernels::simd::min_max_span(x.data(), n, f);
                CHECK(f);
                CHECK(got == kernels::reference::min_max_span(x.data(), n, f_ref));
            }
        }
    }
}

TEST_CASE_TEMPLATE("simd abs_max_span gives the reference's max |x| on every length", T, float, bfloat16_t, float16_t)
{
    for (std::size_t n : lengths)
    {
        CAPTURE(n);
        check_random_spans<T>(
            n, [](const T* p, std::size_t m, bool& f) { return kernels::simd::abs_max_span(p, m, f); },
            [](const min_max& got, const min_max& want) {
                CHECK(got.to_abs_max() == want.to_abs_max());
                CHECK(got.max == want.to_abs_max().value);
            });
        for (std::size_t pos = 0; pos < n; ++pos)
        {
            std::vector<T> x(n, from_float<T>(0.25f));
            x[pos] = from_float<T>(pos % 2 ? -3.0f : 3.0f);
            bool f = false;
            REQUIRE(kernels::simd::abs_max_span(x.data(), n, f).max == 3.0f);
            for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity()})
            {
                x[pos] = from_float<T>(bad);
                bool finite = true;
                (void)kernels::simd::abs_max_span(x.data(), n, finite);
                REQUIRE_FALSE(finite);
            }
        }
    }
}

TEST_CASE_TEMPLATE("fold_abs_bits over a band of rows gives each column range's max |x|, and sees non-finite values", T, float, bfloat16_t, float16_t)
{
    for (std::size_t cols : {1u, 15u, 16u, 33u, 704u})
    {
        for (std::size_t rows : {1u, 3u})
        {
            CAPTURE(cols);
            CAPTURE(rows);
            auto x = random_values<T>(rows * cols, static_cast<unsigned>(cols + rows));
            x[cols / 2] = from_float<T>(-0.0f);
            std::vector<kernels::simd::magnitude_bits<T>> acc(cols, 0);
            for (std::size_t r = 0; r < rows; ++r) kernels::simd::fold_abs_bits(x.data() + r * cols, cols, acc.data());
            for (std::size_t c0 = 0; c0 < cols; c0 += 7)
            {
                const std::size_t m = std::min<std::size_t>(7, cols - c0);
                float want = 0.0f;
                for (std::size_t r = 0; r < rows; ++r)
                {
                    for (std::size_t c = c0; c < c0 + m; ++c) want = std::max(want, std::fabs(to_float(x[r * cols + c])));
                }
                bool finite = false;
                CHECK(kernels::simd::max_folded_abs<T>(acc.data() + c0, m, finite) == want);
                CHECK(finite);
            }
            for (float bad : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()})
            {
                auto y = x;
                y[(rows - 1) * cols + cols - 1] = from_float<T>(bad);  // last row, last column
                std::vector<kernels::simd::magnitude_bits<T>> a(cols, 0);
                for (std::size_t r = 0; r < rows; ++r) kernels::simd::fold_abs_bits(y.data() + r * cols, cols, a.data());
                bool finite = true;
                (void)kernels::simd::max_folded_abs<T>(a.data(), cols, finite);
                CHECK_FALSE(finite);
                if (cols > 1)
                {
                    (void)kernels::simd::max_folded_abs<T>(a.data(), cols - 1, finite);  // the columns before it
                    CHECK(finite);
                }
            }
        }
    }
}

TEST_CASE_TEMPLATE("simd zero_range_span gives the reference's min(min, 0) and max(max, 0) on every length", T, float, bfloat16_t, float16_t)
{
    const auto same_params = [](const min_max& a, const min_max& b) {
        const quant_params p = asymmetric<8>::make_params(a);
        const quant_params q = asymmetric<8>::make_params(b);
        const quant_params p4 = asymmetric<4>::make_params(a);
        const quant_params q4 = asymmetric<4>::make_params(b);
        return p.scale == q.scale && p.zero_point == q.zero_point && p4.scale == q4.scale && p4.zero_point == q4.zero_point;
    };
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const float inf = std::numeric_limits<float>::infinity();
    for (std::size_t n : lengths)
    {
        CAPTURE(n);
        check_random_spans<T>(
            n, [](const T* p, std::size_t m, bool& f) { return kernels::simd::zero_range_span(p, m, f); },
            [&](const min_max& got, const min_max& want) {
                CHECK(got.min == std::min(want.min, 0.0f));
                CHECK(got.max == std::max(want.max, 0.0f));
                CHECK(same_params(got, want));
            });
        // one sign only, and signed zeros: the missing side is 0 (+0: -0 < 0 is false)
        for (float v : {0.25f, -0.25f, -0.0f, 0.0f})
        {
            CAPTURE(v);
            const std::vector<T> x(n, from_float<T>(v));
            bool f = false;
            const min_max got = kernels::simd::zero_range_span(x.data(), n, f);
            CHECK(f);
            CHECK(got.min == std::min(v, 0.0f));
            CHECK(got.max == std::max(v, 0.0f));
            CHECK_FALSE((got.min == 0.0f && std::signbit(got.min)));
            bool f_ref = false;
            CHECK(same_params(got, kernels::reference::min_max_span(x.data(), n, f_ref)));
        }
        for (std::size_t pos = 0; pos < n; ++pos)
        {
            std::vector<T> x(n, from_float<T>(0.25f));
            x[pos] = from_float<T>(-3.0f);
            if (pos + 1 < n) x[pos + 1] = from_float<T>(5.0f);
            bool f = false;
            const min_max got = kernels::simd::zero_range_span(x.data(), n, f);
            REQUIRE(f);
            REQUIRE(got.min == -3.0f);
            REQUIRE(got.max == (pos + 1 < n ? 5.0f : n > 1 ? 0.25f : 0.0f));
            // the largest finite magnitudes of both signs are finite; NaN of either sign and the
            // infinities are not
            const float big = [] {
                if constexpr (std::same_as<T, float>) return std::numeric_limits<float>::max();
                else return to_float(T{std::same_as<T, bfloat16_t> ? std::uint16_t{0x7f7f} : std::uint16_t{0x7bff}});
            }();
            REQUIRE(std::isfinite(big));
            x[pos] = from_float<T>(pos % 2 ? -big : big);
            f = false;
            (void)kernels::simd::zero_range_span(x.data(), n, f);
            REQUIRE(f);
            for (float bad : {nan, -nan, inf, -inf})
            {
                CAPTURE(bad);
                x[pos] = from_float<T>(bad);
                bool finite = true;
                (void)kernels::simd::zero_range_span(x.data(), n, finite);
                REQUIRE_FALSE(finite);
            }
        }
    }
}

namespace
{
    /// The three span statistics on a length the compiler sees as a constant (a row length fixed
    /// by the model, say): equal to the reference. Such calls once drew GCC 12's
    /// -Waggressive-loop-optimizations warning from the inlined scalar tails (zero_range_span's
    /// with -march=native, all three in the baseline x86-64 build); this project's builds make
    /// that warning an error (orbitq_build_flags).
    template <class T, std::size_t N>
    void check_constant_length_spans()
    {
        CAPTURE(N);
        const auto x = random_values<T>(N, 7);
        bool f_ref = false;
        const min_max want = kernels::reference::min_max_span(x.data(), N, f_ref);
        bool f1 = false;
        bool f2 = false;
        bool f3 = false;
        CHECK(kernels::simd::min_max_span(x.data(), N, f1) == want);
        CHECK(kernels::simd::abs_max_span(x.data(), N, f2).max == want.to_abs_max().value);
        const min_max zr = kernels::simd::zero_range_span(x.data(), N, f3);
        CHECK(zr.min == std::min(want.min, 0.0f));
        CHECK(zr.max == std::max(want.max, 0.0f));
        CHECK((f_ref && f1 && f2 && f3));
    }
}

TEST_CASE_TEMPLATE("span statistics on lengths known at compile time equal the reference", T, float, bfloat16_t, float16_t)
{
    // the seed's row, a Gemma 4 row, and remainders of one batch plus a scalar tail (float32,
    // 16-bit inputs) where a batch holds 16 values (AVX-512)
    check_constant_length_spans<T, 704>();
    check_constant_length_spans<T, 2816>();
    check_constant_length_spans<T, 53>();
    check_constant_length_spans<T, 100>();
    check_constant_length_spans<T, 5>();
}

TEST_CASE_TEMPLATE("non-finite values are detected at every position class", T, float, bfloat16_t, float16_t)
{
    const float bads[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()};
    for (std::size_t n : lengths)
    {
        for (float bad : bads)
        {
            // first, inside the first batch, last of a whole batch, first of the tail, last
            const std::size_t w = kernels::simd::width;
            for (std::size_t pos : {std::size_t{0}, std::size_t{3}, w - 1, w, 2 * w - 1, 2 * w, n / w * w, n - 1})
            {
                if (pos >= n) continue;
                CAPTURE(n);
                CAPTURE(bad);
                CAPTURE(pos);
                auto x = random_values<T>(n, 7);
                x[pos] = from_float<T>(bad);
                bool f_ref = true;
                bool f_simd = true;
                (void)kernels::reference::min_max_span(x.data(), n, f_ref);
                (void)kernels::simd::min_max_span(x.data(), n, f_simd);
                CHECK_FALSE(f_ref);
                CHECK_FALSE(f_simd);
                CHECK(kernels::reference::find_non_finite(x.data(), n) == std::optional<std::size_t>(pos));
            }
        }
    }
}

TEST_CASE_TEMPLATE("simd quantize_span is bit-identical to the reference", T, float, bfloat16_t, float16_t)
{
    const scale_application modes[] = {scale_application::multiply_inverse, scale_application::divide};
    for (std::size_t n : lengths)
    {
        CAPTURE(n);
        const auto x = random_values<T>(n, 11);
        bool f = false;
        const min_max s = kernels::reference::min_max_span(x.data(), n, f);
        for (scale_application mode : modes)
        {
            CAPTURE(static_cast<int>(mode));
            check_quantize_span<half_to_even>(x, params_for<symmetric<8>>(s, mode));
            check_quantize_span<half_away_from_zero>(x, params_for<symmetric<8>>(s, mode));
            check_quantize_span<half_to_even>(x, params_for<symmetric<8, symmetric_range::full>>(s, mode));
            check_quantize_span<half_away_from_zero>(x, params_for<symmetric<4>>(s, mode));
            check_quantize_span<half_to_even>(x, params_for<symmetric<4, symmetric_range::full>>(s, mode));
            check_quantize_span<half_to_even>(x, params_for<asymmetric<8>>(s, mode));
            check_quantize_span<half_away_from_zero>(x, params_for<asymmetric<8>>(s, mode));
            check_quantize_span<half_to_even>(x, params_for<asymmetric<4>>(s, mode));
            check_quantize_span<half_away_from_zero>(x, params_for<asymmetric<4>>(s, mode));
        }
    }
}

TEST_CASE_TEMPLATE("exact .5 ties round by the policy, out-of-range values clamp", T, float, bfloat16_t, float16_t)
{
    for (std::size_t n : lengths)
    {
        CAPTURE(n);
        const auto x = tie_and_clamp_values<T>(n);
        for (scale_application mode : {scale_application::multiply_inverse, scale_application::divide})
        {
            // scale 1 and 0.5: x * inv and x / scale are exact, so the ties stay ties
            for (float scale : {1.0f, 0.5f})
            {
                for (std::int32_t zp : {0, -3, 5, -128, 127})
                {
                    for (auto [qmin, qmax] : {std::pair{-127, 127}, std::pair{-128, 127}, std::pair{-7, 7}, std::pair{-8, 7}})
                    {
                        const encode_params e{quant_params{scale, 1.0f / scale, zp}, qmin, qmax, mode};
                        check_quantize_span<half_to_even>(x, e);
                        check_quantize_span<half_away_from_zero>(x, e);
                    }
                }
            }
        }
    }
    // the ties themselves, on the reference both kernels match: half to even vs away from zero
    const encode_params unit{quant_params{1.0f, 1.0f, 0}, -127, 127, scale_application::multiply_inverse};
    CHECK(kernels::reference::encode<half_to_even>(2.5f, unit) == 2);
    CHECK(kernels::reference::encode<half_away_from_zero>(2.5f, unit) == 3);
    CHECK(kernels::reference::encode<half_to_even>(-2.5f, unit) == -2);
    CHECK(kernels::reference::encode<half_away_from_zero>(-2.5f, unit) == -3);
    CHECK(kernels::reference::encode<half_to_even>(1000.0f, unit) == 127);
    CHECK(kernels::reference::encode<half_to_even>(-1000.0f, unit) == -127);
}

TEST_CASE_TEMPLATE("a zero orbit encodes to zero codes in both scale modes", T, float, bfloat16_t, float16_t)
{
    for (std::size_t n : lengths)
    {
        std::vector<T> x(n, from_float<T>(0.0f));
        if (n > 2) x[1] = from_float<T>(-0.0f);
        bool f = false;
        const min_max s = kernels::simd::min_max_span(x.data(), n, f);
        CHECK(f);
        for (scale_application mode : {scale_application::multiply_inverse, scale_application::divide})
        {
            const encode_params e = params_for<symmetric<8>>(s, mode);
            CHECK(e.params.scale == 0.0f);
            std::vector<std::int8_t> got(n, 99);
            kernels::simd::quantize_span<half_to_even>(x.data(), n, e, got.data());
            CHECK(first_difference(got, std::vector<std::int8_t>(n, 0)) == n);
            check_quantize_span<half_to_even>(x, params_for<asymmetric<8>>(s, mode));
        }
    }
}

TEST_CASE_TEMPLATE("a NaN encodes to qmin in the reference and the SIMD kernels alike", T, float, bfloat16_t, float16_t)
{
    // quantize refuses non-finite orbits; the kernels still give a defined code to a caller that
    // encodes one (and to inf x 0 in a zero orbit), never an undefined float -> int conversion.
    for (std::size_t n : lengths)
    {
        std::vector<T> x = random_values<T>(n, static_cast<unsigned>(n));
        for (std::size_t i = 0; i < n; i += 3) x[i] = from_float<T>(std::numeric_limits<float>::quiet_NaN());
        if (n > 1) x[1] = from_float<T>(std::numeric_limits<float>::infinity());
        for (scale_application mode : {scale_application::multiply_inverse, scale_application::divide})
        {
            for (const min_max& s : {min_max{-1.0f, 1.0f}, min_max{0.0f, 0.0f}})
            {
                check_quantize_span<half_to_even>(x, params_for<symmetric<8>>(s, mode));
                check_quantize_span<half_away_from_zero>(x, params_for<asymmetric<8>>(s, mode));
                check_quantize_span<half_to_even>(x, params_for<symmetric<4>>(s, mode));
                std::vector<std::int8_t> got(n, 99);
                kernels::reference::quantize_span<half_to_even>(x.data(), n, params_for<asymmetric<8>>(s, mode), got.data());
                // NaN -> qmin, except that divide mode maps a whole zero orbit to 0
                const bool zero_divide = mode == scale_application::divide && s.max == 0.0f;
                CHECK(got[0] == (zero_divide ? 0 : -128));
            }
        }
    }
}

namespace
{
    /// Runs the fused group pass and the reference group by group; compares statistics,
    /// finiteness verdicts, the order of the callbacks and the codes.
    template <rounding_policy R, class S, class T, bool AbsMax = !S::has_zero_point>
    void check_groups(const std::vector<T>& x, std::size_t group, scale_application mode)
    {
        const std::size_t n = x.size();
        std::vector<std::int8_t> got(n, 99);
        std::vector<std::int8_t> want(n, 99);
        std::size_t next = 0;
        kernels::simd::quantize_groups<R, AbsMax>(x.data(), n, group, got.data(), [&](std::size_t g, const min_max& s, bool finite) {
            REQUIRE(g == next++);
            const std::size_t c0 = g * group;
            const std::size_t m = std::min(group, n - c0);
            bool f_ref = false;
            const min_max s_ref = kernels::reference::min_max_span(x.data() + c0, m, f_ref);
            CHECK(finite == f_ref);
            if (f_ref && AbsMax) CHECK(s.to_abs_max() == s_ref.to_abs_max());
            if (f_ref && !AbsMax) CHECK(s == s_ref);
            const encode_params e = params_for<S>(s_ref, mode);
            kernels::reference::quantize_span<R>(x.data() + c0, m, e, want.data() + c0);
            return e;
        });
        CHECK(next == (n + group - 1) / group);
        const std::size_t i = first_difference(want, got);
        CAPTURE(i);
        CHECK(i == n);
    }
}

TEST_CASE_TEMPLATE("fused per-group pass equals stats then encode, for every group shape", T, float, bfloat16_t, float16_t)
{
    const std::size_t w = kernels::simd::width;
    // 1, 2, 4, 8 batches (in registers), 3 batches and odd sizes (general path), ragged tails
    const std::size_t groups[] = {w, 2 * w, 4 * w, 8 * w, 3 * w, 32, 33, 7, 1};
    for (std::size_t group : groups)
    {
        for (std::size_t n : {group, 3 * group, 3 * group + 5, std::size_t{704}, std::size_t{1000}})
        {
            CAPTURE(group);
            CAPTURE(n);
            const auto x = random_values<T>(n, static_cast<unsigned>(group + n));
            for (scale_application mode : {scale_application::multiply_inverse, scale_application::divide})
            {
                check_groups<half_to_even, symmetric<8>>(x, group, mode);
                check_groups<half_to_even, symmetric<8>, T, false>(x, group, mode);
                check_groups<half_away_from_zero, asymmetric<8>>(x, group, mode);
                check_groups<half_to_even, symmetric<4>>(x, group, mode);
                check_groups<half_away_from_zero, asymmetric<4>>(x, group, mode);
            }
            const auto ties = tie_and_clamp_values<T>(n);
            check_groups<half_to_even, symmetric<8>>(ties, group, scale_application::multiply_inverse);
            check_groups<half_away_from_zero, asymmetric<4>>(ties, group, scale_application::divide);
        }
    }
}

TEST_CASE_TEMPLATE("fused per-group pass reports non-finite groups before encoding them", T, float, bfloat16_t, float16_t)
{
    const std::size_t w = kernels::simd::width;
    for (std::size_t group : {2 * w, std::size_t{32}, std::size_t{33}})
    {
        for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()})
        {
            for (std::size_t pos : {std::size_t{0}, group - 1, group, 2 * group + 3})
            {
                const std::size_t n = 3 * group;
                auto x = random_values<T>(n, 3);
                x[pos] = from_float<T>(bad);
                std::vector<std::int8_t> out(n);
                std::vector<bool> finite;
                kernels::simd::quantize_groups<half_to_even>(x.data(), n, group, out.data(), [&](std::size_t, const min_max& s, bool f) {
                    finite.push_back(f);
                    return params_for<symmetric<8>>(f ? s : min_max{0.0f, 0.0f}, scale_application::multiply_inverse);
                });
                CAPTURE(group);
                CAPTURE(bad);
                CAPTURE(pos);
                REQUIRE(finite.size() == 3);
                for (std::size_t g = 0; g < 3; ++g) CHECK(finite[g] == (g != pos / group));
            }
        }
    }
}

TEST_CASE("16-bit widening and ordering are exact for every bit pattern")
{
    // All 65536 patterns: the kernels' loads widen each to its exact float32 bits, and the
    // 16-bit min_max_span (ordered int16 keys, vector loop and scalar tail) returns the value
    // itself, or reports the NaN and infinity patterns non-finite.
    const std::size_t w = kernels::simd::width;
    const std::size_t n = 4 * w + 1;  // a whole 2-batch step of 16-bit lanes, plus a tail
    std::vector<bfloat16_t> b(n);
    std::vector<float16_t> h(n);
    alignas(64) float lanes[kernels::simd::width];
    for (std::uint32_t u = 0; u < 65536; u += 1)
    {
        std::fill(b.begin(), b.end(), bfloat16_t{static_cast<std::uint16_t>(u)});
        std::fill(h.begin(), h.end(), float16_t{static_cast<std::uint16_t>(u)});
        const float xb = to_float(b[0]);
        const float xh = to_float(h[0]);
        // exact bits; a NaN stays a NaN (F16C quiets signalling NaNs, the scalar path need not)
        const auto same = [](float got, float want) {
            return std::isnan(want) ? std::isnan(got) : std::bit_cast<std::uint32_t>(got) == std::bit_cast<std::uint32_t>(want);
        };
        kernels::simd::detail::load(b.data(), kernels::simd::arch_type{}).store_aligned(lanes);
        if (!same(lanes[w - 1], xb)) FAIL_CHECK("bf16 load " << u);
        kernels::simd::detail::load(h.data(), kernels::simd::arch_type{}).store_aligned(lanes);
        if (!same(lanes[w - 1], xh)) FAIL_CHECK("f16 load " << u);
        bool fb = false;
        bool fh = false;
        const min_max sb = kernels::simd::min_max_span(b.data(), n, fb);
        const min_max sh = kernels::simd::min_max_span(h.data(), n, fh);
        if (fb != std::isfinite(xb) || (fb && (sb.min != xb || sb.max != xb))) FAIL_CHECK("bf16 pattern " << u);
        if (fh != std::isfinite(xh) || (fh && (sh.min != xh || sh.max != xh))) FAIL_CHECK("f16 pattern " << u);
    }
}
