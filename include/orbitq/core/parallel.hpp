/// @file parallel.hpp
/// @brief Splitting rows across threads, deterministically.
#pragma once

#include <algorithm>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace orbitq
{
    /// @brief Calls `f(first_row, last_row)` on `threads` contiguous, disjoint row ranges that
    ///        cover [0, rows), one range per thread (the caller's thread takes the first).
    ///
    /// Each row is processed by exactly one call, so results that depend only on the row are
    /// identical for any thread count. If calls throw, the exception of the lowest range is
    /// rethrown after every thread has joined. `threads == 0` means hardware concurrency.
    template <class F>
    void parallel_rows(std::size_t rows, unsigned threads, F&& f)
    {
        if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
        const std::size_t parts = std::max<std::size_t>(1, std::min<std::size_t>(threads, rows));
        if (parts == 1)
        {
            f(std::size_t{0}, rows);
            return;
        }
        std::vector<std::exception_ptr> errors(parts);
        auto run = [&](std::size_t p) {
            const std::size_t first = rows * p / parts;
            const std::size_t last = rows * (p + 1) / parts;
            try
            {
                f(first, last);
            }
            catch (...)
            {
                errors[p] = std::current_exception();
            }
        };
        std::vector<std::thread> pool;
        pool.reserve(parts - 1);
        for (std::size_t p = 1; p < parts; ++p) pool.emplace_back(run, p);
        run(0);
        for (auto& t : pool) t.join();
        for (auto& e : errors)
        {
            if (e) std::rethrow_exception(e);
        }
    }
}
