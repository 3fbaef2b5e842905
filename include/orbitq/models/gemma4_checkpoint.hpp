/// @file gemma4_checkpoint.hpp
/// @brief Gemma 4 checkpoints on disk: reading a Hugging Face checkpoint layer by layer
///        (memory-mapped, zero-copy), writing the synthetic model as a sharded checkpoint, and
///        writing a converted checkpoint in the compressed-tensors per-expert layout vLLM loads.
///
/// Converted layout (one shard per selected layer, plus one for every other tensor):
/// - every tensor that is not quantized is copied byte for byte (name, dtype, shape unchanged);
/// - the stacked `experts.gate_up_proj` [E, 2I, H] and `experts.down_proj` [E, H, I] of a
///   quantized layer are replaced, for each expert e, by the Linear weights vLLM's Gemma 4 loader
///   maps onto its fused MoE: `experts.{e}.gate_proj` (rows 0..I-1 of gate_up[e]),
///   `experts.{e}.up_proj` (rows I..2I-1) and `experts.{e}.down_proj`, each with
///   - INT8: `weight` I8 [out, in]; INT4: `weight_packed` I32 [out, in/8] (eight 4-bit codes per
///     int32, column 8j+k in bits 4k..4k+3, stored as code + 8, i.e. offset binary: the
///     compressed-tensors pack-quantized layout) and `weight_shape` I64 [2] = {out, in};
///   - `weight_scale` in the checkpoint's float dtype: [1] per-tensor (the stacked tensor's one
///     scale, repeated for every expert), [out, 1] per-channel, [out, in/group] per-group;
///   - `weight_zero_point` I8 with the scale's shape, only for the asymmetric scheme
///     (dequantization: (code − zero_point) · scale).
/// - with include_dense, `mlp.{gate,up,down}_proj.weight` likewise (same suffixes);
/// - model.safetensors.index.json is written after every shard, config.json (the input's, plus
///   `quantization_config` with `quant_method: compressed-tensors`) last.
/// Every file is written atomically (temporary file, then rename).
#pragma once

#include "orbitq/io/safetensors.hpp"
#include "orbitq/models/gemma4.hpp"
#include "orbitq/models/gemma4_synthetic.hpp"
#include "orbitq/models/gemma4_validate.hpp"
#include "orbitq/quantize.hpp"

#include <nlohmann/json.hpp>

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
#include <fcntl.h>
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

    /// @brief The compressed-tensors `quantization_config` of a conversion.
    inline nlohmann::json quantization_config_json(const quant_spec& spec, bool include_dense)
    {
        const char* strategy = spec.granularity == granularity_kind::per_tensor    ? "tensor"
                               : spec.granularity == granularity_kind::per_channel ? "channel"
                                                                                   : "group";
        nlohmann::json weights = {{"num_bits", spec.bits},
                                  {"type", "int"},
                                  {"symmetric", spec.scheme == scheme_kind::symmetric},
                                  {"strategy", strategy},
                                  {"group_size", spec.granularity == granularity_kind::per_group ? nlohmann::json(spec.group_size)
                                                                                                  : nlohmann::json(nullptr)},
                                  {"dynamic", false},
                                  {"observer", "minmax"}};
        nlohmann::json targets = {"re:.*experts\\.\\d+\\.(gate|up|down)_proj$"};
        if (include_dense) targets.push_back("re:.*mlp\\.(gate|up|down)_proj$");
        nlohmann::json ignore = {"lm_head", "re:.*router.*"};
        if (!include_dense) ignore.push_back("re:.*mlp\\.(gate|up|down)_proj$");
        return {{"quant_method", "compressed-tensors"},
                {"format", spec.bits == 4 ? "pack-quantized" : "int-quantized"},
                {"quantization_status", "compressed"},
                {"config_groups", {{"group_0", {{"targets", targets}, {"weights", weights}, {"input_activations", nullptr}}}}},
                {"ignore", ignore},
                {"orbitq", {{"spec", spec.describe()},
                            {"range", to_string(spec.range)},
                            {"rounding", to_string(spec.rounding)},
                            {"scale_dtype", std::string(element_name(spec.scale_type))}}}};
    }

    namespace detail
    {
        /// Bytes of a float scale/zero-point vector stored as `t`.
        inline std::vector<std::byte> encode_floats(const std::vector<float>& v, io::dtype t)
        {
            std::vector<std::byte> out(v.size() * io::dtype_size(t));
            for (std::size_t i = 0; i < v.size(); ++i)
            {
                if (t == io::dtype::f32) std::memcpy(out.data() + 4 * i, &v[i], 4);
                else if (t == io::dtype::bf16)
                {
                    const auto h = to_bfloat16(v[i]);
                    std::memcpy(out.data() + 2 * i, &h, 2);
                }
                else
                {
                    const auto h = to_float16(v[i]);
                    std::memcpy(out.data() + 2 * i, &h, 2);
                }
            }
            return out;
        }

        /// The tensors of one quantized Linear [rows, cols] in compressed-tensors naming, in the
        /// order encode_linear produces them.
        inline std::vector<io::tensor_decl> linear_decls(const quant_spec& spec, std::size_t rows, std::size_t cols,
                                                         const std::string& base, io::dtype scale_type)
        {
            std::vector<io::tensor_decl> d;
            if (spec.bits == 8)
            {
                d.push_back({base + ".weight", io::dtype::i8, {rows, cols}});
            }
            else
            {
                if (cols % 8 != 0) throw error(error_kind::invalid_argument, base + ": int4 packing needs in_features divisible by 8");
                d.push_back({base + ".weight_packed", io::dtype::i32, {rows, cols / 8}});
                d.push_back({base + ".weight_shape", io::dtype::i64, {2}});
            }
            const shape_type sshape = spec.granularity == granularity_kind::per_tensor    ? shape_type{1}
                                      : spec.granularity == granularity_kind::per_channel ? shape_type{rows, 1}
                                                                                          : shape_type{rows, cols / spec.group_size};
            d.push_back({base + ".weight_scale", scale_type, sshape});
            if (spec.scheme == scheme_kind::asymmetric) d.push_back({base + ".weight_zero_point", io::dtype::i8, sshape});
            return d;
        }

        /// The bytes of one Linear (rows [row0, row0 + rows) of q), in linear_decls order.
        inline std::vector<std::vector<std::byte>> encode_linear(const quantized_tensor& q, std::size_t row0, std::size_t rows,
                                                                 io::dtype scale_type)
        {
            std::vector<std::vector<std::byte>> o;
            const std::size_t cols = q.cols;
            if (q.spec.bits == 8)
            {
                std::vector<std::byte> codes(rows * cols);
                std::memcpy(codes.data(), q.codes.data() + row0 * cols, rows * cols);
                o.push_back(std::move(codes));
            }
            else
            {
                const std::size_t rb = q.row_bytes();
                std::vector<std::byte> packed(rows * rb);
                for (std::size_t i = 0; i < rows * rb; ++i)
                {
                    // two's complement nibbles -> offset binary (code + 8): flip bit 3 of each nibble
                    packed[i] = static_cast<std::byte>(static_cast<std::uint8_t>(q.codes[row0 * rb + i]) ^ 0x88u);
                }
                o.push_back(std::move(packed));
                std::vector<std::byte> shape(16);
                const std::int64_t dims[2] = {static_cast<std::int64_t>(rows), static_cast<std::int64_t>(cols)};
                std::memcpy(shape.data(), dims, 16);
                o.push_back(std::move(shape));
            }
            std::vector<std::size_t> orbits;
            if (q.spec.granularity == granularity_kind::per_tensor) orbits = {0};
            else
            {
                for (std::size_t r = row0; r < row0 + rows; ++r)
                {
                    for (std::size_t g = 0; g < q.layout.groups_per_row; ++g) orbits.push_back(q.layout.orbit(r, g));
                }
            }
            std::vector<float> scales;
            for (std::size_t k : orbits) scales.push_back(q.scales[k]);
            o.push_back(encode_floats(scales, scale_type));
            if (!q.zero_points.empty())
            {
                std::vector<std::byte> z;
                for (std::size_t k : orbits) z.push_back(static_cast<std::byte>(static_cast<std::int8_t>(q.zero_points[k])));
                o.push_back(std::move(z));
            }
            return o;
        }
    }

    /// @brief Writes a converted checkpoint as the validator produces the quantized tensors: one
    ///        shard per converted layer (its experts written one by one as they are quantized),
    ///        then the remaining tensors, the index and config.json (see the file brief).
    ///
    /// Output goes to a hidden staging directory next to `dir` (`.NAME.partial`) that finish()
    /// renames onto `dir`, so `dir` appears complete or not at all; an unfinished writer removes
    /// it, and a writer killed before that leaves only the hidden staging directory, which the
    /// next writer for the same `dir` removes. With `overwrite`, an existing `dir` is swapped
    /// with the staging directory in one atomic step (renameat2 RENAME_EXCHANGE) and the old
    /// contents, now under the staging name, are then removed: no stale shard survives.
    class converted_writer : public conversion_sink
    {
    public:
        /// @throws error (invalid_argument) when dir exists (unless overwrite; and even then when
        ///         it is not a directory), or is inside or equal to the input directory; error (io)
        ///         when the staging directory cannot be created.
        converted_writer(std::filesystem::path dir, model_source& src, const std::filesystem::path& input_dir, quant_spec spec,
                         bool include_dense, std::size_t converted_layers, unsigned threads, bool overwrite = false)
            : m_dir(std::move(dir))
            , m_src(src)
            , m_spec(spec)
            , m_include_dense(include_dense)
            , m_threads(threads)
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
                m_replace = true;
            }
            m_stage = (m_dir.has_parent_path() ? m_dir.parent_path() : fs::path(".")) / ("." + m_dir.filename().string() + ".partial");
            fs::remove_all(m_stage, ec);
            fs::create_directories(m_stage, ec);
            if (ec) throw error(error_kind::io, "cannot create '" + m_stage.string() + "': " + ec.message());
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

        /// @brief The scale dtype of the output: the source dtype of the expert tensors.
        static io::dtype scale_dtype(const any_view& v)
        {
            return std::visit([](const auto& m) { return io::to_dtype(element_type_of<typename std::decay_t<decltype(m)>::value_type>()); }, v);
        }

        void begin_layer(const layer_weights& w, std::array<bool, 2> experts, std::array<bool, 3> dense,
                         const std::array<quant_spec, 5>& specs) override
        {
            const config& c = m_src.cfg();
            const std::string prefix = names::layer_prefix(c, w.layer);
            const std::size_t I = c.expert_intermediate, H = c.hidden;
            m_scale_type = scale_dtype(w.gate_up);
            std::vector<io::tensor_decl> decls;
            std::set<std::string> replaced;
            auto add = [&](std::vector<io::tensor_decl>&& d) { decls.insert(decls.end(), d.begin(), d.end()); };
            for (std::size_t e = 0; e < c.experts; ++e)
            {
                const std::string b = prefix + "experts." + std::to_string(e) + ".";
                if (experts[0])
                {
                    add(detail::linear_decls(specs[0], I, H, b + "gate_proj", m_scale_type));
                    add(detail::linear_decls(specs[0], I, H, b + "up_proj", m_scale_type));
                }
                if (experts[1]) add(detail::linear_decls(specs[1], H, I, b + "down_proj", m_scale_type));
            }
            const std::string lp = "re:.*layers\\." + std::to_string(w.layer) + "\\.";
            if (experts[0])
            {
                replaced.insert(names::expert(c, w.layer, expert_matrix::gate_up));
                target(specs[0], lp + "experts\\.\\d+\\.(gate|up)_proj$");
            }
            if (experts[1])
            {
                replaced.insert(names::expert(c, w.layer, expert_matrix::down));
                target(specs[1], lp + "experts\\.\\d+\\.down_proj$");
            }
            static constexpr const char* dense_stem[3] = {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
            const std::size_t D = c.dense_intermediate;
            const std::array<std::pair<std::size_t, std::size_t>, 3> dshape = {{{D, H}, {D, H}, {H, D}}};
            for (std::size_t k = 0; k < 3; ++k)
            {
                if (!dense[k]) continue;
                replaced.insert(names::dense(c, w.layer, static_cast<dense_matrix>(k)));
                add(detail::linear_decls(specs[2 + k], dshape[k].first, dshape[k].second, prefix + dense_stem[k], m_scale_type));
                std::string stem = dense_stem[k];
                stem.replace(stem.find('.'), 1, "\\.");
                target(specs[2 + k], lp + stem + "$");
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
            m_layer_decls = decls;
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
            static constexpr const char* dense_stem[3] = {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
            for (std::size_t k = 0; k < 3; ++k)
            {
                if (dense[k]) write_linear(*dense[k], 0, dense[k]->rows, m_prefix + dense_stem[k]);
            }
            for (const auto& d : m_copies) write_copy(*m_layer, d);
            m_layer->commit();
            m_layer.reset();
        }

        /// @brief Writes the remaining tensors, the index and config.json, then publishes the
        ///        directory.
        void finish()
        {
            std::vector<io::tensor_decl> rest;
            for (auto& [name, d] : m_pending) rest.push_back(d);
            m_pending.clear();
            m_layer_decls = rest;
            io::safetensors_writer w(m_stage / shard_name(), rest, {{"format", "pt"}}, true);
            for (const auto& d : rest) write_copy(w, d);
            w.commit();
            const nlohmann::json index = {{"metadata", {{"total_size", m_total}}}, {"weight_map", m_weight_map}};
            io::write_file_atomic(m_stage / std::string(io::checkpoint::index_name), index.dump(2) + "\n", true);
            nlohmann::json cfg = m_src.config_json();
            cfg["quantization_config"] = quantization_config_json(m_spec, m_include_dense);
            if (m_targets.size() > 1 || (m_targets.size() == 1 && m_targets.begin()->second.first != m_spec))
            {
                // Several specs (automatic granularity): one config group per spec, targeting the
                // layers' modules that use it.
                nlohmann::json groups = nlohmann::json::object();
                nlohmann::json specs = nlohmann::json::object();
                std::size_t n = 0;
                for (const auto& [key, st] : m_targets)
                {
                    const nlohmann::json one = quantization_config_json(st.first, m_include_dense);
                    nlohmann::json grp = one["config_groups"]["group_0"];
                    grp["targets"] = st.second;
                    groups["group_" + std::to_string(n++)] = grp;
                    specs[key] = st.second;
                }
                auto& qc = cfg["quantization_config"];
                qc["config_groups"] = groups;
                qc["format"] = "mixed-precision";
                qc["orbitq"]["spec"] = "auto";
                qc["orbitq"]["specs"] = specs;
            }
            io::write_file_atomic(m_stage / "config.json", cfg.dump(2) + "\n", true);
            io::detail::fsync_directory(m_stage);
            if (m_replace && std::filesystem::exists(m_dir))
            {
                // Swap atomically; the old output now sits under the hidden staging name.
                if (::renameat2(AT_FDCWD, m_stage.c_str(), AT_FDCWD, m_dir.c_str(), RENAME_EXCHANGE) != 0)
                {
                    io::detail::throw_io("cannot exchange the new output with the existing", m_dir, errno);
                }
                m_finished = true;
                std::error_code ec;
                std::filesystem::remove_all(m_stage, ec);
            }
            else
            {
                std::error_code ec;
                std::filesystem::rename(m_stage, m_dir, ec);
                if (ec) throw error(error_kind::io, "cannot rename '" + m_stage.string() + "' to '" + m_dir.string() + "': " + ec.message());
                m_finished = true;
            }
            io::detail::fsync_directory(m_dir.has_parent_path() ? m_dir.parent_path() : std::filesystem::path("."));
        }

    private:
        /// Records that the modules matching `regex` use `spec` (for the config groups).
        void target(const quant_spec& spec, const std::string& regex)
        {
            auto& t = m_targets[spec.describe()];
            t.first = spec;
            t.second.push_back(regex);
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
            const auto decls = detail::linear_decls(q.spec, rows, q.cols, base, m_scale_type);
            const auto data = detail::encode_linear(q, row0, rows, m_scale_type);
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
        bool m_include_dense;
        unsigned m_threads;
        io::dtype m_scale_type = io::dtype::bf16;
        std::map<std::string, io::tensor_decl> m_pending;
        std::vector<io::tensor_decl> m_copies;
        std::map<std::string, std::pair<quant_spec, std::vector<std::string>>> m_targets;
        std::vector<io::tensor_decl> m_layer_decls;
        std::string m_prefix;
        std::optional<io::safetensors_writer> m_layer;
        std::string m_current_shard;
        nlohmann::json m_weight_map = nlohmann::json::object();
        std::size_t m_total = 0;
        std::size_t m_written = 0;
        std::size_t m_shards = 0;
        bool m_finished = false;
        bool m_replace = false;
    };
}
