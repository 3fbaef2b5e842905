/// @file source.hpp
/// @brief Where a MoE model's weights come from: the model_source interface, and a Hugging Face
///        checkpoint read layer by layer (memory-mapped, zero-copy) by its architecture table.
#pragma once

#include "orbitq/io/safetensors.hpp"
#include "orbitq/moe/architecture.hpp"
#include "orbitq/moe/layer.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

namespace orbitq::moe
{
    /// @brief Where the weights come from: a checkpoint on disk, a generator, ...
    class model_source
    {
    public:
        virtual ~model_source() = default;
        /// @brief The model's architecture and dimensions.
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

    /// @brief The norms and small vectors of a layer read through `vec(relative name)`, and the
    ///        router and dense matrices through `view(full name)`: everything but the experts.
    template <class ViewFn, class VecFn>
    void load_non_experts(const config& c, std::size_t layer, layer_weights& w, ViewFn&& view, VecFn&& vec)
    {
        const architecture& a = c.arch;
        w.layer = layer;
        if (c.has_dense())
        {
            for (std::size_t k = 0; k < 3; ++k) w.dense.push_back(view(names::dense_linear(c, layer, k) + ".weight"));
        }
        w.router = view(names::in_layer(c, layer, a.router));
        if (!a.router_scale.empty()) w.router_scale = vec(a.router_scale);
        if (!a.per_expert_scale.empty()) w.per_expert_scale = vec(a.per_expert_scale);
        auto norm = [&](const std::string& n) { return n.empty() ? norm_weight{} : norm_weight{vec(n)}; };
        w.expert_input_norm = norm(a.expert_input_norm);
        w.expert_output_norm = norm(a.expert_output_norm);
        w.dense_input_norm = norm(a.dense_input_norm);
        w.dense_output_norm = norm(a.dense_output_norm);
        w.ffn_output_norm = norm(a.ffn_output_norm);
        w.layer_scalar = a.layer_scalar.empty() ? 1.0f : vec(a.layer_scalar).at(0);
    }

    /// @brief A Hugging Face checkpoint directory as a model_source: memory-mapped, zero-copy
    ///        views of the big matrices; pages of the previous layer are released after use.
    class checkpoint_source : public model_source
    {
    public:
        /// @param defaults the architecture, and the dimensions config.json does not give.
        /// @throws error (io/format) when the checkpoint or its config.json cannot be read, or an
        ///         FFN tensor of the architecture is missing or has the wrong shape or an
        ///         unsupported dtype.
        checkpoint_source(const std::filesystem::path& dir, const config& defaults)
            : m_ckpt(io::checkpoint::open(dir))
            , m_cfg(defaults)
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
                m_cfg = config_from_json(m_config_json, defaults);
            }
            else
            {
                m_config_json = nlohmann::json::object();
                infer_dimensions(dir);
            }
            m_cfg.check();
            for (std::size_t l = 0; l < m_cfg.layers; ++l)
            {
                for (auto& [name, shape] : layer_tensor_shapes(m_cfg, l)) check_tensor(dir, name, shape);
            }
        }

        const io::checkpoint& files() const noexcept { return m_ckpt; }
        const config& cfg() const override { return m_cfg; }

        const layer_weights& load_layer(std::size_t layer, unsigned) override
        {
            release_current();
            m_w = layer_weights{};
            auto view_of = [&](const std::string& name) { return view(name); };
            load_non_experts(m_cfg, layer, m_w, view_of, [&](const std::string& rel) { return to_floats(view(names::in_layer(m_cfg, layer, rel))); });
            if (m_cfg.arch.storage == expert_storage::stacked_gate_up)
            {
                m_w.experts = stacked_experts(m_cfg, view(names::stacked_experts(m_cfg, layer, 0)), view(names::stacked_experts(m_cfg, layer, 1)));
            }
            else m_w.experts = per_expert_tensors(m_cfg, layer, view_of);
            m_w.release_expert = [this](std::size_t e) {
                for (const expert_tensor& t : m_w.experts) drop(t.blocks.at(e));
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
        /// Without config.json: the layers are counted, the experts read off the first layer.
        void infer_dimensions(const std::filesystem::path& dir)
        {
            const bool stacked = m_cfg.arch.storage == expert_storage::stacked_gate_up;
            auto first_expert = [&](std::size_t layer, std::size_t e) {
                return stacked ? names::stacked_experts(m_cfg, layer, 0) : names::expert_linear(m_cfg, layer, e, "gate_proj") + ".weight";
            };
            std::size_t layers = 0;
            while (m_ckpt.contains(first_expert(layers, 0))) ++layers;
            if (layers == 0)
            {
                throw error(error_kind::format, "checkpoint '" + dir.string() + "' has no config.json and no tensor '" + first_expert(0, 0) + "'");
            }
            m_cfg.layers = layers;
            std::size_t experts = 0;
            if (stacked) experts = m_ckpt.info(first_expert(0, 0)).shape.at(0);
            else
            {
                while (m_ckpt.contains(first_expert(0, experts))) ++experts;
            }
            m_cfg.experts = experts;
            m_cfg.top_k = std::min(m_cfg.top_k, experts);
        }

        void check_tensor(const std::filesystem::path& dir, const std::string& name, const shape_type& shape) const
        {
            const std::string where = "checkpoint '" + dir.string() + "'";
            if (!m_ckpt.contains(name))
            {
                throw error(error_kind::format, where + " lacks tensor '" + name + "' (is it a " + m_cfg.arch.name + " MoE checkpoint?)");
            }
            const auto& info = m_ckpt.info(name);
            if (info.shape != shape)
            {
                throw error(error_kind::format, where + ": tensor '" + name + "' has shape " + orbitq::detail::shape_string(info.shape)
                                                    + ", expected " + orbitq::detail::shape_string(shape));
            }
            if (!io::as_element_type(info.type))
            {
                throw error(error_kind::format, where + ": tensor '" + name + "' has dtype " + std::string(io::dtype_name(info.type))
                                                    + "; expected BF16, F16 or F32");
            }
        }

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

        /// Drops the mapped pages wholly inside a view (the file is mapped read-only and private,
        /// so they are simply re-read on the next access).
        static void drop(const any_view& v)
        {
            std::visit(
                [&](const auto& m) {
                    if (m.rows == 0) return;
                    const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
                    const auto begin = reinterpret_cast<std::uintptr_t>(m.row(0));
                    const auto end = begin + m.rows * m.stride * sizeof(typename std::decay_t<decltype(m)>::value_type);
                    const std::uintptr_t b = (begin + page - 1) / page * page, e = end / page * page;
                    if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
                },
                v);
        }

        void release_current()
        {
            if (m_current == static_cast<std::size_t>(-1)) return;
            for (auto& [name, shape] : layer_tensor_shapes(m_cfg, m_current)) m_ckpt.release(name);
        }

        io::checkpoint m_ckpt;
        config m_cfg;
        nlohmann::json m_config_json;
        layer_weights m_w;
        std::size_t m_current = static_cast<std::size_t>(-1);
    };
}
