// Metrics on hand-computed cases, and measure() against an independent double computation.
#include <doctest/doctest.h>

#include <orbitq/metrics.hpp>
#include <orbitq/xtensor.hpp>

#include <cmath>
#include <random>
#include <vector>

using namespace orbitq;

TEST_CASE("cosine, relative error, SQNR and max error of a hand-computed pair")
{
    const std::vector<float> a = {3.0f, 4.0f, 0.0f};
    const std::vector<float> b = {3.0f, 4.0f, 1.0f};
    const auto m = compare(std::span<const float>(a), std::span<const float>(b), 3);
    CHECK(m.cosine == doctest::Approx(25.0 / (5.0 * std::sqrt(26.0))));
    CHECK(m.relative_error == doctest::Approx(1.0 / 5.0));
    CHECK(m.sqnr_db == doctest::Approx(-20.0 * std::log10(0.2)));
    CHECK(m.max_abs_err == 1.0);
    CHECK(m.max_row == 0);
    CHECK(m.max_col == 2);
    CHECK(cosine(std::span<const float>(a), std::span<const float>(a)) == doctest::Approx(1.0));
    const std::vector<float> z = {0.0f, 0.0f, 0.0f};
    CHECK(cosine(std::span<const float>(z), std::span<const float>(z)) == 1.0);
    CHECK(cosine(std::span<const float>(z), std::span<const float>(a)) == 0.0);
    CHECK(std::isinf(compare(std::span<const float>(a), std::span<const float>(a)).sqnr_db));
    CHECK_THROWS_AS((void)cosine(std::span<const float>(a), std::span<const float>(a.data(), 2)), error);
}

TEST_CASE("measure equals an independent double-precision comparison with the dequantized tensor")
{
    std::mt19937 gen(4);
    std::normal_distribution<float> d(0.0f, 0.05f);
    const std::size_t rows = 9, cols = 100;
    std::vector<float> v(rows * cols);
    for (auto& x : v) x = d(gen);
    v[123] = 2.0f;
    const auto w = make_view(v.data(), rows, cols);
    for (auto g : {granularity_kind::per_tensor, granularity_kind::per_channel})
    {
        const auto q = quantize(w, quant_spec{.granularity = g, .bits = 4});
        const auto deq = dequantize(q);
        double dot = 0, aa = 0, bb = 0, ee = 0, mx = 0;
        for (std::size_t i = 0; i < v.size(); ++i)
        {
            dot += double(v[i]) * deq[i];
            aa += double(v[i]) * v[i];
            bb += double(deq[i]) * deq[i];
            ee += (double(v[i]) - deq[i]) * (double(v[i]) - deq[i]);
            mx = std::max(mx, std::fabs(double(v[i]) - deq[i]));
        }
        std::vector<double> rc;
        const auto m = measure(w, q, &rc);
        CHECK(m.cosine == doctest::Approx(dot / std::sqrt(aa * bb)).epsilon(1e-12));
        CHECK(m.relative_error == doctest::Approx(std::sqrt(ee / aa)).epsilon(1e-12));
        CHECK(m.max_abs_err == mx);
        REQUIRE(rc.size() == rows);
        const auto rc2 = row_cosines(std::span<const float>(v), std::span<const float>(deq), cols);
        for (std::size_t r = 0; r < rows; ++r) CHECK(rc[r] == doctest::Approx(rc2[r]).epsilon(1e-12));
    }
    // per-channel beats per-tensor when one outlier sets the tensor's scale
    CHECK(measure(w, quantize(w, quant_spec{})).sqnr_db > measure(w, quantize(w, quant_spec{.granularity = granularity_kind::per_tensor})).sqnr_db + 6.0);
}

TEST_CASE("condition number and bits lost per row")
{
    const std::vector<float> v = {1.0f, -1.0f, 1.0f, -1.0f, 0.5f, 0.5f, 0.5f, 4.0f};
    const auto w = make_view(v.data(), 2, 4);
    const double rms = std::sqrt((4.0 + 0.75 + 16.0) / 8.0);
    CHECK(condition_number(w) == doctest::Approx(4.0 / rms));
    const auto p = compute_statistics(w, 4);
    const auto lost = bits_lost_per_row(p);
    CHECK(lost[0] == doctest::Approx(2.0));  // log2(4 / 1)
    CHECK(lost[1] == 0.0);
    const std::vector<float> amax = {0.0f, 2.0f};
    const auto l2 = bits_lost_per_row(std::span<const float>(amax), 8.0f);
    CHECK(std::isinf(l2[0]));
    CHECK(l2[1] == doctest::Approx(2.0));
    std::vector<float> z(4, 0.0f);
    CHECK(condition_number(make_view(z.data(), 1, 4)) == 0.0);
    std::vector<float> bad = {1.0f, NAN};
    CHECK_THROWS_AS((void)condition_number(make_view(bad.data(), 1, 2)), non_finite_error);
}

TEST_CASE("amplification: the seed's numbers and the tighter forms")
{
    // the experiment log: cos 0.9555 -> (1.045)^30 ~= 3.75; cos 0.997 -> (1.003)^30 ~= 1.09
    CHECK(amplification_from_cosine(0.9555, 30) == doctest::Approx(std::pow(1.0445, 30)));
    CHECK(amplification_from_cosine(0.955, 30) == doctest::Approx(3.745).epsilon(1e-3));
    CHECK(amplification_from_cosine(0.997, 30) == doctest::Approx(1.094).epsilon(1e-3));
    CHECK(amplification_relative(0.0, 30) == 30.0);
    CHECK(amplification_relative(0.1, 1) == doctest::Approx(1.0));
    CHECK(amplification_relative(0.01, 2) == doctest::Approx(2.01));
    const std::vector<double> eps = {0.1, 0.2};
    CHECK(predicted_relative_error(eps) == doctest::Approx(1.1 * 1.2 - 1.0));
    const std::vector<double> cosines = {std::cos(0.1), std::cos(0.2)};
    CHECK(predicted_cosine_floor(cosines) == doctest::Approx(std::cos(0.3)));
    const std::vector<double> opposite(40, 0.5);  // 40 * 60 degrees saturates at pi
    CHECK(predicted_cosine_floor(opposite) == doctest::Approx(-1.0));
}

TEST_CASE("xtensor adaptors: zero-copy views of contiguous containers, arrays out")
{
    xt::xarray<float> a = xt::xarray<float>::from_shape({3, 4, 8});
    for (std::size_t i = 0; i < a.size(); ++i) a.data()[i] = float(i % 13) - 6.0f;
    const auto w = make_view(a, "stacked");
    CHECK(w.data == a.data());
    CHECK(w.rows == 12);
    CHECK(w.cols == 8);
    const auto q = quantize(w, quant_spec{});
    const auto back = dequantize_xarray(q);
    CHECK(back.shape() == a.shape());
    CHECK(back(1, 2, 3) == dequantize(q)[(1 * 4 + 2) * 8 + 3]);
    xt::xarray<float, xt::layout_type::column_major> cm = xt::xarray<float, xt::layout_type::column_major>::from_shape({3, 4});
    CHECK_THROWS_AS((void)make_view(cm, "cm"), error);
}
