/// @file convert.cpp
/// @brief orbitq-gemma's conversion as a pipeline: open the source → plan the granularities →
///        choose specs (automatic: per layer) and refuse what the engines cannot load → validate
///        (writing the converted checkpoint as it goes) → table, root cause, report, plot.
#include "cli_internal.hpp"

#include "orbitq/io/atomic_file.hpp"
#include "orbitq/io/safetensors_file.hpp"
#include "orbitq/moe/converted_writer.hpp"
#include "orbitq/moe/validate.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

namespace orbitq::gemma_cli
{
    namespace
    {
            /// The options' common spec: bits, scheme, range; codes from the stored (rounded) scale,
        /// the one inference uses.
        quant_spec base_spec(const options& o)
        {
            if (o.bits != 8 && o.bits != 4) throw error(error_kind::invalid_argument, "--bits must be 8 or 4");
            quant_spec base;
            base.bits = o.bits;
            if (o.scheme == "symmetric") base.scheme = scheme_kind::symmetric;
            else if (o.scheme == "asymmetric") base.scheme = scheme_kind::asymmetric;
            else if (o.scheme == "fp8_e4m3") base.scheme = scheme_kind::fp8_e4m3;
            else if (o.scheme == "mxfp4") base.scheme = scheme_kind::mxfp4;
            else if (o.scheme == "nvfp4") base.scheme = scheme_kind::nvfp4;
            else throw error(error_kind::invalid_argument, "--scheme must be symmetric, asymmetric, fp8_e4m3, mxfp4 or nvfp4");
            if (o.range == "restricted") base.range = symmetric_range::restricted;
            else if (o.range == "full") base.range = symmetric_range::full;
            else throw error(error_kind::invalid_argument, "--range must be restricted or full");
            if (o.scales == "amax") base.scales = scale_search::amax;
            else if (o.scales == "mse" || o.scales == "mse_signed") base.scales = scale_search::mse;
            else throw error(error_kind::invalid_argument, "--scales must be amax, mse or mse_signed");
            base.signed_scales = o.scales == "mse_signed";
            if (base.signed_scales && base.scheme != scheme_kind::symmetric)
            {
                throw error(error_kind::invalid_argument, "--scales mse_signed chooses the sign of symmetric scales; --scheme " + o.scheme + " does not take it");
            }
            base.codes_from_stored_scale = true;
            if (is_float_scheme(base.scheme))
            {
                // the format fixes the code width (and, for the fp4 formats, the group)
                const int bits = base.scheme == scheme_kind::fp8_e4m3 ? 8 : 4;
                if (o.bits_given && o.bits != bits)
                {
                    throw error(error_kind::invalid_argument, "--scheme " + o.scheme + " has " + std::to_string(bits) + "-bit codes; leave out --bits");
                }
                if (base.scales != scale_search::amax)
                {
                    throw error(error_kind::invalid_argument, "--scales mse searches integer scales; --scheme " + o.scheme + " takes amax scales");
                }
                base.bits = bits;
            }
            return base;
        }

        /// The gated spec: --granularity on the base spec; the fp4 formats' own groups.
        quant_spec gated_spec(const conversion& c, const quant_spec& base)
        {
            const options& o = c.o;
            if (base.scheme == scheme_kind::mxfp4 || base.scheme == scheme_kind::nvfp4)
            {
                const std::size_t g = base.scheme == scheme_kind::mxfp4 ? 32 : 16;
                const std::string own = "per_group:" + std::to_string(g);
                if (o.granularity != "per_channel" && o.granularity != own)
                {
                    throw error(error_kind::invalid_argument, "--scheme " + o.scheme + " is defined on groups of " + std::to_string(g) + "; leave out --granularity");
                }
                return parse_granularity(own, base, g);
            }
            const quant_spec q = parse_granularity(c.automatic ? "per_channel" : o.granularity, base, o.group_size);
            if (q.granularity == granularity_kind::per_block && !is_float_scheme(q.scheme))
            {
                throw error(error_kind::invalid_argument, "--granularity per_block takes --scheme fp8_e4m3");
            }
            return q;
        }

        /// The spec a --compare column is measured with: the base's, or, where the base's float
        /// format does not define that granularity (fp4 formats: their group only), int8 symmetric.
        quant_spec comparable(const quant_spec& base, const std::string& column)
        {
            if (base.scheme != scheme_kind::mxfp4 && base.scheme != scheme_kind::nvfp4) return base;
            if (column == (base.scheme == scheme_kind::mxfp4 ? "per_group:32" : "per_group:16")) return base;
            quant_spec q = base;
            q.scheme = scheme_kind::symmetric;
            q.bits = 8;
            return q;
        }

        /// The activations the engine quantizes in front of the gated spec's products: the float
        /// formats' vLLM methods (FP8 dynamic per token, per tensor or per group of 128; MXFP4 per
        /// group of 32; NVFP4 those of --activations: none or nvfp4), else those of --activations.
        moe::activation_quantization engine_activations(const quant_spec& gated, moe::activation_quantization given)
        {
            using moe::activation_quantization;
            switch (gated.scheme)
            {
                case scheme_kind::fp8_e4m3:
                    return gated.granularity == granularity_kind::per_tensor  ? activation_quantization::fp8_per_tensor
                         : gated.granularity == granularity_kind::per_block ? activation_quantization::fp8_per_group128
                                                                             : activation_quantization::fp8_per_token;
                case scheme_kind::mxfp4: return activation_quantization::mxfp4_per_group32;
                default: return given;  // NVFP4 as the integer schemes: --activations decides
            }
        }

        /// The granularities compared (--compare) and the gated one (--granularity), the
        /// activations, the layers and the validation options.
        void plan(conversion& c, const quant_spec& base)
        {
            const options& o = c.o;
            moe::validate_options& vo = c.vo;
            vo.specs.clear();
            c.automatic = o.granularity == "auto";
            const bool float_codes = is_float_scheme(base.scheme);
            if (float_codes && c.automatic)
            {
                throw error(error_kind::invalid_argument, "--granularity auto has the float formats among its candidates; leave out --scheme " + o.scheme);
            }
            if (float_codes && o.activations != "none" && !(base.scheme == scheme_kind::nvfp4 && o.activations == "nvfp4"))
            {
                throw error(error_kind::invalid_argument, "--scheme " + o.scheme + " declares the activations its vLLM method quantizes; leave out --activations"
                                                              + (base.scheme == scheme_kind::nvfp4 ? " or give nvfp4 (W4A4)" : ""));
            }
            if (o.activations == "nvfp4")
            {
                if (base.scheme != scheme_kind::nvfp4)
                {
                    throw error(error_kind::invalid_argument, "--activations nvfp4 takes --scheme nvfp4 weights (vLLM's W4A4 NVFP4 MoE method)");
                }
                c.acts = ct::activations::nvfp4_per_group;
                vo.activations = moe::activation_quantization::nvfp4_per_group16;
            }
            else if (o.activations == "int8")
            {
                c.acts = ct::activations::int8_per_token;
                vo.activations = moe::activation_quantization::int8_per_token;
                if (c.automatic || o.bits != 8 || base.scheme != scheme_kind::symmetric
                    || parse_granularity(o.granularity, base, o.group_size).granularity != granularity_kind::per_channel)
                {
                    throw error(error_kind::invalid_argument, "--activations int8 takes int8 symmetric per_channel weights (the engines' W8A8 MoE kernels); "
                                                              "leave out --bits, --scheme and --granularity, or set them to 8, symmetric, per_channel");
                }
            }
            else if (o.activations != "none") throw error(error_kind::invalid_argument, "--activations must be none, int8 or nvfp4");
            c.out_format = ct::format_for(base, c.acts);
            c.input_widths = {c.cfg().hidden, c.cfg().expert_intermediate};
            c.output_widths = {c.cfg().expert_intermediate, c.cfg().hidden};
            if (o.include_dense)
            {
                c.input_widths.push_back(c.cfg().dense_intermediate);
                c.output_widths.push_back(c.cfg().dense_intermediate);
            }
            if (c.automatic && !o.target_cos && !o.target_sqnr_db)
            {
                throw error(error_kind::invalid_argument, "--granularity auto needs --target-cos and/or --target-sqnr");
            }
            if (!c.automatic && (o.target_cos || o.target_sqnr_db))
            {
                throw error(error_kind::invalid_argument, "--target-cos/--target-sqnr apply to --granularity auto (or to the analyze subcommand)");
            }
            // auto: the gated entry is its own column (specs chosen per layer during the run); its
            // quant_spec is a placeholder never used for an expert or dense tensor.
            const quant_spec gated = gated_spec(c, base);
            vo.activations = engine_activations(gated, vo.activations);
            // auto: each layer's activations are those of the spec chosen for it
            if (c.automatic) vo.activations_for = [given = vo.activations](const quant_spec& s) { return engine_activations(s, given); };
            if (gated.granularity == granularity_kind::per_tensor && base.scales == scale_search::mse)
            {
                throw error(error_kind::invalid_argument, "--scales mse with --granularity per_tensor: a per-tensor orbit spans every expert of the "
                                                          "stacked tensor, which the search does not hold at once; use per_channel or per_group");
            }
            std::stringstream cs(o.compare);
            std::string item;
            while (std::getline(cs, item, ','))
            {
                if (item.empty()) continue;
                quant_spec q = parse_granularity(item, comparable(base, item), o.group_size);
                // a per-tensor orbit spans every expert of a stacked tensor: compared with amax scales
                if (q.granularity == granularity_kind::per_tensor)
                {
                    q.scales = scale_search::amax;
                    q.signed_scales = false;
                }
                if (std::find(vo.specs.begin(), vo.specs.end(), q) == vo.specs.end()) vo.specs.push_back(q);
            }
            auto it = c.automatic ? vo.specs.end() : std::find(vo.specs.begin(), vo.specs.end(), gated);
            if (it == vo.specs.end())
            {
                vo.specs.push_back(gated);
                it = vo.specs.end() - 1;
            }
            vo.gated = static_cast<std::size_t>(it - vo.specs.begin());
            vo.layers = o.layers.empty() ? std::vector<std::size_t>{} : parse_layers(o.layers, c.cfg().layers);
            if (vo.layers.empty())
            {
                for (std::size_t l = 0; l < c.cfg().layers; ++l) vo.layers.push_back(l);
            }
            vo.tokens = o.tokens;
            vo.include_dense = o.include_dense;
            vo.min_elements = o.min_elements;
            vo.gate_layer_cos = o.gate_layer_cos;
            vo.gate_stack_cos = o.gate_stack_cos;
            vo.threads = c.threads;
            vo.skip_nonfinite = o.skip_nonfinite;
            for (std::size_t g = 0; g < vo.specs.size(); ++g) c.spec_names.push_back(c.automatic && g == vo.gated ? std::string("auto") : label(vo.specs[g]));
        }

        /// Scales in the checkpoint's float dtype (compressed-tensors convention); what the
        /// engines cannot load is refused before anything is written (analysis and validation
        /// without --out stay open to every spec); group sizes must divide the rows.
        void check_specs(conversion& c)
        {
            const moe::config& cfg = c.cfg();
            // The first selected layer's first expert tensor, by its declaration: no layer is
            // loaded (or generated) for it.
            const std::string expert = moe::layer_tensor_shapes(cfg, c.vo.layers.front()).front().first;
            const auto decls = c.src->tensors();
            const auto it = std::find_if(decls.begin(), decls.end(), [&](const io::tensor_decl& d) { return d.name == expert; });
            const std::optional<element_type> st = it == decls.end() ? std::nullopt : io::as_element_type(it->type);
            if (!st) throw error(error_kind::format, "the model has no floating-point tensor '" + expert + "'");
            // integer scales in the checkpoint's float dtype; FP8 scales stay float32 (vLLM's own)
            for (auto& s : c.vo.specs)
            {
                if (!is_float_scheme(s.scheme)) s.scale_type = *st;
            }
            if (!c.o.out.empty() && !c.automatic)
            {
                const quant_spec& g = c.vo.specs[c.vo.gated];
                std::optional<std::string> why = ct::moe_refusal(g, c.out_format, c.input_widths, c.output_widths);
                if (!why && g.scheme == scheme_kind::nvfp4 && (cfg.arch.storage != moe::expert_storage::stacked_gate_up || c.o.include_dense))
                {
                    why = "vLLM takes one NVFP4 global scale for a gate and up pair, which are quantized apart here (separate expert or dense tensors)";
                }
                if (why)
                {
                    const std::string what = is_float_scheme(g.scheme) ? label(g) : label(g) + " int" + std::to_string(g.bits);
                    throw error(error_kind::invalid_argument, "--out: vLLM's MoE kernels cannot load " + what + " (" + *why + "); nothing was written. "
                                                                  + ct::moe_loadable_summary(c.input_widths));
                }
            }
            for (const auto& s : c.vo.specs)
            {
                if (s.granularity == granularity_kind::per_group && (cfg.expert_intermediate % s.group_size || cfg.hidden % s.group_size))
                {
                    throw error(error_kind::invalid_argument, "group size " + std::to_string(s.group_size) + " does not divide the expert row lengths "
                                                                  + std::to_string(cfg.hidden) + " and " + std::to_string(cfg.expert_intermediate)
                                                                  + " (704 divides by 32 and 64, not by 128)");
                }
            }
        }

        /// --tokens-file's tensor `hidden_states`, [T, H] or [B, S, H] (tokens in row-major order),
        /// F32, BF16 or F16, every value finite: its first --tokens tokens when --tokens is
        /// given, else all of them (at most max_tokens).
        /// @throws error (format, invalid_argument) naming the file and what is wrong.
        std::vector<float> read_tokens_file(const options& o, std::size_t hidden)
        {
            const io::safetensors_file f = io::safetensors_file::open(o.tokens_file);
            const std::string where = "--tokens-file '" + o.tokens_file + "'";
            const auto tensors = f.tensors();
            const auto it = std::find_if(tensors.begin(), tensors.end(), [](const io::tensor_info& t) { return t.name == "hidden_states"; });
            if (it == tensors.end()) throw error(error_kind::format, where + " has no tensor 'hidden_states' (the residual stream entering the first converted layer, [tokens, hidden])");
            const io::tensor_info& info = *it;
            const auto type = io::as_element_type(info.type);
            if (!type) throw error(error_kind::format, where + ": hidden_states is " + std::string(io::dtype_name(info.type)) + "; it must be F32, BF16 or F16");
            if ((info.shape.size() != 2 && info.shape.size() != 3) || info.shape.back() != hidden || info.elements() == 0)
            {
                throw error(error_kind::format, where + ": hidden_states is " + orbitq::detail::shape_string(info.shape) + "; the model needs [tokens, " + std::to_string(hidden)
                                                    + "] or [batch, sequence, " + std::to_string(hidden) + "]");
            }
            const std::size_t available = info.elements() / hidden;
            std::size_t T = available;
            if (o.tokens_given)
            {
                if (o.tokens > available) throw error(error_kind::invalid_argument, where + " holds " + std::to_string(available) + " tokens; --tokens asks for " + std::to_string(o.tokens));
                T = o.tokens;
            }
            else if (T > max_tokens)
            {
                throw error(error_kind::invalid_argument, where + " holds " + std::to_string(available) + " tokens, over " + std::to_string(max_tokens) + "; pass --tokens N to use the first N");
            }
            std::vector<float> x(T * hidden);
            const std::span<const std::byte> b = f.bytes(info);
            for (std::size_t i = 0; i < x.size(); ++i)
            {
                x[i] = io::element_value(*type, b.data(), i);
                if (!std::isfinite(x[i]))
                {
                    throw error(error_kind::format, where + ": hidden_states token " + std::to_string(i / hidden) + ", element " + std::to_string(i % hidden) + " is not finite");
                }
            }
            return x;
        }

        /// The residual-stream tokens entering the first layer: --tokens-file's, the synthetic
        /// model's, or, for a real checkpoint, synthetic tokens of the same law (RMS near 1).
        std::vector<float> input_tokens(const conversion& c)
        {
            const options& o = c.o;
            if (!c.file_tokens.empty()) return c.file_tokens;
            if (c.synthetic) return static_cast<const g4::synthetic_source&>(*c.src).model().tokens(o.tokens);
            g4::synthetic_options to;
            to.seed = o.seed;
            to.layers = 1;
            to.experts = std::max<std::size_t>(c.cfg().top_k, 1);
            const g4::synthetic_model tm(to);
            const auto t = tm.tokens(o.tokens);
            if (c.cfg().hidden == tm.cfg().hidden) return t;
            std::vector<float> x0(o.tokens * c.cfg().hidden);
            for (std::size_t i = 0; i < x0.size(); ++i) x0[i] = t[i % t.size()];
            return x0;
        }

        /// Validates every granularity, writing the gated one's checkpoint with --out.
        moe::validation_report validate_and_write(conversion& c, std::ostream& err)
        {
            namespace fs = std::filesystem;
            const options& o = c.o;
            std::vector<float> x0 = input_tokens(c);
            std::unique_ptr<moe::converted_writer> writer;
            if (!o.out.empty())
            {
                writer = std::make_unique<moe::converted_writer>(o.out, *c.src, c.synthetic ? fs::path{} : fs::path(o.checkpoint),
                                                                 c.vo.specs[c.vo.gated], c.vo.layers.size(), c.threads, o.force, c.acts);
                writer->set_automatic(c.automatic);
            }
            if (!o.quiet)
            {
                err << "orbitq-gemma: " << (c.synthetic ? "synthetic Gemma-4-shaped weights" : o.checkpoint) << ", " << c.vo.layers.size() << " of "
                    << c.cfg().layers << " layers, " << c.cfg().experts << " experts (top-" << c.cfg().top_k << "), " << c.vo.tokens << " tokens, "
                    << c.threads << " threads\n";
            }
            if (c.acts == ct::activations::nvfp4_per_group && !c.synthetic && c.file_tokens.empty())
            {
                err << "orbitq-gemma: warning: the NVFP4 activations' input_global_scale is calibrated on " << c.vo.tokens
                    << " synthetic sample tokens, not on real text; real activations beyond their range are clipped at run time "
                       "(--tokens-file gives real ones)\n";
            }
            auto progress = [&](const moe::progress_info& p) {
                if (o.quiet) return;
                const double eta = p.done ? p.elapsed_s / p.done * (p.total - p.done) : 0.0;
                err << "  layer " << p.layer << " (" << p.done << " of " << p.total << ")  " << detail::fmt(p.elapsed_s, 1) << " s  "
                    << detail::fmt(p.bytes / p.elapsed_s / 1e9, 2) << " GB/s quantized  ETA " << detail::fmt(eta, 0) << " s\n";
            };
            moe::validation_report rep = moe::validate(
                c.cfg(), [&](std::size_t l) -> const moe::layer_weights& { return c.src->load_layer(l, c.threads); }, std::move(x0), c.vo,
                writer.get(), progress);
            if (writer)
            {
                writer->finish();
                if (!o.quiet) err << "wrote the converted checkpoint to " << o.out << "\n";
                if (!c.automatic && c.vo.specs[c.vo.gated].granularity == granularity_kind::per_tensor && !is_float_scheme(c.vo.specs[c.vo.gated].scheme))
                {
                    c.written_note = "per_tensor written with strategy 'channel' (its one scale repeated on every row; the numbers are unchanged): "
                                     "vLLM's MoE kernels take channel scales, not tensor ones";
                }
            }
            return rep;
        }

        /// The root cause of the first per-tensor layer failure (a second look at that one layer), or null.
        nlohmann::json explain_failure(const conversion& c, const moe::validation_report& rep, std::ostream& out)
        {
            for (std::size_t g = 0; g < c.vo.specs.size(); ++g)
            {
                if (c.vo.specs[g].granularity != granularity_kind::per_tensor || is_float_scheme(c.vo.specs[g].scheme)) continue;
                for (const auto& lr : rep.layers)
                {
                    if (lr.by_spec[g].hidden_cos_min >= c.o.gate_layer_cos) continue;
                    return root_cause(*c.src, lr.layer, c.vo.specs[g], lr.by_spec[g].hidden_cos_min, c.threads, out);
                }
                break;
            }
            return nullptr;
        }
    }

    // declared and documented in cli_internal.hpp
    int run_convert(const options& o, std::ostream& out, std::ostream& err)
    {
        conversion c(o);
        c.threads = thread_count(o);
        if (o.tokens == 0) throw error(error_kind::invalid_argument, "--tokens must be at least 1");
        const quant_spec base = base_spec(o);
        if (!o.write_synthetic.empty())
        {
            if (!o.checkpoint.empty()) throw error(error_kind::invalid_argument, "--write-synthetic and --checkpoint exclude each other");
            const auto src = open_source(o);
            g4::write_synthetic_checkpoint(o.write_synthetic, static_cast<const g4::synthetic_source&>(*src), c.threads);
            if (!o.quiet) err << "wrote the synthetic checkpoint (" << o.synthetic_layers << " layers, " << o.experts << " experts) to " << o.write_synthetic << "\n";
            return 0;
        }
        c.src = open_source(o);
        c.synthetic = o.checkpoint.empty();
        plan(c, base);
        if (!o.tokens_file.empty())
        {
            c.file_tokens = read_tokens_file(o, c.cfg().hidden);
            c.vo.tokens = c.file_tokens.size() / c.cfg().hidden;
        }
        if (!o.importance.empty())
        {
            if (base.scales != scale_search::mse) throw error(error_kind::invalid_argument, "--importance weights the mse scale search; add --scales mse");
            const auto table = std::make_shared<const io::importance_table>(io::importance_table::read(o.importance));
            c.vo.importance = [table](const std::string& tensor, std::size_t e, std::size_t experts, std::size_t cols) {
                return table->columns(tensor, e, experts, cols);
            };
        }
        if (c.automatic) install_chooser(c, base);
        check_specs(c);
        const moe::validation_report rep = validate_and_write(c, err);
        print_summary(out, c, rep);
        const nlohmann::json cause = explain_failure(c, rep, out);
        const int code = print_verdict(out, c, rep);
        if (!o.report.empty()) io::write_file_atomic(o.report, report_json(c, rep, cause).dump(2) + "\n", true);
        if (!o.plot.empty())
        {
            const quant_spec& g = c.vo.specs[c.vo.gated];
            const std::string codes = is_float_scheme(g.scheme) ? std::string(to_string(g.scheme)) : "int" + std::to_string(g.bits);
            const std::string title = std::string(c.synthetic ? "synthetic Gemma 4" : "Gemma 4") + " MoE FFN, " + codes + ": each layer alone, and the stack";
            io::write_file_atomic(o.plot, detail::plot_svg(rep, c.spec_names, o.gate_layer_cos, o.gate_stack_cos, title), true);
        }
        return code;
    }
}
