/// @file selection.hpp
/// @brief The choice of a policy from analyze's results: the cheapest candidate that meets a
///        cosine or SQNR target on one tensor (select_candidate) or on several tensors that must
///        share a spec (select_common_candidate), with the reason in words.
#pragma once

#include "orbitq/analysis/candidates.hpp"
#include "orbitq/core/error.hpp"
#include "orbitq/policy/quant_spec.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace orbitq
{
    /// @brief The choice made by select_candidate().
    struct selection
    {
        std::optional<std::size_t> index;  ///< into tensor_analysis::candidates; empty when none meets the target
        std::string reason;                ///< what was chosen and why, for people
    };

    namespace detail::analysis
    {
        /// One double printed with a printf format, for the reasons.
        inline std::string format_double(const char* fmt, double v)
        {
            char buf[64];
            std::snprintf(buf, sizeof buf, fmt, v);
            return buf;
        }
    }

    /// @brief Picks the candidate with the fewest bits per weight that meets the target(s); among
    ///        equally cheap ones, the higher SQNR (then the earlier one).
    /// @param target_cos minimum flat cosine, if given
    /// @param target_sqnr_db minimum SQNR in dB, if given (both given: both must hold)
    /// @return the index into a.candidates, or none, and a sentence saying what was chosen and why
    ///         (or, when none meets the target, which candidate came closest).
    /// @throws error (invalid_argument) when neither target is given or the analysis has no candidates.
    inline selection select_candidate(const tensor_analysis& a, std::optional<double> target_cos, std::optional<double> target_sqnr_db)
    {
        namespace A = detail::analysis;
        if (!target_cos && !target_sqnr_db) throw error(error_kind::invalid_argument, "select_candidate needs a cosine or SQNR target");
        if (a.candidates.empty()) throw error(error_kind::invalid_argument, "select_candidate: '" + a.name + "' has no candidates");
        auto meets = [&](const candidate_result& c) {
            return (!target_cos || c.cosine >= *target_cos) && (!target_sqnr_db || c.sqnr_db >= *target_sqnr_db);
        };
        std::string target;
        if (target_cos) target = "cos >= " + A::format_double("%.6g", *target_cos);
        if (target_sqnr_db) target += (target.empty() ? "" : " and ") + std::string("SQNR >= ") + A::format_double("%.4g dB", *target_sqnr_db);
        auto describe = [](const candidate_result& c) {
            return c.spec.describe() + " (" + A::format_double("%.4f", c.bits_per_weight) + " bits/weight, cos "
                + A::format_double("%.7f", c.cosine) + ", SQNR " + A::format_double("%.2f dB", c.sqnr_db) + ")";
        };

        std::optional<std::size_t> best;
        std::size_t meeting = 0;
        for (std::size_t i = 0; i < a.candidates.size(); ++i)
        {
            const candidate_result& c = a.candidates[i];
            if (!meets(c)) continue;
            ++meeting;
            if (!best) best = i;
            else
            {
                const candidate_result& b = a.candidates[*best];
                if (c.bits_per_weight < b.bits_per_weight || (c.bits_per_weight == b.bits_per_weight && c.sqnr_db > b.sqnr_db)) best = i;
            }
        }
        // The closest miss: highest SQNR among those that fail (the most informative alternative).
        auto best_miss = [&](double below_bits) -> std::optional<std::size_t> {
            std::optional<std::size_t> m;
            for (std::size_t i = 0; i < a.candidates.size(); ++i)
            {
                const candidate_result& c = a.candidates[i];
                if (meets(c) || c.bits_per_weight >= below_bits) continue;
                if (!m || c.sqnr_db > a.candidates[*m].sqnr_db) m = i;
            }
            return m;
        };

        selection s;
        if (!best)
        {
            const auto m = best_miss(std::numeric_limits<double>::infinity());
            s.reason = "no candidate of " + std::to_string(a.candidates.size()) + " meets " + target + " for '" + a.name + "'";
            if (m) s.reason += "; the closest is " + describe(a.candidates[*m]);
            return s;
        }
        s.index = best;
        const candidate_result& b = a.candidates[*best];
        s.reason = describe(b) + ": the fewest bits per weight of the " + std::to_string(meeting) + " of "
            + std::to_string(a.candidates.size()) + " candidates meeting " + target;
        if (const auto m = best_miss(b.bits_per_weight)) s.reason += "; the best cheaper one, " + describe(a.candidates[*m]) + ", misses it";
        return s;
    }

    /// @brief The one candidate for several tensors that must share a spec (the projections of
    ///        a MoE layer): the fewest bits over all of them (bits per weight weighted by each
    ///        tensor's size) among the candidates meeting the target on every tensor; ties go
    ///        to the higher worst SQNR.
    /// @pre every analysis evaluated the same candidate specs in the same order (scale_type
    ///      may differ).
    /// @throws error (invalid_argument) without a target, without analyses or candidates, or
    ///         when the analyses' candidate lists differ.
    inline selection select_common_candidate(const std::vector<tensor_analysis>& analyses, std::optional<double> target_cos,
                                             std::optional<double> target_sqnr_db)
    {
        namespace A = detail::analysis;
        if (!target_cos && !target_sqnr_db) throw error(error_kind::invalid_argument, "select_common_candidate needs a cosine or SQNR target");
        if (analyses.empty() || analyses.front().candidates.empty())
        {
            throw error(error_kind::invalid_argument, "select_common_candidate: no analyses or no candidates");
        }
        const std::size_t C = analyses.front().candidates.size();
        for (const auto& a : analyses)
        {
            bool same = a.candidates.size() == C;
            for (std::size_t i = 0; same && i < C; ++i)
            {
                quant_spec x = a.candidates[i].spec, y = analyses.front().candidates[i].spec;
                x.scale_type = y.scale_type;
                same = x == y;
            }
            if (!same) throw error(error_kind::invalid_argument, "select_common_candidate: '" + a.name + "' evaluated other candidates");
        }
        std::string target;
        if (target_cos) target = "cos >= " + A::format_double("%.6g", *target_cos);
        if (target_sqnr_db) target += (target.empty() ? "" : " and ") + std::string("SQNR >= ") + A::format_double("%.4g dB", *target_sqnr_db);
        auto meets = [&](const candidate_result& c) {
            return (!target_cos || c.cosine >= *target_cos) && (!target_sqnr_db || c.sqnr_db >= *target_sqnr_db);
        };
        double weights = 0.0;
        for (const auto& a : analyses) weights += static_cast<double>(a.rows * a.cols);
        struct summary
        {
            double bits = 0.0, worst_cos = 1.0, worst_sqnr = std::numeric_limits<double>::infinity();
            std::string missed;  // the first tensor it misses the target on
        };
        std::vector<summary> sums(C);
        for (std::size_t i = 0; i < C; ++i)
        {
            for (const auto& a : analyses)
            {
                const candidate_result& c = a.candidates[i];
                sums[i].bits += c.bits_per_weight * static_cast<double>(a.rows * a.cols) / weights;
                sums[i].worst_cos = std::min(sums[i].worst_cos, c.cosine);
                sums[i].worst_sqnr = std::min(sums[i].worst_sqnr, c.sqnr_db);
                if (sums[i].missed.empty() && !meets(c)) sums[i].missed = a.name;
            }
        }
        auto describe = [&](std::size_t i) {
            return analyses.front().candidates[i].spec.describe() + " (" + A::format_double("%.4f", sums[i].bits) + " bits/weight, worst cos "
                + A::format_double("%.7f", sums[i].worst_cos) + ", worst SQNR " + A::format_double("%.2f dB", sums[i].worst_sqnr) + ")";
        };
        std::optional<std::size_t> best, miss;
        std::size_t meeting = 0;
        for (std::size_t i = 0; i < C; ++i)
        {
            if (!sums[i].missed.empty()) continue;
            ++meeting;
            if (!best || sums[i].bits < sums[*best].bits || (sums[i].bits == sums[*best].bits && sums[i].worst_sqnr > sums[*best].worst_sqnr)) best = i;
        }
        const double below = best ? sums[*best].bits : std::numeric_limits<double>::infinity();
        for (std::size_t i = 0; i < C; ++i)
        {
            if (sums[i].missed.empty() || sums[i].bits >= below) continue;
            if (!miss || sums[i].worst_sqnr > sums[*miss].worst_sqnr) miss = i;
        }
        selection s;
        const std::string of = std::to_string(analyses.size()) + " tensors";
        if (!best)
        {
            s.reason = "no candidate of " + std::to_string(C) + " meets " + target + " on all " + of;
            if (miss) s.reason += "; the closest is " + describe(*miss) + ", missing it on '" + sums[*miss].missed + "'";
            return s;
        }
        s.index = best;
        s.reason = describe(*best) + ": the fewest bits per weight of the " + std::to_string(meeting) + " of " + std::to_string(C)
            + " candidates meeting " + target + " on all " + of;
        if (miss) s.reason += "; the best cheaper one, " + describe(*miss) + ", misses it on '" + sums[*miss].missed + "'";
        return s;
    }
}
