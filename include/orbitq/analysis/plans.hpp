/// @file plans.hpp
/// @brief The candidates resolved for analyze's passes (plan, make_plans, base_group), the
///        parameters of a row's orbits under each, one candidate's row of error sums, and the
///        list of the largest weights.
#pragma once

#include "orbitq/algebra/orbits.hpp"
#include "orbitq/analysis/candidates.hpp"
#include "orbitq/analysis/error_sums.hpp"
#include "orbitq/core/error.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/metrics.hpp"
#include "orbitq/policy/dispatch.hpp"
#include "orbitq/policy/granularity.hpp"
#include "orbitq/policy/quant_spec.hpp"

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <numeric>
#include <string>
#include <vector>

namespace orbitq
{
    namespace detail::analysis
    {
        /// A candidate resolved for the loops.
        struct plan
        {
            quant_spec spec;
            std::size_t span = 0;  ///< base statistic groups per orbit (per_group), 0 otherwise
            orbit_params tensor;   ///< per_tensor: the one orbit
        };

        /// Orders outliers: larger ratio first, then row-major position.
        inline bool outlier_before(const outlier& a, const outlier& b) noexcept
        {
            if (a.ratio_to_row_rms != b.ratio_to_row_rms) return a.ratio_to_row_rms > b.ratio_to_row_rms;
            return a.row != b.row ? a.row < b.row : a.col < b.col;
        }

        /// Inserts o into the sorted top-n list `top`.
        inline void keep_top(std::vector<outlier>& top, const outlier& o, std::size_t n)
        {
            if (n == 0) return;
            if (top.size() == n && !outlier_before(o, top.back())) return;
            const auto at = std::upper_bound(top.begin(), top.end(), o, outlier_before);
            top.insert(at, o);
            if (top.size() > n) top.pop_back();
        }

        /// The results of one block of rows.
        struct block_result
        {
            std::vector<error_accumulator> acc;  ///< per candidate
            std::vector<outlier> top;            ///< this block's largest weights
        };

        /// Statistic of orbit j (span base groups) of row r.
        inline min_max group_stat(const statistics_pyramid& P, std::size_t r, std::size_t j, std::size_t span) noexcept
        {
            const std::size_t first = j * span;
            const std::size_t last = std::min(first + span, P.groups_per_row);
            const auto base = P.groups.begin() + static_cast<std::ptrdiff_t>(r * P.groups_per_row);
            return reduce_nonempty(base + static_cast<std::ptrdiff_t>(first), base + static_cast<std::ptrdiff_t>(last));
        }

        /// The parameters of every orbit of row r under plan p, written to out (resized as
        ///        needed); returns the columns per orbit. The scheme is a template parameter so
        ///        make_params inlines into the loop over the row's groups.
        template <scheme_policy S>
        std::size_t row_params(const plan& p, const statistics_pyramid& P, std::size_t r, const std::string& name,
                               std::vector<orbit_params>& out)
        {
            switch (p.spec.granularity)
            {
                case granularity_kind::per_tensor:
                    out.assign(1, p.tensor);
                    return P.cols;
                case granularity_kind::per_channel:
                    out.assign(1, resolve<S>(p.spec, P.row_stats[r], name));
                    return P.cols;
                case granularity_kind::per_group: break;
                case granularity_kind::per_block: throw error(error_kind::invalid_argument, "analysis plans take per_tensor, per_channel or per_group specs");
            }
            const std::size_t g = p.spec.group_size;
            const std::size_t groups = (P.cols + g - 1) / g;
            out.resize(groups);
            for (std::size_t j = 0; j < groups; ++j) out[j] = resolve<S>(p.spec, group_stat(P, r, j, p.span), name);
            return g;
        }

        /// The parameters of every orbit of row r under plan p (into params); returns the columns
        /// per orbit.
        inline std::size_t candidate_params(const plan& p, const statistics_pyramid& P, std::size_t r, const std::string& name,
                                            std::vector<orbit_params>& params)
        {
            return with_scheme(p.spec, [&](auto scheme) { return row_params<decltype(scheme)>(p, P, r, name, params); });
        }

        /// Adds row r under plan p to acc, with the row's orbit parameters from candidate_params.
        inline void candidate_row(const plan& p, std::size_t r, const float* x, const double* xd, std::size_t cols, std::size_t group,
                                  const std::vector<orbit_params>& params, lane_sums& acc) noexcept
        {
            with_rounding(p.spec, [&](auto rounding) { row_error_dispatch<decltype(rounding)>(x, xd, cols, group, params.data(), r, acc); });
        }

        /// The first column of row r where |w − ŵ| equals m under plan p (0 if none does).
        template <rounding_policy R>
        std::size_t find_max_col(const std::vector<orbit_params>& params, std::size_t group, std::size_t cols, const float* x, double m)
        {
            for (std::size_t c = 0; c < cols; ++c)
            {
                const double d = static_cast<double>(x[c]) - static_cast<double>(reconstruct<R>(x[c], params[c / group]));
                if (std::fabs(d) == m) return c;
            }
            return 0;
        }

        /// Row r as float32: the data itself, or widened into buf.
        template <weight_element T>
        const float* row_f32(const matrix_view<T>& w, std::size_t r, float* buf) noexcept
        {
            if constexpr (std::same_as<T, float>)
            {
                (void)buf;
                return w.row(r);
            }
            else
            {
                const T* x = w.row(r);
                for (std::size_t c = 0; c < w.cols; ++c) buf[c] = to_float(x[c]);
                return buf;
            }
        }

        /// Checks the candidates against the matrix and returns their plans.
        inline std::vector<plan> make_plans(const std::vector<quant_spec>& candidates, std::size_t rows, std::size_t cols)
        {
            if (candidates.empty()) throw error(error_kind::invalid_argument, "analyze needs at least one candidate");
            std::vector<plan> plans;
            for (const quant_spec& c : candidates)
            {
                with_scheme(c, [](auto) {});  // checks the bits
                plan p;
                p.spec = c;
                plans.push_back(p);
                if (c.granularity == granularity_kind::per_group)
                {
                    (void)make_layout<per_group<>>(rows, cols, c.group_size, c.ragged_groups);  // throws on a bad size
                }
            }
            return plans;
        }

        /// The finest group size every per_group candidate's orbits are unions of.
        inline std::size_t base_group(const std::vector<quant_spec>& candidates, std::size_t cols) noexcept
        {
            std::size_t g = 0;
            for (const quant_spec& c : candidates)
            {
                if (c.granularity == granularity_kind::per_group) g = std::gcd(g, c.group_size);
            }
            return g == 0 ? cols : g;
        }
    }
}
