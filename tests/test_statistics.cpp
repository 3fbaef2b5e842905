// Laws of the orbit statistics (associativity, identity, homomorphism) and the statistics pyramid.
#include <doctest/doctest.h>

#include <orbitq/algebra/orbits.hpp>
#include <orbitq/algebra/statistics.hpp>

#include <random>
#include <vector>

using namespace orbitq;

namespace
{
    std::vector<float> random_floats(std::size_t n, unsigned seed)
    {
        std::mt19937 gen(seed);
        std::normal_distribution<float> d(0.0f, 1.0f);
        std::vector<float> v(n);
        for (auto& x : v) x = d(gen) * (gen() % 17 == 0 ? 30.0f : 1.0f);
        return v;
    }

    template <class S>
    S stat_of(const std::vector<float>& v, std::size_t first, std::size_t last)
    {
        return observe_all<S>(v.begin() + first, v.begin() + last);
    }
}

TEST_CASE_TEMPLATE("combine is associative and has a two-sided identity", S, abs_max, min_max, sum_squares)
{
    const auto v = random_floats(300, 7);
    for (std::size_t i = 0; i < 50; ++i)
    {
        const S a = S::observe(v[i]);
        const S b = stat_of<S>(v, 50 + i, 100 + i);
        const S c = stat_of<S>(v, 150, 151 + i);
        const S left = combine(combine(a, b), c);
        const S right = combine(a, combine(b, c));
        if constexpr (std::same_as<S, sum_squares>)
        {
            CHECK(left.count == right.count);
            CHECK(left.sum == doctest::Approx(right.sum).epsilon(1e-14));
        }
        else
        {
            CHECK(left == right);
        }
        CHECK(combine(S::identity(), b) == b);
        CHECK(combine(b, S::identity()) == b);
    }
}

TEST_CASE("statistics of hand-computed orbits")
{
    const std::vector<float> v = {0.5f, -3.0f, 2.0f, 0.0f};
    CHECK(stat_of<abs_max>(v, 0, 4).value == 3.0f);
    const auto mm = stat_of<min_max>(v, 0, 4);
    CHECK(mm.min == -3.0f);
    CHECK(mm.max == 2.0f);
    CHECK(mm.to_abs_max().value == 3.0f);
    const auto ss = stat_of<sum_squares>(v, 0, 4);
    CHECK(ss.sum == 0.25 + 9.0 + 4.0);
    CHECK(ss.count == 4);
    CHECK(ss.rms() == doctest::Approx(std::sqrt(13.25 / 4.0)));
    // the empty orbit of a monoid is its identity
    CHECK(stat_of<abs_max>(v, 2, 2) == abs_max::identity());
    CHECK(sum_squares::identity().rms() == 0.0);
}

TEST_CASE("min_max maps homomorphically onto abs_max")
{
    const auto v = random_floats(200, 3);
    for (std::size_t i = 1; i < 100; ++i)
    {
        const auto a = stat_of<min_max>(v, 0, i);
        const auto b = stat_of<min_max>(v, i, 200);
        CHECK(combine(a, b).to_abs_max() == combine(a.to_abs_max(), b.to_abs_max()));
        CHECK(a.to_abs_max() == stat_of<abs_max>(v, 0, i));
    }
}

TEST_CASE("reduce folds left to right; reduce of nothing is the identity")
{
    std::vector<abs_max> xs = {{1.0f}, {5.0f}, {2.0f}};
    CHECK(reduce_nonempty(xs.begin(), xs.end()).value == 5.0f);
    std::vector<abs_max> none;
    CHECK(reduce(none.begin(), none.end()) == abs_max::identity());
}

TEST_CASE("one pass yields group, row and tensor statistics that nest")
{
    const std::size_t rows = 5;
    for (std::size_t cols : {1u, 7u, 32u, 33u, 96u, 100u})
    {
        const auto v = random_floats(rows * cols, static_cast<unsigned>(cols));
        const auto w = make_view(v.data(), rows, cols, "w");
        for (std::size_t group : {1u, 8u, 32u})
        {
            const auto p = compute_statistics(w, group);
            CHECK(p.groups_per_row == (cols + group - 1) / group);
            for (std::size_t r = 0; r < rows; ++r)
            {
                for (std::size_t g = 0; g < p.groups_per_row; ++g)
                {
                    const std::size_t c0 = r * cols + g * group;
                    const std::size_t c1 = r * cols + std::min(cols, (g + 1) * group);
                    CHECK(p.group_stat(r, g) == stat_of<min_max>(v, c0, c1));
                }
                CHECK(p.row_stats[r] == stat_of<min_max>(v, r * cols, (r + 1) * cols));
            }
            CHECK(p.tensor == stat_of<min_max>(v, 0, rows * cols));
        }
    }
}

TEST_CASE("the statistics pass names the first non-finite value")
{
    std::vector<float> v(4 * 40, 1.0f);
    v[2 * 40 + 37] = std::numeric_limits<float>::quiet_NaN();
    try
    {
        (void)compute_statistics(make_view(v.data(), 4, 40, "layer.w"), 8);
        FAIL("expected non_finite_error");
    }
    catch (const non_finite_error& e)
    {
        CHECK(e.row() == 2);
        CHECK(e.col() == 37);
        CHECK(std::string(e.what()).find("layer.w") != std::string::npos);
    }
    CHECK_THROWS_AS((void)compute_statistics(make_view(v.data(), 4, 40), 0), error);
}
