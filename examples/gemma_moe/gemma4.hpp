/// @file gemma4.hpp
/// @brief Gemma 4's row of the MoE architecture table (tensor names, config keys, router rule,
///        activation, norms) and the dimensions of 26B-A4B.
///
/// The FFN part of a Gemma 4 decoder layer, as the Hugging Face transformers implementation
/// computes it (orbitq::moe::ffn_forward follows the table):
/// ```
/// h1 = RMSNorm_pre_ffn(x);  d = down_dense · (gelu_tanh(gate_dense·h1) ⊙ (up_dense·h1))
/// b1 = RMSNorm_post_ffn_1(d)
/// r  = rms(x) ⊙ router.scale · H^-1/2;  p = softmax(router.proj · r)  (over all experts)
/// top-k of p, renormalise to sum 1, multiply by per_expert_scale[e]
/// h2 = RMSNorm_pre_ffn_2(x);  for each chosen e with weight w:
///      gu = gate_up[e] · h2;  a = gelu_tanh(gu[:I]) ⊙ gu[I:];  acc += w · (down[e] · a)
/// b2 = RMSNorm_post_ffn_2(acc)
/// y  = (x + RMSNorm_post_ffn(b1 + b2)) · layer_scalar
/// ```
#pragma once

#include "orbitq/moe/architecture.hpp"

#include <nlohmann/json.hpp>

#include <array>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace gemma4
{
    /// @brief The seven RMSNorm weights of a layer ([H] each), in the synthetic model's order.
    inline constexpr std::array<const char*, 7> norm_stems = {
        "input_layernorm.weight",          "post_attention_layernorm.weight",     "pre_feedforward_layernorm.weight",
        "post_feedforward_layernorm_1.weight", "pre_feedforward_layernorm_2.weight", "post_feedforward_layernorm_2.weight",
        "post_feedforward_layernorm.weight"};

    /// @brief Gemma 4's architecture table.
    inline orbitq::moe::architecture architecture()
    {
        using namespace orbitq::moe;
        struct architecture a;
        a.name = "gemma4";
        a.prefix = "model.language_model.";
        a.activation = activation_kind::gelu_tanh;
        a.storage = expert_storage::stacked_gate_up;
        a.experts = "experts";
        // vLLM's Gemma 4 loader names the experts `…layers.N.moe.experts`.
        a.experts_pattern = "(moe\\.)?experts";
        a.router = "router.proj.weight";
        a.router_in = router_input::residual_rms_scaled;
        a.router_scale = "router.scale";
        a.per_expert_scale = "router.per_expert_scale";
        a.renormalize = true;
        a.expert_input_norm = norm_stems[4];
        a.expert_output_norm = norm_stems[5];
        a.dense = "mlp";
        a.dense_input_norm = norm_stems[2];
        a.dense_output_norm = norm_stems[3];
        a.ffn_output_norm = norm_stems[6];
        a.layer_scalar = "layer_scalar";
        // Never converted: attention, router, towers and their embedders, per-layer-input
        // projections, lm_head (regexes: they match vLLM's module names too).
        a.never_converted = {"lm_head",
                             "re:.*lm_head$",
                             "re:.*\\.router\\.proj$",
                             "re:.*self_attn\\.(q|k|v|o)_proj$",
                             "re:.*vision_tower\\..*",
                             "re:.*audio_tower\\..*",
                             "re:.*embed_vision\\..*",
                             "re:.*embed_audio\\..*",
                             "re:.*per_layer_(input_gate|projection|model_projection)$"};
        a.keys.top_k = "top_k_experts";
        a.keys.dense_intermediate = "intermediate_size";
        return a;
    }

    /// @brief Gemma 4 26B-A4B's FFN dimensions.
    inline orbitq::moe::config default_config()
    {
        orbitq::moe::config c;
        c.arch = architecture();
        c.hidden = 2816;
        c.layers = 30;
        c.experts = 128;
        c.top_k = 8;
        c.expert_intermediate = 704;
        c.dense_intermediate = 2112;
        c.rms_eps = 1e-6;
        return c;
    }

    /// @brief Every tensor of a layer of the synthetic checkpoint: the FFN's, plus the two norms
    ///        around attention.
    inline std::vector<std::pair<std::string, orbitq::shape_type>> checkpoint_tensor_shapes(const orbitq::moe::config& c, std::size_t layer)
    {
        auto out = orbitq::moe::layer_tensor_shapes(c, layer);
        for (std::size_t n : {0, 1}) out.push_back({orbitq::moe::names::in_layer(c, layer, norm_stems[n]), {c.hidden}});
        return out;
    }

    /// @brief The config.json of a synthetic model (Gemma 4 field names under "text_config").
    inline nlohmann::json config_to_json(const orbitq::moe::config& c)
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
}
