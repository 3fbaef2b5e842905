/// @file architecture.hpp
/// @brief A top-k Mixture-of-Experts FFN described by a small per-architecture table: tensor
///        names, how the experts are stored, the router rule, the activation and the norms
///        around the branches; and the dimensions of one model of that architecture.
///
/// The FFN part of a decoder layer that the table describes (a step whose tensor the table leaves
/// empty is skipped; RMSNorm_w(v) = v·(mean(v²)+eps)^-1/2 ⊙ w, weight used as-is):
/// ```
/// h  = RMSNorm_expert_input(x)
/// r  = h                                  (router_input::expert_input)
///    | rms(x) ⊙ router_scale · H^-1/2    (router_input::residual_rms_scaled)
/// p  = softmax(router · r) over all experts; top-k of p (renormalised to sum 1 when
///      renormalize), times per_expert_scale[e]
/// m  = Σ_chosen w_e · down_e(act(gate_e·h) ⊙ (up_e·h));  m = RMSNorm_expert_output(m)
/// d  = RMSNorm_dense_output(dense_down(act(dense_gate·g) ⊙ (dense_up·g))), g = RMSNorm_dense_input(x)
/// y  = (x + RMSNorm_ffn_output(m + d)) · layer_scalar
/// ```
/// Gemma 4 uses every step (a dense MLP beside the experts); Qwen3-MoE is
/// `y = x + Σ w_e · down_e(silu(gate_e·h) ⊙ (up_e·h))` with h = post_attention_layernorm(x).
#pragma once

#include "orbitq/core/error.hpp"
#include "orbitq/core/view.hpp"

#include <nlohmann/json.hpp>

#include <array>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace orbitq::moe
{
    /// @brief The activation of the gated MLPs: act(gate) ⊙ up.
    enum class activation_kind
    {
        gelu_tanh,  ///< PyTorch gelu(approximate="tanh")
        silu        ///< x · sigmoid(x)
    };

    /// @brief How a checkpoint stores a layer's experts.
    enum class expert_storage
    {
        /// Two stacked tensors `<experts>.gate_up_proj` [E, 2I, H] and `<experts>.down_proj` [E, H, I].
        stacked_gate_up,
        /// One Linear per expert and projection: `<experts>.<e>.{gate,up,down}_proj.weight`.
        per_expert
    };

    /// @brief What the router projects.
    enum class router_input
    {
        expert_input,        ///< the experts' normed input h
        residual_rms_scaled  ///< rms(x) ⊙ router_scale · H^-1/2 of the residual stream x
    };

    /// @brief The config.json keys of a model's dimensions (an empty key: not read, the
    ///        default stays). Looked up in `nested` when the file has that object, else at the top.
    struct config_keys
    {
        std::string nested = "text_config";
        std::string hidden = "hidden_size";
        std::string layers = "num_hidden_layers";
        std::string experts = "num_experts";
        std::string top_k = "num_experts_per_tok";
        std::string expert_intermediate = "moe_intermediate_size";
        std::string dense_intermediate;      ///< the dense MLP's width, when the architecture has one
        std::string rms_eps = "rms_norm_eps";
        std::string renormalize;             ///< a boolean key overriding architecture::renormalize
    };

    /// @brief The per-architecture table. Names are relative to a layer's prefix
    ///        (`<prefix>layers.<L>.`); an empty name means the step is absent.
    struct architecture
    {
        std::string name;                          ///< e.g. "gemma4", "qwen3_moe"
        std::string prefix = "model.";             ///< prefix of the text model's weights
        activation_kind activation = activation_kind::silu;
        expert_storage storage = expert_storage::per_expert;
        std::string experts = "mlp.experts";       ///< module path of the experts
        /// The experts' module path as a regex over the engines' module names (which may differ
        /// from the checkpoint's), for compressed-tensors targets: e.g. `mlp\.experts`.
        std::string experts_pattern = "mlp\\.experts";
        std::string router = "mlp.gate.weight";    ///< router Linear weight [E, H]
        router_input router_in = router_input::expert_input;
        std::string router_scale;                  ///< [H] (residual_rms_scaled only)
        std::string per_expert_scale;              ///< [E] multiplies the chosen weights
        bool renormalize = true;                   ///< top-k weights renormalised to sum 1
        std::string expert_input_norm = "post_attention_layernorm.weight";
        std::string expert_output_norm;
        std::string dense;                         ///< dense MLP module beside the experts (`mlp`), or none
        std::string dense_input_norm;
        std::string dense_output_norm;
        std::string ffn_output_norm;
        std::string layer_scalar;                  ///< [1] multiplies the layer's output
        /// Modules never converted (compressed-tensors `ignore` entries; `re:` entries match the
        /// engines' module names as well as the checkpoint's).
        std::vector<std::string> never_converted = {"lm_head", "re:.*lm_head$", "re:.*self_attn\\.(q|k|v|o)_proj$"};
        config_keys keys;
    };

    /// @brief One model's FFN: its architecture and dimensions.
    struct config
    {
        architecture arch;
        std::size_t hidden = 0;               ///< H
        std::size_t layers = 0;
        std::size_t experts = 0;              ///< E
        std::size_t top_k = 0;
        std::size_t expert_intermediate = 0;  ///< I
        std::size_t dense_intermediate = 0;   ///< width of the dense MLP (0 when the architecture has none)
        double rms_eps = 1e-6;
        bool renormalize = true;

        /// @brief Whether the layer has a dense MLP beside the experts.
        bool has_dense() const noexcept { return !arch.dense.empty(); }

        /// @brief Checks the invariants the forward pass relies on.
        /// @throws error (invalid_argument) naming the offending field.
        void check() const
        {
            auto need = [&](bool ok, const std::string& what) {
                if (!ok) throw error(error_kind::invalid_argument, arch.name + " config: " + what);
            };
            need(hidden > 0 && layers > 0 && experts > 0 && expert_intermediate > 0, "every dimension must be > 0");
            need(!has_dense() || dense_intermediate > 0, "the dense MLP's width must be > 0");
            need(top_k > 0 && top_k <= experts, "top_k must be in [1, experts], got top_k " + std::to_string(top_k) + " with "
                                                    + std::to_string(experts) + " experts");
            need(rms_eps > 0.0, "rms_eps must be > 0");
            need(arch.router_in != router_input::residual_rms_scaled || !arch.router_scale.empty(),
                 "a residual_rms_scaled router needs a router_scale tensor");
        }
    };

    /// @brief Reads a model's dimensions from a Hugging Face config.json with the
    ///        architecture's keys; fields the file lacks keep the values of `defaults`.
    /// @throws error (format) when a present field has the wrong JSON type.
    inline config config_from_json(const nlohmann::json& j, config defaults)
    {
        const config_keys& k = defaults.arch.keys;
        const nlohmann::json& t = !k.nested.empty() && j.contains(k.nested) && j[k.nested].is_object() ? j[k.nested] : j;
        auto get = [&](const std::string& key, std::size_t& dst) {
            if (key.empty() || !t.contains(key)) return;
            if (!t[key].is_number_unsigned()) throw error(error_kind::format, "config.json: '" + key + "' must be a non-negative integer");
            dst = t[key].get<std::size_t>();
        };
        get(k.hidden, defaults.hidden);
        get(k.layers, defaults.layers);
        get(k.experts, defaults.experts);
        get(k.top_k, defaults.top_k);
        get(k.expert_intermediate, defaults.expert_intermediate);
        get(k.dense_intermediate, defaults.dense_intermediate);
        if (!k.rms_eps.empty() && t.contains(k.rms_eps))
        {
            if (!t[k.rms_eps].is_number()) throw error(error_kind::format, "config.json: '" + k.rms_eps + "' must be a number");
            defaults.rms_eps = t[k.rms_eps].get<double>();
        }
        if (!k.renormalize.empty() && t.contains(k.renormalize))
        {
            if (!t[k.renormalize].is_boolean()) throw error(error_kind::format, "config.json: '" + k.renormalize + "' must be a boolean");
            defaults.renormalize = t[k.renormalize].get<bool>();
        }
        return defaults;
    }

    /// @brief Tensor and module names of a checkpoint, from the table.
    namespace names
    {
        /// @brief `<prefix>layers.<L>.`
        inline std::string layer_prefix(const config& c, std::size_t layer)
        {
            return c.arch.prefix + "layers." + std::to_string(layer) + ".";
        }
        /// @brief A layer's tensor named `relative` in the table.
        inline std::string in_layer(const config& c, std::size_t layer, const std::string& relative)
        {
            return layer_prefix(c, layer) + relative;
        }
        /// @brief The stems of the gated MLPs' three Linears.
        inline constexpr std::array<const char*, 3> mlp_stems = {"gate_proj", "up_proj", "down_proj"};
        /// @brief Expert e's Linear `stem` as a module (`<experts>.<e>.<stem>`): the per-expert
        ///        names of a converted checkpoint, and of a per_expert checkpoint's weights.
        inline std::string expert_linear(const config& c, std::size_t layer, std::size_t e, const std::string& stem)
        {
            return layer_prefix(c, layer) + c.arch.experts + "." + std::to_string(e) + "." + stem;
        }
        /// @brief A stacked expert tensor: `<experts>.gate_up_proj` (k = 0) or `.down_proj` (k = 1).
        inline std::string stacked_experts(const config& c, std::size_t layer, std::size_t k)
        {
            return layer_prefix(c, layer) + c.arch.experts + (k == 0 ? ".gate_up_proj" : ".down_proj");
        }
        /// @brief The dense MLP's Linear k (gate, up, down) as a module.
        inline std::string dense_linear(const config& c, std::size_t layer, std::size_t k)
        {
            return layer_prefix(c, layer) + c.arch.dense + "." + mlp_stems.at(k);
        }
    }

    /// @brief The expert projections of a layer as validation quantizes and reports them, with
    ///        their input columns: the stacked gate_up (H) and down (I), or, per expert, the
    ///        patterns prefix.experts.*.{gate,up,down}_proj.weight (H, H, I).
    inline std::vector<std::pair<std::string, std::size_t>> expert_projections(const config& c, std::size_t layer)
    {
        if (c.arch.storage == expert_storage::stacked_gate_up)
        {
            return {{names::stacked_experts(c, layer, 0), c.hidden}, {names::stacked_experts(c, layer, 1), c.expert_intermediate}};
        }
        std::vector<std::pair<std::string, std::size_t>> out;
        for (std::size_t k = 0; k < 3; ++k)
        {
            out.push_back({names::layer_prefix(c, layer) + c.arch.experts + ".*." + names::mlp_stems[k] + ".weight", k == 2 ? c.expert_intermediate : c.hidden});
        }
        return out;
    }

    /// @brief Every tensor the FFN forward pass of a layer reads, with its expected shape.
    inline std::vector<std::pair<std::string, shape_type>> layer_tensor_shapes(const config& c, std::size_t layer)
    {
        const std::size_t H = c.hidden, E = c.experts, I = c.expert_intermediate, D = c.dense_intermediate;
        const architecture& a = c.arch;
        std::vector<std::pair<std::string, shape_type>> out;
        if (a.storage == expert_storage::stacked_gate_up)
        {
            out.push_back({names::stacked_experts(c, layer, 0), {E, 2 * I, H}});
            out.push_back({names::stacked_experts(c, layer, 1), {E, H, I}});
        }
        else
        {
            for (std::size_t e = 0; e < E; ++e)
            {
                out.push_back({names::expert_linear(c, layer, e, "gate_proj") + ".weight", {I, H}});
                out.push_back({names::expert_linear(c, layer, e, "up_proj") + ".weight", {I, H}});
                out.push_back({names::expert_linear(c, layer, e, "down_proj") + ".weight", {H, I}});
            }
        }
        if (c.has_dense())
        {
            out.push_back({names::dense_linear(c, layer, 0) + ".weight", {D, H}});
            out.push_back({names::dense_linear(c, layer, 1) + ".weight", {D, H}});
            out.push_back({names::dense_linear(c, layer, 2) + ".weight", {H, D}});
        }
        out.push_back({names::in_layer(c, layer, a.router), {E, H}});
        auto vec = [&](const std::string& n, std::size_t len) {
            if (!n.empty()) out.push_back({names::in_layer(c, layer, n), {len}});
        };
        vec(a.router_scale, H);
        vec(a.per_expert_scale, E);
        vec(a.layer_scalar, 1);
        for (const std::string* n : {&a.expert_input_norm, &a.expert_output_norm, &a.dense_input_norm, &a.dense_output_norm,
                                     &a.ffn_output_norm})
        {
            vec(*n, H);
        }
        return out;
    }
}
