/// @file analyze.hpp
/// @brief Know before you convert: what every candidate quantization policy would cost a weight,
///        measured in two passes over the data without writing any codes; automatic selection of
///        the cheapest policy that meets a target; outlier diagnostics.
///
/// Passes over memory:
/// 1. The statistics pyramid (algebra/orbits.hpp, `compute_statistics`) at the finest group size
///    all candidates share (the gcd of their group sizes). Every coarser orbit's statistic is the
///    `combine` of the finer ones it contains: a per_group:64 orbit is two per_group:32 orbits,
///    a row is all its groups, the tensor all its rows. Combining min_max is exact, so each
///    candidate gets exactly the parameters `quantize` would compute.
/// 2. Row by row, while the row is in L1: Σw² (shared by all candidates), the outlier scan, and
///    for each candidate the codes of every orbit of the row (same parameters, same encode
///    function as `quantize`: detail::encode_orbit, kernels::reference::encode semantics,
///    SIMD-identical), their dequantized values ŵ = (code − zp)·scale in float32 and the error
///    sums Σŵ², Σ(w − ŵ)², max |w − ŵ| in double. Nothing is written to memory.
///
/// Candidates with searched scales (scale_search::mse) and the float formats (fp8_e4m3, mxfp4,
/// nvfp4) are quantized and measured (`measure`): the first depend on all of an orbit's values,
/// which the statistics do not hold; the second are not integer codes of error_sums.hpp.
///
/// Numerical contract: the cosine, relative error, SQNR and max abs error of each candidate equal
/// those of `measure(w, quantize(w, spec))` up to double rounding (relative difference <= 1e-9,
/// tested), and bits_per_weight equals quantized_tensor::bits_per_weight(). Σwŵ is derived per
/// block of rows as (Σw² + Σŵ² − Σ(w − ŵ)²) / 2: its absolute error is a few ulps of Σw², negligible next
/// to Σwŵ unless nearly all of the tensor's energy is lost (tested with a 10^4 outlier under
/// per-tensor int4, where every other code is 0).
///
/// Cost: per candidate, about 16 AVX-512 operations per 16 weights (encode in f32, widen ŵ to
/// f64, subtract, two FMAs, one vrangepd), plus the parameters of each orbit. The double-precision
/// error sums that the 1e-9 contract needs make analyze compute-bound, not memory-bound: with the
/// 16 default candidates it runs well below the f32 roofline loop (bench/bench_analyze.cpp).
///
/// Determinism: rows are processed in fixed blocks of analyze_options::block_rows rows; each block
/// accumulates its rows in row order (per SIMD lane, reduced once at the end of the block into an
/// error_accumulator) and the blocks' accumulators are combined in block order, so the results do
/// not depend on the thread count.
///
/// Parts: analysis/candidates.hpp (the candidates and the result types), analysis/error_sums.hpp
/// (one candidate's error sums over a row), analysis/plans.hpp (the candidates resolved for the
/// passes), analysis/selection.hpp (the choice of a candidate); the policy dispatch is quantize's
/// (policy/dispatch.hpp).
#pragma once
#pragma once

#include "orbitq/algebra/orbits.hpp"
#include "orbitq/analysis/candidates.hpp"
#include "orbitq/analysis/error_sums.hpp"
#include "orbitq/analysis/plans.hpp"
#include "orbitq/analysis/selection.hpp"
#include "orbitq/core/error.hpp"
#include "orbitq/core/parallel.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/metrics.hpp"
#include "orbitq/policy/dispatch.hpp"
#include "orbitq/quantize.hpp"

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <numeric>
#include <utility>
#include <vector>

namespace orbitq
{
    /// @brief Analyses what each candidate policy would cost `w`, without quantizing it.
    /// @param w the weight (f32, bf16 or f16), seen as a matrix by the channel rule of core/view.hpp
    /// @param candidates the policies to evaluate (for example default_candidates(w.cols)); every
    ///        field of quant_spec is honoured (range, rounding, scale application, scale storage)
    /// @param options how many worst rows and largest weights to keep; threads
    /// @return per-candidate metrics equal to measure(w, quantize(w, spec)) (relative difference
    ///         <= 1e-9), worst rows under the per-tensor scale, largest weights relative to their
    ///         row RMS, condition number. Identical for every thread count.
    /// @pre every group_size of a per_group candidate divides w.cols unless it asks for ragged groups
    /// @throws error (invalid_argument) for an empty candidate list, bits other than 8 or 4, a
    ///         block_rows of 0, no data, stride < cols; (empty_tensor) for an empty tensor;
    ///         (bad_group_size) for a group size of 0 or one that does not divide the row (not
    ///         ragged); non_finite_error naming the row and column of a NaN or infinity.
    template <weight_element T>
    tensor_analysis analyze(const matrix_view<T>& w, const std::vector<quant_spec>& candidates, const analyze_options& options = {})
    {
        namespace A = detail::analysis;
        if (w.rows == 0 || w.cols == 0) throw error(error_kind::empty_tensor, "tensor '" + w.name + "' is empty");
        if (w.data == nullptr) throw error(error_kind::invalid_argument, "tensor '" + w.name + "' has no data");
        if (w.stride < w.cols) throw error(error_kind::invalid_argument, "tensor '" + w.name + "': stride < cols");
        if (options.block_rows == 0) throw error(error_kind::invalid_argument, "analyze: block_rows must be > 0");
        // Candidates with searched scales (scale_search::mse) are measured by quantizing: their
        // parameters depend on every value of an orbit, not on its statistic alone. The passes
        // below take the others (or, when there are none, one amax twin that gives the outliers,
        // the worst rows and the condition number).
        const auto in_passes = [](const quant_spec& c) { return c.scales == scale_search::amax && !is_float_scheme(c.scheme); };
        std::vector<quant_spec> direct;
        for (const quant_spec& c : candidates)
        {
            if (in_passes(c)) direct.push_back(c);
        }
        if (direct.empty() && !candidates.empty())
        {
            // int8 per channel (its statistics are all the diagnostics need) when no integer candidate is given
            direct.push_back(is_float_scheme(candidates.front().scheme) ? quant_spec{} : candidates.front());
            direct.back().scales = scale_search::amax;
        }
        std::vector<A::plan> plans = A::make_plans(direct, w.rows, w.cols);
        const std::size_t C = plans.size();

        // Pass 1: the statistics pyramid at the base group size.
        const std::size_t g0 = A::base_group(direct, w.cols);
        const statistics_pyramid P = compute_statistics(w, g0, options.threads);
        for (A::plan& p : plans)
        {
            if (p.spec.granularity == granularity_kind::per_group) p.span = p.spec.group_size / g0;
            if (p.spec.granularity == granularity_kind::per_tensor)
            {
                p.tensor = A::with_scheme(p.spec, [&](auto s) { return A::resolve<decltype(s)>(p.spec, P.tensor, w.name); });
            }
        }

        // Pass 2: per row, Σw², outliers and every candidate's error sums.
        const std::size_t blocks = (w.rows + options.block_rows - 1) / options.block_rows;
        std::vector<A::block_result> results(blocks);
        parallel_rows(blocks, options.threads, [&](std::size_t first, std::size_t last) {
            std::vector<float> fbuf(std::same_as<T, float> ? 0 : w.cols);
            std::vector<double> xd(w.cols);
            std::vector<std::vector<A::orbit_params>> params(C);
            std::vector<std::size_t> groups(C);
            std::vector<A::lane_sums> lanes(C);
            for (std::size_t b = first; b < last; ++b)
            {
                A::block_result& out = results[b];
                lanes.assign(C, A::lane_sums{});
                double block_ref = 0.0;
                const std::size_t r0 = b * options.block_rows;
                const std::size_t r1 = std::min(w.rows, (b + 1) * options.block_rows);
                for (std::size_t r = r0; r < r1; ++r)
                {
                    const float* x = A::row_f32(w, r, fbuf.data());
                    const double ref = A::widen_row(x, w.cols, xd.data());
                    block_ref += ref;

                    // Outliers: only rows, and within them base groups, whose largest weight can
                    // enter the top list are scanned (a cheap float prefilter, then the exact ratio).
                    const double rms = std::sqrt(ref / static_cast<double>(w.cols));
                    const std::size_t n_top = options.top_weights;
                    if (rms > 0.0 && n_top > 0)
                    {
                        auto limit = [&] {
                            return out.top.size() < n_top ? 0.0f
                                                          : static_cast<float>(out.top.back().ratio_to_row_rms * rms * (1.0 - 1e-6));
                        };
                        float lim = limit();
                        if (P.row_stats[r].to_abs_max().value >= lim)
                        {
                            for (std::size_t g = 0; g < P.groups_per_row; ++g)
                            {
                                if (P.group_stat(r, g).to_abs_max().value < lim) continue;
                                const std::size_t c1 = std::min(w.cols, (g + 1) * P.group);
                                for (std::size_t c = g * P.group; c < c1; ++c)
                                {
                                    if (std::fabs(x[c]) < lim) continue;
                                    const double ratio = std::fabs(xd[c]) / rms;
                                    if (out.top.size() < n_top || ratio >= out.top.back().ratio_to_row_rms)
                                    {
                                        A::keep_top(out.top, outlier{r, c, x[c], ratio}, n_top);
                                        lim = limit();
                                    }
                                }
                            }
                        }
                    }

                    // All candidates' parameters first, so their divisions overlap one another
                    // instead of each stalling the start of its candidate's loop.
                    for (std::size_t k = 0; k < C; ++k) groups[k] = A::candidate_params(plans[k], P, r, w.name, params[k]);
                    for (std::size_t k = 0; k < C; ++k) A::candidate_row(plans[k], r, x, xd.data(), w.cols, groups[k], params[k], lanes[k]);
                }
                out.acc.resize(C);
                for (std::size_t k = 0; k < C; ++k) out.acc[k] = lanes[k].finish(block_ref, (r1 - r0) * w.cols, w.cols);
            }
        });

        tensor_analysis t;
        t.name = w.name;
        t.shape = w.shape.empty() ? shape_type{w.rows, w.cols} : w.shape;
        t.rows = w.rows;
        t.cols = w.cols;

        std::vector<float> fbuf(std::same_as<T, float> ? 0 : w.cols);
        std::vector<A::orbit_params> params;
        std::vector<outlier> top;
        for (std::size_t k = 0; k < C; ++k)
        {
            error_accumulator total;
            for (const A::block_result& b : results) total = combine(total, b.acc[k]);
            if (total.max_abs_err > 0.0)
            {
                const std::size_t r = total.max_index / w.cols;
                const float* x = A::row_f32(w, r, fbuf.data());
                const std::size_t group = A::candidate_params(plans[k], P, r, w.name, params);
                const std::size_t c = with_rounding(plans[k].spec, [&](auto rounding) {
                    return A::find_max_col<decltype(rounding)>(params, group, w.cols, x, total.max_abs_err);
                });
                total.max_index = r * w.cols + c;
            }
            const error_metrics m = finish(total, w.cols);
            t.candidates.push_back({direct[k], bits_per_weight(direct[k], w.rows, w.cols), m.cosine, m.relative_error,
                                    m.sqnr_db, m.max_abs_err, m.max_row, m.max_col});
            if (k == 0)
            {
                const double rms = std::sqrt(total.ref_sq / static_cast<double>(w.size()));
                t.condition_number = rms == 0.0 ? 0.0 : static_cast<double>(P.tensor.to_abs_max().value) / rms;
            }
        }

        // the candidates in the order given: the passes' results, the searched ones measured
        std::vector<candidate_result> measured;
        std::size_t next_direct = 0;
        for (const quant_spec& c : candidates)
        {
            if (in_passes(c))
            {
                measured.push_back(t.candidates[next_direct++]);
                continue;
            }
            const error_metrics m = measure(w, quantize(w, c, options.threads));
            measured.push_back({c, bits_per_weight(c, w.rows, w.cols), m.cosine, m.relative_error, m.sqnr_db, m.max_abs_err, m.max_row,
                                m.max_col});
        }
        t.candidates = std::move(measured);

        for (const A::block_result& b : results)
        {
            for (const outlier& o : b.top) A::keep_top(top, o, options.top_weights);
        }
        t.largest_weights = std::move(top);

        const std::vector<double> lost = bits_lost_per_row(P);
        std::vector<std::size_t> order(w.rows);
        std::iota(order.begin(), order.end(), std::size_t{0});
        const std::size_t n_rows = std::min(options.top_rows, w.rows);
        std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n_rows), order.end(),
                          [&](std::size_t a, std::size_t b) { return lost[a] != lost[b] ? lost[a] > lost[b] : a < b; });
        for (std::size_t i = 0; i < n_rows; ++i)
        {
            const std::size_t r = order[i];
            t.worst_rows.push_back({r, P.row_stats[r].to_abs_max().value, lost[r]});
        }
        return t;
    }
}
