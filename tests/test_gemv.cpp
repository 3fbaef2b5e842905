// Tests of gemv.hpp: exact hand-computed products, the documented error bound against a double
// reference built from dequantize() on every layout (random and adversarial inputs), gemm equal
// bit for bit to one gemv per token, independence from the thread count, and the error paths.
#include <doctest/doctest.h>

#include "orbitq/gemv.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

using namespace orbitq;

namespace
{
    /// A layout to test: the spec plus a label.
    struct case_spec
    {
        quant_spec spec;
        std::string name;
    };

    quant_spec make_spec(granularity_kind g, int bits, scheme_kind s, std::size_t group = 0, bool ragged = false,
                         symmetric_range range = symmetric_range::restricted)
    {
        quant_spec q;
        q.granularity = g;
        q.bits = bits;
        q.scheme = s;
        q.group_size = group;
        q.ragged_groups = ragged;
        q.range = range;
        return q;
    }

    /// Every supported layout, including group sizes that are not a multiple of the SIMD width and
    /// a ragged last group (these take the widened-row path).
    std::vector<case_spec> all_layouts(std::size_t cols)
    {
        std::vector<case_spec> out;
        for (int bits : {8, 4})
        {
            for (scheme_kind s : {scheme_kind::symmetric, scheme_kind::asymmetric})
            {
                const std::string tag = "int" + std::to_string(bits) + (s == scheme_kind::symmetric ? " sym" : " asym");
                out.push_back({make_spec(granularity_kind::per_tensor, bits, s), tag + " per_tensor"});
                out.push_back({make_spec(granularity_kind::per_channel, bits, s), tag + " per_channel"});
                for (std::size_t g : {32u, 64u, 8u, 6u})
                {
                    if (cols % g == 0) out.push_back({make_spec(granularity_kind::per_group, bits, s, g), tag + " g" + std::to_string(g)});
                }
                out.push_back({make_spec(granularity_kind::per_group, bits, s, 32, true), tag + " g32 ragged"});
            }
        }
        out.push_back({make_spec(granularity_kind::per_channel, 8, scheme_kind::symmetric, 0, false, symmetric_range::full),
                       "int8 sym full-range per_channel"});
        // float codes: E4M3 in every layout (blocks of 4 x 16 and 128 x 128), E2M1 groups
        // (ragged where 32 or 16 does not divide the row: the widened path)
        for (granularity_kind g : {granularity_kind::per_tensor, granularity_kind::per_channel})
        {
            out.push_back({make_spec(g, 8, scheme_kind::fp8_e4m3), std::string("fp8 ") + to_string(g)});
        }
        for (std::size_t b : {4u, 128u})
        {
            quant_spec s = make_spec(granularity_kind::per_block, 8, scheme_kind::fp8_e4m3, b == 4 ? 16 : 128);
            s.block_rows = b;
            out.push_back({s, "fp8 block " + std::to_string(b)});
        }
        out.push_back({make_spec(granularity_kind::per_group, 4, scheme_kind::mxfp4, 32, true), "mxfp4"});
        out.push_back({make_spec(granularity_kind::per_group, 4, scheme_kind::nvfp4, 16, true), "nvfp4"});
        return out;
    }

    struct reference_result
    {
        std::vector<double> y;      ///< sum_j w_deq x_j in double
        std::vector<double> abs_y;  ///< sum_j |w_deq x_j|
    };

    /// y_ref[t, r] from dequantize(w), in double.
    template <class X>
    reference_result reference(const quantized_tensor& w, const std::vector<X>& x, std::size_t tokens)
    {
        const std::vector<float> deq = dequantize(w);
        reference_result out{std::vector<double>(tokens * w.rows), std::vector<double>(tokens * w.rows)};
        for (std::size_t t = 0; t < tokens; ++t)
        {
            for (std::size_t r = 0; r < w.rows; ++r)
            {
                double s = 0.0;
                double a = 0.0;
                for (std::size_t j = 0; j < w.cols; ++j)
                {
                    const double p = static_cast<double>(deq[r * w.cols + j]) * static_cast<double>(to_float(x[t * w.cols + j]));
                    s += p;
                    a += std::abs(p);
                }
                out.y[t * w.rows + r] = s;
                out.abs_y[t * w.rows + r] = a;
            }
        }
        return out;
    }

    /// Checks |y - y_ref| <= gamma * sum|w x| for every output; returns the largest ratio of the
    /// error to the bound seen (for information).
    double check_bound(const quantized_tensor& w, const std::vector<float>& y, const reference_result& ref, const std::string& what)
    {
        const double gamma = gemv_error_bound(w);
        double worst = 0.0;
        for (std::size_t i = 0; i < y.size(); ++i)
        {
            const double err = std::abs(static_cast<double>(y[i]) - ref.y[i]);
            const double bound = gamma * ref.abs_y[i];
            INFO(what << " output " << i << ": y=" << y[i] << " ref=" << ref.y[i] << " err=" << err << " bound=" << bound);
            REQUIRE(err <= bound);
            if (bound > 0) worst = std::max(worst, err / bound);
        }
        return worst;
    }

    std::vector<float> random_matrix(std::size_t rows, std::size_t cols, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f)
    {
        std::uniform_real_distribution<float> d(lo, hi);
        std::vector<float> m(rows * cols);
        for (auto& v : m) v = d(rng);
        return m;
    }

    quantized_tensor quantize_matrix(const std::vector<float>& m, std::size_t rows, std::size_t cols, const quant_spec& spec)
    {
        return quantize(make_view(m.data(), rows, cols, "w"), spec);
    }

    template <class X>
    std::vector<float> run_gemv(const quantized_tensor& w, const std::vector<X>& x, unsigned threads = 1)
    {
        std::vector<float> y(w.rows);
        gemv(w, std::span<const X>(x), std::span<float>(y), threads);
        return y;
    }

    template <class X>
    std::vector<float> run_gemm(const quantized_tensor& w, const std::vector<X>& x, std::size_t tokens, unsigned threads = 1)
    {
        std::vector<float> y(tokens * w.rows);
        gemm(w, std::span<const X>(x), tokens, std::span<float>(y), threads);
        return y;
    }

    bool bit_equal(const std::vector<float>& a, const std::vector<float>& b)
    {
        return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    }
}

TEST_CASE("gemv: exact on a hand-computed int8 per-channel case")
{
    // Each row's amax is 127 (scale exactly 1) or 254 (scale 2), so the codes are the values / scale.
    const std::vector<float> w = {127, -1, 2, 0, 5,
                                  -254, 4, 0, 6, 2,
                                  0, 0, 0, 0, 0};
    const quantized_tensor q = quantize_matrix(w, 3, 5, make_spec(granularity_kind::per_channel, 8, scheme_kind::symmetric));
    REQUIRE(q.scales == std::vector<float>{1.0f, 2.0f, 0.0f});
    const std::vector<float> x = {1, 2, 3, 4, 5};
    const std::vector<float> y = run_gemv(q, x);
    CHECK(y[0] == 127 - 2 + 6 + 0 + 25);
    CHECK(y[1] == -254 + 8 + 0 + 24 + 10);
    CHECK(y[2] == 0.0f);
}

TEST_CASE("gemv: exact on a hand-computed int4 asymmetric per-group case")
{
    // Every group of 3 holds 0 and 15, so min' = 0, max' = 15, scale = 15 / 15 = 1, zero point -8:
    // the codes are v - 8 and dequantize to v exactly. Groups of 3 start mid-byte.
    const std::vector<float> w = {0, 15, 3, 15, 0, 7,
                                  15, 2, 0, 4, 15, 0};
    const quantized_tensor q = quantize_matrix(w, 2, 6, make_spec(granularity_kind::per_group, 4, scheme_kind::asymmetric, 3));
    REQUIRE(dequantize(q) == w);
    REQUIRE(q.zero_points == std::vector<std::int32_t>{-8, -8, -8, -8});
    const std::vector<float> x = {1, -1, 2, 0.5f, -3, 4};
    const std::vector<float> y = run_gemv(q, x);
    CHECK(y[0] == 0 - 15 + 6 + 7.5f + 0 + 28);
    CHECK(y[1] == 15 - 2 + 0 + 2 - 45 + 0);
}

TEST_CASE("gemv/gemm: within the documented bound of the double reference on every layout")
{
    std::mt19937 rng(1234);
    for (std::size_t cols : {1u, 7u, 16u, 17u, 33u, 64u, 96u, 130u, 256u})
    {
        for (std::size_t rows : {1u, 5u, 13u})
        {
            const std::vector<float> m = random_matrix(rows, cols, rng);
            const std::vector<float> x = random_matrix(3, cols, rng, -2.0f, 2.0f);
            std::vector<bfloat16_t> xb(x.size());
            for (std::size_t i = 0; i < x.size(); ++i) xb[i] = to_bfloat16(x[i]);
            for (const case_spec& c : all_layouts(cols))
            {
                if (c.spec.granularity == granularity_kind::per_group && c.spec.group_size > cols) continue;
                const quantized_tensor q = quantize_matrix(m, rows, cols, c.spec);
                const std::string what = c.name + " " + std::to_string(rows) + "x" + std::to_string(cols);
                CAPTURE(what);
                check_bound(q, run_gemm(q, x, 3), reference(q, x, 3), what + " f32 gemm");
                check_bound(q, run_gemm(q, xb, 3), reference(q, xb, 3), what + " bf16 gemm");
                const std::vector<float> x0(x.begin(), x.begin() + static_cast<std::ptrdiff_t>(cols));
                check_bound(q, run_gemv(q, x0), reference(q, x0, 1), what + " f32 gemv");
            }
        }
    }
}

TEST_CASE("gemv: adversarial inputs stay within the bound")
{
    std::mt19937 rng(99);
    const std::size_t rows = 24;
    for (std::size_t cols : {64u, 65u, 99u, 256u})  // odd columns exercise the int4 half byte
    {
        std::vector<float> m = random_matrix(rows, cols, rng);
        for (std::size_t r = 0; r < rows; ++r)
        {
            // Row magnitudes from 1e-12 to 1e12; row 3 and row 17 entirely zero; in the other rows
            // the first 32 columns zero (a zero-scale group for per_group 32) and one outlier.
            const float row_scale = std::pow(10.0f, -12.0f + 24.0f * static_cast<float>(r) / (rows - 1));
            for (std::size_t j = 0; j < cols; ++j)
            {
                float& v = m[r * cols + j];
                v = (r == 3 || r == 17 || j < 32) ? 0.0f : v * row_scale;
            }
            if (r != 3 && r != 17) m[r * cols + cols - 1] = 300.0f * row_scale;
        }
        // Activations with a wide dynamic range and cancelling signs.
        std::vector<float> x(cols);
        for (std::size_t j = 0; j < cols; ++j) x[j] = (j % 2 ? -1.0f : 1.0f) * std::pow(10.0f, static_cast<float>(j % 9) - 4.0f);
        for (const case_spec& c : all_layouts(cols))
        {
            const quantized_tensor q = quantize_matrix(m, rows, cols, c.spec);
            const std::string what = c.name + " cols " + std::to_string(cols);
            CAPTURE(what);
            const std::vector<float> y = run_gemv(q, x);
            check_bound(q, y, reference(q, x, 1), what);
            CHECK(y[3] == 0.0f);
            CHECK(y[17] == 0.0f);
        }
    }
}

TEST_CASE("gemm: each token bit-identical to gemv; results independent of the thread count")
{
    std::mt19937 rng(7);
    const std::size_t rows = 37;
    for (std::size_t cols : {64u, 96u, 45u})
    {
        const std::vector<float> m = random_matrix(rows, cols, rng);
        for (const case_spec& c : all_layouts(cols))
        {
            const quantized_tensor q = quantize_matrix(m, rows, cols, c.spec);
            CAPTURE(c.name);
            CAPTURE(cols);
            for (std::size_t tokens : {1u, 2u, 3u, 4u, 7u, 64u})
            {
                CAPTURE(tokens);
                const std::vector<float> x = random_matrix(tokens, cols, rng, -3.0f, 3.0f);
                const std::vector<float> y = run_gemm(q, x, tokens);
                std::vector<float> y_gemv;
                for (std::size_t t = 0; t < tokens; ++t)
                {
                    const std::vector<float> xt(x.begin() + static_cast<std::ptrdiff_t>(t * cols),
                                                x.begin() + static_cast<std::ptrdiff_t>((t + 1) * cols));
                    const std::vector<float> yt = run_gemv(q, xt);
                    y_gemv.insert(y_gemv.end(), yt.begin(), yt.end());
                }
                CHECK(bit_equal(y, y_gemv));
                // A row block (an expert's slice of a stacked tensor) equals those rows of the whole.
                const std::size_t row0 = 5, block = 19;
                std::vector<float> yb(tokens * block);
                gemm(q, row0, block, std::span<const float>(x), tokens, std::span<float>(yb), 2);
                bool same = true;
                for (std::size_t t = 0; t < tokens; ++t)
                    for (std::size_t i = 0; i < block; ++i) same = same && std::memcmp(&yb[t * block + i], &y[t * rows + row0 + i], sizeof(float)) == 0;
                CHECK(same);
                for (unsigned threads : {2u, 3u, 8u}) CHECK(bit_equal(run_gemm(q, x, tokens, threads), y));
            }
        }
    }
}

TEST_CASE("gemv: bfloat16 and float16 activations equal float activations holding the same values")
{
    std::mt19937 rng(5);
    const std::vector<float> m = random_matrix(9, 128, rng);
    const std::vector<float> x0 = random_matrix(1, 128, rng);
    std::vector<bfloat16_t> xb(x0.size());
    std::vector<float16_t> xh(x0.size());
    std::vector<float> xbf(x0.size());
    std::vector<float> xhf(x0.size());
    for (std::size_t i = 0; i < x0.size(); ++i)
    {
        xb[i] = to_bfloat16(x0[i]);
        xbf[i] = to_float(xb[i]);
        xh[i] = to_float16(x0[i]);
        xhf[i] = to_float(xh[i]);
    }
    for (const case_spec& c : all_layouts(128))
    {
        const quantized_tensor q = quantize_matrix(m, 9, 128, c.spec);
        CHECK(bit_equal(run_gemv(q, xbf), run_gemv(q, xb)));
        CHECK(bit_equal(run_gemv(q, xhf), run_gemv(q, xh)));
    }
}

TEST_CASE("gemv/gemm: shape and argument errors")
{
    std::mt19937 rng(3);
    const std::vector<float> m = random_matrix(4, 32, rng);
    const quantized_tensor q = quantize_matrix(m, 4, 32, make_spec(granularity_kind::per_group, 4, scheme_kind::symmetric, 32));
    std::vector<float> x(32, 1.0f);
    std::vector<float> y(4);
    auto kind_of = [](auto&& f) {
        try
        {
            f();
        }
        catch (const error& e)
        {
            return static_cast<int>(e.kind());
        }
        return -1;
    };
    const int mismatch = static_cast<int>(error_kind::shape_mismatch);
    const int invalid = static_cast<int>(error_kind::invalid_argument);
    CHECK(kind_of([&] { gemv(q, std::span<const float>(x.data(), 31), std::span<float>(y)); }) == mismatch);
    CHECK(kind_of([&] { gemv(q, std::span<const float>(x), std::span<float>(y.data(), 3)); }) == mismatch);
    std::vector<float> x2(64, 1.0f);
    std::vector<float> y2(8);
    CHECK(kind_of([&] { gemm(q, std::span<const float>(x2), 0, std::span<float>(y2)); }) == invalid);
    CHECK(kind_of([&] { gemm(q, std::span<const float>(x2), 65, std::span<float>(y2)); }) == invalid);
    CHECK(kind_of([&] { gemm(q, std::span<const float>(x2), 3, std::span<float>(y2)); }) == mismatch);
    CHECK(kind_of([&] { gemm(q, std::span<const float>(x2), 2, std::span<float>(y2.data(), 7)); }) == mismatch);
    CHECK_NOTHROW(gemm(q, std::span<const float>(x2), 2, std::span<float>(y2)));
    std::vector<float> y3(6);
    CHECK(kind_of([&] { gemm(q, 3, 2, std::span<const float>(x2), 2, std::span<float>(y3.data(), 4)); }) == invalid);
    CHECK(kind_of([&] { gemm(q, 1, 3, std::span<const float>(x2), 2, std::span<float>(y3.data(), 4)); }) == mismatch);
    CHECK_NOTHROW(gemm(q, 1, 3, std::span<const float>(x2), 2, std::span<float>(y3)));

    quantized_tensor bad = q;
    bad.scales.pop_back();
    CHECK(kind_of([&] { gemv(bad, std::span<const float>(x), std::span<float>(y)); }) == mismatch);
    bad = q;
    bad.codes.resize(bad.codes.size() - 1);
    CHECK(kind_of([&] { gemv(bad, std::span<const float>(x), std::span<float>(y)); }) == mismatch);
    bad = q;
    bad.spec.bits = 3;
    CHECK(kind_of([&] { gemv(bad, std::span<const float>(x), std::span<float>(y)); }) == invalid);
}

TEST_CASE("gemv_error_bound: the documented formula")
{
    std::mt19937 rng(11);
    const std::vector<float> m = random_matrix(2, 2816, rng);
    const quantized_tensor q = quantize_matrix(m, 2, 2816, make_spec(granularity_kind::per_group, 8, scheme_kind::symmetric, 32));
    const double L = static_cast<double>(kernels::simd::float_batch::size);
    const double f = detail::gemv::fused_multiply_add ? 1.0 : 2.0;
    const double k = f * (std::ceil(32.0 / L) + 88.0) + L + 2.0;
    CHECK(gemv_error_bound(q) == doctest::Approx(k * 0x1p-24 / (1 - k * 0x1p-24)).epsilon(1e-12));
    // a useful bound: about 200 roundings of 2^-24 at most, even for SSE2 (4 lanes, unfused)
    CHECK(gemv_error_bound(q) < 200 * 0x1p-24);
}
