/// @file gemma_cli.cpp
/// @brief orbitq-gemma's implementation (see gemma_cli.hpp): compiled once, linked into the
///        binary and into the tests that run it in-process.
#include "gemma_cli.hpp"

#include "orbitq/analyze.hpp"
#include "orbitq/io/analyze_checkpoint.hpp"
#include "orbitq/models/gemma4.hpp"
#include "orbitq/models/gemma4_checkpoint.hpp"
#include "orbitq/models/gemma4_synthetic.hpp"
#include "orbitq/models/gemma4_validate.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace orbitq::gemma_cli
{
    namespace g4 = orbitq::models::gemma4;

    // Everything up to parse_layers is private to this file (internal linkage).
    namespace
    {
        /// @brief Peak resident set size of this process in bytes (VmHWM), 0 if unknown.
        std::size_t peak_rss_bytes()
        {
            std::ifstream in("/proc/self/status");
            std::string line;
            while (std::getline(in, line))
            {
                if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
            }
            return 0;
        }

        /// @brief Limits of the numeric flags: beyond them a run cannot be meant (and would only
        ///        exhaust memory or threads), so the parser refuses them.
        constexpr std::size_t max_group_size = 65536;
        constexpr unsigned max_threads = 1024;
        constexpr std::size_t max_tokens = 4096;

        /// @brief A CLI11 check: the value is a finite number in [lo, hi] (CLI::Range lets NaN by).
        CLI::Validator finite_in(double lo, double hi, const std::string& what)
        {
            return CLI::Validator(
                [=](std::string& text) -> std::string {
                    double v = 0.0;
                    std::size_t used = 0;
                    try
                    {
                        v = std::stod(text, &used);
                    }
                    catch (const std::exception&)
                    {
                        used = 0;
                    }
                    if (used == 0 || used != text.size()) return "'" + text + "' is not a number";
                    if (!std::isfinite(v) || v < lo || v > hi) return "'" + text + "' is not " + what;
                    return {};
                },
                what);
        }

        /// @brief A CLI11 check: the value is an integer in [lo, hi], written in decimal digits
        ///        (no sign, no exponent).
        CLI::Validator integer_in(std::uint64_t lo, std::uint64_t hi)
        {
            const std::string what = "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
            return CLI::Validator(
                [=](std::string& text) -> std::string {
                    if (text.empty() || text.size() > 20 || text.find_first_not_of("0123456789") != std::string::npos) return "'" + text + "' is not " + what;
                    try
                    {
                        const unsigned long long v = std::stoull(text);
                        if (v < lo || v > hi) return "'" + text + "' is not " + what;
                    }
                    catch (const std::exception&)
                    {
                        return "'" + text + "' is not " + what;
                    }
                    return {};
                },
                what);
        }

        /// @brief Parses a granularity name: per_tensor, per_channel, per_group or per_group:N.
        quant_spec parse_granularity(std::string s, const quant_spec& base, std::size_t default_group)
        {
            quant_spec q = base;
            std::size_t group = default_group;
            if (const auto colon = s.find(':'); colon != std::string::npos)
            {
                const std::string g = s.substr(colon + 1);
                if (g.empty() || g.size() > 6 || g.find_first_not_of("0123456789") != std::string::npos || std::stoul(g) == 0
                    || std::stoul(g) > max_group_size)
                {
                    throw error(error_kind::invalid_argument, "granularity '" + s + "': the group size after ':' must be an integer in [1, "
                                                                  + std::to_string(max_group_size) + "]");
                }
                group = std::stoul(g);
                s = s.substr(0, colon);
            }
            if (s == "per_tensor" || s == "tensor") q.granularity = granularity_kind::per_tensor;
            else if (s == "per_channel" || s == "channel") q.granularity = granularity_kind::per_channel;
            else if (s == "per_group" || s == "group")
            {
                q.granularity = granularity_kind::per_group;
                q.group_size = group;
            }
            else
            {
                throw error(error_kind::invalid_argument, "unknown granularity '" + s + "' (use per_tensor, per_channel, per_group or per_group:N)");
            }
            if (q.granularity != granularity_kind::per_group) q.group_size = 0;
            return q;
        }

        /// @brief A short label: per_tensor, per_channel, per_group:32.
        std::string label(const quant_spec& q)
        {
            std::string s = to_string(q.granularity);
            if (q.granularity == granularity_kind::per_group) s += ":" + std::to_string(q.group_size);
            return s;
        }

        /// @brief Everything the command line sets.
        struct options
        {
            std::string checkpoint;
            std::string write_synthetic;
            std::size_t experts = 8;
            std::size_t synthetic_layers = 30;
            std::uint64_t seed = g4::synthetic_options{}.seed;
            int bits = 8;
            std::string granularity = "per_channel";
            std::size_t group_size = 32;
            std::string scheme = "symmetric";
            std::string range = "restricted";
            std::string layers;
            unsigned threads = 0;
            std::size_t min_elements = 0;
            bool include_dense = false;
            std::size_t tokens = 8;
            std::string compare = "per_tensor,per_channel";
            double gate_layer_cos = 0.997;
            double gate_stack_cos = 0.97;
            std::string out;
            std::string activations = "none";      ///< none (weight-only) or int8 (W8A8, dynamic per token)
            std::string report;
            std::string plot;
            bool quiet = false;
            bool force = false;                    ///< replace an existing --out
            bool skip_nonfinite = false;           ///< copy tensors with NaN/Inf unquantized instead of failing
            bool bits_given = false;               ///< --bits was on the command line (auto: only that width)
            bool scheme_given = false;             ///< --scheme was on the command line (auto: only that scheme)
            // analyze subcommand (targets also drive --granularity auto)
            std::string candidates;                ///< empty: default_candidates(cols) per tensor
            std::string analyze_path;              ///< analyze PATH: any safetensors file or checkpoint (not only Gemma's names)
            std::optional<double> target_cos;
            std::optional<double> target_sqnr_db;
        };

        namespace detail
        {
            nlohmann::json num(double v)
            {
                if (std::isfinite(v)) return v;
                return v > 0 ? nlohmann::json("inf") : nlohmann::json("-inf");
            }

            std::string fmt(double v, int prec)
            {
                if (!std::isfinite(v)) return v > 0 ? "inf" : "-inf";
                std::ostringstream s;
                s << std::fixed << std::setprecision(prec) << v;
                return s.str();
            }

            std::string pad(std::string s, std::size_t w, bool right = true)
            {
                if (s.size() >= w) return s;
                return right ? std::string(w - s.size(), ' ') + s : s + std::string(w - s.size(), ' ');
            }

            nlohmann::json tensor_json(const g4::tensor_report& t, const quant_spec& spec)
            {
                auto metrics = [](const g4::tensor_metrics& m) {
                    return nlohmann::json{{"cos", num(m.cos)},
                                          {"sqnr_db", num(m.sqnr_db)},
                                          {"relative_error", num(m.relative_error)},
                                          {"max_abs_err", num(m.max_abs_err)},
                                          {"condition_number", num(m.condition_number)},
                                          {"bits_lost_mean", num(m.bits_lost_mean)},
                                          {"bits_lost_max", num(m.bits_lost_max)}};
                };
                nlohmann::json j = metrics(t.total);
                j["name"] = t.name;
                j["shape"] = t.shape;
                (void)spec;
                j["quantized"] = t.quantized;
                j["granularity"] = t.quantized ? label(t.spec) : "none";
                j["bits"] = t.quantized ? t.spec.bits : 16;
                if (t.quantized) j["scheme"] = to_string(t.spec.scheme);
                if (!t.skipped.empty()) j["skipped"] = t.skipped;
                j["bits_per_weight"] = num(t.bits_per_weight);
                if (!t.experts.empty())
                {
                    nlohmann::json e = nlohmann::json::array();
                    for (std::size_t k = 0; k < t.experts.size(); ++k)
                    {
                        auto m = metrics(t.experts[k]);
                        m["expert"] = k;
                        e.push_back(m);
                    }
                    j["experts"] = e;
                }
                return j;
            }

            nlohmann::json granularity_layer_json(const g4::granularity_layer& gl, const quant_spec& spec, const std::string& name)
            {
                nlohmann::json tensors = nlohmann::json::array();
                for (const auto& t : gl.tensors) tensors.push_back(tensor_json(t, spec));
                return {{"granularity", name},
                        {"tensors", tensors},
                        {"hidden_cos", gl.hidden_cos},
                        {"hidden_cos_min", gl.hidden_cos_min},
                        {"hidden_rel_err_max", gl.hidden_rel_err_max},
                        {"weight_sqnr_db", num(gl.weight_sqnr_db)},
                        {"stack_cos", gl.stack_cos},
                        {"stack_cos_min", gl.stack_cos_min},
                        {"router_agreement", gl.router_agreement}};
            }

            nlohmann::json stack_json(const g4::stack_report& s)
            {
                return {{"final_cos_min", s.final_cos_min},
                        {"final_rel_err_max", s.final_rel_err_max},
                        {"layer_cos_min", s.layer_cos_min},
                        {"predicted_amplification_seed", num(s.predicted_amplification_from_cosine)},
                        {"predicted_amplification", num(s.predicted_amplification)},
                        {"predicted_relative_error", num(s.predicted_relative_error)},
                        {"predicted_cosine_floor", s.predicted_cosine_floor},
                        {"measured_amplification", num(s.measured_amplification)}};
            }

            /// The root cause of a per-tensor failure: analyze() of one layer's stacked expert tensors
            /// (gate_up, down; rows = (expert, row)) under the per-tensor candidate only: the rows that
            /// lose the most bits to the shared scale, the weights largest relative to their row RMS,
            /// and the condition number. Prints a compact block and returns the same data as JSON.
            nlohmann::json root_cause(g4::model_source& src, std::size_t layer, const quant_spec& per_tensor, double layer_cos,
                                             unsigned threads, std::ostream& out)
            {
                const g4::config& cfg = src.cfg();
                const g4::layer_weights& w = src.load_layer(layer, threads);
                nlohmann::json tensors = nlohmann::json::array();
                out << "root cause: layer " << layer << " is the first to fail the layer gate per_tensor (min cos(hidden) " << fmt(layer_cos, 5)
                    << ")\n";
                for (const g4::any_view* v : {&w.gate_up, &w.down})
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
                    out << "  " << stem << " " << orbitq::detail::shape_string(a.shape) << ": condition number " << fmt(a.condition_number, 1)
                        << ", per_tensor cos " << fmt(c.cosine, 6) << ", SQNR " << fmt(c.sqnr_db, 1) << " dB\n";
                    out << "    rows losing most bits to the per-tensor scale:";
                    nlohmann::json rows = nlohmann::json::array(), weights = nlohmann::json::array();
                    for (std::size_t i = 0; i < a.worst_rows.size(); ++i)
                    {
                        const auto& r = a.worst_rows[i];
                        out << (i ? ";" : "") << " expert " << r.row / per << " row " << r.row % per << " " << fmt(r.bits_lost, 2) << " bits";
                        rows.push_back({{"expert", r.row / per}, {"row", r.row % per}, {"bits_lost", num(r.bits_lost)}, {"row_amax", r.row_amax}});
                    }
                    out << "\n    largest weights / row RMS:";
                    for (std::size_t i = 0; i < a.largest_weights.size(); ++i)
                    {
                        const auto& x = a.largest_weights[i];
                        out << (i ? ";" : "") << " expert " << x.row / per << " row " << x.row % per << " col " << x.col << " = " << x.value << " ("
                            << fmt(x.ratio_to_row_rms, 1) << "x)";
                        weights.push_back({{"expert", x.row / per}, {"row", x.row % per}, {"col", x.col}, {"value", x.value}, {"ratio_to_row_rms", num(x.ratio_to_row_rms)}});
                    }
                    out << "\n";
                    tensors.push_back({{"name", a.name},
                                       {"shape", a.shape},
                                       {"condition_number", num(a.condition_number)},
                                       {"per_tensor_cos", num(c.cosine)},
                                       {"per_tensor_sqnr_db", num(c.sqnr_db)},
                                       {"worst_rows", rows},
                                       {"largest_weights", weights}});
                }
                return {{"layer", layer}, {"granularity", "per_tensor"}, {"hidden_cos_min", layer_cos}, {"tensors", tensors}};
            }

            /// Hand-written SVG: per-layer min cos(hidden) per granularity, with the gate line.
            /// One panel of the plot: a line per granularity over the layers, the gate dashed and
            ///        labelled inside the panel (legend and labels never share space).
            struct panel
            {
                double x0, y0, w, h;                         ///< plot area
                std::string heading, y_label, gate_label;
                double gate;
                std::vector<std::vector<double>> series;     ///< per granularity, per layer
            };

            void draw_panel(std::ostringstream& s, const panel& p, const std::vector<std::size_t>& layers)
            {
                static const char* colors[] = {"#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};
                double lo = p.gate;
                for (const auto& v : p.series)
                {
                    for (double c : v) lo = std::min(lo, c);
                }
                lo = std::max(-1.0, lo - (1.0 - lo) * 0.08);
                const std::size_t n = layers.size();
                auto x = [&](std::size_t i) { return p.x0 + (n > 1 ? p.w * static_cast<double>(i) / static_cast<double>(n - 1) : p.w / 2); };
                auto y = [&](double c) { return p.y0 + p.h * (1.0 - (c - lo) / (1.0 - lo)); };
                const double bottom = p.y0 + p.h;
                s << "<text x=\"" << p.x0 << "\" y=\"" << p.y0 - 10 << "\" font-size=\"13\" font-weight=\"bold\">" << p.heading << "</text>\n";
                s << "<line x1=\"" << p.x0 << "\" y1=\"" << bottom << "\" x2=\"" << p.x0 + p.w << "\" y2=\"" << bottom << "\" stroke=\"black\"/>\n";
                s << "<line x1=\"" << p.x0 << "\" y1=\"" << p.y0 << "\" x2=\"" << p.x0 << "\" y2=\"" << bottom << "\" stroke=\"black\"/>\n";
                for (int k = 0; k <= 5; ++k)
                {
                    const double c = lo + (1.0 - lo) * k / 5.0;
                    s << "<line x1=\"" << p.x0 - 4 << "\" y1=\"" << y(c) << "\" x2=\"" << p.x0 << "\" y2=\"" << y(c) << "\" stroke=\"black\"/>";
                    s << "<text x=\"" << p.x0 - 6 << "\" y=\"" << y(c) + 4 << "\" text-anchor=\"end\">" << fmt(c, 4) << "</text>\n";
                }
                for (std::size_t i = 0; i < n; ++i)
                {
                    if (n > 16 && i % 5 != 0 && i + 1 != n) continue;
                    s << "<text x=\"" << x(i) << "\" y=\"" << bottom + 16 << "\" text-anchor=\"middle\">" << layers[i] << "</text>\n";
                }
                s << "<text x=\"" << p.x0 + p.w / 2 << "\" y=\"" << bottom + 34 << "\" text-anchor=\"middle\">layer</text>\n";
                const double ymid = p.y0 + p.h / 2, xl = p.x0 - 56;
                s << "<text x=\"" << xl << "\" y=\"" << ymid << "\" transform=\"rotate(-90 " << xl << " " << ymid << ")\" text-anchor=\"middle\">"
                  << p.y_label << "</text>\n";
                s << "<line x1=\"" << p.x0 << "\" y1=\"" << y(p.gate) << "\" x2=\"" << p.x0 + p.w << "\" y2=\"" << y(p.gate)
                  << "\" stroke=\"black\" stroke-dasharray=\"6,4\"/>\n";
                for (std::size_t g = 0; g < p.series.size(); ++g)
                {
                    const char* col = colors[g % 6];
                    s << "<polyline fill=\"none\" stroke=\"" << col << "\" stroke-width=\"2\" points=\"";
                    for (std::size_t i = 0; i < n; ++i) s << x(i) << "," << y(p.series[g][i]) << " ";
                    s << "\"/>\n";
                    for (std::size_t i = 0; i < n; ++i) s << "<circle cx=\"" << x(i) << "\" cy=\"" << y(p.series[g][i]) << "\" r=\"3\" fill=\"" << col << "\"/>";
                    s << "\n";
                }
                // The gate's label sits just under its line at the right end, haloed in white so
                // that a series crossing it stays readable.
                s << "<text x=\"" << p.x0 + p.w - 4 << "\" y=\"" << y(p.gate) + 14 << "\" text-anchor=\"end\" stroke=\"white\" stroke-width=\"4\" "
                  << "paint-order=\"stroke\">" << p.gate_label << "</text>\n";
            }

            /// The plot: per-layer min cos(hidden) against the layer gate (each layer fed the
            ///        original stream) beside the stack (each granularity fed its own stream:
            ///        the min cosine after each layer) against the stack gate; legend below both.
            std::string plot_svg(const g4::validation_report& rep, const std::vector<std::string>& specs, double gate_layer, double gate_stack,
                                 const std::string& title)
            {
                const double W = 1000, H = 470, top = 70, ph = 290, pw = 360, left1 = 90, left2 = 580;
                std::vector<std::size_t> layers;
                panel layer_panel{left1, top, pw, ph, "each layer alone", "min cos(hidden) over tokens", "layer gate " + fmt(gate_layer, 3), gate_layer, {}};
                panel stack_panel{left2, top, pw, ph, "the stack", "min cos after this layer", "stack gate " + fmt(gate_stack, 3), gate_stack, {}};
                for (std::size_t g = 0; g < specs.size(); ++g)
                {
                    layer_panel.series.emplace_back();
                    stack_panel.series.emplace_back();
                    for (const auto& lr : rep.layers)
                    {
                        layer_panel.series.back().push_back(lr.by_spec[g].hidden_cos_min);
                        stack_panel.series.back().push_back(lr.by_spec[g].stack_cos_min);
                    }
                }
                for (const auto& lr : rep.layers) layers.push_back(lr.layer);
                std::ostringstream s;
                s << std::setprecision(6);
                s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W << " " << H
                  << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
                s << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
                s << "<text x=\"" << left1 << "\" y=\"24\" font-size=\"15\">" << title << "</text>\n";
                draw_panel(s, layer_panel, layers);
                draw_panel(s, stack_panel, layers);
                static const char* colors[] = {"#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};
                const double ly = top + ph + 62;
                double lx = left1;
                for (std::size_t g = 0; g < specs.size(); ++g)
                {
                    s << "<rect x=\"" << lx << "\" y=\"" << ly - 6 << "\" width=\"18\" height=\"4\" fill=\"" << colors[g % 6] << "\"/>";
                    s << "<text x=\"" << lx + 24 << "\" y=\"" << ly << "\">" << specs[g] << "</text>\n";
                    lx += 40 + 8.0 * static_cast<double>(specs[g].size());
                }
                s << "<line x1=\"" << lx << "\" y1=\"" << ly - 4 << "\" x2=\"" << lx + 18 << "\" y2=\"" << ly - 4
                  << "\" stroke=\"black\" stroke-dasharray=\"6,4\"/><text x=\"" << lx + 24 << "\" y=\"" << ly << "\">gate</text>\n";
                s << "</svg>\n";
                return s.str();
            }
        }

        /// @brief Runs the converter/validator with already-parsed options.
        /// @return 0 pass, 2 gate failed. @throws error on any error (run_gemma turns it into exit 1).
        int run(const options& o, std::ostream& out, std::ostream& err)
        {
            namespace fs = std::filesystem;
            const unsigned threads = o.threads ? o.threads : std::max(1u, std::thread::hardware_concurrency());
            if (o.bits != 8 && o.bits != 4) throw error(error_kind::invalid_argument, "--bits must be 8 or 4");
            if (o.tokens == 0) throw error(error_kind::invalid_argument, "--tokens must be at least 1");

            g4::synthetic_options so;
            so.experts = o.experts;
            so.layers = o.synthetic_layers;
            so.seed = o.seed;

            if (!o.write_synthetic.empty())
            {
                if (!o.checkpoint.empty()) throw error(error_kind::invalid_argument, "--write-synthetic and --checkpoint exclude each other");
                g4::synthetic_source src(so);
                g4::write_synthetic_checkpoint(o.write_synthetic, src, threads);
                if (!o.quiet) err << "wrote the synthetic checkpoint (" << so.layers << " layers, " << so.experts << " experts) to " << o.write_synthetic << "\n";
                return 0;
            }

            std::unique_ptr<g4::model_source> src;
            if (!o.checkpoint.empty()) src = std::make_unique<g4::checkpoint_source>(o.checkpoint);
            else src = std::make_unique<g4::synthetic_source>(so);
            const g4::config& cfg = src->cfg();
            const bool synthetic = o.checkpoint.empty();

            // Granularities: --granularity (gated) plus --compare (reported).
            quant_spec base;
            base.bits = o.bits;
            if (o.scheme == "symmetric") base.scheme = scheme_kind::symmetric;
            else if (o.scheme == "asymmetric") base.scheme = scheme_kind::asymmetric;
            else throw error(error_kind::invalid_argument, "--scheme must be symmetric or asymmetric");
            if (o.range == "restricted") base.range = symmetric_range::restricted;
            else if (o.range == "full") base.range = symmetric_range::full;
            else throw error(error_kind::invalid_argument, "--range must be restricted or full");
            base.codes_from_stored_scale = true;  // the stored (rounded) scale is the one inference uses
            g4::validate_options vo;
            vo.specs.clear();
            const bool automatic = o.granularity == "auto";
            namespace ct = io::compressed_tensors;
            ct::activations acts = ct::activations::none;
            if (o.activations == "int8")
            {
                acts = ct::activations::int8_per_token;
                vo.activations = g4::activation_quantization::int8_per_token;
                if (automatic || o.bits != 8 || base.scheme != scheme_kind::symmetric || parse_granularity(o.granularity, base, o.group_size).granularity != granularity_kind::per_channel)
                {
                    throw error(error_kind::invalid_argument, "--activations int8 takes int8 symmetric per_channel weights (the engines' W8A8 MoE kernels); "
                                                              "leave out --bits, --scheme and --granularity, or set them to 8, symmetric, per_channel");
                }
            }
            else if (o.activations != "none") throw error(error_kind::invalid_argument, "--activations must be none or int8");
            const ct::format out_format = acts == ct::activations::none ? ct::format::pack_quantized : ct::format::int_quantized;
            // in_features of every projection the conversion writes
            std::vector<std::size_t> input_widths = {cfg.hidden, cfg.expert_intermediate};
            if (o.include_dense) input_widths.push_back(cfg.dense_intermediate);
            if (automatic && !o.target_cos && !o.target_sqnr_db)
            {
                throw error(error_kind::invalid_argument, "--granularity auto needs --target-cos and/or --target-sqnr");
            }
            if (!automatic && (o.target_cos || o.target_sqnr_db))
            {
                throw error(error_kind::invalid_argument, "--target-cos/--target-sqnr apply to --granularity auto (or to the analyze subcommand)");
            }
            // auto: the gated entry is its own column (per-tensor specs chosen during the run); its
            // quant_spec is a placeholder never used for an expert or dense tensor.
            const quant_spec gated = parse_granularity(automatic ? "per_channel" : o.granularity, base, o.group_size);
            std::stringstream cs(o.compare);
            std::string item;
            while (std::getline(cs, item, ','))
            {
                if (item.empty()) continue;
                const quant_spec q = parse_granularity(item, base, o.group_size);
                if (std::find(vo.specs.begin(), vo.specs.end(), q) == vo.specs.end()) vo.specs.push_back(q);
            }
            auto it = automatic ? vo.specs.end() : std::find(vo.specs.begin(), vo.specs.end(), gated);
            if (it == vo.specs.end())
            {
                vo.specs.push_back(gated);
                it = vo.specs.end() - 1;
            }
            vo.gated = static_cast<std::size_t>(it - vo.specs.begin());
            vo.layers = o.layers.empty() ? std::vector<std::size_t>{} : parse_layers(o.layers, cfg.layers);
            if (vo.layers.empty())
            {
                for (std::size_t l = 0; l < cfg.layers; ++l) vo.layers.push_back(l);
            }
            vo.tokens = o.tokens;
            vo.include_dense = o.include_dense;
            vo.min_elements = o.min_elements;
            vo.gate_layer_cos = o.gate_layer_cos;
            vo.gate_stack_cos = o.gate_stack_cos;
            vo.threads = threads;
            vo.skip_nonfinite = o.skip_nonfinite;
            auto spec_name = [&](std::size_t g) { return automatic && g == vo.gated ? std::string("auto") : label(vo.specs[g]); };
            std::vector<std::string> spec_names;
            for (std::size_t g = 0; g < vo.specs.size(); ++g) spec_names.push_back(spec_name(g));

            // --granularity auto: per tensor, orbitq::analyze over the candidates and
            // select_candidate's cheapest one meeting the target.
            struct choice
            {
                std::string name;
                std::string spec;
                double bits_per_weight;
                std::string reason;
            };
            std::vector<choice> choices;
            if (automatic)
            {
                vo.choose = [&](const std::vector<const g4::any_view*>& views, const quant_spec&) {
                    // The candidates every tensor of the layer can take (loadable ones with --out),
                    // analyzed per tensor; the cheapest (fewest bits over the layer) meeting the
                    // target on every tensor wins.
                    std::vector<quant_spec> cands;
                    for (quant_spec c : default_candidates(cfg.hidden))
                    {
                        if (o.bits_given && c.bits != o.bits) continue;
                        if (o.scheme_given && c.scheme != base.scheme) continue;
                        bool fits = true;
                        for (const g4::any_view* v : views) fits = fits && (c.granularity != granularity_kind::per_group || (g4::cols_of(*v) > c.group_size && g4::cols_of(*v) % c.group_size == 0));
                        if (!fits || (!o.out.empty() && ct::moe_refusal(c, out_format, input_widths))) continue;
                        c.range = base.range;
                        c.codes_from_stored_scale = true;
                        cands.push_back(c);
                    }
                    std::vector<tensor_analysis> analyses;
                    for (const g4::any_view* v : views)
                    {
                        analyses.push_back(std::visit(
                            [&](const auto& m) {
                                std::vector<quant_spec> typed = cands;
                                for (auto& c : typed) c.scale_type = element_type_of<typename std::decay_t<decltype(m)>::value_type>();
                                analyze_options ao;
                                ao.threads = threads;
                                ao.top_rows = 0;
                                ao.top_weights = 0;
                                return analyze(m, typed, ao);
                            },
                            *v));
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
                        const auto& c = a.candidates[*lc.index];
                        choices.push_back({a.name, c.spec.describe(), c.bits_per_weight, lc.reason});
                    }
                    return analyses.front().candidates[*lc.index].spec;
                };
            }

            // Scales are stored in the checkpoint's float dtype (compressed-tensors convention).
            {
                const g4::layer_weights& w0 = src->load_layer(vo.layers.front(), threads);
                const element_type st = std::visit([](const auto& m) { return element_type_of<typename std::decay_t<decltype(m)>::value_type>(); }, w0.gate_up);
                for (auto& s : vo.specs) s.scale_type = st;
            }
            // What the engines cannot load is refused before anything is written (analysis and
            // validation without --out stay open to every spec).
            if (!o.out.empty() && !automatic)
            {
                if (const auto why = ct::moe_refusal(vo.specs[vo.gated], out_format, input_widths))
                {
                    throw error(error_kind::invalid_argument, "--out: vLLM's MoE kernels cannot load " + label(vo.specs[vo.gated]) + " int"
                                                                  + std::to_string(o.bits) + " (" + *why + "); nothing was written. "
                                                                  + ct::moe_loadable_summary(input_widths));
                }
            }
            for (const auto& s : vo.specs)
            {
                if (s.granularity == granularity_kind::per_group && (cfg.expert_intermediate % s.group_size || cfg.hidden % s.group_size))
                {
                    throw error(error_kind::invalid_argument, "group size " + std::to_string(s.group_size) + " does not divide the expert row lengths "
                                                                  + std::to_string(cfg.hidden) + " and " + std::to_string(cfg.expert_intermediate)
                                                                  + " (704 divides by 32 and 64, not by 128)");
                }
            }

            std::vector<float> x0;
            if (synthetic) x0 = static_cast<g4::synthetic_source&>(*src).model().tokens(o.tokens);
            else
            {
                // A real checkpoint: synthetic residual-stream tokens of the same law (RMS near 1).
                g4::synthetic_options to = so;
                to.layers = 1;
                to.experts = std::max<std::size_t>(cfg.top_k, 1);
                g4::synthetic_model tm(to);
                x0.resize(o.tokens * cfg.hidden);
                const auto t = tm.tokens(o.tokens);
                if (cfg.hidden == tm.cfg().hidden) x0 = t;
                else
                {
                    for (std::size_t i = 0; i < x0.size(); ++i) x0[i] = t[i % t.size()];
                }
            }

            std::unique_ptr<g4::converted_writer> writer;
            if (!o.out.empty())
            {
                writer = std::make_unique<g4::converted_writer>(o.out, *src, synthetic ? fs::path{} : fs::path(o.checkpoint), vo.specs[vo.gated],
                                                                vo.layers.size(), threads, o.force, acts);
                writer->set_automatic(automatic);
            }

            if (!o.quiet)
            {
                err << "orbitq-gemma: " << (synthetic ? "synthetic Gemma-4-shaped weights" : o.checkpoint) << ", " << vo.layers.size() << " of "
                    << cfg.layers << " layers, " << cfg.experts << " experts (top-" << cfg.top_k << "), " << o.tokens << " tokens, " << threads
                    << " threads\n";
            }
            auto progress = [&](const g4::progress_info& p) {
                if (o.quiet) return;
                const double eta = p.done ? p.elapsed_s / p.done * (p.total - p.done) : 0.0;
                err << "  layer " << p.layer << " (" << p.done << " of " << p.total << ")  " << detail::fmt(p.elapsed_s, 1) << " s  "
                    << detail::fmt(p.bytes / p.elapsed_s / 1e9, 2) << " GB/s quantized  ETA " << detail::fmt(eta, 0) << " s\n";
            };
            const g4::validation_report rep = g4::validate(
                cfg, [&](std::size_t l) -> const g4::layer_weights& { return src->load_layer(l, threads); }, x0, vo, writer.get(), progress);
            std::string written_note;
            if (writer)
            {
                writer->finish();
                if (!o.quiet) err << "wrote the converted checkpoint to " << o.out << "\n";
                if (!automatic && vo.specs[vo.gated].granularity == granularity_kind::per_tensor)
                {
                    written_note = "per_tensor written with strategy 'channel' (its one scale repeated on every row; the numbers are unchanged): "
                                   "vLLM's MoE kernels take channel scales, not tensor ones";
                }
            }

            // Human table.
            const std::size_t G = vo.specs.size();
            out << (synthetic ? "SYNTHETIC Gemma-4-shaped weights (not the real model; see examples/gemma_moe/README.md)"
                              : "checkpoint " + o.checkpoint)
                << ": " << rep.layers.size() << " layers, " << cfg.experts << " experts (top-" << cfg.top_k << "), " << o.tokens
                << " tokens\n";
            out << "int" << o.bits << " " << o.scheme << "; converting " << spec_name(vo.gated) << "; gates: layer min cos(hidden) >= "
                << o.gate_layer_cos << ", stack min cos >= " << o.gate_stack_cos << "\n\n";
            out << "layer";
            for (std::size_t g = 0; g < vo.specs.size(); ++g) out << " | " << detail::pad(spec_name(g) + (g == vo.gated ? " *" : ""), 30, false);
            out << "\n     ";
            for (std::size_t g = 0; g < G; ++g) out << " | " << "min cos   SQNR dB  stack   gate ";
            out << "\n";
            for (const auto& lr : rep.layers)
            {
                out << detail::pad(std::to_string(lr.layer), 5);
                for (std::size_t g = 0; g < G; ++g)
                {
                    const auto& gl = lr.by_spec[g];
                    out << " | " << detail::fmt(gl.hidden_cos_min, 5) << " " << detail::pad(detail::fmt(gl.weight_sqnr_db, 1), 8) << "  "
                        << detail::fmt(gl.stack_cos_min, 4) << "  " << (gl.hidden_cos_min >= o.gate_layer_cos ? "pass" : "FAIL");
                }
                out << "\n";
            }
            out << "layer gate (min over layers):\n";
            for (std::size_t g = 0; g < G; ++g)
            {
                const auto& s = rep.stack[g];
                out << "  " << detail::pad(spec_name(g), 14, false) << " min cos(hidden) " << detail::fmt(s.layer_cos_min, 5) << "  "
                    << (s.layer_gate_passed ? "pass" : "FAIL") << "\n";
            }
            out << "stack (" << rep.layers.size() << " layers, separate original and quantized streams):\n";
            for (std::size_t g = 0; g < G; ++g)
            {
                const auto& s = rep.stack[g];
                double agree = 1.0;
                for (const auto& lr : rep.layers) agree = std::min(agree, lr.by_spec[g].router_agreement);
                out << "  " << detail::pad(spec_name(g), 14, false) << " final min cos " << detail::fmt(s.final_cos_min, 4) << "  "
                    << (s.stack_gate_passed ? "pass" : "FAIL") << "   amplification: (1+δ)^N "
                    << detail::fmt(s.predicted_amplification_from_cosine, 2)
                    << ", predicted (Π(1+ε)−1)/ε " << detail::fmt(s.predicted_amplification, 2) << ", measured " << detail::fmt(s.measured_amplification, 2)
                    << "; cos floor " << detail::fmt(s.predicted_cosine_floor, 4) << "; router agreement min " << detail::fmt(agree, 3) << "\n";
            }
            if (automatic)
            {
                out << "auto granularity (target" << (o.target_cos ? " cos >= " + detail::fmt(*o.target_cos, 6) : "")
                    << (o.target_sqnr_db ? " SQNR >= " + detail::fmt(*o.target_sqnr_db, 1) + " dB" : "") << "), chosen per tensor:\n";
                for (const auto& c : choices) out << "  " << c.name << ": " << c.reason << "\n";
            }
            for (const auto& s : rep.skipped) out << "skipped (kept unquantized, --skip-nonfinite): " << s << "\n";
            // Root cause of the first per-tensor failure (a second look at that one layer only).
            nlohmann::json root_cause_json = nullptr;
            for (std::size_t g = 0; g < G; ++g)
            {
                if (vo.specs[g].granularity != granularity_kind::per_tensor) continue;
                for (const auto& lr : rep.layers)
                {
                    if (lr.by_spec[g].hidden_cos_min >= o.gate_layer_cos) continue;
                    root_cause_json = detail::root_cause(*src, lr.layer, vo.specs[g], lr.by_spec[g].hidden_cos_min, threads, out);
                    break;
                }
                break;
            }
            const auto& gs = rep.stack[vo.gated];
            const int code = rep.passed ? 0 : 2;
            if (!written_note.empty()) out << "out: " << written_note << "\n";
            if (acts != ct::activations::none) out << "activations: int8 per token, dynamic symmetric (W8A8), simulated in the " << spec_name(vo.gated) << " forward pass\n";
            out << "verdict: " << spec_name(vo.gated) << (automatic ? std::string() : " int" + std::to_string(o.bits)) << " " << (rep.passed ? "PASSES" : "FAILS") << " (layer gate "
                << (gs.layer_gate_passed ? "pass" : "FAIL") << ", stack gate " << (gs.stack_gate_passed ? "pass" : "FAIL") << ")  [exit " << code << "]\n";
            const double gbps = rep.quantized_source_bytes / std::max(rep.quantize_seconds, 1e-9) / 1e9;
            out << "time " << detail::fmt(rep.total_seconds, 1) << " s (quantize+measure " << detail::fmt(rep.quantize_seconds, 1) << " s, "
                << detail::fmt(gbps, 2) << " GB/s), peak RSS " << detail::fmt(peak_rss_bytes() / 1048576.0, 0) << " MiB\n";

            if (!o.report.empty())
            {
                nlohmann::json choices_json = nullptr;
                if (automatic)
                {
                    choices_json = {{"target_cos", o.target_cos ? nlohmann::json(*o.target_cos) : nlohmann::json(nullptr)},
                                    {"target_sqnr_db", o.target_sqnr_db ? nlohmann::json(*o.target_sqnr_db) : nlohmann::json(nullptr)},
                                    {"tensors", nlohmann::json::array()}};
                    for (const auto& c : choices)
                    {
                        choices_json["tensors"].push_back({{"name", c.name}, {"chosen", c.spec}, {"bits_per_weight", c.bits_per_weight}, {"reason", c.reason}});
                    }
                }
                nlohmann::json layers = nlohmann::json::array();
                for (const auto& lr : rep.layers)
                {
                    nlohmann::json j = detail::granularity_layer_json(lr.by_spec[vo.gated], vo.specs[vo.gated], spec_name(vo.gated));
                    j["layer"] = lr.layer;
                    nlohmann::json by = nlohmann::json::object();
                    for (std::size_t g = 0; g < G; ++g) by[spec_name(g)] = detail::granularity_layer_json(lr.by_spec[g], vo.specs[g], spec_name(g));
                    j["by_granularity"] = by;
                    layers.push_back(j);
                }
                nlohmann::json stack = detail::stack_json(gs);
                nlohmann::json by = nlohmann::json::object();
                for (std::size_t g = 0; g < G; ++g) by[spec_name(g)] = detail::stack_json(rep.stack[g]);
                stack["by_granularity"] = by;
                stack["notes"] = {{"predicted_amplification_seed", "(1 + (1 - min layer cos))^N, from the per-layer cosines alone"},
                                  {"predicted_amplification", "(prod(1 + eps_i) - 1) / max eps_i, eps_i = per-layer relative error of the hidden state"},
                                  {"measured_amplification", "final stack relative error / max eps_i"}};
                nlohmann::json gates_by = nlohmann::json::object();
                for (std::size_t g = 0; g < G; ++g)
                {
                    gates_by[spec_name(g)] = {{"layer", {{"threshold", o.gate_layer_cos}, {"min", rep.stack[g].layer_cos_min}, {"passed", rep.stack[g].layer_gate_passed}}},
                                                    {"stack", {{"threshold", o.gate_stack_cos}, {"min", rep.stack[g].final_cos_min}, {"passed", rep.stack[g].stack_gate_passed}}}};
                }
                nlohmann::json specs = nlohmann::json::array();
                for (const auto& s : spec_names) specs.push_back(s);
                nlohmann::json report = {
                    {"config",
                     {{"source", synthetic ? "synthetic" : o.checkpoint},
                      {"synthetic", synthetic},
                      {"layers", vo.layers},
                      {"experts", cfg.experts},
                      {"top_k", cfg.top_k},
                      {"hidden", cfg.hidden},
                      {"expert_intermediate", cfg.expert_intermediate},
                      {"dense_intermediate", cfg.dense_intermediate},
                      {"tokens", o.tokens},
                      {"bits", o.bits},
                      {"granularity", spec_name(vo.gated)},
                      {"compare", specs},
                      {"scheme", o.scheme},
                      {"range", o.range},
                      {"scale_dtype", std::string(element_name(vo.specs[vo.gated].scale_type))},
                      {"include_dense", o.include_dense},
                      {"min_elements", o.min_elements},
                      {"threads", threads},
                      {"out", o.out},
                      {"activations", o.activations},
                      {"out_format", o.out.empty() ? nlohmann::json(nullptr) : nlohmann::json(ct::format_name(out_format))},
                      {"out_note", written_note.empty() ? nlohmann::json(nullptr) : nlohmann::json(written_note)}}},
                    {"layers", layers},
                    {"stack", stack},
                    {"gates",
                     {{"layer", {{"threshold", o.gate_layer_cos}, {"min", gs.layer_cos_min}, {"passed", gs.layer_gate_passed}}},
                      {"stack", {{"threshold", o.gate_stack_cos}, {"min", gs.final_cos_min}, {"passed", gs.stack_gate_passed}}},
                      {"by_granularity", gates_by}}},
                    {"passed", rep.passed},
                    {"root_cause", root_cause_json},
                    {"auto", choices_json},
                    {"skipped_nonfinite", rep.skipped},
                    {"throughput_gbps", gbps},
                    {"total_seconds", rep.total_seconds},
                    {"peak_rss_bytes", peak_rss_bytes()}};
                io::write_file_atomic(o.report, report.dump(2) + "\n", true);
            }
            if (!o.plot.empty())
            {
                const std::string title = std::string(synthetic ? "synthetic Gemma 4" : "Gemma 4") + " MoE FFN, int" + std::to_string(o.bits)
                                          + ": each layer alone, and the stack";
                io::write_file_atomic(o.plot, detail::plot_svg(rep, spec_names, o.gate_layer_cos, o.gate_stack_cos, title), true);
            }
            return code;
        }

        /// @brief `orbitq-gemma analyze`: what every candidate policy would cost each selected
        ///        layer's stacked expert tensors (orbitq::analyze: no codes written), the outliers
        ///        behind the cost, and, with a target, the cheapest candidate that meets it.
        /// @return 0, or 2 when a target is given and some tensor has no candidate meeting it.
        namespace detail
        {
            /// Parses --candidates: comma-separated NAME[:group][@bits][/asym|/sym]; empty: none given.
            std::vector<quant_spec> parse_candidates(const std::string& list, std::size_t group_size)
            {
                quant_spec base;
                base.codes_from_stored_scale = true;
                std::vector<quant_spec> given;
                std::stringstream cs(list);
                std::string item;
                while (std::getline(cs, item, ','))
                {
                    if (item.empty()) continue;
                    // name[:group][@bits][/asym]
                    quant_spec q = base;
                    std::string name = item;
                    if (const auto slash = name.find('/'); slash != std::string::npos)
                    {
                        const std::string sch = name.substr(slash + 1);
                        if (sch != "asym" && sch != "sym") throw error(error_kind::invalid_argument, "candidate '" + item + "': scheme must be /sym or /asym");
                        q.scheme = sch == "asym" ? scheme_kind::asymmetric : scheme_kind::symmetric;
                        name = name.substr(0, slash);
                    }
                    if (const auto at = name.find('@'); at != std::string::npos)
                    {
                        const std::string b = name.substr(at + 1);
                        if (b != "8" && b != "4") throw error(error_kind::invalid_argument, "candidate '" + item + "': bits must be @8 or @4");
                        q.bits = std::stoi(b);
                        name = name.substr(0, at);
                    }
                    given.push_back(parse_granularity(name, q, group_size));
                }
                return given;
            }

            /// Prints one tensor's analysis as a table (rows named "expert e row r" when `experts` > 0)
            /// and returns its report entry: io::to_json's fields, plus the selection when a target is given.
            nlohmann::json print_analysis(std::ostream& out, const tensor_analysis& a, std::size_t experts, const options& o,
                                                 bool& all_met)
            {
                const std::size_t per_expert = experts ? a.rows / experts : 0;
                auto row_name = [&](std::size_t r) {
                    return per_expert ? "expert " + std::to_string(r / per_expert) + " row " + std::to_string(r % per_expert) : "row " + std::to_string(r);
                };
                out << a.name << "  " << orbitq::detail::shape_string(a.shape) << "  condition number " << fmt(a.condition_number, 1) << "\n";
                out << "  " << pad("candidate", 32, false) << pad("bits/w", 8) << pad("cos", 11) << pad("SQNR dB", 9) << pad("max err", 11) << "\n";
                for (const auto& c : a.candidates)
                {
                    out << "  " << pad(c.spec.describe(), 32, false) << pad(fmt(c.bits_per_weight, 3), 8) << pad(fmt(c.cosine, 6), 11)
                        << pad(fmt(c.sqnr_db, 1), 9) << pad(fmt(c.max_abs_err, 5), 11) << "\n";
                }
                if (!a.worst_rows.empty())
                {
                    out << "  rows losing most bits to the per-tensor scale:";
                    for (const auto& r : a.worst_rows) out << " " << row_name(r.row) << " " << fmt(r.bits_lost, 2) << " bits;";
                    out << "\n";
                }
                for (const auto& x : a.largest_weights)
                {
                    out << "  outlier: " << row_name(x.row) << " col " << x.col << " value " << x.value << " = " << fmt(x.ratio_to_row_rms, 1)
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
        }

        /// @brief `orbitq-gemma analyze PATH`: every floating-point tensor of rank >= 2 above
        ///        --min-elements of any safetensors file or checkpoint directory (channel rule of
        ///        core/view.hpp: rank 3 [E, R, C] is E*R rows, rank 4 [O, I, kh, kw] is O rows).
        int run_analyze_path(const options& o, std::ostream& out, std::ostream& err)
        {
            const io::checkpoint ckpt = io::checkpoint::open(o.analyze_path);
            io::checkpoint_analysis_options ao;
            ao.min_elements = o.min_elements;
            ao.candidates = detail::parse_candidates(o.candidates, o.group_size);
            ao.analysis.threads = o.threads ? o.threads : std::max(1u, std::thread::hardware_concurrency());
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
                report.push_back(detail::print_analysis(out, a, a.shape.size() == 3 ? a.shape[0] : 0, o, all_met));
            }
            if (!o.report.empty()) io::write_file_atomic(o.report, nlohmann::json{{"path", o.analyze_path}, {"tensors", report}}.dump(2) + "\n", true);
            return all_met ? 0 : 2;
        }

        int run_analyze(const options& o, std::ostream& out, std::ostream& err)
        {
            if (!o.analyze_path.empty()) return run_analyze_path(o, out, err);
            const unsigned threads = o.threads ? o.threads : std::max(1u, std::thread::hardware_concurrency());
            g4::synthetic_options so;
            so.experts = o.experts;
            so.layers = o.synthetic_layers;
            so.seed = o.seed;
            std::unique_ptr<g4::model_source> src;
            if (!o.checkpoint.empty()) src = std::make_unique<g4::checkpoint_source>(o.checkpoint);
            else src = std::make_unique<g4::synthetic_source>(so);
            const g4::config& cfg = src->cfg();
            const std::vector<std::size_t> layers = o.layers.empty() ? parse_layers("0-" + std::to_string(cfg.layers - 1), cfg.layers)
                                                                     : parse_layers(o.layers, cfg.layers);
            const std::vector<quant_spec> given = detail::parse_candidates(o.candidates, o.group_size);
            nlohmann::json report = nlohmann::json::array();
            bool all_met = true;
            for (std::size_t layer : layers)
            {
                const g4::layer_weights& w = src->load_layer(layer, threads);
                for (const g4::any_view* v : {&w.gate_up, &w.down})
                {
                    const tensor_analysis a = std::visit(
                        [&](const auto& m) {
                            std::vector<quant_spec> cands = given.empty() ? default_candidates(m.cols) : given;
                            const element_type st = element_type_of<typename std::decay_t<decltype(m)>::value_type>();
                            for (auto& c : cands)
                            {
                                c.scale_type = st;
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
                    nlohmann::json tj = detail::print_analysis(out, a, cfg.experts, o, all_met);
                    tj["layer"] = layer;
                    report.push_back(tj);
                }
                if (!o.quiet) err << "  analyzed layer " << layer << "\n";
            }
            if (!o.report.empty()) io::write_file_atomic(o.report, nlohmann::json{{"tensors", report}}.dump(2) + "\n", true);
            return all_met ? 0 : 2;
        }
    }

    // declared and documented in gemma_cli.hpp
    std::vector<std::size_t> parse_layers(const std::string& text, std::size_t n_layers)
    {
        std::vector<std::size_t> out;
        std::stringstream ss(text);
        std::string item;
        auto num = [&](const std::string& s) -> std::size_t {
            if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos)
            {
                throw error(error_kind::invalid_argument, "--layers '" + text + "': '" + s + "' is not a layer number (use e.g. 0-29 or 0,5,10-12)");
            }
            const std::size_t v = s.size() > 9 ? n_layers : std::stoul(s);
            if (v >= n_layers)
            {
                throw error(error_kind::invalid_argument, "--layers '" + text + "': layer " + s + " does not exist (the model has "
                                                              + std::to_string(n_layers) + " layers, 0-" + std::to_string(n_layers - 1) + ")");
            }
            return v;
        };
        while (std::getline(ss, item, ','))
        {
            const auto dash = item.find('-');
            if (dash == std::string::npos)
            {
                out.push_back(num(item));
                continue;
            }
            const std::size_t a = num(item.substr(0, dash)), b = num(item.substr(dash + 1));
            if (a > b) throw error(error_kind::invalid_argument, "--layers '" + text + "': range " + item + " is descending");
            for (std::size_t l = a; l <= b; ++l) out.push_back(l);
        }
        if (out.empty()) throw error(error_kind::invalid_argument, "--layers '" + text + "' selects no layer");
        std::vector<std::size_t> sorted = out;
        std::sort(sorted.begin(), sorted.end());
        if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
        {
            throw error(error_kind::invalid_argument, "--layers '" + text + "' names a layer twice");
        }
        return out;
    }

    // declared and documented in gemma_cli.hpp
    int run_gemma(int argc, const char* const* argv, std::ostream& out, std::ostream& err)
    {
        options o;
        CLI::App app{"orbitq-gemma: convert and validate the MoE expert weights of Gemma 4 26B-A4B (INT8/INT4, per-tensor/channel/group).\n"
                     "Without --checkpoint it runs on a built-in SYNTHETIC Gemma-4-shaped checkpoint.",
                     "orbitq-gemma"};
        app.add_option("--checkpoint", o.checkpoint, "Hugging Face checkpoint directory (index + shards, or model.safetensors)");
        app.add_option("--write-synthetic", o.write_synthetic, "write the synthetic checkpoint to DIR as sharded safetensors");
        app.add_option("--experts", o.experts, "experts of the synthetic model")->capture_default_str()->check(integer_in(1, 128));
        app.add_option("--synthetic-layers", o.synthetic_layers, "layers of the synthetic model")->capture_default_str()->check(integer_in(1, 30));
        app.add_option("--seed", o.seed, "seed of the synthetic model")->capture_default_str()->check(integer_in(0, std::numeric_limits<std::uint64_t>::max()));
        CLI::Option* bits_opt = app.add_option("--bits", o.bits, "8 or 4 (with --granularity auto: only this width is considered)")
                                    ->capture_default_str()
                                    ->check(CLI::IsMember({4, 8}));
        app.add_option("--granularity", o.granularity, "granularity converted and gated: per_tensor, per_channel, per_group[:N], or auto (per layer, the fewest bits per weight "
                       "meeting --target-cos/--target-sqnr on every projection, chosen by orbitq::analyze)")->capture_default_str();
        app.add_option("--group-size", o.group_size, "group size of per_group")->capture_default_str()->check(integer_in(1, max_group_size));
        CLI::Option* scheme_opt = app.add_option("--scheme", o.scheme, "symmetric or asymmetric (with --granularity auto: only this scheme is considered)")->capture_default_str();
        app.add_option("--range", o.range, "symmetric range: restricted ([-127,127]) or full ([-128,127])")->capture_default_str();
        app.add_option("--layers", o.layers, "layers to process, e.g. 0-29 or 0,5,10-12 (default: all)");
        app.add_option("--threads", o.threads, "threads (0: all cores)")->capture_default_str()->check(integer_in(0, max_threads));
        app.add_option("--min-elements", o.min_elements, "quantize only tensors with more elements than this")
            ->capture_default_str()
            ->check(integer_in(0, std::numeric_limits<std::uint64_t>::max()));
        app.add_flag("--include-dense", o.include_dense, "also quantize the dense (shared) MLP");
        app.add_option("--tokens", o.tokens, "sample tokens for the forward tests")->capture_default_str()->check(integer_in(1, max_tokens));
        app.add_option("--compare", o.compare, "granularities reported side by side, e.g. per_tensor,per_channel,per_group:32")->capture_default_str();
        const CLI::Validator cosine = finite_in(-1.0, 1.0, "a cosine in [-1, 1]");
        const CLI::Validator decibels = finite_in(-1000.0, 1000.0, "an SQNR in [-1000, 1000] dB");
        app.add_option("--gate-layer-cos", o.gate_layer_cos, "layer gate on min cos(hidden)")->capture_default_str()->check(cosine);
        app.add_option("--gate-stack-cos", o.gate_stack_cos, "stack gate on the final min cos")->capture_default_str()->check(cosine);
        app.add_option("--out", o.out, "write the converted checkpoint to DIR (must not exist, not inside the input)");
        app.add_option("--activations", o.activations,
                       "none (weight-only, pack-quantized) or int8 (W8A8: int8 per_channel symmetric weights, dynamic per-token int8 "
                       "activations, int-quantized; the validation quantizes activations the same way)")
            ->capture_default_str();
        app.add_option("--report", o.report, "write a JSON report");
        app.add_option("--plot", o.plot, "write an SVG plot: per-layer min cos(hidden) and the stack's cosine after each layer, with the gates");
        app.add_flag("-q,--quiet", o.quiet, "no progress on stderr");
        app.add_flag("--force", o.force, "replace an existing --out (atomically: the new directory is swapped in, the old one removed)");
        app.add_flag("--skip-nonfinite", o.skip_nonfinite, "copy tensors holding NaN/Inf unquantized (reported) instead of stopping with exit status 1");
        app.add_option("--target-cos", o.target_cos, "with --granularity auto: the cosine each tensor must reach")->check(cosine);
        app.add_option("--target-sqnr", o.target_sqnr_db, "with --granularity auto: the SQNR (dB) each tensor must reach")->check(decibels);
        CLI::App* analyze_cmd = app.add_subcommand(
            "analyze", "what every candidate policy would cost each layer's expert tensors (no codes written); the global options "
                       "--checkpoint, --experts, --layers, --threads, --report, --quiet apply");
        analyze_cmd->add_option("path", o.analyze_path,
                                "any safetensors file or checkpoint directory: every float tensor of rank >= 2 above --min-elements "
                                "(default: the selected layers' expert tensors of --checkpoint or the synthetic model)");
        analyze_cmd->add_option("--candidates", o.candidates,
                                "comma-separated candidates NAME[:group][@bits][/asym], e.g. per_channel@8,per_group:32@4/asym "
                                "(default: per_tensor, per_channel, per_group 32/64/128 where they divide, int8/int4, sym/asym)");
        std::optional<double> a_cos, a_sqnr;
        analyze_cmd->add_option("--target-cos", a_cos, "select the cheapest candidate with at least this cosine")->check(cosine);
        analyze_cmd->add_option("--target-sqnr", a_sqnr, "select the cheapest candidate with at least this SQNR (dB)")->check(decibels);
        analyze_cmd->fallthrough();
        try
        {
            app.parse(argc, argv);
        }
        catch (const CLI::ParseError& e)
        {
            std::ostringstream o_out, o_err;
            const int rc = app.exit(e, o_out, o_err);
            out << o_out.str();
            err << o_err.str();
            return rc == 0 ? 0 : 1;
        }
        o.bits_given = bits_opt->count() > 0;
        o.scheme_given = scheme_opt->count() > 0;
        try
        {
            // A full disk or a file size limit must be an error (EFBIG), not a kill by SIGXFSZ.
            std::signal(SIGXFSZ, SIG_IGN);
            if (analyze_cmd->parsed())
            {
                if (a_cos) o.target_cos = a_cos;
                if (a_sqnr) o.target_sqnr_db = a_sqnr;
                return run_analyze(o, out, err);
            }
            return run(o, out, err);
        }
        catch (const std::exception& e)
        {
            err << "orbitq-gemma: error: " << e.what() << "\n";
            return 1;
        }
    }
}
