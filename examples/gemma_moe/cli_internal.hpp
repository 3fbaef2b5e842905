/// @file cli_internal.hpp
/// @brief orbitq-gemma's parts, shared by its translation units: the options the command line
///        sets, the conversion as a pipeline (parse → open source → choose specs → validate →
///        table / report / plot), the report builders and the analyze subcommand.
#pragma once

#include "gemma4_synthetic.hpp"
#include "gemma_cli.hpp"

#include "orbitq/analyze.hpp"
#include "orbitq/io/compressed_tensors.hpp"
#include "orbitq/io/importance.hpp"
#include "orbitq/moe/source.hpp"
#include "orbitq/moe/validate_report.hpp"
#include "orbitq/quantize.hpp"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace orbitq::gemma_cli
{
    namespace g4 = ::gemma4;
    namespace moe = orbitq::moe;
    namespace ct = orbitq::io::compressed_tensors;

    /// @brief Limits of the numeric flags: beyond them a run cannot be meant (and would only
    ///        exhaust memory or threads), so the parser refuses them.
    inline constexpr std::size_t max_group_size = 65536;
    inline constexpr unsigned max_threads = 1024;
    inline constexpr std::size_t max_tokens = 4096;

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
        std::string scales = "amax";           ///< amax (the scheme's formula), mse (orbitq::scale_search::mse) or mse_signed (and quant_spec::signed_scales)
        std::string importance;                ///< an importance file (orbitq/io/importance.hpp) weighting the mse search
        std::string layers;
        unsigned threads = 0;
        std::size_t min_elements = 0;
        bool include_dense = false;
        std::size_t tokens = 8;
        bool tokens_given = false;             ///< --tokens was on the command line
        std::string tokens_file;               ///< safetensors file of the residual stream entering the first layer (hidden_states [T, H])
        std::string compare = "per_tensor,per_channel";
        double gate_layer_cos = 0.997;
        double gate_stack_cos = 0.97;
        std::string out;
        std::string activations = "none";      ///< none (weight-only), int8 (W8A8, dynamic per token) or nvfp4 (W4A4 with nvfp4 weights); the other float schemes imply theirs
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

    /// @brief Parses a granularity name: per_tensor, per_channel, per_group or per_group:N.
    /// @throws error (invalid_argument) on an unknown name or a bad group size.
    quant_spec parse_granularity(std::string s, const quant_spec& base, std::size_t default_group);

    /// @brief The granularity with its size: per_tensor, per_channel, per_group:32, per_block:128x128.
    std::string granularity_label(const quant_spec& q);

    /// @brief A short label: per_tensor, per_channel, per_group:32.
    std::string label(const quant_spec& q);

    /// @brief Parses --candidates: comma-separated NAME[:group][@bits][/asym|/sym]; empty: none given.
    std::vector<quant_spec> parse_candidates(const std::string& list, std::size_t group_size);

    /// @brief The threads a run uses: --threads, or every core.
    unsigned thread_count(const options& o);

    /// @brief The model the options name: --checkpoint, or the synthetic one.
    std::unique_ptr<moe::model_source> open_source(const options& o);

    /// @brief A layer's expert projections as the stacked tensors of the checkpoint.
    inline std::vector<const moe::any_view*> stacked_views(const moe::layer_weights& w)
    {
        std::vector<const moe::any_view*> out;
        for (const auto& t : w.experts) out.push_back(&t.stacked.value());
        return out;
    }

    /// @brief Peak resident set size of this process in bytes (VmHWM), 0 if unknown.
    std::size_t peak_rss_bytes();

    /// @brief One layer's automatic choice (--granularity auto), per tensor.
    struct choice
    {
        std::string name;
        std::string spec;
        double bits_per_weight;
        std::string reason;
    };

    /// @brief A conversion run: what the steps decide and the later steps read.
    struct conversion
    {
        explicit conversion(const options& opts)
            : o(opts)
        {
        }

        const options& o;
        unsigned threads = 1;
        std::unique_ptr<moe::model_source> src;
        bool synthetic = true;
        bool automatic = false;
        moe::validate_options vo;
        std::vector<std::string> spec_names;        ///< parallel to vo.specs ("auto" for the gated one when automatic)
        ct::activations acts = ct::activations::none;
        ct::format out_format = ct::format::pack_quantized;
        std::vector<std::size_t> input_widths;      ///< in_features of every projection written
        std::vector<std::size_t> output_widths;     ///< out_features of every projection written
        std::vector<choice> choices;                ///< --granularity auto's, in layer order
        std::vector<float> file_tokens;             ///< --tokens-file's tokens (vo.tokens x hidden), else empty
        std::string written_note;                   ///< how the output differs from the spec, if it does

        const moe::config& cfg() const { return src->cfg(); }
    };

    /// @brief Formatting and report builders.
    namespace detail
    {
        nlohmann::json num(double v);
        std::string fmt(double v, int prec);
        std::string pad(std::string s, std::size_t w, bool right = true);
        nlohmann::json tensor_json(const moe::tensor_report& t, const quant_spec& spec);
        nlohmann::json granularity_layer_json(const moe::granularity_layer& gl, const quant_spec& spec, const std::string& name);
        nlohmann::json stack_json(const moe::stack_report& s);
        /// The plot: per-layer min cos(hidden) against the layer gate beside the stack against
        /// the stack gate.
        std::string plot_svg(const moe::validation_report& rep, const std::vector<std::string>& specs, double gate_layer, double gate_stack,
                             const std::string& title);
    }

    /// @brief --granularity auto: sets c.vo.choose to pick, per layer, the cheapest candidate
    ///        meeting the target on every tensor (orbitq::analyze); records c.choices.
    void install_chooser(conversion& c, const quant_spec& base);

    /// @brief The root cause of a per-tensor failure of `layer`: analyze() of its stacked expert
    ///        tensors under the per-tensor candidate; prints a compact block, returns it as JSON.
    nlohmann::json root_cause(moe::model_source& src, std::size_t layer, const quant_spec& per_tensor, double layer_cos,
                              unsigned threads, std::ostream& out);

    /// @brief The human table, gates and stack lines of a finished conversion.
    void print_summary(std::ostream& out, const conversion& c, const moe::validation_report& rep);

    /// @brief The closing lines (output note, verdict, time) of a finished conversion.
    /// @return the exit status: 0 when the gated granularity passes both gates, else 2.
    int print_verdict(std::ostream& out, const conversion& c, const moe::validation_report& rep);

    /// @brief The JSON report (--report) of a finished conversion.
    nlohmann::json report_json(const conversion& c, const moe::validation_report& rep, const nlohmann::json& root_cause);

    /// @brief Runs the converter/validator with already-parsed options.
    /// @return 0 pass, 2 gate failed. @throws error on any error (run_gemma turns it into exit 1).
    int run_convert(const options& o, std::ostream& out, std::ostream& err);

    /// @brief `orbitq-gemma analyze [PATH]`.
    /// @return 0, or 2 when a target is given and some tensor has no candidate meeting it.
    int run_analyze(const options& o, std::ostream& out, std::ostream& err);
}
