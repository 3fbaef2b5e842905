/// @file analyze_command.cpp
/// @brief `orbitq-gemma analyze`: what every candidate policy would cost each selected layer's
///        stacked expert tensors (orbitq::analyze: no codes written), the outliers behind the
///        cost, and, with a target, the cheapest candidate that meets it; or the same for every
///        tensor of any safetensors file or checkpoint.
#include "cli_internal.hpp"

#include "orbitq/io/analyze_checkpoint.hpp"
#include "orbitq/io/atomic_file.hpp"

#include <string>
#include <vector>

namespace orbitq::gemma_cli
{
    namespace
    {
        /// Prints one tensor's analysis as a table (rows named "expert e row r" when `experts` > 0)
        /// and returns its report entry: io::to_json's fields, plus the selection when a target is given.
        nlohmann::json print_analysis(std::ostream& out, const tensor_analysis& a, std::size_t experts, const options& o,
                                             bool& all_met)
        {
            const std::size_t per_expert = experts ? a.rows / experts : 0;
            auto row_name = [&](std::size_t r) {
                return per_expert ? "expert " + std::to_string(r / per_expert) + " row " + std::to_string(r % per_expert) : "row " + std::to_string(r);
            };
            out << a.name << "  " << orbitq::detail::shape_string(a.shape) << "  condition number " << detail::fmt(a.condition_number, 1) << "\n";
            out << "  " << detail::pad("candidate", 32, false) << detail::pad("bits/w", 8) << detail::pad("cos", 11) << detail::pad("SQNR dB", 9) << detail::pad("max err", 11) << "\n";
            for (const auto& c : a.candidates)
            {
                out << "  " << detail::pad(c.spec.describe(), 32, false) << detail::pad(detail::fmt(c.bits_per_weight, 3), 8) << detail::pad(detail::fmt(c.cosine, 6), 11)
                    << detail::pad(detail::fmt(c.sqnr_db, 1), 9) << detail::pad(detail::fmt(c.max_abs_err, 5), 11) << "\n";
            }
            if (!a.worst_rows.empty())
            {
                out << "  rows losing most bits to the per-tensor scale:";
                for (const auto& r : a.worst_rows) out << " " << row_name(r.row) << " " << detail::fmt(r.bits_lost, 2) << " bits;";
                out << "\n";
            }
            for (const auto& x : a.largest_weights)
            {
                out << "  outlier: " << row_name(x.row) << " col " << x.col << " value " << x.value << " = " << detail::fmt(x.ratio_to_row_rms, 1)
                    << " x row RMS\n";
            }
            nlohmann::json tj = io::to_json(a);
            if (experts)
            {
                for (auto& r : tj["worst_rows"]) r["expert"] = r["row"].get<std::size_t>() / per_expert;
                for (auto& w : tj["largest_weights"]) w["expert"] = w["row"].get<std::size_t>() / per_expert;
            }
            if (o.target_cos || o.target_sqnr_db)
            {
                const selection sel = select_candidate(a, o.target_cos, o.target_sqnr_db);
                out << "  " << sel.reason << "\n";
                tj["selection"] = {{"index", sel.index ? nlohmann::json(*sel.index) : nlohmann::json(nullptr)}, {"reason", sel.reason}};
                all_met = all_met && sel.index.has_value();
            }
            return tj;
        }

        /// @brief `orbitq-gemma analyze PATH`: every floating-point tensor of rank >= 2 above
        ///        --min-elements of any safetensors file or checkpoint directory (channel rule of
        ///        core/view.hpp: rank 3 [E, R, C] is E*R rows, rank 4 [O, I, kh, kw] is O rows).
        int run_analyze_path(const options& o, std::ostream& out, std::ostream& err)
        {
            const io::checkpoint ckpt = io::checkpoint::open(o.analyze_path);
            io::checkpoint_analysis_options ao;
            ao.min_elements = o.min_elements;
            ao.candidates = parse_candidates(o.candidates, o.group_size);
            ao.float_formats = true;
            ao.analysis.threads = thread_count(o);
            ao.analysis.top_rows = 3;
            ao.analysis.top_weights = 3;
            const std::vector<std::string> names = io::analyzable_tensors(ckpt, ao.min_elements);
            if (names.empty())
            {
                throw error(error_kind::invalid_argument, "'" + o.analyze_path + "' has no floating-point tensor of rank >= 2 with more than "
                                                              + std::to_string(ao.min_elements) + " elements (lower --min-elements?)");
            }
            nlohmann::json report = nlohmann::json::array();
            bool all_met = true;
            for (std::size_t i = 0; i < names.size(); ++i)
            {
                if (!o.quiet) err << "  analyzing " << names[i] << " (" << i + 1 << " of " << names.size() << ")\n";
                const tensor_analysis a = io::analyze_checkpoint_tensor(ckpt, names[i], ao);
                report.push_back(print_analysis(out, a, a.shape.size() == 3 ? a.shape[0] : 0, o, all_met));
            }
            if (!o.report.empty()) io::write_file_atomic(o.report, nlohmann::json{{"path", o.analyze_path}, {"tensors", report}}.dump(2) + "\n", true);
            return all_met ? 0 : 2;
        }
    }

    // declared and documented in cli_internal.hpp
    int run_analyze(const options& o, std::ostream& out, std::ostream& err)
    {
        if (!o.analyze_path.empty()) return run_analyze_path(o, out, err);
        const unsigned threads = thread_count(o);
        const std::unique_ptr<moe::model_source> src = open_source(o);
        const moe::config& cfg = src->cfg();
        const std::vector<std::size_t> layers = o.layers.empty() ? parse_layers("0-" + std::to_string(cfg.layers - 1), cfg.layers)
                                                                 : parse_layers(o.layers, cfg.layers);
        const std::vector<quant_spec> given = parse_candidates(o.candidates, o.group_size);
        nlohmann::json report = nlohmann::json::array();
        bool all_met = true;
        for (std::size_t layer : layers)
        {
            const moe::layer_weights& w = src->load_layer(layer, threads);
            for (const moe::any_view* v : stacked_views(w))
            {
                const tensor_analysis a = std::visit(
                    [&](const auto& m) {
                        std::vector<quant_spec> cands = given.empty() ? default_candidates(m.cols, true) : given;
                        const element_type st = element_type_of<typename std::decay_t<decltype(m)>::value_type>();
                        for (auto& c : cands)
                        {
                            // integer scales in the weights' float type; FP8 scales stay float32 (as written)
                            if (!is_float_scheme(c.scheme)) c.scale_type = st;
                            c.codes_from_stored_scale = true;
                        }
                        analyze_options ao;
                        ao.threads = threads;
                        ao.top_rows = 3;
                        ao.top_weights = 3;
                        return analyze(m, cands, ao);
                    },
                    *v);
                if (w.release_expert)
                {
                    for (std::size_t e = 0; e < cfg.experts; ++e) w.release_expert(e);
                }
                nlohmann::json tj = print_analysis(out, a, cfg.experts, o, all_met);
                tj["layer"] = layer;
                report.push_back(tj);
            }
            if (!o.quiet) err << "  analyzed layer " << layer << "\n";
        }
        if (!o.report.empty()) io::write_file_atomic(o.report, nlohmann::json{{"tensors", report}}.dump(2) + "\n", true);
        return all_met ? 0 : 2;
    }
}
