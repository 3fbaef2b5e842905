/// @file orbits.hpp
/// @brief The statistics pyramid: one pass over a matrix yields the statistic of every group,
///        every row (combine of its groups) and the tensor (combine of its rows).
#pragma once

#include "orbitq/algebra/statistics.hpp"
#include "orbitq/core/error.hpp"
#include "orbitq/core/parallel.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/kernels/simd.hpp"

#include <cstddef>
#include <vector>

namespace orbitq
{
    /// @brief min_max statistics at the three nested granularities.
    struct statistics_pyramid
    {
        std::size_t rows = 0;
        std::size_t cols = 0;
        std::size_t group = 0;            ///< group size; groups_per_row = ceil(cols / group)
        std::size_t groups_per_row = 0;
        std::vector<min_max> groups;      ///< rows * groups_per_row, row-major
        std::vector<min_max> row_stats;   ///< rows: combine of the row's groups
        min_max tensor;                   ///< combine of row_stats, in row order

        /// @brief Statistic of group g of row r.
        const min_max& group_stat(std::size_t r, std::size_t g) const noexcept { return groups[r * groups_per_row + g]; }
    };

    namespace detail
    {
        template <weight_element T>
        [[noreturn]] void throw_non_finite(const matrix_view<T>& w, std::size_t r)
        {
            const auto c = kernels::reference::find_non_finite(w.row(r), w.cols).value_or(0);
            throw non_finite_error(w.name, r, c, to_float(w.row(r)[c]));
        }
    }

    /// @brief Computes the statistics pyramid of `w` in one pass.
    /// @param group group size (> 0); a last group shorter than `group` is allowed here (this is
    ///        analysis, not a layout choice). Pass w.cols for rows only.
    /// @throws non_finite_error naming the first non-finite value's row and column.
    template <weight_element T>
    statistics_pyramid compute_statistics(const matrix_view<T>& w, std::size_t group, unsigned threads = 1)
    {
        if (group == 0) throw error(error_kind::bad_group_size, "statistics need a group size > 0");
        statistics_pyramid p;
        p.rows = w.rows;
        p.cols = w.cols;
        p.group = group;
        p.groups_per_row = (w.cols + group - 1) / group;
        p.groups.resize(p.rows * p.groups_per_row);
        p.row_stats.resize(p.rows);
        const std::size_t ahead = kernels::simd::prefetch_rows_ahead(w.cols * sizeof(T));
        parallel_rows(w.rows, threads, [&](std::size_t first, std::size_t last) {
            for (std::size_t r = first; r < last; ++r)
            {
                const T* x = w.row(r);
                if (r + ahead < last) kernels::simd::prefetch(w.row(r + ahead), w.cols * sizeof(T));
                bool finite = true;
                for (std::size_t g = 0; g < p.groups_per_row; ++g)
                {
                    const std::size_t c0 = g * group;
                    const std::size_t n = std::min(group, w.cols - c0);
                    bool f = true;
                    p.groups[r * p.groups_per_row + g] = kernels::simd::min_max_span(x + c0, n, f);
                    finite = finite && f;
                }
                if (!finite) detail::throw_non_finite(w, r);
                p.row_stats[r] = reduce_nonempty(p.groups.begin() + r * p.groups_per_row,
                                                 p.groups.begin() + (r + 1) * p.groups_per_row);
            }
        });
        p.tensor = reduce_nonempty(p.row_stats.begin(), p.row_stats.end());
        return p;
    }
}
