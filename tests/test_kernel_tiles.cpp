// The xsimd tile kernels against the scalar reference (see test_kernels.cpp, which checks the
// span kernels, and test_kernel_passes.cpp, streamed codes and quantize's fast paths): tiles of
// groups with parameters in vectors, for every group shape a tile takes, int4 codes packed from
// L1, non-finite values inside tiles, clamps by saturation.
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
    /// quantize_span with Bounded (e made by a builtin scheme from the span's own statistic)
    /// against the reference.
    template <rounding_policy R>
    void check_bounded_span(const float* p, std::size_t n, const encode_params& e)
    {
        std::vector<std::int8_t> want(n);
        std::vector<std::int8_t> got(n);
        kernels::reference::quantize_span<R>(p, n, e, want.data());
        kernels::simd::quantize_span<R, true>(p, n, e, got.data());
        CHECK(first_difference(want, got) == n);
    }
}

TEST_CASE_TEMPLATE_DEFINE("tiles of groups with vector parameters equal the reference", T, test_kernel_tiles_1)
{
    const std::size_t w = kernels::simd::width;
    for (std::size_t group : {w, 2 * w, 4 * w, 8 * w, 16 * w, std::size_t{32}, 3 * w})
    {
        // whole tiles, tiles plus spare groups, a ragged last group
        for (std::size_t n : {w * group, 2 * w * group + 3 * group, 2 * w * group + group / 2 + 1, std::size_t{704}})
        {
            CAPTURE(group);
            CAPTURE(n);
            auto x = random_values<T>(n, static_cast<unsigned>(n + group));
            check_all_schemes_with_params(x, group);
            if (kernels::simd::detail::with_tile_shape(group, []<std::size_t>() {}) && n == w * group)
            {
                // one whole clean tile: nothing goes group by group
                CHECK(check_groups_with_params<half_to_even, symmetric<8>>(x, group) == 0);
                CHECK(check_groups_with_params<half_to_even, asymmetric<4>>(x, group) == 0);
            }
            // an all-zero group, an all-positive and an all-negative group inside a tile, and
            // groups of -0 with positive values, with negative values, and alone
            for (std::size_t k = 0; k < group && 6 * group <= n; ++k)
            {
                x[k] = from_float<T>(0.0f);
                x[group + k] = from_float<T>(0.01f + 0.001f * static_cast<float>(k));
                x[2 * group + k] = from_float<T>(-0.5f - 0.01f * static_cast<float>(k));
                x[3 * group + k] = from_float<T>(k % 2 ? -0.0f : 0.25f + 0.01f * static_cast<float>(k));
                x[4 * group + k] = from_float<T>(k % 2 ? -0.0f : -0.25f - 0.01f * static_cast<float>(k));
                x[5 * group + k] = from_float<T>(-0.0f);
            }
            check_all_schemes_with_params(x, group);
            check_all_schemes_with_params(tie_and_clamp_values<T>(n), group);
        }
    }
}
TEST_CASE_TEMPLATE_APPLY(test_kernel_tiles_1, test_elements);

namespace
{
    /// quantize_groups_with_params_packed against the unpacked kernel: the same scales and zero
    /// points, and bytes equal to pack_int4 of its codes. Stream: the packed codes are streamed
    /// where the tiles can, into a line-aligned buffer at `offset` bytes from its start (a
    /// misaligned one must fall back to plain stores).
    template <rounding_policy R, class S, class T, bool Stream = false>
    void check_packed(const std::vector<T>& x, std::size_t group, std::size_t offset = 0)
    {
        const std::size_t n = x.size();
        const auto params = [](const min_max& st, bool finite) {
            REQUIRE(finite);
            return encode_params{S::make_params(st), S::qmin, S::qmax, scale_application::multiply_inverse};
        };
        std::vector<float> scales(n / group, -1.0f);
        std::vector<std::int32_t> zps(n / group, -1000);
        std::vector<std::int8_t> codes(n, 99);
        kernels::simd::quantize_groups_with_params<R, S>(x.data(), n, group, scales.data(), S::has_zero_point ? zps.data() : nullptr,
                                                          codes.data(), [&](std::size_t g, const min_max& st, bool f) {
                                                              const encode_params e = params(st, f);
                                                              scales[g] = e.params.scale;
                                                              zps[g] = e.params.zero_point;
                                                              return e;
                                                          });
        std::vector<std::int8_t> want(n / 2);
        kernels::simd::pack_int4(codes.data(), n, want.data());
        std::vector<float> got_scales(n / group, -2.0f);
        std::vector<std::int32_t> got_zps(n / group, -2000);
        code_vector buffer(offset + n / 2, 99);
        kernels::simd::quantize_groups_with_params_packed<R, S, Stream>(x.data(), n, group, got_scales.data(),
                                                                         S::has_zero_point ? got_zps.data() : nullptr, buffer.data() + offset,
                                                                         [&](std::size_t g, const min_max& st, bool f) {
                                                                             const encode_params e = params(st, f);
                                                                             got_scales[g] = e.params.scale;
                                                                             got_zps[g] = e.params.zero_point;
                                                                             return e;
                                                                         });
        kernels::simd::store_fence();
        REQUIRE(std::all_of(buffer.begin(), buffer.begin() + offset, [](std::int8_t c) { return c == 99; }));
        const std::vector<std::int8_t> got(buffer.begin() + offset, buffer.end());
        CHECK(got_scales == scales);
        if (S::has_zero_point) CHECK(got_zps == zps);
        CHECK(first_difference(want, got) == n / 2);
    }
}

TEST_CASE_TEMPLATE_DEFINE("int4 tiles packed from L1 equal pack_int4 of the int8 kernel's codes", T, test_kernel_tiles_2)
{
    const std::size_t w = kernels::simd::width;
    // tile sizes (w, 2w, 4w, 8w, 16w), the buffered path for other sizes (3w, 6, 5 with an
    // even n), several tiles plus spare groups
    for (std::size_t group : {w, 2 * w, 4 * w, 8 * w, 16 * w, 3 * w, std::size_t{6}, std::size_t{5}})
    {
        for (std::size_t groups : {w, 2 * w + 4, std::size_t{1000}})
        {
            const std::size_t n = group * groups;
            if (n % 2 != 0) continue;
            CAPTURE(group);
            CAPTURE(n);
            const auto x = random_values<T>(n, static_cast<unsigned>(n + group));
            check_packed<half_to_even, symmetric<4>>(x, group);
            check_packed<half_away_from_zero, symmetric<4, symmetric_range::full>>(x, group);
            check_packed<half_to_even, asymmetric<4>>(x, group);
            check_packed<half_away_from_zero, asymmetric<4>>(tie_and_clamp_values<T>(n), group);
            for (std::size_t offset : {std::size_t{0}, std::size_t{16}})  // streamed, and a misaligned fallback
            {
                CAPTURE(offset);
                check_packed<half_to_even, symmetric<4>, T, true>(x, group, offset);
                check_packed<half_to_even, asymmetric<4>, T, true>(x, group, offset);
                check_packed<half_away_from_zero, asymmetric<4>, T, true>(tie_and_clamp_values<T>(n), group, offset);
            }
        }
    }
}
TEST_CASE_TEMPLATE_APPLY(test_kernel_tiles_2, test_elements);

#if ORBITQ_TEST_ELEMENT <= 0  // the untyped cases run in the f32 executable
TEST_CASE("load_pair gives bf16 values in pack order exactly where pack_ordered_pairs says so")
{
    using A = kernels::simd::arch_type;
    namespace d = kernels::simd::detail;
    static_assert(d::pack_ordered_pairs<bfloat16_t, xsimd::avx2> && d::pack_ordered_pairs<bfloat16_t, xsimd::fma3<xsimd::avx2>>);
    static_assert(d::pack_ordered_pairs<bfloat16_t, xsimd::avx512bw>);
    static_assert(!d::pack_ordered_pairs<float, xsimd::avx2> && !d::pack_ordered_pairs<float16_t, xsimd::avx512bw>);
    static_assert(!d::pack_ordered_pairs<bfloat16_t, xsimd::sse4_2> && !d::pack_ordered_pairs<bfloat16_t, xsimd::avx512f>);

    constexpr std::size_t w = d::fbatch<A>::size;
    std::vector<bfloat16_t> in(2 * w);
    for (std::size_t i = 0; i < in.size(); ++i) in[i] = to_bfloat16(static_cast<float>(i));
    const auto pair = d::load_pair(in.data(), A{});
    std::vector<float> got(2 * w);
    pair[0].store_unaligned(got.data());
    pair[1].store_unaligned(got.data() + w);
    for (std::size_t b = 0; b < 2; ++b)
        for (std::size_t l = 0; l < w; ++l)
        {
            // pack order: 128-bit chunk k of batch b holds values 8k + 4b .. 8k + 4b + 3
            const std::size_t want = d::pack_ordered_pairs<bfloat16_t, A> ? 8 * (l / 4) + 4 * b + l % 4 : b * w + l;
            CHECK(got[b * w + l] == static_cast<float>(want));
        }
}

TEST_CASE("clamp_pack_int4 equals a clamp of the codes, then pack_int4, for every length and both store kinds")
{
    // codes over the whole int8 range: the clamp matters for every nibble position
    std::mt19937 gen(7);
    std::uniform_int_distribution<int> dist(-128, 127);
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{2}, std::size_t{63}, std::size_t{64}, std::size_t{127}, std::size_t{128},
                          std::size_t{129}, std::size_t{256}, std::size_t{512 + 66}, std::size_t{1024}})
    {
        CAPTURE(n);
        std::vector<std::int8_t> codes(n);
        for (auto& c : codes) c = static_cast<std::int8_t>(dist(gen));
        std::vector<std::int8_t> clamped = codes;
        for (auto& c : clamped) c = std::clamp<std::int8_t>(c, -8, 7);
        std::vector<std::int8_t> want((n + 1) / 2 + 1, 99);
        kernels::simd::pack_int4(clamped.data(), n, want.data());
        const auto run = [&]<bool Clamp, bool Stream>(std::bool_constant<Clamp>, std::bool_constant<Stream>, const std::vector<std::int8_t>& in) {
            std::vector<std::int8_t> work = in;
            code_vector out((n + 1) / 2 + 1, 99);  // line-aligned; one guard byte after the codes
            kernels::simd::detail::clamp_pack_int4<Clamp, Stream>(work.data(), n, -8, 7, out.data(), kernels::simd::arch_type{});
            kernels::simd::store_fence();
            return std::vector<std::int8_t>(out.begin(), out.end());
        };
        CHECK(run(std::true_type{}, std::false_type{}, codes) == want);
        CHECK(run(std::true_type{}, std::true_type{}, codes) == want);
        // without the clamp, codes already in range pack the same way
        CHECK(run(std::false_type{}, std::false_type{}, clamped) == want);
        CHECK(run(std::false_type{}, std::true_type{}, clamped) == want);
    }
}

TEST_CASE("pack_int4 puts code 2k in the low nibble, an odd last code alone")
{
    const std::vector<std::int8_t> codes = {1, -1, -8, 7, 0, 3, -2};
    std::vector<std::int8_t> out(4, 42);
    kernels::simd::pack_int4(codes.data(), codes.size(), out.data());
    CHECK(static_cast<std::uint8_t>(out[0]) == 0xf1);  // 1 | (-1 & 0xf) << 4
    CHECK(static_cast<std::uint8_t>(out[1]) == 0x78);  // -8 -> 0x8, 7 -> 0x7
    CHECK(static_cast<std::uint8_t>(out[2]) == 0x30);
    CHECK(static_cast<std::uint8_t>(out[3]) == 0x0e);  // -2 alone, high nibble 0
}

TEST_CASE("store_int4 packs a batch's codes from registers as pack_int4 packs them from memory")
{
    namespace ks = kernels::simd;
    std::mt19937 gen(7);
    for (int round = 0; round < 64; ++round)
    {
        alignas(64) std::int32_t lanes[ks::width];
        std::vector<std::int8_t> codes(ks::width);
        for (std::size_t k = 0; k < ks::width; ++k)
        {
            codes[k] = static_cast<std::int8_t>(static_cast<int>(gen() % 16) - 8);
            // bits above the nibble (as E2M1 codes carry them) must not reach the bytes
            lanes[k] = codes[k] + (round % 2 == 0 ? 0 : static_cast<std::int32_t>(gen() % 64) * 16);
        }
        std::vector<std::int8_t> want(ks::width / 2 + 1, 42), got(ks::width / 2 + 1, 42);
        ks::pack_int4(codes.data(), codes.size(), want.data());
        ks::detail::store_int4(ks::int_batch::load_aligned(lanes), got.data(), ks::arch_type{});
        CHECK(got == want);  // the byte after them untouched
    }
}

TEST_CASE("tiles with a subnormal scale (infinite inverse) fall back to the reference")
{
    const std::size_t w = kernels::simd::width;
    std::vector<float> x(4 * w * w);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = (i % 3 == 0) ? 0.0f : 1e-41f * static_cast<float>(i % 7);
    CHECK(std::isinf(symmetric<8>::make_params(min_max{0.0f, 6e-41f}).inv_scale));
    check_all_schemes_with_params(x, w);
    check_all_schemes_with_params(x, 2 * w);
    check_all_schemes_with_params(x, 4 * w);
    check_packed<half_to_even, symmetric<4>>(x, 2 * w);
    check_packed<half_to_even, asymmetric<4>>(x, 4 * w);
    check_packed<half_to_even, asymmetric<4>>(x, w);
}

TEST_CASE("tiles of restricted symmetric groups encode without a clamp: the bound holds at every scale")
{
    // The tile encoder skips the clamp for restricted symmetric schemes because |x| <= a gives
    // |x * fl(1 / fl(a / qmax))| < qmax + 1/2 whenever the inverse is finite. The hardest cases:
    // values equal to +-a, subnormal scales (largest relative rounding), and scales of every
    // binade; each tile must equal the reference, which clamps.
    const std::size_t w = kernels::simd::width;
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
    for (float a : {4.0e-37f, 1.0e-36f, 1.4e-36f, 1.0e-30f, 0.02f, 1.0f, 3.0e38f})
    {
        const quant_params p8 = symmetric<8>::make_params(min_max{-a, a});
        const quant_params p4 = symmetric<4>::make_params(min_max{-a, a});
        REQUIRE(std::isfinite(p8.inv_scale));
        REQUIRE(std::isfinite(p4.inv_scale));
        if (a < 1.0e-35f) CHECK(p8.scale < std::numeric_limits<float>::min());  // subnormal scale
        for (std::size_t group : {w, 2 * w, 4 * w, 8 * w, 16 * w})
        {
            std::vector<float> x(w * group);
            for (std::size_t i = 0; i < x.size(); ++i)
            {
                // each group reaches +a or -a; the rest spread over (-a, a), including a(1 - 2^-24)
                x[i] = i % 5 == 0 ? ((i / 5) % 2 ? a : -a) : i % 5 == 1 ? std::nextafter(a, 0.0f) : a * unit(rng);
            }
            CAPTURE(a);
            CAPTURE(group);
            CHECK(check_groups_with_params<half_to_even, symmetric<8>>(x, group) == 0);
            CHECK(check_groups_with_params<half_away_from_zero, symmetric<8>>(x, group) == 0);
            CHECK(check_groups_with_params<half_to_even, symmetric<4>>(x, group) == 0);
            CHECK(check_groups_with_params<half_away_from_zero, symmetric<4>>(x, group) == 0);
            // the same groups as Bounded spans (per-channel rows, per-tensor), both scale modes
            for (std::size_t g = 0; g < w; ++g)
            {
                const float* p = x.data() + g * group;
                bool f = false;
                const min_max st = kernels::reference::min_max_span(p, group, f);
                for (const scale_application mode : {scale_application::multiply_inverse, scale_application::divide})
                {
                    for (const encode_params e : {encode_params{symmetric<8>::make_params(st), -127, 127, mode},
                                                  encode_params{symmetric<4>::make_params(st), -7, 7, mode}})
                    {
                        CAPTURE(g);
                        check_bounded_span<half_away_from_zero>(p, group, e);
                    }
                }
            }
        }
    }
}
#endif

namespace
{
    /// Runs quantize_groups_with_params<S> over x and returns the groups handed to on_group, in
    /// order, until it threw on the first non-finite one (thrown is set).
    template <class S, class T>
    std::vector<std::size_t> groups_until_non_finite(const std::vector<T>& x, std::size_t group, bool& thrown)
    {
        const std::size_t n = x.size();
        std::vector<float> scales(n / group);
        std::vector<std::int32_t> zps(n / group);
        std::vector<std::int8_t> out(n);
        std::vector<std::size_t> seen;
        thrown = false;
        try
        {
            kernels::simd::quantize_groups_with_params<half_to_even, S>(
                x.data(), n, group, scales.data(), S::has_zero_point ? zps.data() : nullptr, out.data(),
                [&](std::size_t g, const min_max& s, bool finite) {
                    seen.push_back(g);
                    if (!finite) throw std::runtime_error("non-finite");
                    return encode_params{S::make_params(s), S::qmin, S::qmax, scale_application::multiply_inverse};
                });
        }
        catch (const std::runtime_error&)
        {
            thrown = true;
        }
        return seen;
    }
}

TEST_CASE_TEMPLATE_DEFINE("a non-finite value inside a tile is reported for its own group, in order", T, test_kernel_tiles_3)
{
    // Every tile statistic path: max |x| on 32-bit magnitudes, on bf16 16-bit pairs, and
    // min/max with the x * 0 poison; positions in each quarter of a tile (the reduction tree is
    // fed four groups at a time) and in a second tile.
    const std::size_t w = kernels::simd::width;
    for (std::size_t group : {w, 2 * w, 4 * w, 8 * w, 16 * w})
    {
        const std::size_t n = 2 * w * group;
        for (std::uint16_t bad16 : {std::uint16_t{0}, std::uint16_t{1}, std::uint16_t{2}, std::uint16_t{3}})
        {
            const float bad = bad16 == 0 ? std::numeric_limits<float>::quiet_NaN()
                            : bad16 == 1 ? -std::numeric_limits<float>::quiet_NaN()
                            : bad16 == 2 ? std::numeric_limits<float>::infinity()
                                         : -std::numeric_limits<float>::infinity();
            for (std::size_t pos : {std::size_t{0}, group * 5 + 3, group * (w / 2) + 1, group * (w - 1), group * w + 7, n - 1})
            {
                auto x = random_values<T>(n, 5);
                x[pos] = from_float<T>(bad);
                CAPTURE(group);
                CAPTURE(bad);
                CAPTURE(pos);
                bool thrown = false;
                for (int scheme = 0; scheme < 2; ++scheme)
                {
                    const auto seen = scheme == 0 ? groups_until_non_finite<symmetric<8>>(x, group, thrown)
                                                  : groups_until_non_finite<asymmetric<8>>(x, group, thrown);
                    CAPTURE(scheme);
                    CHECK(thrown);
                    REQUIRE_FALSE(seen.empty());
                    CHECK(seen.back() == pos / group);
                    // the groups of the failing tile before the bad one were handed over in order
                    for (std::size_t k = 1; k < seen.size(); ++k) CHECK(seen[k] == seen[k - 1] + 1);
                }
            }
        }
    }
}
TEST_CASE_TEMPLATE_APPLY(test_kernel_tiles_3, test_elements);

#if ORBITQ_TEST_ELEMENT <= 0  // the untyped cases run in the f32 executable
TEST_CASE("int8 tiles and spans clamp by saturation: asymmetric and full-range groups at every scale")
{
    // Asymmetric int8 and full-range symmetric int8 encode without a float clamp: the scaled
    // value stays below 256 in magnitude, so the saturating narrow is the reference's clamp.
    // The edge cases: one-sided groups (zero point at qmin or qmax), groups reaching exactly
    // lo or hi, constant groups, and scales from subnormal to near FLT_MAX.
    const std::size_t w = kernels::simd::width;
    std::mt19937 rng(13);
    std::uniform_real_distribution<float> unit(0.0f, 1.0f);
    for (float a : {4.0e-37f, 1.4e-36f, 1.0e-30f, 0.02f, 1.0f, 1.0e30f, 3.0e38f})
    {
        for (std::size_t group : {w, 2 * w, 4 * w, 8 * w, 16 * w})
        {
            std::vector<float> x(2 * w * group);
            for (std::size_t g = 0; g < 2 * w; ++g)
            {
                // group kinds: [-a, a], [0, a], [-a, 0], [-a, a / 1000], constant a, constant -a
                const std::size_t kind = g % 6;
                const float lo = kind == 0 || kind == 2 || kind == 3 ? -a : kind == 5 ? -a : 0.0f;
                const float hi = kind == 2 ? 0.0f : kind == 3 ? a / 1000.0f : kind == 5 ? -a : a;
                for (std::size_t k = 0; k < group; ++k)
                {
                    const float u = unit(rng);
                    float v = kind >= 4 ? (kind == 4 ? a : -a) : lo * (1.0f - u) + hi * u;  // no overflow at 3e38
                    if (k == 0) v = kind == 4 ? a : lo;
                    if (k == 1) v = kind == 4 ? a : hi;
                    if (k == 2 && kind < 4) v = std::nextafter(hi, lo);
                    x[g * group + k] = v;
                }
            }
            CAPTURE(a);
            CAPTURE(group);
            // below ~1e-36 some scales are subnormal with an infinite inverse: those tiles go
            // group by group (checked all the same); above, every tile takes the vector path
            const std::size_t fallback = a < 1.0e-36f ? 1 : 0;
            CHECK(check_groups_with_params<half_to_even, asymmetric<8>>(x, group) * (1 - fallback) == 0);
            CHECK(check_groups_with_params<half_away_from_zero, asymmetric<8>>(x, group) * (1 - fallback) == 0);
            CHECK(check_groups_with_params<half_to_even, symmetric<8, symmetric_range::full>>(x, group) * (1 - fallback) == 0);
            CHECK(check_groups_with_params<half_away_from_zero, symmetric<8, symmetric_range::full>>(x, group) * (1 - fallback) == 0);
            // the same values as one span each (per-channel rows, per-tensor), encoded Bounded
            for (std::size_t g = 0; g < 2 * w; ++g)
            {
                const float* p = x.data() + g * group;
                bool f = false;
                const min_max st = kernels::reference::min_max_span(p, group, f);
                for (const encode_params e : {encode_params{asymmetric<8>::make_params(st), -128, 127, scale_application::multiply_inverse},
                                              encode_params{asymmetric<8>::make_params(st), -128, 127, scale_application::divide},
                                              encode_params{symmetric<8, symmetric_range::full>::make_params(st), -128, 127,
                                                            scale_application::multiply_inverse}})
                {
                    CAPTURE(g);
                    check_bounded_span<half_to_even>(p, group, e);
                }
            }
        }
    }
}
#endif
