/// @file analysis_steps.cpp
/// @brief The steps of orbitq-gemma's conversion that run orbitq::analyze: the automatic choice
///        of a spec per layer, and the root cause of a per-tensor failure (a file of their own:
///        they compile beside convert.cpp).
#include "cli_internal.hpp"

#include <string>
#include <vector>

namespace orbitq::gemma_cli
{
    // declared and documented in cli_internal.hpp
    void install_chooser(conversion& c, const quant_spec& base)
    {
        c.vo.choose = [&c, base](const std::vector<moe::any_view>& views, const quant_spec&) {
            const options& o = c.o;
            std::vector<quant_spec> cands;
            // the integer candidates, then the float formats (unless --scheme names a scheme):
            // fp8 per tensor and per channel, mxfp4, nvfp4 (weight-only; not where gate and up
            // are separate tensors, whose global scales vLLM would need to be one)
            const bool nvfp4_pairs = c.cfg().arch.storage == moe::expert_storage::stacked_gate_up && !o.include_dense;
            for (quant_spec q : default_candidates(c.cfg().hidden, !o.scheme_given))
            {
                if (q.scheme == scheme_kind::nvfp4 && !nvfp4_pairs) continue;
                if (o.bits_given && q.bits != o.bits) continue;
                if (o.scheme_given && q.scheme != base.scheme) continue;
                bool fits = true;
                for (const moe::any_view& v : views)
                {
                    fits = fits && (q.granularity != granularity_kind::per_group || (moe::cols_of(v) > q.group_size && moe::cols_of(v) % q.group_size == 0));
                }
                if (!fits || (!o.out.empty() && ct::moe_refusal(q, ct::format_for(q, c.acts), c.input_widths))) continue;
                q.range = base.range;
                q.codes_from_stored_scale = true;
                cands.push_back(q);
                if (is_float_scheme(q.scheme)) continue;
                // --scales mse: each candidate's searched twin too (same bits per weight, never a
                // lower SQNR, so chosen where it meets the target); not per_tensor, whose orbit
                // spans every expert of the stacked tensor, which the conversion streams
                if (base.scales == scale_search::mse && q.granularity != granularity_kind::per_tensor)
                {
                    q.scales = scale_search::mse;
                    q.signed_scales = base.signed_scales && q.scheme == scheme_kind::symmetric;
                    cands.push_back(q);
                }
            }
            std::vector<tensor_analysis> analyses;
            for (const moe::any_view& v : views)
            {
                analyses.push_back(std::visit(
                    [&](const auto& m) {
                        std::vector<quant_spec> typed = cands;
                        for (auto& q : typed)
                        {
                            // integer scales in the weights' float type; FP8 scales stay float32
                            if (!is_float_scheme(q.scheme)) q.scale_type = element_type_of<typename std::decay_t<decltype(m)>::value_type>();
                        }
                        analyze_options ao;
                        ao.threads = c.threads;
                        ao.top_rows = 0;
                        ao.top_weights = 0;
                        return analyze(m, typed, ao);
                    },
                    v));
            }
            const selection lc = select_common_candidate(analyses, o.target_cos, o.target_sqnr_db);
            if (!lc.index)
            {
                throw error(error_kind::invalid_argument, "--granularity auto: no candidate meets the target for every tensor of layer '"
                                                              + analyses.front().name + "': " + lc.reason
                                                              + " (lower the target, or allow int8 by leaving out --bits 4)");
            }
            for (const auto& a : analyses)
            {
                const auto& q = a.candidates[*lc.index];
                c.choices.push_back({a.name, q.spec.describe(), q.bits_per_weight, lc.reason});
            }
            return analyses.front().candidates[*lc.index].spec;
        };
    }

    // declared and documented in cli_internal.hpp
    nlohmann::json root_cause(moe::model_source& src, std::size_t layer, const quant_spec& per_tensor, double layer_cos,
                              unsigned threads, std::ostream& out)
    {
        const moe::config& cfg = src.cfg();
        const moe::layer_weights& w = src.load_layer(layer, threads);
        nlohmann::json tensors = nlohmann::json::array();
        out << "root cause: layer " << layer << " is the first to fail the layer gate per_tensor (min cos(hidden) " << detail::fmt(layer_cos, 5)
            << ")\n";
        for (const moe::any_view* v : stacked_views(w))
        {
            tensor_analysis a;
            try
            {
                a = std::visit(
                    [&](const auto& m) {
                        analyze_options ao;
                        ao.threads = threads;
                        ao.top_rows = 3;
                        ao.top_weights = 3;
                        return analyze(m, std::vector<quant_spec>{per_tensor}, ao);
                    },
                    *v);
            }
            catch (const non_finite_error& e)
            {
                // Kept unquantized (--skip-nonfinite): nothing to explain.
                out << "  " << e.what() << " (not quantized)\n";
                tensors.push_back({{"skipped", e.what()}});
                continue;
            }
            if (w.release_expert)
            {
                for (std::size_t e = 0; e < cfg.experts; ++e) w.release_expert(e);
            }
            const std::size_t per = a.rows / cfg.experts;
            std::string stem = a.name;
            if (const auto dot = stem.rfind("experts."); dot != std::string::npos) stem = stem.substr(dot);
            const auto& c = a.candidates.front();
            out << "  " << stem << " " << orbitq::detail::shape_string(a.shape) << ": condition number " << detail::fmt(a.condition_number, 1)
                << ", per_tensor cos " << detail::fmt(c.cosine, 6) << ", SQNR " << detail::fmt(c.sqnr_db, 1) << " dB\n";
            out << "    rows losing most bits to the per-tensor scale:";
            nlohmann::json rows = nlohmann::json::array(), weights = nlohmann::json::array();
            for (std::size_t i = 0; i < a.worst_rows.size(); ++i)
            {
                const auto& r = a.worst_rows[i];
                out << (i ? ";" : "") << " expert " << r.row / per << " row " << r.row % per << " " << detail::fmt(r.bits_lost, 2) << " bits";
                rows.push_back({{"expert", r.row / per}, {"row", r.row % per}, {"bits_lost", detail::num(r.bits_lost)}, {"row_amax", r.row_amax}});
            }
            out << "\n    largest weights / row RMS:";
            for (std::size_t i = 0; i < a.largest_weights.size(); ++i)
            {
                const auto& x = a.largest_weights[i];
                out << (i ? ";" : "") << " expert " << x.row / per << " row " << x.row % per << " col " << x.col << " = " << x.value << " ("
                    << detail::fmt(x.ratio_to_row_rms, 1) << "x)";
                weights.push_back({{"expert", x.row / per}, {"row", x.row % per}, {"col", x.col}, {"value", x.value}, {"ratio_to_row_rms", detail::num(x.ratio_to_row_rms)}});
            }
            out << "\n";
            tensors.push_back({{"name", a.name},
                               {"shape", a.shape},
                               {"condition_number", detail::num(a.condition_number)},
                               {"per_tensor_cos", detail::num(c.cosine)},
                               {"per_tensor_sqnr_db", detail::num(c.sqnr_db)},
                               {"worst_rows", rows},
                               {"largest_weights", weights}});
        }
        return {{"layer", layer}, {"granularity", "per_tensor"}, {"hidden_cos_min", layer_cos}, {"tensors", tensors}};
    }
}
