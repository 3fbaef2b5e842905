// Tests of gemv.hpp: exact hand-computed products, the documented error bound against a double
// reference built from dequantize() on every layout (random and adversarial inputs), gemm equal
// bit for bit to one gemv per token, independence from the thread count, and the error paths.
#include <doctest/doctest.h>

#include "orbitq/gemv.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
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

    /// `q` with the mse search's scales of either sign (quant_spec::signed_scales).
    quant_spec signed_mse(quant_spec q)
    {
        q.scales = scale_search::mse;
        q.signed_scales = true;
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
        // negative scales (the signed search): codes x scale as any other
        out.push_back({signed_mse(make_spec(granularity_kind::per_channel, 8, scheme_kind::symmetric)), "int8 sym per_channel mse signed"});
        out.push_back({signed_mse(make_spec(granularity_kind::per_group, 4, scheme_kind::symmetric, 32, true)), "int4 sym g32 ragged mse signed"});
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

// ---- gemv_arithmetic::int8_dot --------------------------------------------------------------

namespace
{
    /// The activations int8_dot multiplies, from the contract in the file brief of gemv.hpp:
    /// x^_j = qx_j * step_b, step_b the smallest float >= max|x| / 127 of block b, qx nearest-even.
    struct quantized_x
    {
        std::vector<double> value;  ///< x^
        std::vector<double> step;   ///< step of each column's block
    };

    template <class X>
    quantized_x contract_activations(const X* x, std::size_t cols)
    {
        quantized_x out{std::vector<double>(cols), std::vector<double>(cols)};
        for (std::size_t b0 = 0; b0 < cols; b0 += 32)
        {
            const std::size_t b1 = std::min(cols, b0 + 32);
            double amax = 0.0;
            for (std::size_t j = b0; j < b1; ++j) amax = std::max(amax, std::abs(static_cast<double>(to_float(x[j]))));
            float step = static_cast<float>(amax / 127.0);
            if (static_cast<double>(step) < amax / 127.0) step = std::nextafter(step, 1e30f);
            for (std::size_t j = b0; j < b1; ++j)
            {
                const double q = step > 0 ? std::nearbyint(static_cast<double>(to_float(x[j])) / step) : 0.0;
                REQUIRE(std::abs(q) <= 127.0);
                out.value[j] = q * step;
                out.step[j] = step;
            }
        }
        return out;
    }

    /// Checks both parts of int8_dot's bound for every output of a gemm of `tokens` tokens.
    template <class X>
    void check_int8_dot_bound(const quantized_tensor& w, const std::vector<X>& x, std::size_t tokens, const std::vector<float>& y,
                              const std::string& what)
    {
        const std::vector<float> deq = dequantize(w);
        const double gamma = gemv_int8_dot_error_bound(w);
        for (std::size_t t = 0; t < tokens; ++t)
        {
            const quantized_x xq = contract_activations(x.data() + t * w.cols, w.cols);
            for (std::size_t r = 0; r < w.rows; ++r)
            {
                double exact_q = 0, abs_q = 0, exact = 0, quant = 0;
                for (std::size_t j = 0; j < w.cols; ++j)
                {
                    const double wd = deq[r * w.cols + j];
                    exact_q += wd * xq.value[j];
                    abs_q += std::abs(wd * xq.value[j]);
                    exact += wd * static_cast<double>(to_float(x[t * w.cols + j]));
                    quant += std::abs(wd) * xq.step[j] / 2;
                }
                const double yv = y[t * w.rows + r];
                INFO(what << " token " << t << " row " << r << ": y=" << yv << " ref(x^)=" << exact_q << " ref(x)=" << exact);
                REQUIRE(std::abs(yv - exact_q) <= gamma * abs_q);
                REQUIRE(std::abs(yv - exact) <= gamma * abs_q + quant * (1 + 1e-12));
            }
        }
    }

    /// The layouts int8_dot takes the integer path for, at this column count.
    std::vector<case_spec> int8_dot_layouts(std::size_t cols)
    {
        std::vector<case_spec> out;
        for (scheme_kind s : {scheme_kind::symmetric, scheme_kind::asymmetric})
        {
            const std::string tag = s == scheme_kind::symmetric ? "int4 sym" : "int4 asym";
            out.push_back({make_spec(granularity_kind::per_tensor, 4, s), tag + " per_tensor"});
            out.push_back({make_spec(granularity_kind::per_channel, 4, s), tag + " per_channel"});
            for (std::size_t g : {32u, 64u, 128u, 256u})
            {
                if (cols % g == 0) out.push_back({make_spec(granularity_kind::per_group, 4, s, g), tag + " g" + std::to_string(g)});
            }
            out.push_back({make_spec(granularity_kind::per_group, 4, s, 32, true), tag + " g32 ragged"});
            out.push_back({make_spec(granularity_kind::per_group, 4, s, 64, true), tag + " g64 ragged"});
        }
        out.push_back({signed_mse(make_spec(granularity_kind::per_group, 4, scheme_kind::symmetric, 32, true)), "int4 sym g32 ragged mse signed"});
        out.push_back({signed_mse(make_spec(granularity_kind::per_channel, 4, scheme_kind::symmetric)), "int4 sym per_channel mse signed"});
        return out;
    }

    template <class X>
    std::vector<float> run_int8_dot(const quantized_tensor& w, const std::vector<X>& x, std::size_t tokens, unsigned threads = 1)
    {
        std::vector<float> y(tokens * w.rows);
        if (tokens == 1) gemv(w, std::span<const X>(x), std::span<float>(y), threads, gemv_arithmetic::int8_dot);
        else gemm(w, std::span<const X>(x), tokens, std::span<float>(y), threads, gemv_arithmetic::int8_dot);
        return y;
    }
}

TEST_CASE("int8_dot: the activation step is the smallest float >= amax / 127")
{
    using kernels::int4_dot::block_step;
    CHECK(block_step(127.0f) == 1.0f);
    CHECK(block_step(0.0f) == 0.0f);
    CHECK(block_step(254.0f) == 2.0f);
    const float s = block_step(1.0f);
    CHECK(static_cast<double>(s) >= 1.0 / 127.0);
    CHECK(static_cast<double>(std::nextafter(s, 0.0f)) < 1.0 / 127.0);
    CHECK(block_step(1e-44f) > 0.0f);  // subnormal amax: a subnormal step, never 0
    CHECK(1e-44f / block_step(1e-44f) <= 127.0f);
    CHECK(std::isnan(block_step(std::numeric_limits<float>::infinity())));
    CHECK(std::isnan(block_step(std::numeric_limits<float>::quiet_NaN())));
    CHECK(block_step(std::numeric_limits<float>::max()) > 0.0f);
}

TEST_CASE("int8_dot: exact where every quantity is an integer")
{
    // x in [-127, 127] with a 127 in every block: step 1, qx = x. Scales 1 (int4 codes -> the
    // integers themselves) so y is an exact small integer.
    const std::size_t rows = 5, cols = 160;
    std::vector<float> m(rows * cols);
    std::vector<float> x(cols);
    for (std::size_t j = 0; j < cols; ++j) x[j] = j % 32 == 3 ? 127.0f : static_cast<float>(static_cast<int>(j * 37 % 255) - 127);
    for (std::size_t r = 0; r < rows; ++r)
    {
        for (std::size_t j = 0; j < cols; ++j) m[r * cols + j] = static_cast<float>(static_cast<int>((r * 13 + j * 7) % 15) - 7);
        m[r * cols] = 7.0f;  // amax 7 per row: scale 1
    }
    const quantized_tensor q = quantize_matrix(m, rows, cols, make_spec(granularity_kind::per_channel, 4, scheme_kind::symmetric));
    REQUIRE(supports_int8_dot(q));
    for (float s : q.scales) REQUIRE(s == 1.0f);
    const std::vector<float> y = run_int8_dot(q, x, 1);
    for (std::size_t r = 0; r < rows; ++r)
    {
        double e = 0;
        for (std::size_t j = 0; j < cols; ++j) e += static_cast<double>(m[r * cols + j]) * x[j];
        CHECK(y[r] == e);
    }
}

TEST_CASE("int8_dot: within the documented bound on every supported layout, f32 and bf16 activations")
{
    std::mt19937 rng(11);
    for (std::size_t cols : {64u, 99u, 128u, 256u, 384u, 704u})
    {
        const std::size_t rows = 13;
        const std::vector<float> m = random_matrix(rows, cols, rng);
        for (const case_spec& c : int8_dot_layouts(cols))
        {
            const quantized_tensor q = quantize_matrix(m, rows, cols, c.spec);
            REQUIRE(supports_int8_dot(q));
            for (std::size_t tokens : {1u, 4u})
            {
                std::vector<float> x = random_matrix(tokens, cols, rng, -2.0f, 2.0f);
                // adversarial blocks: a zero block, one huge outlier, tiny values
                for (std::size_t j = 0; j < std::min<std::size_t>(32, cols); ++j) x[j] = 0.0f;
                if (cols > 40) x[40] = 3.0e4f;
                if (cols > 70) x[70] = 1e-30f;
                check_int8_dot_bound(q, x, tokens, run_int8_dot(q, x, tokens), c.name + " f32 cols " + std::to_string(cols));
                std::vector<bfloat16_t> xb(x.size());
                for (std::size_t i = 0; i < x.size(); ++i) xb[i] = to_bfloat16(x[i]);
                check_int8_dot_bound(q, xb, tokens, run_int8_dot(q, xb, tokens), c.name + " bf16 cols " + std::to_string(cols));
            }
        }
    }
}

TEST_CASE("int8_dot: the SIMD chunk operations equal the plain loops bit for bit")
{
    std::mt19937 rng(13);
    for (std::size_t cols : {96u, 99u, 256u, 704u})
    {
        const std::vector<float> m = random_matrix(11, cols, rng);
        for (const case_spec& c : int8_dot_layouts(cols))
        {
            const quantized_tensor q = quantize_matrix(m, 11, cols, c.spec);
            for (std::size_t tokens : {1u, 5u})
            {
                const std::vector<float> x = random_matrix(tokens, cols, rng, -4.0f, 4.0f);
                std::vector<float> y(tokens * q.rows);
                using generic = kernels::int4_dot::generic_ops;
                if (tokens == 1) detail::gemv::run_int8_dot<detail::gemv::gemv_rows, 1, generic>(q, 0, q.rows, x.data(), 1, y.data(), 1);
                else
                {
                    detail::gemv::run_int8_dot<detail::gemv::gemm_rows, detail::gemv::gemm_tokens, generic>(q, 0, q.rows, x.data(), tokens,
                                                                                                             y.data(), 1);
                }
                CAPTURE(c.name);
                CAPTURE(cols);
                CHECK(bit_equal(run_int8_dot(q, x, tokens), y));
            }
        }
    }
}

TEST_CASE("int8_dot: gemm tokens equal gemv bit for bit, for any thread count and row block")
{
    std::mt19937 rng(17);
    const std::size_t rows = 37, cols = 192;
    const std::vector<float> m = random_matrix(rows, cols, rng);
    for (const case_spec& c : int8_dot_layouts(cols))
    {
        const quantized_tensor q = quantize_matrix(m, rows, cols, c.spec);
        CAPTURE(c.name);
        for (std::size_t tokens : {2u, 7u, 64u})
        {
            const std::vector<float> x = random_matrix(tokens, cols, rng, -3.0f, 3.0f);
            const std::vector<float> y = run_int8_dot(q, x, tokens);
            std::vector<float> y_gemv;
            for (std::size_t t = 0; t < tokens; ++t)
            {
                const std::vector<float> xt(x.begin() + static_cast<std::ptrdiff_t>(t * cols), x.begin() + static_cast<std::ptrdiff_t>((t + 1) * cols));
                const std::vector<float> yt = run_int8_dot(q, xt, 1);
                y_gemv.insert(y_gemv.end(), yt.begin(), yt.end());
            }
            CHECK(bit_equal(y, y_gemv));
            for (unsigned threads : {2u, 3u}) CHECK(bit_equal(run_int8_dot(q, x, tokens, threads), y));
            const std::size_t row0 = 5, block = 19;
            std::vector<float> yb(tokens * block);
            gemm(q, row0, block, std::span<const float>(x), tokens, std::span<float>(yb), 2, gemv_arithmetic::int8_dot);
            bool same = true;
            for (std::size_t t = 0; t < tokens; ++t)
                for (std::size_t i = 0; i < block; ++i) same = same && std::memcmp(&yb[t * block + i], &y[t * rows + row0 + i], sizeof(float)) == 0;
            CHECK(same);
        }
    }
}

TEST_CASE("int8_dot: a non-finite activation makes every output NaN; other layouts multiply as float32")
{
    std::mt19937 rng(19);
    const std::size_t rows = 6, cols = 128;
    const std::vector<float> m = random_matrix(rows, cols, rng);
    const quantized_tensor q = quantize_matrix(m, rows, cols, make_spec(granularity_kind::per_group, 4, scheme_kind::symmetric, 32));
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()})
    {
        std::vector<float> x = random_matrix(1, cols, rng);
        x[77] = bad;
        for (float v : run_int8_dot(q, x, 1)) CHECK(std::isnan(v));
    }
    const std::vector<float> x = random_matrix(1, cols, rng);
    for (const quant_spec& s : {make_spec(granularity_kind::per_channel, 8, scheme_kind::symmetric),
                                make_spec(granularity_kind::per_group, 4, scheme_kind::symmetric, 16),
                                make_spec(granularity_kind::per_group, 4, scheme_kind::symmetric, 96, true),
                                make_spec(granularity_kind::per_group, 4, scheme_kind::mxfp4, 32)})
    {
        const quantized_tensor w = quantize_matrix(m, rows, cols, s);
        CAPTURE(s.describe());
        CHECK_FALSE(supports_int8_dot(w));
        CHECK(bit_equal(run_int8_dot(w, x, 1), run_gemv(w, x)));
    }
}

TEST_CASE("gemv_int8_dot_error_bound: the documented formula")
{
    std::mt19937 rng(23);
    const std::vector<float> m = random_matrix(3, 2816, rng);
    const quantized_tensor q = quantize_matrix(m, 3, 2816, make_spec(granularity_kind::per_group, 4, scheme_kind::symmetric, 32));
    const double L = static_cast<double>(kernels::int4_dot::lanes);
    const double chunks = std::ceil(1408.0 / (4 * L));
    const double f = detail::gemv::fused_multiply_add ? 1.0 : 2.0;
    const double k = f * (chunks + 88) + L + 3;  // 2816 / 32 = 88 orbits per row
    CHECK(gemv_int8_dot_error_bound(q) == doctest::Approx(k * 0x1p-24 / (1 - k * 0x1p-24)).epsilon(1e-12));
}
