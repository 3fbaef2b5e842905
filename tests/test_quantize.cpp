// Conformance suite of the quantizers: laws over every policy, exact codes on hand-computed
// cases, the peers' formulas bit for bit, and the error paths.
#include <doctest/doctest.h>

#include <orbitq/metrics.hpp>
#include <orbitq/quantize.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

using namespace orbitq;

namespace
{
    const std::size_t row_lengths[] = {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 704, 1000};

    /// Gaussian weights with a few large outliers, like trained FFN weights.
    std::vector<float> weights(std::size_t n, unsigned seed, float sd = 0.02f)
    {
        std::mt19937 gen(seed);
        std::normal_distribution<float> d(0.0f, sd);
        std::vector<float> v(n);
        for (auto& x : v) x = d(gen) * (gen() % 200 == 0 ? 20.0f : 1.0f);
        return v;
    }

    /// max |x| of n values, computed independently of orbitq's statistics.
    float abs_max_of(const float* x, std::size_t n)
    {
        float amax = 0.0f;
        for (std::size_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
        return amax;
    }

    template <class Q>
    quant_spec spec_for(std::size_t cols)
    {
        quant_spec s;
        if constexpr (std::same_as<typename Q::granularity, per_group<>>)
        {
            s.group_size = 8;
            s.ragged_groups = cols % 8 != 0;
        }
        else if constexpr (detail::is_per_group<typename Q::granularity>::value)
        {
            s.ragged_groups = cols % Q::granularity::static_size != 0;
        }
        return s;
    }
}

// The policy space, sampled so every granularity, scheme, range, bit width and rounding appears.
#define ORBITQ_POLICIES                                                                               \
    quantizer<per_tensor, symmetric<8>>, quantizer<per_channel, symmetric<8>>,                        \
        quantizer<per_channel, symmetric<8, symmetric_range::full>>, quantizer<per_channel, asymmetric<8>>, \
        quantizer<per_group<32>, symmetric<8>, half_away_from_zero>, quantizer<per_group<>, asymmetric<8>>, \
        quantizer<per_tensor, asymmetric<4>>, quantizer<per_channel, symmetric<4>>,                   \
        quantizer<per_group<32>, symmetric<4, symmetric_range::full>>, quantizer<per_group<>, asymmetric<4>, half_away_from_zero>

TEST_CASE_TEMPLATE("round trip error is at most half a scale step", Q, ORBITQ_POLICIES)
{
    for (std::size_t cols : row_lengths)
    {
        CAPTURE(cols);
        const std::size_t rows = 3;
        const auto v = weights(rows * cols, static_cast<unsigned>(cols));
        const auto w = make_view(v.data(), rows, cols);
        const auto q = quantize<Q>(w, spec_for<Q>(cols));
        const auto d = dequantize(q);
        for (std::size_t r = 0; r < rows; ++r)
        {
            for (std::size_t c = 0; c < cols; ++c)
            {
                const float s = q.scales[q.orbit(r, c)];
                const float x = v[r * cols + c];
                const float err = std::fabs(x - d[r * cols + c]);
                REQUIRE(err <= s * 0.5f * (1.0f + 1e-5f) + std::fabs(x) * 1e-6f);  // half a step, plus f32 rounding
                const std::int32_t code = q.code(r, c);
                REQUIRE(code >= Q::scheme::qmin);
                REQUIRE(code <= Q::scheme::qmax);
            }
        }
    }
}

TEST_CASE_TEMPLATE("encoding is idempotent: dequantized values encode to the same codes", Q, ORBITQ_POLICIES)
{
    for (std::size_t cols : row_lengths)
    {
        CAPTURE(cols);
        const auto v = weights(2 * cols, 100u + static_cast<unsigned>(cols));
        const auto q = quantize<Q>(make_view(v.data(), 2, cols), spec_for<Q>(cols));
        const auto d = dequantize(q);
        // with the orbit's parameters fixed, q(deq(q(x))) == q(x)
        for (std::size_t r = 0; r < 2; ++r)
        {
            for (std::size_t c = 0; c < cols; ++c)
            {
                const std::size_t o = q.orbit(r, c);
                const quant_params p = detail::with_inverse(q.scales[o], q.zero_point(o));
                const encode_params e{p, Q::scheme::qmin, Q::scheme::qmax, scale_application::multiply_inverse};
                REQUIRE(kernels::reference::encode<typename Q::rounding>(d[r * cols + c], e) == q.code(r, c));
            }
        }
        // re-deriving the parameters too reproduces the codes, except in the full symmetric range,
        // whose clamped +amax code (-qmin - 1) makes the image's amax differ from the input's
        bool full_range = false;
        if constexpr (!Q::scheme::has_zero_point) full_range = Q::scheme::range == symmetric_range::full;
        if (!full_range)
        {
            const auto q2 = quantize<Q>(make_view(d.data(), 2, cols), spec_for<Q>(cols));
            REQUIRE(q2.codes == q.codes);
            REQUIRE(q2.zero_points == q.zero_points);
            for (std::size_t o = 0; o < q.scales.size(); ++o) REQUIRE(q2.scales[o] == doctest::Approx(q.scales[o]).epsilon(1e-6));
        }
    }
}

TEST_CASE_TEMPLATE("results do not depend on the thread count, nor on the input dtype", Q, ORBITQ_POLICIES)
{
    const std::size_t rows = 37;
    const std::size_t cols = 33;
    auto v = weights(rows * cols, 5);
    for (auto& x : v) x = round_to_bfloat16(x);  // exactly representable in bf16 (and mostly f16)
    const auto w = make_view(v.data(), rows, cols);
    const auto q1 = quantize<Q>(w, spec_for<Q>(cols), 1);
    for (unsigned t : {2u, 3u, 8u})
    {
        const auto qt = quantize<Q>(w, spec_for<Q>(cols), t);
        CHECK(qt.codes == q1.codes);
        CHECK(qt.scales == q1.scales);
        CHECK(qt.zero_points == q1.zero_points);
    }
    std::vector<bfloat16_t> b(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) b[i] = to_bfloat16(v[i]);
    const auto qb = quantize<Q>(make_view(b.data(), rows, cols), spec_for<Q>(cols), 2);
    CHECK(qb.codes == q1.codes);
    CHECK(qb.scales == q1.scales);
}

TEST_CASE_TEMPLATE("an all-zero orbit has scale 0, codes 0 and dequantizes to exact zeros", Q, ORBITQ_POLICIES)
{
    std::vector<float> v(2 * 64, 0.0f);
    for (std::size_t c = 0; c < 64; ++c) v[64 + c] = 0.01f * float(c) - 0.3f;  // row 1 non-zero
    const auto q = quantize<Q>(make_view(v.data(), 2, 64), spec_for<Q>(64));
    const auto d = dequantize(q);
    for (std::size_t c = 0; c < 64; ++c)
    {
        CHECK(d[c] == 0.0f);
        CHECK(!std::isnan(d[c]));
    }
    if (!q.layout.tensor_wide)
    {
        CHECK(q.scales[q.orbit(0, 0)] == 0.0f);
        CHECK(q.zero_point(q.orbit(0, 0)) == 0);
        for (std::size_t c = 0; c < 64; ++c) CHECK(q.code(0, c) == 0);
    }
    std::vector<float> zeros(3 * 5, 0.0f);
    const auto qz = quantize<Q>(make_view(zeros.data(), 3, 5), spec_for<Q>(5));
    for (float s : qz.scales) CHECK(s == 0.0f);
    for (float x : dequantize(qz)) CHECK(x == 0.0f);
}

TEST_CASE("exact codes: symmetric int8, restricted and full range")
{
    // amax 1.27 -> scale 0.01 (f32), codes = nearbyint(x * (1/0.01f))
    const std::vector<float> v = {1.27f, -1.27f, 0.005f, 0.015f, -0.635f, 0.0f};
    const auto q = quantize<quantizer<per_channel, symmetric<8>>>(make_view(v.data(), 1, 6));
    CHECK(q.scales[0] == 1.27f / 127.0f);
    // 0.005f * inv is just below 0.5 in f32 -> 0; 0.015f * inv = 1.5 -> 2 and -0.635f * inv = -63.5 -> -64 (ties to even)
    const std::vector<int> expect = {127, -127, 0, 2, -64, 0};
    for (std::size_t c = 0; c < v.size(); ++c) CHECK(q.code(0, c) == expect[c]);

    // full range: scale = amax / 127.5, +amax -> 127.5 -> clamps to 127, -amax -> -128
    const std::vector<float> f = {2.55f, -2.55f, 0.01f};
    const auto qf = quantize<quantizer<per_channel, symmetric<8, symmetric_range::full>>>(make_view(f.data(), 1, 3));
    CHECK(qf.scales[0] == 2.55f / 127.5f);
    CHECK(qf.code(0, 0) == 127);
    CHECK(qf.code(0, 1) == -128);
    CHECK(qf.code(0, 2) == 0);  // 0.5 ties to even
}

TEST_CASE("exact codes: rounding policies differ only on ties")
{
    // amax 7 with int4 restricted gives a scale of exactly 1, so the codes are the rounded inputs
    const std::vector<float> w = {7.0f, 0.5f, 1.5f, 2.5f, -0.5f, -2.5f, 0.49999997f, -7.0f};
    const auto even = quantize<quantizer<per_channel, symmetric<4>, half_to_even>>(make_view(w.data(), 1, 8));
    const auto away = quantize<quantizer<per_channel, symmetric<4>, half_away_from_zero>>(make_view(w.data(), 1, 8));
    CHECK(even.scales[0] == 1.0f);
    const std::vector<int> e = {7, 0, 2, 2, 0, -2, 0, -7};
    const std::vector<int> a = {7, 1, 2, 3, -1, -3, 0, -7};
    for (std::size_t c = 0; c < 8; ++c)
    {
        CHECK(even.code(0, c) == e[c]);
        CHECK(away.code(0, c) == a[c]);
    }
}

TEST_CASE("exact codes: asymmetric int8 and int4")
{
    // min -1, max 3 -> scale 4/255, zp = -128 - nearbyint(-1 / scale) = -128 + 64 = -64
    const std::vector<float> v = {-1.0f, 3.0f, 0.0f, 1.0f};
    const auto q = quantize<quantizer<per_channel, asymmetric<8>>>(make_view(v.data(), 1, 4));
    CHECK(q.scales[0] == 4.0f / 255.0f);
    CHECK(q.zero_points[0] == -64);
    CHECK(q.code(0, 0) == -128);
    CHECK(q.code(0, 1) == 127);
    CHECK(q.code(0, 2) == -64);  // zero maps exactly to the zero point
    CHECK(q.code(0, 3) == std::clamp(int(std::nearbyint(1.0f * (1.0f / (4.0f / 255.0f)))) - 64, -128, 127));
    // all-positive orbit: 0 is forced into the range, so zp = qmin
    const std::vector<float> p = {1.0f, 2.0f, 15.0f};
    const auto q4 = quantize<quantizer<per_channel, asymmetric<4>>>(make_view(p.data(), 1, 3));
    CHECK(q4.scales[0] == 1.0f);
    CHECK(q4.zero_points[0] == -8);
    CHECK(q4.code(0, 0) == -7);
    CHECK(q4.code(0, 2) == 7);
}

TEST_CASE("int4 packing: two codes a byte, column 2k in the low nibble")
{
    const std::vector<float> v = {1.0f, -7.0f, 3.0f, 7.0f, -1.0f};  // amax 7 -> scale 1
    const auto q = quantize<quantizer<per_channel, symmetric<4>>>(make_view(v.data(), 1, 5));
    REQUIRE(q.codes.size() == 3);
    CHECK(static_cast<std::uint8_t>(q.codes[0]) == 0x91);  // low 1, high -7 = 0x9
    CHECK(static_cast<std::uint8_t>(q.codes[1]) == 0x73);  // low 3, high 7
    CHECK(static_cast<std::uint8_t>(q.codes[2]) == 0x0f);  // low -1, high padding 0
    CHECK(q.row_bytes() == 3);
    CHECK(q.code(0, 1) == -7);
    CHECK(q.code(0, 4) == -1);
}

TEST_CASE("per_channel on stacked experts [E, R, C] is one scale per (expert, row)")
{
    const auto v = weights(4 * 3 * 16, 9);
    const auto w = make_view(v.data(), shape_type{4, 3, 16}, "experts.down_proj");
    CHECK(w.rows == 12);
    const auto q = quantize(w, quant_spec{});
    CHECK(q.scales.size() == 12);
    CHECK(q.shape == shape_type{4, 3, 16});
    const auto g = quantize(w, quant_spec{.granularity = granularity_kind::per_group, .group_size = 8});
    CHECK(g.scales.size() == 24);
    const auto t = quantize(w, quant_spec{.granularity = granularity_kind::per_tensor});
    CHECK(t.scales.size() == 1);
}

TEST_CASE("run-time dispatch equals the compile-time policy")
{
    const auto v = weights(8 * 64, 21);
    const auto w = make_view(v.data(), 8, 64);
    quant_spec s{.granularity = granularity_kind::per_group, .group_size = 16, .bits = 4, .scheme = scheme_kind::asymmetric,
                 .rounding = rounding_kind::half_away_from_zero};
    const auto a = quantize(w, s);
    const auto b = quantize<quantizer<per_group<16>, asymmetric<4>, half_away_from_zero>>(w);
    CHECK(a.codes == b.codes);
    CHECK(a.scales == b.scales);
    CHECK(a.zero_points == b.zero_points);
    CHECK(a.spec == b.spec);
    CHECK(a.spec.describe() == "per_group:16 int4 asymmetric");
}

TEST_CASE("bits per weight counts codes, scales and zero points")
{
    const auto v = weights(4 * 64, 2);
    const auto w = make_view(v.data(), 4, 64);
    CHECK(quantize(w, quant_spec{}).bits_per_weight() == doctest::Approx(8.0 + 32.0 / 64.0));
    CHECK(quantize(w, quant_spec{.granularity = granularity_kind::per_group, .group_size = 32, .scale_type = element_type::f16})
              .bits_per_weight() == doctest::Approx(8.5));
    CHECK(quantize(w, quant_spec{.granularity = granularity_kind::per_group, .group_size = 32, .bits = 4,
                                 .scheme = scheme_kind::asymmetric, .scale_type = element_type::f16})
              .bits_per_weight() == doctest::Approx(4.0 + 20.0 / 32.0));
}

// ---------------------------------------------------------------------------------------------
// The peers, reproduced independently of orbitq's code path.

TEST_CASE("coremltools linear_symmetric per_channel: scale amax/127, np.round(w / scale), [-127, 127]")
{
    for (std::size_t cols : row_lengths)
    {
        const auto v = weights(6 * cols, 300u + static_cast<unsigned>(cols));
        quant_spec s{.mode = scale_application::divide};
        const auto q = quantize(make_view(v.data(), 6, cols), s);
        for (std::size_t r = 0; r < 6; ++r)
        {
            const float amax = abs_max_of(v.data() + r * cols, cols);
            const float scale = amax / 127.0f;
            REQUIRE(q.scales[r] == scale);
            for (std::size_t c = 0; c < cols; ++c)
            {
                const float t = std::nearbyint(v[r * cols + c] / scale);  // np.round is half to even
                REQUIRE(q.code(r, c) == static_cast<int>(std::clamp(t, -127.0f, 127.0f)));
            }
        }
    }
}

TEST_CASE("PyTorch quantize_per_channel qint8 with observer scales amax/127.5")
{
    for (std::size_t cols : row_lengths)
    {
        const auto v = weights(5 * cols, 400u + static_cast<unsigned>(cols));
        quant_spec s{.range = symmetric_range::full};
        const auto q = quantize(make_view(v.data(), 5, cols), s);
        for (std::size_t r = 0; r < 5; ++r)
        {
            const float amax = abs_max_of(v.data() + r * cols, cols);
            const float scale = amax / (float(127 - (-128)) / 2.0f);  // MinMaxObserver, qint8 symmetric
            REQUIRE(q.scales[r] == scale);
            const float inv = 1.0f / scale;
            for (std::size_t c = 0; c < cols; ++c)
            {
                const long code = std::lrint(std::nearbyint(v[r * cols + c] * inv)) + 0;  // + zero_point 0
                REQUIRE(q.code(r, c) == std::clamp<long>(code, -128, 127));
            }
        }
    }
}

TEST_CASE("ggml Q8_0: blocks of 32, d = amax/127, roundf(x * (1/d)), f16 d stored")
{
    for (std::size_t blocks : {1u, 2u, 22u})
    {
        const std::size_t cols = 32 * blocks;
        const auto v = weights(4 * cols, 500u + static_cast<unsigned>(blocks));
        quant_spec s{.granularity = granularity_kind::per_group, .group_size = 32,
                     .rounding = rounding_kind::half_away_from_zero, .scale_type = element_type::f16};
        const auto q = quantize(make_view(v.data(), 4, cols), s);
        for (std::size_t r = 0; r < 4; ++r)
        {
            for (std::size_t b = 0; b < blocks; ++b)
            {
                const float* x = v.data() + r * cols + b * 32;
                const float amax = abs_max_of(x, 32);
                const float d = amax / ((1 << 7) - 1);
                const float id = d ? 1.0f / d : 0.0f;
                REQUIRE(q.scales[r * blocks + b] == to_float(to_float16(d)));  // GGML_FP32_TO_FP16(d)
                for (int j = 0; j < 32; ++j) REQUIRE(q.code(r, b * 32 + j) == static_cast<int>(std::roundf(x[j] * id)));
            }
        }
    }
}

TEST_CASE("scales stored as f16/bf16: codes from the f32 scale by default, from the stored scale on request")
{
    const auto v = weights(3 * 64, 77);
    const auto w = make_view(v.data(), 3, 64);
    const auto f32 = quantize(w, quant_spec{});
    const auto bf = quantize(w, quant_spec{.scale_type = element_type::bf16});
    const auto bf_stored = quantize(w, quant_spec{.scale_type = element_type::bf16, .codes_from_stored_scale = true});
    CHECK(bf.codes == f32.codes);
    for (std::size_t r = 0; r < 3; ++r)
    {
        CHECK(bf.scales[r] == round_to_bfloat16(f32.scales[r]));
        const float inv = 1.0f / bf.scales[r];
        for (std::size_t c = 0; c < 64; ++c)
        {
            const float t = std::clamp(std::nearbyint(v[r * 64 + c] * inv), -127.0f, 127.0f);
            CHECK(bf_stored.code(r, c) == static_cast<int>(t));
        }
    }
    // a scale below the f16 range is an error, not a silent zero
    std::vector<float> tiny = {1e-9f, -2e-9f};
    CHECK_THROWS_AS((void)quantize(make_view(tiny.data(), 1, 2), quant_spec{.scale_type = element_type::f16}), error);
}

// ---------------------------------------------------------------------------------------------
// Bad input: a clear error, never garbage.

TEST_CASE("NaN and infinity are reported with tensor, row and column")
{
    for (auto g : {granularity_kind::per_tensor, granularity_kind::per_channel, granularity_kind::per_group})
    {
        for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()})
        {
            for (std::size_t col : {0u, 5u, 31u, 32u, 63u})
            {
                CAPTURE(to_string(g));
                CAPTURE(bad);
                CAPTURE(col);
                auto v = weights(4 * 64, 1);
                v[3 * 64 + col] = bad;
                try
                {
                    (void)quantize(make_view(v.data(), 4, 64, "blk.3.ffn_down"), quant_spec{.granularity = g, .group_size = 32}, 2);
                    FAIL("expected non_finite_error");
                }
                catch (const non_finite_error& e)
                {
                    CHECK(e.row() == 3);
                    CHECK(e.col() == col);
                    CHECK(e.kind() == error_kind::non_finite);
                    CHECK(std::string(e.what()).find("blk.3.ffn_down") != std::string::npos);
                }
            }
        }
    }
}

TEST_CASE("group sizes: zero and non-dividing sizes are errors unless ragged groups are asked for")
{
    const auto v = weights(2 * 40, 3);
    const auto w = make_view(v.data(), 2, 40);
    auto kind_of = [&](const quant_spec& s) {
        try
        {
            (void)quantize(w, s);
        }
        catch (const error& e)
        {
            return e.kind();
        }
        return error_kind::io;  // "no error" marker for this test
    };
    CHECK(kind_of({.granularity = granularity_kind::per_group, .group_size = 0}) == error_kind::bad_group_size);
    CHECK(kind_of({.granularity = granularity_kind::per_group, .group_size = 32}) == error_kind::bad_group_size);
    const auto q = quantize(w, {.granularity = granularity_kind::per_group, .group_size = 32, .ragged_groups = true});
    CHECK(q.scales.size() == 4);  // two groups per row: 32 + 8
    const float amax = abs_max_of(v.data() + 32, 8);
    CHECK(q.scales[1] == amax / 127.0f);
    CHECK(kind_of({.bits = 5}) == error_kind::invalid_argument);
}

TEST_CASE("empty tensors and mismatched shapes are rejected")
{
    std::vector<float> v(12, 1.0f);
    CHECK_THROWS_AS((void)make_view(v.data(), shape_type{0, 12}), error);
    CHECK_THROWS_AS((void)make_view(v.data(), shape_type{}), error);
    CHECK_THROWS_AS((void)make_view(std::span<const float>(v), 5, 3), error);
    CHECK_THROWS_AS((void)make_view(static_cast<const float*>(nullptr), 2, 6), error);
    matrix_view<float> empty;
    CHECK_THROWS_AS((void)quantize(empty, quant_spec{}), error);
    const auto q = quantize(make_view(v.data(), 3, 4), quant_spec{});
    CHECK_THROWS_AS((void)measure(make_view(v.data(), 4, 3), q), error);
}

TEST_CASE("dispatched_quantizer names exactly what with_quantizer produces")
{
    // quantize<Q> calls the compiled dispatch for these (quantize_extern.hpp): a quantizer the
    // dispatch produces but the list misses would compile its kernels again, one the list names
    // but the dispatch does not produce would be quantized with another policy
    int produced = 0;
    for (granularity_kind g : {granularity_kind::per_tensor, granularity_kind::per_channel, granularity_kind::per_group})
        for (int bits : {8, 4})
            for (scheme_kind s : {scheme_kind::symmetric, scheme_kind::asymmetric})
                for (symmetric_range r : {symmetric_range::restricted, symmetric_range::full})
                    for (rounding_kind rk : {rounding_kind::half_to_even, rounding_kind::half_away_from_zero})
                    {
                        const quant_spec spec{.granularity = g, .group_size = 32, .bits = bits, .scheme = s, .range = r, .rounding = rk};
                        with_quantizer(spec, [&](auto policies) {
                            using Q = decltype(policies);
                            CHECK(detail::dispatched_quantizer<Q>);
                            quant_spec named;
                            detail::set_policy_names<Q>(named);
                            CHECK(named.granularity == g);
                            CHECK(named.bits == bits);
                            CHECK(named.scheme == s);
                            CHECK(named.rounding == rk);
                            if (s == scheme_kind::symmetric) CHECK(named.range == r);
                            ++produced;
                        });
                    }
    CHECK(produced == 3 * 2 * 2 * 2 * 2);
    CHECK_FALSE(detail::dispatched_quantizer<quantizer<per_group<32>, symmetric<8>>>);
    CHECK_FALSE(detail::dispatched_quantizer<quantizer<per_group<16>, asymmetric<4>, half_away_from_zero>>);
}
