/// @file converted_writer.hpp
/// @brief Writes a converted MoE checkpoint in the compressed-tensors per-expert layout vLLM
///        loads, as the validation produces the quantized tensors.
///
/// Layout (one shard per converted layer, plus one for every other tensor; see
/// io/compressed_tensors.hpp for the tensors of one Linear):
/// - every tensor that is not quantized is copied byte for byte (name, dtype, shape unchanged);
/// - the experts of a quantized layer become, for each expert e, the Linears
///   `<experts>.<e>.{gate,up,down}_proj` (a stacked gate_up [E, 2I, H] splits into gate_proj,
///   rows 0..I-1, and up_proj, rows I..2I-1), `pack-quantized` (or `int-quantized` for W8A8;
///   the float schemes in their own formats), integer schemes' scales in the checkpoint's float dtype; a layer's gate, up and down always share one spec
///   (the engines load a MoE layer only then);
/// - with the dense MLP included, `<dense>.{gate,up,down}_proj` likewise;
/// - model.safetensors.index.json is written after every shard, config.json (the input's, plus
///   `quantization_config`) last.
/// Every file is written atomically, into a staging directory published at the end
/// (io/staged_directory.hpp).
#pragma once

#include "orbitq/io/compressed_tensors.hpp"
#include "orbitq/io/safetensors.hpp"
#include "orbitq/io/staged_directory.hpp"
#include "orbitq/moe/source.hpp"
#include "orbitq/moe/validate_report.hpp"
#include "orbitq/quantize.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace orbitq::moe
{
    namespace detail
    {
        /// `(a|b|c)` of the layer numbers, or `\d+` when they are every layer of the model.
        inline std::string layer_alternation(const std::vector<std::size_t>& layers, std::size_t model_layers)
        {
            if (layers.size() == model_layers) return "\\d+";
            std::string s = "(";
            for (std::size_t i = 0; i < layers.size(); ++i) s.append(i ? "|" : "").append(std::to_string(layers[i]));
            return s.append(")");
        }

        /// A module path as a regex matching it literally (dots escaped).
        inline std::string literal_pattern(const std::string& path)
        {
            std::string s;
            for (char ch : path)
            {
                if (ch == '.') s += '\\';
                s += ch;
            }
            return s;
        }

        /// The regex entry for the expert Linears of `layers`: `<experts_pattern>.<e>.<stem>`, so
        /// that it matches the checkpoint's names and the engines' module names alike.
        inline std::string experts_entry(const config& c, const std::vector<std::size_t>& layers)
        {
            return "re:.*\\.layers\\." + layer_alternation(layers, c.layers) + "\\." + c.arch.experts_pattern
                   + "\\.\\d+\\.(gate|up|down)_proj$";
        }

        /// The regex entry for dense-MLP Linear `stem` (gate_proj, up_proj, down_proj) of `layers`.
        inline std::string dense_entry(const config& c, const std::vector<std::size_t>& layers, const std::string& stem)
        {
            return "re:.*\\.layers\\." + layer_alternation(layers, c.layers) + "\\." + literal_pattern(c.arch.dense) + "\\." + stem + "$";
        }
    }

    /// @brief Writes a converted checkpoint as the validator produces the quantized tensors: one
    ///        shard per converted layer (its experts written one by one as they are quantized),
    ///        then the remaining tensors, the index and config.json (see the file brief).
    ///
    /// `quantization_config` has one config group per spec, each with its `format` and targets
    /// that name the converted layers only (the checkpoint's and the engines' module names
    /// alike), and an `ignore` list with every Linear left in source precision, so that no engine
    /// looks for quantized tensors where there are none.
    class converted_writer : public conversion_sink
    {
    public:
        /// @param act int8_per_token writes the W8A8 form (int-quantized), else pack-quantized;
        ///        nvfp4_per_group with NVFP4 weights writes W4A4, each Linear with the
        ///        input_global_scale of its layer (activation_scales, before begin_layer);
        ///        the float schemes are written in their own formats (io/compressed_tensors.hpp).
        /// @throws error (invalid_argument) when dir exists (unless overwrite; and even then when
        ///         it is not a directory), or is inside or equal to the input directory; error (io)
        ///         when the staging directory cannot be created.
        converted_writer(std::filesystem::path dir, model_source& src, const std::filesystem::path& input_dir, quant_spec spec,
                         std::size_t converted_layers, unsigned threads, bool overwrite = false,
                         io::compressed_tensors::activations act = io::compressed_tensors::activations::none)
            : m_stage((check_target(dir, input_dir, overwrite), dir), overwrite)
            , m_src(src)
            , m_spec(spec)
            , m_act(act)
            , m_threads(threads)
        {
            for (const auto& d : src.tensors()) m_pending[d.name] = d;
            m_shards = converted_layers + 1;
        }

        /// @brief The staging directory (exists until finish() publishes it).
        const std::filesystem::path& staging_directory() const noexcept { return m_stage.path(); }

        /// @brief The scale dtype of the output: the source dtype of the expert tensors.
        static io::dtype scale_dtype(const any_view& v)
        {
            return io::to_dtype(element_of(v));
        }

        void begin_layer(const layer_weights& w, bool experts, bool dense, const quant_spec& spec) override
        {
            const config& c = m_src.cfg();
            m_scale_type = scale_dtype(w.experts.at(0).blocks.at(0));
            std::vector<io::tensor_decl> decls;
            std::set<std::string> replaced;
            auto add = [&](std::vector<io::tensor_decl>&& d) { decls.insert(decls.end(), d.begin(), d.end()); };
            if (experts)
            {
                for (std::size_t e = 0; e < c.experts; ++e)
                {
                    for (const expert_tensor& t : w.experts)
                    {
                        for (const linear_part& p : t.linears)
                        {
                            add(io::compressed_tensors::linear_decls(spec, format_of(spec), p.rows, t.cols, names::expert_linear(c, w.layer, e, p.stem),
                                                                     m_scale_type, m_act));
                        }
                        replaced.insert(name_of(t.blocks.at(e)));
                    }
                }
                m_converted[w.layer].experts = spec;
            }
            if (dense)
            {
                for (std::size_t k = 0; k < w.dense.size(); ++k)
                {
                    replaced.insert(name_of(w.dense[k]));
                    add(io::compressed_tensors::linear_decls(spec, format_of(spec), rows_of(w.dense[k]), cols_of(w.dense[k]),
                                                             names::dense_linear(c, w.layer, k), m_scale_type, m_act));
                    m_converted[w.layer].dense[k] = spec;
                }
            }
            // The layer's other tensors go into its shard as they are.
            const std::string prefix = names::layer_prefix(c, w.layer);
            m_copies.clear();
            for (auto it = m_pending.lower_bound(prefix); it != m_pending.end() && it->first.rfind(prefix, 0) == 0;)
            {
                if (!replaced.count(it->first))
                {
                    decls.push_back(it->second);
                    m_copies.push_back(it->second);
                }
                it = m_pending.erase(it);
            }
            m_layer.emplace(m_stage.path() / shard_name(), decls, std::map<std::string, std::string>{{"format", "pt"}}, true);
        }

        void expert(const layer_weights& w, std::size_t e, const expert_slices& s) override
        {
            for (std::size_t k = 0; k < s.q.size() && k < w.experts.size(); ++k)
            {
                if (!s.q[k]) continue;
                for (const linear_part& p : w.experts[k].linears)
                {
                    write_linear(*s.q[k], p.row0, p.rows, names::expert_linear(m_src.cfg(), w.layer, e, p.stem), input_global(w, k, false));
                }
            }
        }

        void end_layer(const layer_weights& w, const std::vector<const quantized_tensor*>& dense) override
        {
            for (std::size_t k = 0; k < dense.size(); ++k)
            {
                if (dense[k]) write_linear(*dense[k], 0, dense[k]->rows, names::dense_linear(m_src.cfg(), w.layer, k), input_global(w, k, true));
            }
            m_globals.reset();
            for (const auto& d : m_copies) write_copy(*m_layer, d);
            m_layer->commit();
            m_layer.reset();
        }

        void activation_scales(const layer_weights& w, const input_global_scales& g) override
        {
            (void)w;
            m_globals = g;
        }

        /// @brief The `quantization_config` of what has been written so far (see the class brief).
        nlohmann::json quantization_config() const
        {
            namespace ct = io::compressed_tensors;
            const std::size_t L = m_src.cfg().layers;
            // Converted (layer, module) per spec, and the modules left in source precision.
            std::map<std::string, std::pair<quant_spec, std::array<std::vector<std::size_t>, 4>>> by_spec;  // experts, dense k
            std::array<std::vector<std::size_t>, 4> kept;
            for (std::size_t l = 0; l < L; ++l)
            {
                const auto it = m_converted.find(l);
                for (std::size_t m = 0; m < (m_src.cfg().has_dense() ? 4u : 1u); ++m)
                {
                    const std::optional<quant_spec> s = it == m_converted.end() ? std::nullopt : m == 0 ? it->second.experts : it->second.dense[m - 1];
                    if (!s)
                    {
                        kept[m].push_back(l);
                        continue;
                    }
                    auto& entry = by_spec[s->describe()];
                    entry.first = *s;
                    entry.second[m].push_back(l);
                }
            }
            auto entries = [&](const std::array<std::vector<std::size_t>, 4>& layers) {
                std::vector<std::string> out;
                if (!layers[0].empty()) out.push_back(detail::experts_entry(m_src.cfg(), layers[0]));
                for (std::size_t k = 0; k < 3; ++k)
                {
                    if (!layers[k + 1].empty()) out.push_back(detail::dense_entry(m_src.cfg(), layers[k + 1], names::mlp_stems[k]));
                }
                return out;
            };
            nlohmann::json groups = nlohmann::json::object();
            nlohmann::json specs = nlohmann::json::object();
            std::size_t n = 0;
            // the groups' one format, or compressed-tensors' "mixed-precision" when they differ
            // (each group names its own)
            std::set<std::string> formats;
            for (const auto& [key, entry] : by_spec) formats.insert(std::string(ct::format_name(format_of(entry.first))));
            if (formats.empty()) formats.insert(std::string(ct::format_name(format_of(m_spec))));
            for (const auto& [key, entry] : by_spec)
            {
                const auto targets = entries(entry.second);
                groups["group_" + std::to_string(n++)] = ct::config_group_json(entry.first, m_act, targets);
                specs[key] = targets;
            }
            std::vector<std::string> ignore = m_src.cfg().arch.never_converted;
            for (auto& e : entries(kept)) ignore.push_back(std::move(e));
            // Any other Linear weight of the source left as it was, by its exact module name (a
            // source module appears once, so only the entries above need matching).
            std::vector<ct::entry_matcher> covering;
            for (const auto& i : ignore) covering.emplace_back(i);
            for (const auto& [key, targets] : specs.items())
            {
                for (const auto& t : targets) covering.emplace_back(t.get<std::string>());
            }
            for (const auto& d : m_src.tensors())
            {
                if (d.shape.size() != 2 || d.name.size() < 7 || d.name.compare(d.name.size() - 7, 7, ".weight") != 0) continue;
                const std::string module = d.name.substr(0, d.name.size() - 7);
                if (std::none_of(covering.begin(), covering.end(), [&](const ct::entry_matcher& m) { return m.matches(module); }))
                {
                    ignore.push_back(module);
                }
            }
            nlohmann::json qc = {{"quant_method", "compressed-tensors"},
                                 {"format", formats.size() == 1 ? *formats.begin() : std::string("mixed-precision")},
                                 {"quantization_status", "compressed"},
                                 {"config_groups", groups},
                                 {"ignore", ignore},
                                 {"kv_cache_scheme", nullptr},
                                 {"global_compression_ratio", nullptr},
                                 {"orbitq",
                                  {{"spec", m_auto ? std::string("auto") : m_spec.describe()},
                                   {"range", to_string(m_spec.range)},
                                   {"rounding", to_string(m_spec.rounding)},
                                   {"scales", m_spec.scales_name()},
                                   {"scale_dtype", std::string(io::dtype_name(m_scale_type))},
                                   {"activations", activations_note()}}}};
            if (m_spec.granularity == granularity_kind::per_tensor && !m_auto)
            {
                qc["orbitq"]["note"] = "per_tensor scales written with strategy 'channel': the one scale (and zero point) repeated on every row";
            }
            if (m_auto) qc["orbitq"]["specs"] = specs;
            return qc;
        }

        /// @brief Marks the conversion as automatic (one chosen spec per layer) in the config.
        void set_automatic(bool a) noexcept { m_auto = a; }

        /// @brief Writes the remaining tensors, the index and config.json, then publishes the
        ///        directory.
        /// @throws error (io) when `dir` appeared meanwhile (without overwrite) or cannot be
        ///         replaced; the staging directory is then removed and `dir` left as it is.
        void finish()
        {
            std::vector<io::tensor_decl> rest;
            for (auto& [name, d] : m_pending) rest.push_back(d);
            m_pending.clear();
            if (rest.empty()) drop_last_shard();
            else
            {
                io::safetensors_writer w(m_stage.path() / shard_name(), rest, {{"format", "pt"}}, true);
                for (const auto& d : rest) write_copy(w, d);
                w.commit();
            }
            const nlohmann::json index = {{"metadata", {{"total_size", m_total}}}, {"weight_map", m_weight_map}};
            io::write_file_atomic(m_stage.path() / std::string(io::checkpoint::index_name), index.dump(2) + "\n", true);
            nlohmann::json cfg = m_src.config_json();
            cfg["quantization_config"] = quantization_config();
            io::write_file_atomic(m_stage.path() / "config.json", cfg.dump(2) + "\n", true);
            m_stage.publish();
        }

    private:
        /// For people: the activations the engine quantizes at run time.
        std::string activations_note() const
        {
            if (m_auto) return "each config group's input_activations (the float formats' own)";
            const nlohmann::json a = io::compressed_tensors::activation_args_json(m_spec, m_act);
            if (a.is_null()) return "none";
            if (a["strategy"] == "tensor_group") return "nvfp4 per group of 16, dynamic group scales under input_global_scale (calibrated per layer)";
            const std::string type = a["type"] == "float" ? (a["num_bits"] == 8 ? "fp8" : "mxfp4") : "int8";
            return type + " dynamic per " + a["strategy"].get<std::string>()
                   + (a["group_size"].is_null() ? std::string() : " of " + std::to_string(a["group_size"].get<std::size_t>()));
        }

        /// What a layer's conversion wrote: the experts' spec, each dense matrix's.
        struct converted_layer
        {
            std::optional<quant_spec> experts;
            std::array<std::optional<quant_spec>, 3> dense;
        };

        /// Refuses an output directory that exists (unless overwrite, and then only a directory)
        /// or lies inside the input.
        static void check_target(const std::filesystem::path& dir, const std::filesystem::path& input_dir, bool overwrite)
        {
            namespace fs = std::filesystem;
            std::error_code ec;
            if (!input_dir.empty())
            {
                // A single-file checkpoint: its directory is the input.
                const fs::path in_dir = fs::is_directory(input_dir, ec)  ? input_dir
                                       : input_dir.has_parent_path() ? input_dir.parent_path()
                                                                     : fs::path(".");
                if (io::path_is_within(dir, in_dir))
                {
                    throw error(error_kind::invalid_argument, "--out '" + dir.string() + "' is inside or equal to the input checkpoint '"
                                                                  + input_dir.string() + "'; choose a directory outside it");
                }
            }
            if (fs::exists(fs::symlink_status(dir, ec)))
            {
                if (!overwrite)
                {
                    throw error(error_kind::invalid_argument,
                                "--out '" + dir.string() + "' already exists; remove it, choose another directory, or pass --force to replace it");
                }
                if (!fs::is_directory(fs::symlink_status(dir, ec)))
                {
                    throw error(error_kind::invalid_argument, "--out '" + dir.string() + "' exists and is not a directory; --force replaces only directories");
                }
            }
        }

        std::string shard_name()
        {
            if (m_written >= m_shards) throw error(error_kind::invalid_argument, "converted_writer: more layers than announced");
            m_current_shard = io::shard_file_name(++m_written, m_shards);
            return m_current_shard;
        }

        /// Nothing is left for the last shard (a source of expert layers only, all converted):
        /// the shards written are renamed "of" their real count instead of an empty file.
        void drop_last_shard()
        {
            const std::size_t count = m_written;
            std::map<std::string, std::string> renamed;
            for (std::size_t k = 1; k <= count; ++k)
            {
                const std::string from = io::shard_file_name(k, m_shards), to = io::shard_file_name(k, count);
                std::filesystem::rename(m_stage.path() / from, m_stage.path() / to);
                renamed[from] = to;
            }
            for (auto& entry : m_weight_map) entry = renamed.at(entry.get<std::string>());
            m_shards = count;
        }

        void record(const std::string& name, std::size_t bytes)
        {
            m_weight_map[name] = m_current_shard;
            m_total += bytes;
        }

        /// The format that stores `spec` under the writer's activations.
        io::compressed_tensors::format format_of(const quant_spec& spec) const noexcept { return io::compressed_tensors::format_for(spec, m_act); }

        /// The activation global scale of expert projection (or dense matrix) k under NVFP4
        /// activations, else none. @throws error when the layer's calibration did not come.
        std::optional<float> input_global(const layer_weights& w, std::size_t k, bool dense) const
        {
            if (m_act != io::compressed_tensors::activations::nvfp4_per_group) return std::nullopt;
            const std::vector<float>* g = m_globals ? (dense ? &m_globals->dense : &m_globals->experts) : nullptr;
            if (!g || k >= g->size())
            {
                throw error(error_kind::invalid_argument, "layer " + std::to_string(w.layer) + ": NVFP4 activations without calibrated input global scales");
            }
            return (*g)[k];
        }

        void write_linear(const quantized_tensor& q, std::size_t row0, std::size_t rows, const std::string& base, std::optional<float> input_global)
        {
            const auto decls = io::compressed_tensors::linear_decls(q.spec, format_of(q.spec), rows, q.cols, base, m_scale_type, m_act);
            const auto data = io::compressed_tensors::encode_linear(q, format_of(q.spec), row0, rows, m_scale_type, input_global);
            if (decls.size() != data.size()) throw error(error_kind::invalid_argument, base + ": the tensors written differ from those declared");
            for (std::size_t i = 0; i < decls.size(); ++i)
            {
                m_layer->write(decls[i].name, std::span<const std::byte>(data[i]));
                record(decls[i].name, data[i].size());
            }
        }

        void write_copy(io::safetensors_writer& w, const io::tensor_decl& d)
        {
            std::vector<std::byte> b(d.bytes());
            m_src.read(d.name, b, m_threads);
            w.write(d.name, std::span<const std::byte>(b));
            record(d.name, b.size());
        }

        io::staged_directory m_stage;
        model_source& m_src;
        quant_spec m_spec;
        io::compressed_tensors::activations m_act;
        std::optional<input_global_scales> m_globals;  ///< the current layer's (NVFP4 activations)
        bool m_auto = false;
        unsigned m_threads;
        io::dtype m_scale_type = io::dtype::bf16;
        std::map<std::string, io::tensor_decl> m_pending;
        std::vector<io::tensor_decl> m_copies;
        std::map<std::size_t, converted_layer> m_converted;
        std::optional<io::safetensors_writer> m_layer;
        std::string m_current_shard;
        nlohmann::json m_weight_map = nlohmann::json::object();
        std::size_t m_total = 0;
        std::size_t m_written = 0;
        std::size_t m_shards = 0;
    };
}
