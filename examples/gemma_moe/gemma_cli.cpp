/// @file gemma_cli.cpp
/// @brief orbitq-gemma's command line: the flags, their checks, and the dispatch to the
///        conversion (convert.cpp) or the analyze subcommand (analyze_command.cpp).
#include "gemma_cli.hpp"

#include "cli_internal.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace orbitq::gemma_cli
{
    namespace
    {
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
    }

    // declared and documented in cli_internal.hpp
    quant_spec parse_granularity(std::string s, const quant_spec& base, std::size_t default_group)
    {
        quant_spec q = base;
        q.block_rows = 0;
        const auto number = [&](const std::string& t, const std::string& what) {
            if (t.empty() || t.size() > 6 || t.find_first_not_of("0123456789") != std::string::npos || std::stoul(t) == 0
                || std::stoul(t) > max_group_size)
            {
                throw error(error_kind::invalid_argument, "granularity '" + s + "': " + what + " must be an integer in [1, "
                                                              + std::to_string(max_group_size) + "]");
            }
            return static_cast<std::size_t>(std::stoul(t));
        };
        const auto colon = s.find(':');
        const std::string name = s.substr(0, colon), arg = colon == std::string::npos ? std::string() : s.substr(colon + 1);
        if (name == "per_block" || name == "block")
        {
            // per_block[:RxC], 128x128 by default (the FP8 block format's)
            q.granularity = granularity_kind::per_block;
            q.block_rows = q.group_size = 128;
            if (colon != std::string::npos)
            {
                const auto x = arg.find('x');
                if (x == std::string::npos) number("", "the block after ':', ROWSxCOLS,");
                q.block_rows = number(arg.substr(0, x), "the block's rows");
                q.group_size = number(arg.substr(x + 1), "the block's columns");
            }
            return q;
        }
        const std::size_t group = colon == std::string::npos ? default_group : number(arg, "the group size after ':'");
        if (name == "per_tensor" || name == "tensor") q.granularity = granularity_kind::per_tensor;
        else if (name == "per_channel" || name == "channel") q.granularity = granularity_kind::per_channel;
        else if (name == "per_group" || name == "group")
        {
            q.granularity = granularity_kind::per_group;
            q.group_size = group;
        }
        else
        {
            throw error(error_kind::invalid_argument, "unknown granularity '" + s + "' (use per_tensor, per_channel, per_group, per_group:N or per_block:RxC)");
        }
        if (q.granularity != granularity_kind::per_group) q.group_size = 0;
        return q;
    }

    // declared and documented in cli_internal.hpp
    std::string granularity_label(const quant_spec& q)
    {
        std::string s = to_string(q.granularity);
        if (q.granularity == granularity_kind::per_group) s += ":" + std::to_string(q.group_size);
        if (q.granularity == granularity_kind::per_block) s += ":" + std::to_string(q.block_rows) + "x" + std::to_string(q.group_size);
        return s;
    }

    // declared and documented in cli_internal.hpp
    std::string label(const quant_spec& q)
    {
        if (q.scheme == scheme_kind::mxfp4 || q.scheme == scheme_kind::nvfp4) return to_string(q.scheme);
        return (q.scheme == scheme_kind::fp8_e4m3 ? "fp8 " : "") + granularity_label(q);
    }

    // declared and documented in cli_internal.hpp
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
                // name[:group][@bits][/asym|/sym][/mse|/mse_signed]
                quant_spec q = base;
                std::string name = item;
                if (const auto slash = name.find('/'); slash != std::string::npos)
                {
                    std::stringstream ss(name.substr(slash + 1));
                    std::string suffix;
                    while (std::getline(ss, suffix, '/'))
                    {
                        if (suffix == "asym" || suffix == "sym") q.scheme = suffix == "asym" ? scheme_kind::asymmetric : scheme_kind::symmetric;
                        else if (suffix == "mse" || suffix == "mse_signed")
                        {
                            q.scales = scale_search::mse;
                            q.signed_scales = suffix == "mse_signed";
                        }
                        else if (suffix == "fp8_e4m3" || suffix == "mxfp4" || suffix == "nvfp4")
                        {
                            q.scheme = suffix == "fp8_e4m3" ? scheme_kind::fp8_e4m3 : suffix == "mxfp4" ? scheme_kind::mxfp4 : scheme_kind::nvfp4;
                            q.bits = suffix == "fp8_e4m3" ? 8 : 4;
                        }
                        else throw error(error_kind::invalid_argument, "candidate '" + item + "': suffixes are /sym or /asym, then /mse or /mse_signed; or a float format /fp8_e4m3, /mxfp4, /nvfp4");
                    }
                    name = name.substr(0, slash);
                }
                if (q.signed_scales && q.scheme != scheme_kind::symmetric)
                {
                    throw error(error_kind::invalid_argument, "candidate '" + item + "': /mse_signed chooses the sign of symmetric scales");
                }
                if (const auto at = name.find('@'); at != std::string::npos)
                {
                    if (is_float_scheme(q.scheme)) throw error(error_kind::invalid_argument, "candidate '" + item + "': a float format fixes its bits; leave out @");
                    const std::string b = name.substr(at + 1);
                    if (b != "8" && b != "4") throw error(error_kind::invalid_argument, "candidate '" + item + "': bits must be @8 or @4");
                    q.bits = std::stoi(b);
                    name = name.substr(0, at);
                }
                given.push_back(parse_granularity(name, q, group_size));
            }
            return given;
        }

    // declared and documented in cli_internal.hpp
    unsigned thread_count(const options& o) { return o.threads ? o.threads : std::max(1u, std::thread::hardware_concurrency()); }

    // declared and documented in cli_internal.hpp
    std::unique_ptr<moe::model_source> open_source(const options& o)
    {
        if (!o.checkpoint.empty()) return std::make_unique<moe::checkpoint_source>(o.checkpoint, g4::default_config());
        g4::synthetic_options so;
        so.experts = o.experts;
        so.layers = o.synthetic_layers;
        so.seed = o.seed;
        return std::make_unique<g4::synthetic_source>(so);
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
        app.add_option("--granularity", o.granularity, "granularity converted and gated: per_tensor, per_channel, per_group[:N], per_block[:RxC] (fp8_e4m3), or auto (per layer, the fewest bits per weight "
                       "meeting --target-cos/--target-sqnr on every projection, chosen by orbitq::analyze)")->capture_default_str();
        app.add_option("--group-size", o.group_size, "group size of per_group")->capture_default_str()->check(integer_in(1, max_group_size));
        CLI::Option* scheme_opt = app.add_option("--scheme", o.scheme, "symmetric or asymmetric (with --granularity auto: only this scheme is considered); or a float format: "
                       "fp8_e4m3 (per_tensor, per_channel or per_block[:RxC]; FP8 activations), mxfp4 (groups of 32; MXFP4 activations), nvfp4 (groups of 16; weight-only, or W4A4 with --activations nvfp4)")->capture_default_str();
        app.add_option("--scales", o.scales, "amax (each orbit's range), mse (per orbit, the clipped and refit scale of least squared error; "
                       "never worse than amax, orbit by orbit) or mse_signed (symmetric: mse whose scales may be negative, so a positive extreme "
                       "takes the lowest code too; vLLM's Marlin misreads them with int8 activations)")->capture_default_str();
        app.add_option("--importance", o.importance, "with --scales mse: a safetensors file of column importance per weight (mean squared activation "
                       "per input column, [cols] or [experts, cols], named as the weight); the search minimizes the weighted squared error");
        app.add_option("--range", o.range, "symmetric range: restricted ([-127,127]) or full ([-128,127])")->capture_default_str();
        app.add_option("--layers", o.layers, "layers to process, e.g. 0-29 or 0,5,10-12 (default: all)");
        app.add_option("--threads", o.threads, "threads (0: all cores)")->capture_default_str()->check(integer_in(0, max_threads));
        app.add_option("--min-elements", o.min_elements, "quantize only tensors with more elements than this")
            ->capture_default_str()
            ->check(integer_in(0, std::numeric_limits<std::uint64_t>::max()));
        app.add_flag("--include-dense", o.include_dense, "also quantize the dense (shared) MLP");
        CLI::Option* tokens_opt =
            app.add_option("--tokens", o.tokens, "sample tokens for the forward tests (with --tokens-file: its first N)")->capture_default_str()->check(integer_in(1, max_tokens));
        app.add_option("--tokens-file", o.tokens_file, "a safetensors file whose tensor 'hidden_states' ([T, H] or [B, S, H]; F32, BF16 or F16) is the residual "
                       "stream entering the first converted layer, e.g. dumped from the model on real text: the sample tokens of the forward "
                       "tests (and of NVFP4 activation calibration) in place of synthetic ones");
        app.add_option("--compare", o.compare, "granularities reported side by side, e.g. per_tensor,per_channel,per_group:32")->capture_default_str();
        const CLI::Validator cosine = finite_in(-1.0, 1.0, "a cosine in [-1, 1]");
        const CLI::Validator decibels = finite_in(-1000.0, 1000.0, "an SQNR in [-1000, 1000] dB");
        app.add_option("--gate-layer-cos", o.gate_layer_cos, "layer gate on min cos(hidden)")->capture_default_str()->check(cosine);
        app.add_option("--gate-stack-cos", o.gate_stack_cos, "stack gate on the final min cos")->capture_default_str()->check(cosine);
        app.add_option("--out", o.out, "write the converted checkpoint to DIR (must not exist, not inside the input)");
        app.add_option("--activations", o.activations,
                       "none (weight-only, pack-quantized), int8 (W8A8: int8 per_channel symmetric weights, dynamic per-token int8 "
                       "activations, int-quantized) or nvfp4 (W4A4 with --scheme nvfp4: NVFP4 activations per group of 16 under a static "
                       "input_global_scale calibrated per layer on the sample tokens); the validation quantizes activations the same way")
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
                                "comma-separated candidates NAME[:group][@bits][/asym][/mse|/mse_signed], e.g. per_channel@8,per_group:32@4/asym/mse, or float formats "
                                "per_channel/fp8_e4m3, per_block:128x128/fp8_e4m3, per_group:32/mxfp4, per_group:16/nvfp4 "
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
        o.tokens_given = tokens_opt->count() > 0;
        try
        {
            // A full disk or a file size limit must be an error (EFBIG), not a kill by SIGXFSZ.
            std::signal(SIGXFSZ, SIG_IGN);
            if (analyze_cmd->parsed())
            {
                if (!o.importance.empty()) throw error(error_kind::invalid_argument, "--importance weights a conversion's mse search; analyze does not take it");
                if (!o.tokens_file.empty()) throw error(error_kind::invalid_argument, "--tokens-file feeds a conversion's forward tests; analyze does not take it");
                if (a_cos) o.target_cos = a_cos;
                if (a_sqnr) o.target_sqnr_db = a_sqnr;
                return run_analyze(o, out, err);
            }
            return run_convert(o, out, err);
        }
        catch (const std::exception& e)
        {
            err << "orbitq-gemma: error: " << e.what() << "\n";
            return 1;
        }
    }
}
