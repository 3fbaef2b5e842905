// orbitq::parallel_rows: every row exactly once, in the documented ranges, for any thread count;
// the lowest range's exception; nested and concurrent calls (which cannot share the kept
// threads) complete; and many back-to-back calls on the kept threads stay correct.
#include <doctest/doctest.h>

#include <orbitq/core/parallel.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

using orbitq::parallel_rows;

namespace
{
    /// The ranges one call hands out, sorted by first row, and how often each row was visited.
    struct coverage
    {
        std::vector<std::pair<std::size_t, std::size_t>> ranges;
        std::vector<int> hits;
    };

    coverage run_once(std::size_t rows, unsigned threads)
    {
        coverage c;
        c.hits.assign(rows, 0);
        std::mutex m;
        parallel_rows(rows, threads, [&](std::size_t first, std::size_t last) {
            for (std::size_t r = first; r < last; ++r) ++c.hits[r];  // disjoint ranges: no race
            std::lock_guard<std::mutex> lk(m);
            c.ranges.emplace_back(first, last);
        });
        std::sort(c.ranges.begin(), c.ranges.end());
        return c;
    }
}

TEST_CASE("every row is visited exactly once, in rows * p / parts ranges")
{
    for (std::size_t rows : {std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{7}, std::size_t{1000}})
    {
        for (unsigned threads : {1u, 2u, 3u, 4u, 8u, 0u})
        {
            CAPTURE(rows);
            CAPTURE(threads);
            const coverage c = run_once(rows, threads);
            for (std::size_t r = 0; r < rows; ++r) REQUIRE(c.hits[r] == 1);
            const unsigned t = threads == 0 ? std::max(1u, std::thread::hardware_concurrency()) : threads;
            const std::size_t parts = std::min<std::size_t>(t, rows);
            REQUIRE(c.ranges.size() == parts);
            for (std::size_t p = 0; p < parts; ++p)
            {
                CHECK(c.ranges[p].first == rows * p / parts);
                CHECK(c.ranges[p].second == rows * (p + 1) / parts);
            }
        }
    }
}

TEST_CASE("zero rows: one call with an empty range")
{
    const coverage c = run_once(0, 4);
    REQUIRE(c.ranges.size() == 1);
    CHECK(c.ranges[0] == std::pair<std::size_t, std::size_t>{0, 0});
}

TEST_CASE("back-to-back calls on the kept threads, with changing thread counts")
{
    std::atomic<std::size_t> total{0};
    std::size_t expected = 0;
    for (int call = 0; call < 3000; ++call)
    {
        const unsigned threads = 1 + static_cast<unsigned>(call % 4);
        const std::size_t rows = 1 + static_cast<std::size_t>(call % 37);
        parallel_rows(rows, threads, [&](std::size_t first, std::size_t last) { total += last - first; });
        expected += rows;
        REQUIRE(total.load() == expected);  // every call has finished all its ranges on return
    }
}

TEST_CASE("the exception of the lowest throwing range is rethrown after all ranges finish")
{
    for (int round = 0; round < 50; ++round)
    {
        std::atomic<int> finished{0};
        try
        {
            parallel_rows(4, 4, [&](std::size_t first, std::size_t) {
                if (first >= 2)
                {
                    ++finished;
                    throw std::runtime_error("range " + std::to_string(first));
                }
                std::this_thread::sleep_for(std::chrono::microseconds(50));
                ++finished;
            });
            FAIL("no exception");
        }
        catch (const std::runtime_error& e)
        {
            CHECK(std::string(e.what()) == "range 2");
        }
        CHECK(finished.load() == 4);
    }
    // the kept threads still work after a throwing call
    CHECK(run_once(100, 4).ranges.size() == 4);
}

TEST_CASE("a nested call and concurrent callers complete with correct ranges")
{
    // nested: the inner call cannot use the threads the outer one holds
    std::atomic<std::size_t> inner_rows{0};
    parallel_rows(4, 2, [&](std::size_t first, std::size_t last) {
        for (std::size_t r = first; r < last; ++r)
        {
            parallel_rows(10, 2, [&](std::size_t a, std::size_t b) { inner_rows += b - a; });
        }
    });
    CHECK(inner_rows.load() == 40);

    // concurrent: four callers at once, each checking its own coverage many times
    std::atomic<int> bad{0};
    std::vector<std::thread> callers;
    for (int k = 0; k < 4; ++k)
    {
        callers.emplace_back([&bad, k] {
            for (int i = 0; i < 200; ++i)
            {
                const std::size_t rows = 50 + static_cast<std::size_t>(k * 13 + i % 7);
                const coverage c = run_once(rows, 3);
                for (int h : c.hits) bad += h != 1;
                bad += c.ranges.size() != 3;
            }
        });
    }
    for (auto& t : callers) t.join();
    CHECK(bad.load() == 0);
}
