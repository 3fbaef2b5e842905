/// @file parallel.hpp
/// @brief Splitting rows across threads, deterministically.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace orbitq
{
    namespace detail
    {
        /// Threads kept between calls of parallel_rows: starting and joining a std::thread per
        /// call costs about as much as quantizing a whole cache-resident Gemma 4 expert matrix on
        /// 2 threads. Workers spin briefly after a call (back-to-back calls, as a converter makes
        /// expert after expert, then find them awake), then sleep.
        ///
        /// One call at a time: try_run returns false, running nothing, while another call is in
        /// flight (a concurrent caller, or a nested parallel_rows inside a job); the caller then
        /// uses threads of its own.
        class row_pool
        {
        public:
            static row_pool& instance()
            {
                static row_pool pool;
                return pool;
            }

            /// Runs job(p) for every p in [0, parts): p = 0 on the calling thread, the others on
            /// workers; returns when all have returned. @pre parts >= 1, job does not throw.
            bool try_run(std::size_t parts, const std::function<void(std::size_t)>& job)
            {
                std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
                if (!busy.owns_lock()) return false;
                {
                    std::lock_guard<std::mutex> lk(m_);
                    while (workers_.size() + 1 < parts) workers_.emplace_back(&row_pool::work, this, workers_.size() + 1);
                    job_ = &job;
                    parts_ = parts;
                    pending_.store(parts - 1, std::memory_order_relaxed);
                    generation_.fetch_add(1, std::memory_order_release);
                }
                cv_work_.notify_all();
                job(0);
                for (int spin = 0; spin < spin_limit() && pending_.load(std::memory_order_acquire) != 0; ++spin) relax(spin);
                std::unique_lock<std::mutex> lk(m_);
                cv_done_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
                job_ = nullptr;
                return true;
            }

            row_pool(const row_pool&) = delete;
            row_pool& operator=(const row_pool&) = delete;

        private:
            row_pool() = default;

            ~row_pool()
            {
                {
                    std::lock_guard<std::mutex> lk(m_);
                    stop_.store(true, std::memory_order_release);
                }
                cv_work_.notify_all();
                for (auto& t : workers_) t.join();
            }

            /// One step of a spin wait: a pause, and now and then the core for another thread.
            static void relax(int spin) noexcept
            {
#if defined(__SSE2__)
                _mm_pause();
#endif
                if (spin % 64 == 63) std::this_thread::yield();
            }

            /// Spin steps before sleeping (~0.1-0.5 ms); none when there are more threads than
            /// cores, where a spinning thread would take the core of one doing the work.
            int spin_limit() const noexcept
            {
                return workers_.size() + 1 <= std::max(1u, std::thread::hardware_concurrency()) ? 1 << 14 : 0;
            }

            /// Worker `index` (>= 1) runs job(index) in every call with more than index parts.
            void work(std::size_t index)
            {
                std::uint64_t seen = 0;
                int spins = 0;  // spin only right after running a job: calls tend to come in runs
                for (;;)
                {
                    for (int spin = 0; spin < spins && generation_.load(std::memory_order_acquire) == seen && !stop_.load(std::memory_order_acquire);
                         ++spin)
                    {
                        relax(spin);
                    }
                    spins = 0;
                    const std::function<void(std::size_t)>* job = nullptr;
                    {
                        std::unique_lock<std::mutex> lk(m_);
                        cv_work_.wait(lk, [&] { return stop_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen; });
                        if (stop_.load(std::memory_order_acquire)) return;
                        seen = generation_.load(std::memory_order_acquire);
                        if (index >= parts_) continue;  // not needed in this call
                        job = job_;
                        spins = spin_limit();
                    }
                    (*job)(index);
                    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1)
                    {
                        std::lock_guard<std::mutex> lk(m_);
                        cv_done_.notify_one();
                    }
                }
            }

            std::mutex busy_;  ///< held for a whole call
            std::mutex m_;     ///< guards job_, parts_, workers_ and the sleeps
            std::condition_variable cv_work_;
            std::condition_variable cv_done_;
            std::vector<std::thread> workers_;
            const std::function<void(std::size_t)>* job_ = nullptr;
            std::size_t parts_ = 0;
            std::atomic<std::uint64_t> generation_{0};
            std::atomic<std::size_t> pending_{0};
            std::atomic<bool> stop_{false};
        };

        /// A non-owning reference to a caller's `f(first_row, last_row)`: parallel_rows hands it
        /// to run_row_parts, so the splitting, the threads and the exception handling compile
        /// once, not once per functor type.
        struct row_range_ref
        {
            void* object;
            void (*call)(void* object, std::size_t first, std::size_t last);
        };

        /// parallel_rows' body for `parts` >= 2 ranges. @pre 2 <= parts <= rows.
        inline void run_row_parts(std::size_t rows, std::size_t parts, row_range_ref f)
        {
            std::vector<std::exception_ptr> errors(parts);
            const std::function<void(std::size_t)> run = [&](std::size_t p) {
                const std::size_t first = rows * p / parts;
                const std::size_t last = rows * (p + 1) / parts;
                try
                {
                    f.call(f.object, first, last);
                }
                catch (...)
                {
                    errors[p] = std::current_exception();
                }
            };
            if (!row_pool::instance().try_run(parts, run))
            {
                std::vector<std::thread> pool;
                pool.reserve(parts - 1);
                for (std::size_t p = 1; p < parts; ++p) pool.emplace_back(run, p);
                run(0);
                for (auto& t : pool) t.join();
            }
            for (auto& e : errors)
            {
                if (e) std::rethrow_exception(e);
            }
        }
    }

    /// @brief Calls `f(first_row, last_row)` on `threads` contiguous, disjoint row ranges that
    ///        cover [0, rows), one range per thread (the caller's thread takes the first).
    ///
    /// Each row is processed by exactly one call, so results that depend only on the row are
    /// identical for any thread count. If calls throw, the exception of the lowest range is
    /// rethrown after every range has finished. `threads == 0` means hardware concurrency.
    /// The other ranges run on threads kept between calls (detail::row_pool); a call made while
    /// another is using them (from another thread, or nested inside f) starts threads of its own.
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
        using functor = std::remove_reference_t<F>;
        void* object = const_cast<void*>(static_cast<const void*>(std::addressof(f)));
        detail::run_row_parts(rows, parts, {object, [](void* g, std::size_t first, std::size_t last) { (*static_cast<functor*>(g))(first, last); }});
    }
}
