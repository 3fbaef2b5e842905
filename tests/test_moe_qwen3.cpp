// A second MoE architecture through the library's table: Qwen3-MoE (per-expert
// `mlp.experts.{e}.{gate,up,down}_proj.weight`, router `mlp.gate.weight` on the
// post-attention-normed input, softmax over all experts, top-k renormalised when norm_topk_prob,
// SiLU, no dense branch). A synthetic Qwen3-MoE checkpoint is written, read back, its forward
// pass checked against a direct computation, validated, converted to compressed-tensors, and
// the output decoded by the format's rules.
#include <doctest/doctest.h>

#include "orbitq/io/compressed_tensors.hpp"
#include "orbitq/io/safetensors.hpp"
#include "orbitq/moe/converted_writer.hpp"
#include "orbitq/moe/forward.hpp"
#include "orbitq/moe/source.hpp"
#include "orbitq/moe/validate.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

using namespace orbitq;
using namespace orbitq::moe;
namespace fs = std::filesystem;

namespace
{
    /// Qwen3-MoE's row of the table (transformers' modeling_qwen3_moe; vLLM's qwen3_moe names).
    architecture qwen3_moe()
    {
        architecture a;
        a.name = "qwen3_moe";
        a.prefix = "model.";
        a.activation = activation_kind::silu;
        a.storage = expert_storage::per_expert;
        a.experts = "mlp.experts";
        a.experts_pattern = "mlp\\.experts";
        a.router = "mlp.gate.weight";
        a.router_in = router_input::expert_input;
        a.renormalize = false;  // Qwen3MoeConfig's default norm_topk_prob
        a.expert_input_norm = "post_attention_layernorm.weight";
        a.never_converted.push_back("re:.*\\.mlp\\.gate$");
        a.keys.top_k = "num_experts_per_tok";
        a.keys.renormalize = "norm_topk_prob";
        return a;
    }

    constexpr std::size_t H = 64, I = 32, E = 8, K = 2, L = 3;

    std::uint64_t mix(std::uint64_t z)
    {
        z += 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    /// Uniform in [-1, 1) from a hash.
    float unit(std::uint64_t h) { return static_cast<float>(h >> 40) / 8388608.0f - 1.0f; }

    /// A Qwen3-MoE checkpoint directory: every expert Linear, the router, the norms, plus
    /// attention, embeddings and lm_head (copied untouched by a conversion). Expert weights are
    /// uniform of RMS about 1/sqrt(fan_in) with one outlier 40x in expert 3's gate_proj of every
    /// layer, so a per-tensor scale loses precision that per-channel keeps.
    struct qwen3_checkpoint
    {
        fs::path dir;
        std::vector<io::tensor_decl> decls;

        qwen3_checkpoint()
        {
            dir = fs::temp_directory_path() / ("orbitq_qwen3_" + std::to_string(::getpid()));
            fs::remove_all(dir);
            auto add = [&](const std::string& name, shape_type shape) { decls.push_back({name, io::dtype::bf16, std::move(shape)}); };
            add("model.embed_tokens.weight", {16, H});
            add("lm_head.weight", {16, H});
            add("model.norm.weight", {H});
            for (std::size_t l = 0; l < L; ++l)
            {
                const std::string p = "model.layers." + std::to_string(l) + ".";
                for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) add(p + "self_attn." + proj + ".weight", {H, H});
                add(p + "input_layernorm.weight", {H});
                add(p + "post_attention_layernorm.weight", {H});
                add(p + "mlp.gate.weight", {E, H});
                for (std::size_t e = 0; e < E; ++e)
                {
                    const std::string b = p + "mlp.experts." + std::to_string(e) + ".";
                    add(b + "gate_proj.weight", {I, H});
                    add(b + "up_proj.weight", {I, H});
                    add(b + "down_proj.weight", {H, I});
                }
            }
            io::write_checkpoint(dir, decls, [](const io::tensor_decl& d, std::span<std::byte> out) {
                auto* v = reinterpret_cast<bfloat16_t*>(out.data());
                const std::uint64_t key = std::hash<std::string>{}(d.name);
                const std::size_t n = d.elements();
                const bool vector = d.shape.size() == 1;
                const bool router = d.name.find("mlp.gate.weight") != std::string::npos;
                const float amp = vector ? 0.1f : router ? 2.0f : std::sqrt(3.0f / static_cast<float>(d.shape[1]));
                for (std::size_t i = 0; i < n; ++i)
                {
                    const float u = unit(mix(key + i));
                    v[i] = to_bfloat16(vector ? 1.0f + amp * u : amp * u);
                }
                if (d.name.find("experts.3.gate_proj") != std::string::npos) v[5 * H + 7] = to_bfloat16(40.0f * amp);
            }, std::size_t(1) << 20, {{"format", "pt"}});
            const nlohmann::json cfg = {{"architectures", {"Qwen3MoeForCausalLM"}},
                                        {"model_type", "qwen3_moe"},
                                        {"hidden_size", H},
                                        {"num_hidden_layers", L},
                                        {"num_experts", E},
                                        {"num_experts_per_tok", K},
                                        {"moe_intermediate_size", I},
                                        {"norm_topk_prob", true},
                                        {"rms_norm_eps", 1e-6},
                                        {"hidden_act", "silu"},
                                        {"decoder_sparse_step", 1},
                                        {"mlp_only_layers", nlohmann::json::array()},
                                        {"torch_dtype", "bfloat16"}};
            std::ofstream(dir / "config.json") << cfg.dump(2);
        }
        ~qwen3_checkpoint() { fs::remove_all(dir); }

        static config defaults()
        {
            config c;
            c.arch = qwen3_moe();
            c.top_k = 8;
            return c;
        }
    };

    std::vector<float> tokens(std::size_t T)
    {
        std::vector<float> x(T * H);
        for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.61f * static_cast<float>(i) + 0.3f) * 1.3f;
        return x;
    }

    std::vector<float> floats(const io::checkpoint& ck, const std::string& name)
    {
        const auto v = ck.view<bfloat16_t>(name);
        std::vector<float> out(v.rows * v.cols);
        for (std::size_t r = 0; r < v.rows; ++r)
        {
            for (std::size_t c = 0; c < v.cols; ++c) out[r * v.cols + c] = to_float(v.row(r)[c]);
        }
        return out;
    }
}

TEST_CASE("Qwen3-MoE: config.json keys, per-expert tensors and the forward pass against a direct computation")
{
    qwen3_checkpoint ck;
    checkpoint_source src(ck.dir, qwen3_checkpoint::defaults());
    const config& c = src.cfg();
    CHECK(c.hidden == H);
    CHECK(c.layers == L);
    CHECK(c.experts == E);
    CHECK(c.top_k == K);
    CHECK(c.expert_intermediate == I);
    CHECK(c.renormalize);  // norm_topk_prob: true overrides the table's default
    CHECK_FALSE(c.has_dense());

    const layer_weights& w = src.load_layer(1, 2);
    REQUIRE(w.experts.size() == 3);
    CHECK(w.experts[0].name == "model.layers.1.mlp.experts.*.gate_proj.weight");
    CHECK(w.experts[2].shape() == shape_type{E, H, I});
    CHECK(w.dense.empty());

    const std::size_t T = 5;
    const auto x = tokens(T);
    std::vector<float> y(T * H);
    std::vector<token_route> routes;
    ffn_forward(c, w, view_operators(w, 2), x.data(), T, y.data(), &routes, 2);

    // Direct: h = RMSNorm(x) ⊙ w; p = softmax(gate·h); top-k renormalised; y = x + Σ p_e ·
    // down_e(silu(gate_e·h) ⊙ up_e·h), in double from the stored bf16 values.
    const io::checkpoint files = io::checkpoint::open(ck.dir);
    const std::string p = "model.layers.1.";
    const auto norm = floats(files, p + "post_attention_layernorm.weight");
    const auto router = floats(files, p + "mlp.gate.weight");
    for (std::size_t t = 0; t < T; ++t)
    {
        const float* xt = x.data() + t * H;
        double ss = 0;
        for (std::size_t i = 0; i < H; ++i) ss += double(xt[i]) * xt[i];
        const double inv = 1.0 / std::sqrt(ss / H + 1e-6);
        std::vector<double> h(H);
        for (std::size_t i = 0; i < H; ++i) h[i] = xt[i] * inv * norm[i];
        std::vector<double> logit(E, 0.0), prob(E);
        for (std::size_t e = 0; e < E; ++e)
        {
            for (std::size_t i = 0; i < H; ++i) logit[e] += router[e * H + i] * h[i];
        }
        const double mx = *std::max_element(logit.begin(), logit.end());
        double z = 0;
        for (std::size_t e = 0; e < E; ++e) z += prob[e] = std::exp(logit[e] - mx);
        for (double& q : prob) q /= z;
        std::vector<std::size_t> order(E);
        std::iota(order.begin(), order.end(), std::size_t{0});
        std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return prob[a] > prob[b]; });
        CHECK(routes[t].experts == std::vector<std::size_t>(order.begin(), order.begin() + K));
        const double top = prob[order[0]] + prob[order[1]];
        std::vector<double> out(H, 0.0);
        for (std::size_t k = 0; k < K; ++k)
        {
            const std::size_t e = order[k];
            CHECK(routes[t].weights[k] == doctest::Approx(prob[e] / top).epsilon(1e-5));
            const std::string b = p + "mlp.experts." + std::to_string(e) + ".";
            const auto g = floats(files, b + "gate_proj.weight"), u = floats(files, b + "up_proj.weight"), d = floats(files, b + "down_proj.weight");
            std::vector<double> a(I);
            for (std::size_t j = 0; j < I; ++j)
            {
                double gs = 0, us = 0;
                for (std::size_t i = 0; i < H; ++i)
                {
                    gs += g[j * H + i] * h[i];
                    us += u[j * H + i] * h[i];
                }
                a[j] = gs / (1.0 + std::exp(-gs)) * us;
            }
            for (std::size_t i = 0; i < H; ++i)
            {
                double s = 0;
                for (std::size_t j = 0; j < I; ++j) s += d[i * I + j] * a[j];
                out[i] += prob[e] / top * s;
            }
        }
        for (std::size_t i = 0; i < H; ++i) CHECK(y[t * H + i] == doctest::Approx(xt[i] + out[i]).epsilon(1e-4));
    }

    // Without norm_topk_prob the chosen probabilities are used as they are.
    config raw = c;
    raw.renormalize = false;
    std::vector<token_route> raw_routes;
    ffn_forward(raw, w, view_operators(w, 1), x.data(), T, y.data(), &raw_routes, 1);
    CHECK(raw_routes[0].weights[0] + raw_routes[0].weights[1] < 1.0f);
    CHECK(raw_routes[0].weights[0] / raw_routes[0].weights[1] == doctest::Approx(routes[0].weights[0] / routes[0].weights[1]).epsilon(1e-5));
}

TEST_CASE("Qwen3-MoE: validated and converted to compressed-tensors; the output decodes to the experts")
{
    qwen3_checkpoint ck;
    checkpoint_source src(ck.dir, qwen3_checkpoint::defaults());
    const config& c = src.cfg();
    validate_options o;
    o.tokens = 6;
    o.threads = 2;
    for (auto& s : o.specs) s.scale_type = element_type::bf16;
    o.gated = 1;  // per_channel
    const fs::path out = ck.dir.string() + "_int8";
    fs::remove_all(out);
    {
        converted_writer writer(out, src, ck.dir, o.specs[1], L, 2);
        const auto rep = validate(c, [&](std::size_t l) -> const layer_weights& { return src.load_layer(l, 2); }, tokens(o.tokens), o, &writer);
        REQUIRE(rep.layers.size() == L);
        for (const auto& lr : rep.layers)
        {
            const auto& pt = lr.by_spec[0];
            const auto& pc = lr.by_spec[1];
            REQUIRE(pc.tensors.size() == 3);
            CHECK(pc.tensors[0].experts.size() == E);
            CHECK(pc.tensors[0].shape == shape_type{E, I, H});
            CHECK(pc.hidden_cos_min > 0.9995);
            // The outlier in gate_proj costs the per-tensor scale, not the per-channel one.
            CHECK(pt.tensors[0].total.sqnr_db < pc.tensors[0].total.sqnr_db - 6.0);
            CHECK(pt.tensors[0].total.bits_lost_max > 4.0);
        }
        CHECK(rep.passed);
        writer.finish();
    }

    const io::checkpoint conv = io::checkpoint::open(out);
    const io::checkpoint files = io::checkpoint::open(ck.dir);
    // Every expert Linear replaced by its compressed form; the rest copied byte for byte.
    for (std::size_t l = 0; l < L; ++l)
    {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        for (std::size_t e = 0; e < E; ++e)
        {
            for (const char* proj : {"gate_proj", "up_proj", "down_proj"})
            {
                const std::string b = p + "mlp.experts." + std::to_string(e) + "." + proj;
                CHECK_FALSE(conv.contains(b + ".weight"));
                REQUIRE(conv.contains(b + ".weight_packed"));
                REQUIRE(conv.contains(b + ".weight_scale"));
                const auto& packed = conv.info(b + ".weight_packed");
                const std::size_t rows = std::string(proj) == "down_proj" ? H : I, cols = std::string(proj) == "down_proj" ? I : H;
                CHECK(packed.type == io::dtype::i32);
                CHECK(packed.shape == shape_type{rows, cols / 4});
                CHECK(conv.info(b + ".weight_scale").shape == shape_type{rows, 1});
                // Decode by the pack-quantized rules: byte j of word w is code + 128.
                const auto words = conv.bytes(b + ".weight_packed");
                const auto scales = conv.view<bfloat16_t>(b + ".weight_scale");
                const auto ref = floats(files, b + ".weight");
                error_accumulator acc;
                std::vector<float> row(cols);
                for (std::size_t r = 0; r < rows; ++r)
                {
                    for (std::size_t k = 0; k < cols; ++k)
                    {
                        std::uint32_t word;
                        std::memcpy(&word, words.data() + (r * cols / 4 + k / 4) * 4, 4);
                        const int code = static_cast<int>((word >> (8 * (k % 4))) & 0xffu) - 128;
                        row[k] = static_cast<float>(code) * to_float(scales.row(r)[0]);
                    }
                    acc.add(ref.data() + r * cols, row.data(), cols);
                }
                CHECK(finish(acc, cols).cosine > 0.9995);  // int8 per channel; 0.9999 but for the outlier rows
            }
        }
        for (const std::string n : {"mlp.gate.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight"})
        {
            const auto a = conv.bytes(p + n), b = files.bytes(p + n);
            CHECK(std::equal(a.begin(), a.end(), b.begin(), b.end()));
        }
    }
    CHECK(conv.contains("lm_head.weight"));

    // quantization_config: the targets name the experts under the checkpoint's (and vLLM's)
    // module names; the router, attention and lm_head are ignored.
    std::ifstream in(out / "config.json");
    const nlohmann::json cfg = nlohmann::json::parse(in);
    CHECK(cfg["model_type"] == "qwen3_moe");
    const auto& qc = cfg["quantization_config"];
    REQUIRE(qc["config_groups"].size() == 1);
    const auto targets = qc["config_groups"]["group_0"]["targets"].get<std::vector<std::string>>();
    auto covered = [&](const std::vector<std::string>& entries, const std::string& module) {
        return std::any_of(entries.begin(), entries.end(), [&](const std::string& t) { return io::compressed_tensors::entry_matches(t, module); });
    };
    CHECK(covered(targets, "model.layers.2.mlp.experts.7.down_proj"));
    CHECK(covered(targets, "model.layers.0.mlp.experts.0.gate_proj"));
    CHECK_FALSE(covered(targets, "model.layers.0.mlp.gate"));
    CHECK_FALSE(covered(targets, "model.layers.0.self_attn.q_proj"));
    const auto ignore = qc["ignore"].get<std::vector<std::string>>();
    CHECK(covered(ignore, "model.layers.1.mlp.gate"));
    CHECK(covered(ignore, "model.layers.1.self_attn.o_proj"));
    CHECK(covered(ignore, "lm_head"));
    CHECK_FALSE(covered(ignore, "model.layers.1.mlp.experts.3.up_proj"));
    for (const auto& i : ignore) CHECK_MESSAGE(i.find("\\.\\.") == std::string::npos, i);  // no entry for a dense MLP it lacks
    CHECK(qc["config_groups"]["group_0"]["weights"]["strategy"] == "channel");
    fs::remove_all(out);
}

TEST_CASE("Qwen3-MoE: a checkpoint missing an expert is refused with the tensor's name")
{
    qwen3_checkpoint ck;
    config d = qwen3_checkpoint::defaults();
    d.arch.experts = "mlp.moe_experts";  // a table that does not fit the checkpoint
    try
    {
        checkpoint_source src(ck.dir, d);
        FAIL("expected an error");
    }
    catch (const orbitq::error& e)
    {
        CHECK(std::string(e.what()).find("lacks tensor 'model.layers.0.mlp.moe_experts.0.gate_proj.weight' (is it a qwen3_moe MoE checkpoint?)")
              != std::string::npos);
    }
}
