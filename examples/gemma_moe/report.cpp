/// @file report.cpp
/// @brief orbitq-gemma's output: the table on stdout, the JSON report and the SVG plot.
#include "cli_internal.hpp"

#include "orbitq/io/atomic_file.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <string>
#include <vector>

namespace orbitq::gemma_cli
{
    // declared and documented in cli_internal.hpp
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

        std::string pad(std::string s, std::size_t w, bool right)
        {
            if (s.size() >= w) return s;
            return right ? std::string(w - s.size(), ' ') + s : s + std::string(w - s.size(), ' ');
        }

        nlohmann::json tensor_json(const moe::tensor_report& t, const quant_spec& spec)
        {
            auto metrics = [](const moe::tensor_metrics& m) {
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
            j["granularity"] = t.quantized ? granularity_label(t.spec) : "none";
            j["bits"] = t.quantized ? t.spec.bits : 16;
            if (t.quantized) j["scheme"] = to_string(t.spec.scheme);
            if (t.quantized) j["scales"] = t.spec.scales_name();
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

        nlohmann::json granularity_layer_json(const moe::granularity_layer& gl, const quant_spec& spec, const std::string& name)
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

        nlohmann::json stack_json(const moe::stack_report& s)
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
        std::string plot_svg(const moe::validation_report& rep, const std::vector<std::string>& specs, double gate_layer, double gate_stack,
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

    // declared and documented in cli_internal.hpp
    void print_summary(std::ostream& out, const conversion& c, const moe::validation_report& rep)
    {
        using detail::fmt;
        using detail::pad;
        // Human table.
        const std::size_t G = c.vo.specs.size();
        out << (c.synthetic ? "SYNTHETIC Gemma-4-shaped weights (not the real model; see examples/gemma_moe/README.md)"
                          : "checkpoint " + c.o.checkpoint)
            << ": " << rep.layers.size() << " layers, " << c.cfg().experts << " experts (top-" << c.cfg().top_k << "), " << c.vo.tokens
            << (c.file_tokens.empty() ? " tokens\n" : " tokens from " + c.o.tokens_file + "\n");
        const bool float_codes = is_float_scheme(c.vo.specs.at(c.vo.gated).scheme);
        out << (float_codes ? c.o.scheme + (c.vo.activations != moe::activation_quantization::none ? " weights and activations" : " weights")
                            : "int" + std::to_string(c.o.bits) + " " + c.o.scheme)
            << (c.o.scales != "amax" ? ", " + c.o.scales + " scales (per_tensor compared with amax)" : std::string()) << "; converting " << c.spec_names.at(c.vo.gated) << "; gates: layer min cos(hidden) >= "
            << c.o.gate_layer_cos << ", stack min cos >= " << c.o.gate_stack_cos << "\n\n";
        out << "layer";
        for (std::size_t g = 0; g < c.vo.specs.size(); ++g) out << " | " << pad(c.spec_names.at(g) + (g == c.vo.gated ? " *" : ""), 30, false);
        out << "\n     ";
        for (std::size_t g = 0; g < G; ++g) out << " | " << "min cos   SQNR dB  stack   gate ";
        out << "\n";
        for (const auto& lr : rep.layers)
        {
            out << pad(std::to_string(lr.layer), 5);
            for (std::size_t g = 0; g < G; ++g)
            {
                const auto& gl = lr.by_spec[g];
                out << " | " << fmt(gl.hidden_cos_min, 5) << " " << pad(fmt(gl.weight_sqnr_db, 1), 8) << "  "
                    << fmt(gl.stack_cos_min, 4) << "  " << (gl.hidden_cos_min >= c.o.gate_layer_cos ? "pass" : "FAIL");
            }
            out << "\n";
        }
        out << "layer gate (min over layers):\n";
        for (std::size_t g = 0; g < G; ++g)
        {
            const auto& s = rep.stack[g];
            out << "  " << pad(c.spec_names.at(g), 14, false) << " min cos(hidden) " << fmt(s.layer_cos_min, 5) << "  "
                << (s.layer_gate_passed ? "pass" : "FAIL") << "\n";
        }
        out << "stack (" << rep.layers.size() << " layers, separate original and quantized streams):\n";
        for (std::size_t g = 0; g < G; ++g)
        {
            const auto& s = rep.stack[g];
            double agree = 1.0;
            for (const auto& lr : rep.layers) agree = std::min(agree, lr.by_spec[g].router_agreement);
            out << "  " << pad(c.spec_names.at(g), 14, false) << " final min cos " << fmt(s.final_cos_min, 4) << "  "
                << (s.stack_gate_passed ? "pass" : "FAIL") << "   amplification: (1+δ)^N "
                << fmt(s.predicted_amplification_from_cosine, 2)
                << ", predicted (Π(1+ε)−1)/ε " << fmt(s.predicted_amplification, 2) << ", measured " << fmt(s.measured_amplification, 2)
                << "; cos floor " << fmt(s.predicted_cosine_floor, 4) << "; router agreement min " << fmt(agree, 3) << "\n";
        }
        if (c.automatic)
        {
            out << "auto granularity (target" << (c.o.target_cos ? " cos >= " + fmt(*c.o.target_cos, 6) : "")
                << (c.o.target_sqnr_db ? " SQNR >= " + fmt(*c.o.target_sqnr_db, 1) + " dB" : "") << "), chosen per tensor:\n";
            for (const auto& ch : c.choices) out << "  " << ch.name << ": " << ch.reason << "\n";
        }
        for (const auto& s : rep.skipped) out << "skipped (kept unquantized, --skip-nonfinite): " << s << "\n";
    }

    // declared and documented in cli_internal.hpp
    int print_verdict(std::ostream& out, const conversion& c, const moe::validation_report& rep)
    {
        using detail::fmt;
        const auto& gs = rep.stack[c.vo.gated];
        const int code = rep.passed ? 0 : 2;
        if (!c.written_note.empty()) out << "out: " << c.written_note << "\n";
        if (c.acts == ct::activations::int8_per_token) out << "activations: int8 per token, dynamic symmetric (W8A8), simulated in the " << c.spec_names.at(c.vo.gated) << " forward pass\n";
        if (c.acts == ct::activations::nvfp4_per_group)
        {
            out << "activations: nvfp4 per group of 16 (W4A4), input_global_scale calibrated per layer on the " << c.vo.tokens
                << (c.synthetic || !c.file_tokens.empty() ? " sample tokens" : " SYNTHETIC sample tokens (not real text: check the run-time accuracy)") << ", simulated in the "
                << c.spec_names.at(c.vo.gated) << " forward pass\n";
        }
        const bool float_codes = is_float_scheme(c.vo.specs.at(c.vo.gated).scheme);
        out << "verdict: " << c.spec_names.at(c.vo.gated) << (c.automatic || float_codes ? std::string() : " int" + std::to_string(c.o.bits)) << " " << (rep.passed ? "PASSES" : "FAILS") << " (layer gate "
            << (gs.layer_gate_passed ? "pass" : "FAIL") << ", stack gate " << (gs.stack_gate_passed ? "pass" : "FAIL") << ")  [exit " << code << "]\n";
        const double gbps = rep.quantized_source_bytes / std::max(rep.quantize_seconds, 1e-9) / 1e9;
        out << "time " << fmt(rep.total_seconds, 1) << " s (quantize+measure " << fmt(rep.quantize_seconds, 1) << " s, "
            << fmt(gbps, 2) << " GB/s), peak RSS " << fmt(peak_rss_bytes() / 1048576.0, 0) << " MiB\n";
        return code;
    }

    // declared and documented in cli_internal.hpp
    nlohmann::json report_json(const conversion& c, const moe::validation_report& rep, const nlohmann::json& root_cause)
    {
        using detail::granularity_layer_json;
        using detail::stack_json;
        const std::size_t G = c.vo.specs.size();
        const auto& gs = rep.stack[c.vo.gated];
        const double gbps = rep.quantized_source_bytes / std::max(rep.quantize_seconds, 1e-9) / 1e9;
        nlohmann::json choices_json = nullptr;
        if (c.automatic)
        {
            choices_json = {{"target_cos", c.o.target_cos ? nlohmann::json(*c.o.target_cos) : nlohmann::json(nullptr)},
                            {"target_sqnr_db", c.o.target_sqnr_db ? nlohmann::json(*c.o.target_sqnr_db) : nlohmann::json(nullptr)},
                            {"tensors", nlohmann::json::array()}};
            for (const auto& ch : c.choices)
            {
                choices_json["tensors"].push_back({{"name", ch.name}, {"chosen", ch.spec}, {"bits_per_weight", ch.bits_per_weight}, {"reason", ch.reason}});
            }
        }
        nlohmann::json layers = nlohmann::json::array();
        for (const auto& lr : rep.layers)
        {
            nlohmann::json j = granularity_layer_json(lr.by_spec[c.vo.gated], c.vo.specs[c.vo.gated], c.spec_names.at(c.vo.gated));
            j["layer"] = lr.layer;
            nlohmann::json by = nlohmann::json::object();
            for (std::size_t g = 0; g < G; ++g) by[c.spec_names.at(g)] = granularity_layer_json(lr.by_spec[g], c.vo.specs[g], c.spec_names.at(g));
            j["by_granularity"] = by;
            layers.push_back(j);
        }
        nlohmann::json stack = stack_json(gs);
        nlohmann::json by = nlohmann::json::object();
        for (std::size_t g = 0; g < G; ++g) by[c.spec_names.at(g)] = stack_json(rep.stack[g]);
        stack["by_granularity"] = by;
        stack["notes"] = {{"predicted_amplification_seed", "(1 + (1 - min layer cos))^N, from the per-layer cosines alone"},
                          {"predicted_amplification", "(prod(1 + eps_i) - 1) / max eps_i, eps_i = per-layer relative error of the hidden state"},
                          {"measured_amplification", "final stack relative error / max eps_i"}};
        nlohmann::json gates_by = nlohmann::json::object();
        for (std::size_t g = 0; g < G; ++g)
        {
            gates_by[c.spec_names.at(g)] = {{"layer", {{"threshold", c.o.gate_layer_cos}, {"min", rep.stack[g].layer_cos_min}, {"passed", rep.stack[g].layer_gate_passed}}},
                                            {"stack", {{"threshold", c.o.gate_stack_cos}, {"min", rep.stack[g].final_cos_min}, {"passed", rep.stack[g].stack_gate_passed}}}};
        }
        nlohmann::json specs = nlohmann::json::array();
        for (const auto& s : c.spec_names) specs.push_back(s);
        return {
            {"config",
             {{"source", c.synthetic ? "synthetic" : c.o.checkpoint},
              {"synthetic", c.synthetic},
              {"layers", c.vo.layers},
              {"experts", c.cfg().experts},
              {"top_k", c.cfg().top_k},
              {"hidden", c.cfg().hidden},
              {"expert_intermediate", c.cfg().expert_intermediate},
              {"dense_intermediate", c.cfg().dense_intermediate},
              {"tokens", c.vo.tokens},
              {"tokens_file", c.o.tokens_file.empty() ? nlohmann::json(nullptr) : nlohmann::json(c.o.tokens_file)},
              {"bits", c.o.bits},
              {"granularity", c.spec_names.at(c.vo.gated)},
              {"compare", specs},
              {"scheme", c.o.scheme},
              {"scales", c.o.scales},
              {"importance", c.o.importance},
              {"range", c.o.range},
              {"scale_dtype", std::string(element_name(c.vo.specs[c.vo.gated].scale_type))},
              {"include_dense", c.o.include_dense},
              {"min_elements", c.o.min_elements},
              {"threads", c.threads},
              {"out", c.o.out},
              {"activations", c.o.activations},
              {"out_format", c.o.out.empty() ? nlohmann::json(nullptr) : nlohmann::json(ct::format_name(c.out_format))},
              {"out_note", c.written_note.empty() ? nlohmann::json(nullptr) : nlohmann::json(c.written_note)}}},
            {"layers", layers},
            {"stack", stack},
            {"gates",
             {{"layer", {{"threshold", c.o.gate_layer_cos}, {"min", gs.layer_cos_min}, {"passed", gs.layer_gate_passed}}},
              {"stack", {{"threshold", c.o.gate_stack_cos}, {"min", gs.final_cos_min}, {"passed", gs.stack_gate_passed}}},
              {"by_granularity", gates_by}}},
            {"passed", rep.passed},
            {"root_cause", root_cause},
            {"auto", choices_json},
            {"skipped_nonfinite", rep.skipped},
            {"throughput_gbps", gbps},
            {"total_seconds", rep.total_seconds},
            {"peak_rss_bytes", peak_rss_bytes()}};
    }
}
