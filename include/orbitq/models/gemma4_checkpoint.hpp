/// @file gemma4_checkpoint.hpp
/// @brief Gemma 4 checkpoints on disk: reading a Hugging Face checkpoint layer by layer
///        (memory-mapped, zero-copy), writing the synthetic model as a sharded checkpoint, and
///        writing a converted checkpoint in the compressed-tensors per-expert layout vLLM loads.
///
/// Converted layout (one shard per selected layer, plus one for every other tensor), in the
/// compressed-tensors form vLLM's Gemma 4 loader maps onto its fused MoE (see
/// io/compressed_tensors.hpp for the tensors of one Linear):
/// - every tensor that is not quantized is copied byte for byte (name, dtype, shape unchanged);
/// - the stacked `experts.gate_up_proj` [E, 2I, H] and `experts.down_proj` [E, H, I] of a
///   quantized layer are replaced, for each expert e, by the Linears `experts.{e}.gate_proj`
///   (rows 0..I-1 of gate_up[e]), `experts.{e}.up_proj` (rows I..2I-1) and
///   `experts.{e}.down_proj`, `pack-quantized` (or `int-quantized` for W8A8), scales in the
///   checkpoint's float dtype; a layer's gate, up and down always share one spec (the engines
///   load a MoE layer only then);
/// - with include_dense, `mlp.{gate,up,down}_proj` likewise;
/// - model.safetensors.index.json is written after every shard, config.json (the input's, plus
///   `quantization_config`) last.
/// Every file is written atomically (temporary file, then rename).
#pragma once

#include "orbitq/io/compressed_tensors.hpp"
#include "orbitq/io/safetensors.hpp"
#include "orbitq/models/gemma4.hpp"
#include "orbitq/models/gemma4_synthetic.hpp"
#include "orbitq/models/gemma4_validate.hpp"
#include "orbitq/quantize.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <cerrno>
#include <cstdio>
#include <csignal>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <unistd.h>

namespace orbitq::models::gemma4
{
    /// @brief Reads the FFN shape from a Hugging Face config.json (the text model's fields may sit
    ///        under "text_config"). Missing fields keep the 26B-A4B defaults.
    /// @throws error (format) when a present field has the wrong JSON type.
    inline config config_from_json(const nlohmann::json& j)
    {
        config c;
        const nlohmann::json& t = j.contains("text_config") && j["text_config"].is_object() ? j["text_config"] : j;
        auto get = [&](const char* key, std::size_t& dst) {
            if (!t.contains(key)) return;
            if (!t[key].is_number_unsigned()) throw error(error_kind::format, std::string("config.json: '") + key + "' must be a non-negative integer");
            dst = t[key].get<std::size_t>();
        };
        get("hidden_size", c.hidden);
        get("num_hidden_layers", c.layers);
        get("num_experts", c.experts);
        get("top_k_experts", c.top_k);
        get("moe_intermediate_size", c.expert_intermediate);
        get("intermediate_size", c.dense_intermediate);
        if (t.contains("rms_norm_eps"))
        {
            if (!t["rms_norm_eps"].is_number()) throw error(error_kind::format, "config.json: 'rms_norm_eps' must be a number");
            c.rms_eps = t["rms_norm_eps"].get<double>();
        }
        return c;
    }

    /// @brief The config.json of a synthetic model (Gemma 4 field names under "text_config").
    inline nlohmann::json config_to_json(const config& c)
    {
        return {{"architectures", {"Gemma4ForConditionalGeneration"}},
                {"model_type", "gemma4"},
                {"torch_dtype", "bfloat16"},
                {"orbitq_synthetic", true},
                {"text_config",
                 {{"hidden_size", c.hidden},
                  {"num_hidden_layers", c.layers},
                  {"num_experts", c.experts},
                  {"top_k_experts", c.top_k},
                  {"moe_intermediate_size", c.expert_intermediate},
                  {"intermediate_size", c.dense_intermediate},
                  {"rms_norm_eps", c.rms_eps},
                  {"hidden_activation", "gelu_pytorch_tanh"}}}};
    }

    /// @brief Where the weights come from: a checkpoint on disk or the synthetic generator.
    class model_source
    {
    public:
        virtual ~model_source() = default;
        /// @brief The FFN shape.
        virtual const config& cfg() const = 0;
        /// @brief The weights of one layer; valid until the next call.
        virtual const layer_weights& load_layer(std::size_t layer, unsigned threads) = 0;
        /// @brief Every tensor of the model (name, dtype, shape), sorted by name.
        virtual std::vector<io::tensor_decl> tensors() const = 0;
        /// @brief Copies the bytes of tensor `name` into `out` (out.size() == its byte size).
        virtual void read(const std::string& name, std::span<std::byte> out, unsigned threads) const = 0;
        /// @brief The config.json to carry over into a converted checkpoint.
        virtual nlohmann::json config_json() const = 0;
    };

    /// @brief The synthetic model as a model_source.
    class synthetic_source : public model_source
    {
    public:
        explicit synthetic_source(synthetic_options o)
            : m_model(o)
        {
        }
        const synthetic_model& model() const noexcept { return m_model; }
        const config& cfg() const override { return m_model.cfg(); }
        const layer_weights& load_layer(std::size_t layer, unsigned threads) override { return m_layer.generate(m_model, layer, threads); }
        std::vector<io::tensor_decl> tensors() const override
        {
            std::vector<io::tensor_decl> out;
            for (std::size_t l = 0; l < cfg().layers; ++l)
            {
                for (auto& [name, shape] : ffn_tensor_shapes(cfg(), l)) out.push_back({name, io::dtype::bf16, shape});
            }
            std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
            return out;
        }
        void read(const std::string& name, std::span<std::byte> out, unsigned threads) const override
        {
            const std::size_t layer = layer_of(name);
            m_model.fill(name, layer, reinterpret_cast<bfloat16_t*>(out.data()), out.size() / 2, threads);
        }
        nlohmann::json config_json() const override { return config_to_json(cfg()); }

    private:
        std::size_t layer_of(const std::string& name) const
        {
            const std::string p = cfg().prefix + "layers.";
            if (name.rfind(p, 0) != 0) throw error(error_kind::invalid_argument, "the synthetic model has no tensor '" + name + "'");
            return std::stoul(name.substr(p.size()));
        }
        synthetic_model m_model;
        synthetic_layer m_layer;
    };

    /// @brief A Hugging Face checkpoint directory as a model_source: memory-mapped, zero-copy
    ///        views of the big matrices; pages of the previous layer are released after use.
    class checkpoint_source : public model_source
    {
    public:
        /// @throws error (io/format) when the checkpoint or its config.json cannot be read, or a
        ///         Gemma 4 FFN tensor is missing or has the wrong shape or an unsupported dtype.
        explicit checkpoint_source(const std::filesystem::path& dir)
            : m_ckpt(io::checkpoint::open(dir))
        {
            const auto cfg_path = m_ckpt.directory() / "config.json";
            if (std::filesystem::exists(cfg_path))
            {
                std::ifstream in(cfg_path);
                try
                {
                    m_config_json = nlohmann::json::parse(in);
                }
                catch (const nlohmann::json::exception& e)
                {
                    throw error(error_kind::format, "'" + cfg_path.string() + "' is not valid JSON: " + e.what());
                }
                m_cfg = config_from_json(m_config_json);
            }
            else
            {
                m_config_json = nlohmann::json::object();
                // Infer the expert count and layers from the tensors.
                std::size_t layers = 0;
                while (m_ckpt.contains(names::expert(m_cfg, layers, expert_matrix::gate_up))) ++layers;
                if (layers == 0)
                {
                    throw error(error_kind::format, "checkpoint '" + dir.string() + "' has no config.json and no tensor '"
                                                        + names::expert(m_cfg, 0, expert_matrix::gate_up) + "'");
                }
                m_cfg.layers = layers;
                m_cfg.experts = m_ckpt.info(names::expert(m_cfg, 0, expert_matrix::gate_up)).shape.at(0);
                m_cfg.top_k = std::min<std::size_t>(8, m_cfg.experts);
            }
            m_cfg.check();
            for (std::size_t l = 0; l < m_cfg.layers; ++l)
            {
                for (auto& [name, shape] : ffn_tensor_shapes(m_cfg, l))
                {
                    if (!m_ckpt.contains(name))
                    {
                        throw error(error_kind::format, "checkpoint '" + dir.string() + "' lacks tensor '" + name
                                                            + "' (is it a Gemma 4 MoE checkpoint?)");
                    }
                    const auto& info = m_ckpt.info(name);
                    if (info.shape != shape)
                    {
                        throw error(error_kind::format, "checkpoint '" + dir.string() + "': tensor '" + name + "' has shape "
                                                            + orbitq::detail::shape_string(info.shape) + ", expected "
                                                            + orbitq::detail::shape_string(shape));
                    }
                    if (!io::as_element_type(info.type))
                    {
                        throw error(error_kind::format, "checkpoint '" + dir.string() + "': tensor '" + name + "' has dtype "
                                                            + std::string(io::dtype_name(info.type)) + "; expected BF16, F16 or F32");
                    }
                }
            }
        }

        const io::checkpoint& files() const noexcept { return m_ckpt; }
        const config& cfg() const override { return m_cfg; }

        const layer_weights& load_layer(std::size_t layer, unsigned) override
        {
            release_current();
            m_w = layer_weights{};
            m_w.layer = layer;
            m_w.gate_up = view(names::expert(m_cfg, layer, expert_matrix::gate_up));
            m_w.down = view(names::expert(m_cfg, layer, expert_matrix::down));
            m_w.dense_gate = view(names::dense(m_cfg, layer, dense_matrix::gate));
            m_w.dense_up = view(names::dense(m_cfg, layer, dense_matrix::up));
            m_w.dense_down = view(names::dense(m_cfg, layer, dense_matrix::down));
            m_w.router_proj = view(names::router_proj(m_cfg, layer));
            m_w.router_scale = to_floats(view(names::router_scale(m_cfg, layer)));
            m_w.per_expert_scale = to_floats(view(names::per_expert_scale(m_cfg, layer)));
            for (std::size_t n = 0; n < norm_count; ++n) m_w.norms[n] = to_floats(view(names::norm(m_cfg, layer, static_cast<norm_id>(n))));
            m_w.layer_scalar = to_floats(view(names::layer_scalar(m_cfg, layer)))[0];
            m_w.release_expert = [this](std::size_t e) {
                drop(m_w.gate_up, e * 2 * m_cfg.expert_intermediate, 2 * m_cfg.expert_intermediate);
                drop(m_w.down, e * m_cfg.hidden, m_cfg.hidden);
            };
            m_current = layer;
            return m_w;
        }

        std::vector<io::tensor_decl> tensors() const override
        {
            std::vector<io::tensor_decl> out;
            for (const auto& n : m_ckpt.names())
            {
                const auto& i = m_ckpt.info(n);
                out.push_back({n, i.type, i.shape});
            }
            return out;
        }
        void read(const std::string& name, std::span<std::byte> out, unsigned) const override
        {
            const auto b = m_ckpt.bytes(name);
            if (b.size() != out.size()) throw error(error_kind::invalid_argument, "read of '" + name + "': wrong buffer size");
            std::memcpy(out.data(), b.data(), b.size());
            m_ckpt.release(name);
        }
        nlohmann::json config_json() const override { return m_config_json; }

    private:
        any_view view(const std::string& name) const
        {
            switch (*io::as_element_type(m_ckpt.info(name).type))
            {
                case element_type::f32: return m_ckpt.view<float>(name);
                case element_type::bf16: return m_ckpt.view<bfloat16_t>(name);
                case element_type::f16: return m_ckpt.view<float16_t>(name);
            }
            throw error(error_kind::format, "unsupported dtype of '" + name + "'");
        }
        /// Drops the mapped pages wholly inside rows [first, first + rows) of a view (the file
        /// is mapped read-only and private, so they are simply re-read on the next access).
        static void drop(const any_view& v, std::size_t first, std::size_t rows)
        {
            std::visit(
                [&](const auto& m) {
                    const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
                    const auto begin = reinterpret_cast<std::uintptr_t>(m.row(first));
                    const auto end = begin + rows * m.stride * sizeof(typename std::decay_t<decltype(m)>::value_type);
                    const std::uintptr_t b = (begin + page - 1) / page * page, e = end / page * page;
                    if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
                },
                v);
        }

        void release_current()
        {
            if (m_current == static_cast<std::size_t>(-1)) return;
            for (auto& [name, shape] : ffn_tensor_shapes(m_cfg, m_current)) m_ckpt.release(name);
        }

        io::checkpoint m_ckpt;
        config m_cfg;
        nlohmann::json m_config_json;
        layer_weights m_w;
        std::size_t m_current = static_cast<std::size_t>(-1);
    };

    /// @brief Writes the synthetic model as a sharded Hugging Face checkpoint plus config.json.
    /// @param max_shard_bytes shard size limit (default 2 GiB).
    inline void write_synthetic_checkpoint(const std::filesystem::path& dir, const synthetic_source& src, unsigned threads,
                                           std::size_t max_shard_bytes = std::size_t(2) << 30, bool overwrite = false)
    {
        io::write_checkpoint(
            dir, src.tensors(), [&](const io::tensor_decl& d, std::span<std::byte> out) { src.read(d.name, out, threads); },
            max_shard_bytes, {{"format", "pt"}}, overwrite);
        io::write_file_atomic(dir / "config.json", src.config_json().dump(2) + "\n", true);
    }

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

        /// The regex entry for the expert Linears of `layers`: matches the checkpoint's names
        /// (`model.language_model.layers.N.experts.E.gate_proj`) and vLLM's module names after
        /// its Gemma 4 weight mapping (`language_model.model.layers.N.moe.experts.0.gate_proj`).
        inline std::string experts_entry(const std::vector<std::size_t>& layers, std::size_t model_layers)
        {
            return "re:.*\\.layers\\." + layer_alternation(layers, model_layers) + "\\.(moe\\.)?experts\\.\\d+\\.(gate|up|down)_proj$";
        }

        /// The regex entry for dense-MLP Linear `stem` (gate_proj, up_proj, down_proj) of `layers`.
        inline std::string dense_entry(const std::vector<std::size_t>& layers, std::size_t model_layers, const std::string& stem)
        {
            return "re:.*\\.layers\\." + layer_alternation(layers, model_layers) + "\\.mlp\\." + stem + "$";
        }

        /// Modules of a Gemma 4 checkpoint that the converter never quantizes (attention,
        /// router, towers and their embedders, per-layer-input projections, lm_head), as regex
        /// entries: vLLM rewrites exact names with its checkpoint-to-module name mapper but
        /// leaves `re:` entries as they are, so these match both naming schemes.
        inline std::vector<std::string> never_converted_entries()
        {
            return {"lm_head",
                    "re:.*lm_head$",
                    "re:.*\\.router\\.proj$",
                    "re:.*self_attn\\.(q|k|v|o)_proj$",
                    "re:.*vision_tower\\..*",
                    "re:.*audio_tower\\..*",
                    "re:.*embed_vision\\..*",
                    "re:.*embed_audio\\..*",
                    "re:.*per_layer_(input_gate|projection|model_projection)$"};
        }

        static constexpr std::array<const char*, 3> dense_stems = {"gate_proj", "up_proj", "down_proj"};
    }

    /// @brief Writes a converted checkpoint as the validator produces the quantized tensors: one
    ///        shard per converted layer (its experts written one by one as they are quantized),
    ///        then the remaining tensors, the index and config.json (see the file brief).
    ///
    /// `quantization_config` has one config group per spec, each with its `format` and targets
    /// that name the converted layers only (the checkpoint's and vLLM's module names alike), and
    /// an `ignore` list with every Linear left in source precision, so that no engine looks for
    /// quantized tensors where there are none.
    ///
    /// Output goes to a staging directory of this writer's own next to `dir`
    /// (`.NAME.partial.PID.N`, created exclusively) that finish() renames onto `dir` only if
    /// nothing holds that name then, so `dir` appears complete or not at all, and two writers of
    /// the same `dir` never mix their files: the second to finish fails. An unfinished writer
    /// removes its staging directory; one left by a killed process (its PID gone) is removed by
    /// the next writer for the same `dir`. With `overwrite`, an existing `dir` is swapped with
    /// the staging directory in one atomic step (renameat2 RENAME_EXCHANGE) and the old
    /// contents, now under the staging name, are then removed: no stale shard survives.
    class converted_writer : public conversion_sink
    {
    public:
        /// @param act int8_per_token writes the W8A8 form (int-quantized), else pack-quantized.
        /// @throws error (invalid_argument) when dir exists (unless overwrite; and even then when
        ///         it is not a directory), or is inside or equal to the input directory; error (io)
        ///         when the staging directory cannot be created.
        converted_writer(std::filesystem::path dir, model_source& src, const std::filesystem::path& input_dir, quant_spec spec,
                         std::size_t converted_layers, unsigned threads, bool overwrite = false,
                         io::compressed_tensors::activations act = io::compressed_tensors::activations::none)
            : m_dir(std::move(dir))
            , m_src(src)
            , m_spec(spec)
            , m_act(act)
            , m_format(act == io::compressed_tensors::activations::none ? io::compressed_tensors::format::pack_quantized
                                                                         : io::compressed_tensors::format::int_quantized)
            , m_threads(threads)
            , m_overwrite(overwrite)
        {
            namespace fs = std::filesystem;
            std::error_code ec;
            if (!input_dir.empty())
            {
                // A single-file checkpoint: its directory is the input.
                const fs::path in_dir = fs::is_directory(input_dir, ec)  ? input_dir
                                       : input_dir.has_parent_path() ? input_dir.parent_path()
                                                                     : fs::path(".");
                if (io::path_is_within(m_dir, in_dir))
                {
                    throw error(error_kind::invalid_argument, "--out '" + m_dir.string() + "' is inside or equal to the input checkpoint '"
                                                                  + input_dir.string() + "'; choose a directory outside it");
                }
            }
            if (fs::exists(fs::symlink_status(m_dir, ec)))
            {
                if (!overwrite)
                {
                    throw error(error_kind::invalid_argument,
                                "--out '" + m_dir.string() + "' already exists; remove it, choose another directory, or pass --force to replace it");
                }
                if (!fs::is_directory(fs::symlink_status(m_dir, ec)))
                {
                    throw error(error_kind::invalid_argument, "--out '" + m_dir.string() + "' exists and is not a directory; --force replaces only directories");
                }
            }
            m_stage = make_stage();
            for (const auto& d : src.tensors()) m_pending[d.name] = d;
            m_shards = converted_layers + 1;
        }

        converted_writer(const converted_writer&) = delete;
        converted_writer& operator=(const converted_writer&) = delete;
        ~converted_writer() override
        {
            m_layer.reset();
            if (!m_finished)
            {
                std::error_code ec;
                std::filesystem::remove_all(m_stage, ec);
            }
        }

        /// @brief The staging directory (exists until finish() publishes it).
        const std::filesystem::path& staging_directory() const noexcept { return m_stage; }

        /// @brief The scale dtype of the output: the source dtype of the expert tensors.
        static io::dtype scale_dtype(const any_view& v)
        {
            return std::visit([](const auto& m) { return io::to_dtype(element_type_of<typename std::decay_t<decltype(m)>::value_type>()); }, v);
        }

        void begin_layer(const layer_weights& w, std::array<bool, 2> experts, std::array<bool, 3> dense,
                         const std::array<quant_spec, 5>& specs) override
        {
            const config& c = m_src.cfg();
            if (experts[0] != experts[1] || specs[0] != specs[1])
            {
                throw error(error_kind::invalid_argument, "converted_writer: layer " + std::to_string(w.layer)
                                                              + ": the engines load a MoE layer only when gate, up and down share one spec");
            }
            const std::string prefix = names::layer_prefix(c, w.layer);
            const std::size_t I = c.expert_intermediate, H = c.hidden;
            m_scale_type = scale_dtype(w.gate_up);
            std::vector<io::tensor_decl> decls;
            std::set<std::string> replaced;
            auto add = [&](std::vector<io::tensor_decl>&& d) { decls.insert(decls.end(), d.begin(), d.end()); };
            if (experts[0])
            {
                for (std::size_t e = 0; e < c.experts; ++e)
                {
                    const std::string b = prefix + "experts." + std::to_string(e) + ".";
                    add(io::compressed_tensors::linear_decls(specs[0], m_format, I, H, b + "gate_proj", m_scale_type));
                    add(io::compressed_tensors::linear_decls(specs[0], m_format, I, H, b + "up_proj", m_scale_type));
                    add(io::compressed_tensors::linear_decls(specs[1], m_format, H, I, b + "down_proj", m_scale_type));
                }
                replaced.insert(names::expert(c, w.layer, expert_matrix::gate_up));
                replaced.insert(names::expert(c, w.layer, expert_matrix::down));
                m_converted[w.layer].experts = specs[0];
            }
            const std::size_t D = c.dense_intermediate;
            const std::array<std::pair<std::size_t, std::size_t>, 3> dshape = {{{D, H}, {D, H}, {H, D}}};
            for (std::size_t k = 0; k < 3; ++k)
            {
                if (!dense[k]) continue;
                replaced.insert(names::dense(c, w.layer, static_cast<dense_matrix>(k)));
                add(io::compressed_tensors::linear_decls(specs[2 + k], m_format, dshape[k].first, dshape[k].second,
                                                         prefix + "mlp." + detail::dense_stems[k], m_scale_type));
                m_converted[w.layer].dense[k] = specs[2 + k];
            }
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
            m_prefix = prefix;
            m_layer.emplace(m_stage / shard_name(), decls, std::map<std::string, std::string>{{"format", "pt"}}, true);
        }

        void expert(const layer_weights&, std::size_t e, const expert_slices& s) override
        {
            const config& c = m_src.cfg();
            const std::size_t I = c.expert_intermediate, H = c.hidden;
            const std::string b = m_prefix + "experts." + std::to_string(e) + ".";
            if (s.q[0])
            {
                write_linear(*s.q[0], 0, I, b + "gate_proj");
                write_linear(*s.q[0], I, I, b + "up_proj");
            }
            if (s.q[1]) write_linear(*s.q[1], 0, H, b + "down_proj");
        }

        void end_layer(const layer_weights&, std::array<const quantized_tensor*, 3> dense) override
        {
            for (std::size_t k = 0; k < 3; ++k)
            {
                if (dense[k]) write_linear(*dense[k], 0, dense[k]->rows, m_prefix + "mlp." + detail::dense_stems[k]);
            }
            for (const auto& d : m_copies) write_copy(*m_layer, d);
            m_layer->commit();
            m_layer.reset();
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
                for (std::size_t m = 0; m < 4; ++m)
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
                if (!layers[0].empty()) out.push_back(detail::experts_entry(layers[0], L));
                for (std::size_t k = 0; k < 3; ++k)
                {
                    if (!layers[k + 1].empty()) out.push_back(detail::dense_entry(layers[k + 1], L, detail::dense_stems[k]));
                }
                return out;
            };
            nlohmann::json groups = nlohmann::json::object();
            nlohmann::json specs = nlohmann::json::object();
            std::size_t n = 0;
            for (const auto& [key, entry] : by_spec)
            {
                const auto targets = entries(entry.second);
                groups["group_" + std::to_string(n++)] = ct::config_group_json(entry.first, m_act, targets);
                specs[key] = targets;
            }
            std::vector<std::string> ignore = detail::never_converted_entries();
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
                                 {"format", ct::format_name(m_format)},
                                 {"quantization_status", "compressed"},
                                 {"config_groups", groups},
                                 {"ignore", ignore},
                                 {"kv_cache_scheme", nullptr},
                                 {"global_compression_ratio", nullptr},
                                 {"orbitq",
                                  {{"spec", m_auto ? std::string("auto") : m_spec.describe()},
                                   {"range", to_string(m_spec.range)},
                                   {"rounding", to_string(m_spec.rounding)},
                                   {"scale_dtype", std::string(io::dtype_name(m_scale_type))},
                                   {"activations", m_act == ct::activations::none ? "none" : "int8 dynamic per token"}}}};
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
            io::safetensors_writer w(m_stage / shard_name(), rest, {{"format", "pt"}}, true);
            for (const auto& d : rest) write_copy(w, d);
            w.commit();
            const nlohmann::json index = {{"metadata", {{"total_size", m_total}}}, {"weight_map", m_weight_map}};
            io::write_file_atomic(m_stage / std::string(io::checkpoint::index_name), index.dump(2) + "\n", true);
            nlohmann::json cfg = m_src.config_json();
            cfg["quantization_config"] = quantization_config();
            io::write_file_atomic(m_stage / "config.json", cfg.dump(2) + "\n", true);
            io::detail::fsync_directory(m_stage);
            publish();
            io::detail::fsync_directory(m_dir.has_parent_path() ? m_dir.parent_path() : std::filesystem::path("."));
        }

    private:
        /// What a layer's conversion wrote: the experts' spec, each dense matrix's.
        struct converted_layer
        {
            std::optional<quant_spec> experts;
            std::array<std::optional<quant_spec>, 3> dense;
        };

        /// Removes staging directories of `dir` whose writer is gone (its PID does not run, or
        /// the name carries no PID, which no writer uses), then creates this writer's own.
        std::filesystem::path make_stage() const
        {
            namespace fs = std::filesystem;
            const fs::path parent = m_dir.has_parent_path() ? m_dir.parent_path() : fs::path(".");
            const std::string base = "." + m_dir.filename().string() + ".partial";
            std::error_code ec;
            for (const auto& e : fs::directory_iterator(parent, ec))
            {
                const std::string n = e.path().filename().string();
                if (n.rfind(base, 0) != 0) continue;
                const std::string rest = n.substr(base.size());  // "" or ".PID.N"
                bool stale = rest.empty();
                if (!stale && rest[0] == '.')
                {
                    const std::string pid = rest.substr(1, rest.find('.', 1) - 1);
                    if (!pid.empty() && pid.find_first_not_of("0123456789") == std::string::npos)
                    {
                        stale = ::kill(static_cast<pid_t>(std::stol(pid)), 0) != 0 && errno == ESRCH;
                    }
                }
                if (stale) fs::remove_all(e.path(), ec);
            }
            static std::atomic<unsigned> counter{0};
            for (int attempt = 0;; ++attempt)
            {
                const fs::path p = parent / (base + "." + std::to_string(::getpid()) + "." + std::to_string(counter++));
                if (::mkdir(p.c_str(), 0755) == 0) return p;
                if (errno != EEXIST || attempt > 1000) io::detail::throw_io("cannot create the staging directory", p, errno);
            }
        }

        /// Renames the staging directory onto `dir`: only if nothing holds that name, or, with
        /// overwrite, by exchanging the two atomically.
        void publish()
        {
            std::error_code ec;
            // With overwrite, a `dir` that appears or vanishes meanwhile (another writer) is
            // met by the other of the two renames; a few rounds settle any such race.
            for (int round = 0; round < (m_overwrite ? 8 : 1); ++round)
            {
                if (m_overwrite && std::filesystem::exists(std::filesystem::symlink_status(m_dir, ec)))
                {
                    if (::renameat2(AT_FDCWD, m_stage.c_str(), AT_FDCWD, m_dir.c_str(), RENAME_EXCHANGE) == 0)
                    {
                        // The old output now sits under the staging name.
                        m_finished = true;
                        std::filesystem::remove_all(m_stage, ec);
                        return;
                    }
                    if (errno == ENOENT) continue;
                    io::detail::throw_io("cannot exchange the new output with the existing", m_dir, errno);
                }
                if (::renameat2(AT_FDCWD, m_stage.c_str(), AT_FDCWD, m_dir.c_str(), RENAME_NOREPLACE) == 0)
                {
                    m_finished = true;
                    return;
                }
                if (errno == EEXIST || errno == ENOTEMPTY) continue;
                if (errno != EINVAL) io::detail::throw_io("cannot rename the staging directory to", m_dir, errno);
                // A file system without RENAME_NOREPLACE: a plain rename, which also refuses a
                // non-empty directory.
                if (!std::filesystem::exists(std::filesystem::symlink_status(m_dir, ec)))
                {
                    if (::rename(m_stage.c_str(), m_dir.c_str()) != 0) io::detail::throw_io("cannot rename the staging directory to", m_dir, errno);
                    m_finished = true;
                    return;
                }
            }
            throw error(error_kind::io, "--out '" + m_dir.string()
                                            + "' appeared while this conversion ran (another conversion writing there?); it is left as it is and "
                                              "nothing of this run was written; pass --force to replace it");
        }

        std::string shard_name()
        {
            if (m_written >= m_shards) throw error(error_kind::invalid_argument, "converted_writer: more layers than announced");
            m_current_shard = io::shard_file_name(++m_written, m_shards);
            return m_current_shard;
        }

        void record(const std::string& name, std::size_t bytes)
        {
            m_weight_map[name] = m_current_shard;
            m_total += bytes;
        }

        void write_linear(const quantized_tensor& q, std::size_t row0, std::size_t rows, const std::string& base)
        {
            const auto decls = io::compressed_tensors::linear_decls(q.spec, m_format, rows, q.cols, base, m_scale_type);
            const auto data = io::compressed_tensors::encode_linear(q, m_format, row0, rows, m_scale_type);
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

        std::filesystem::path m_dir;
        std::filesystem::path m_stage;
        model_source& m_src;
        quant_spec m_spec;
        io::compressed_tensors::activations m_act;
        io::compressed_tensors::format m_format;
        bool m_auto = false;
        unsigned m_threads;
        io::dtype m_scale_type = io::dtype::bf16;
        std::map<std::string, io::tensor_decl> m_pending;
        std::vector<io::tensor_decl> m_copies;
        std::map<std::size_t, converted_layer> m_converted;
        std::string m_prefix;
        std::optional<io::safetensors_writer> m_layer;
        std::string m_current_shard;
        nlohmann::json m_weight_map = nlohmann::json::object();
        std::size_t m_total = 0;
        std::size_t m_written = 0;
        std::size_t m_shards = 0;
        bool m_finished = false;
        bool m_overwrite;
    };
}
