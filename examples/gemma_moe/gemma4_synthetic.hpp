/// @file gemma4_synthetic.hpp
/// @brief A deterministic, synthetic Gemma-4-shaped checkpoint, generated one layer at a time, as
///        an orbitq::moe::model_source.
///
/// Real Gemma 4 weights are not redistributable and do not fit this project's test machines, so
/// the converter's default run uses weights drawn from a documented distribution with the real
/// per-expert shapes. The distribution (all values stored as bf16, like the real checkpoint):
///
/// - **Bulk.** w = σ · s_e · s_r · z, where σ = 1/sqrt(fan_in) (fan_in = the row length), z is an
///   Irwin–Hall(4) variate rescaled to unit variance (a near-Gaussian bounded at ±3.46), s_e =
///   exp(0.15 z_e) a per-expert scale and s_r = exp(row_spread · z_r) a per-output-row scale
///   (log-normal: some channels are several times larger than others, as in trained weights).
/// - **Outliers.** Each expert matrix (gate_up and down of every expert) holds `outliers_per_matrix`
///   weights replaced by ±K_L · σ · (0.75 + 0.5 u), u uniform in [0, 1), at hashed positions.
///   The severity K_L varies by layer: the layers take the values K_min · (K_max/K_min)^(j/(L−1)),
///   j = 0..L−1, in an order shuffled by the seed, so every run has one mildest and one most
///   severe layer. Per-tensor INT8 scales grow with K_L (scale = amax/127); per-channel scales only
///   grow on the few rows that hold an outlier.
/// - **Dense MLP, router, norms.** Dense MLP: the bulk law without outliers. router.proj: σ = 1.5
///   (logits of unit-norm router inputs with a standard deviation near 1.5, so top-8 is a real
///   choice). Norm weights, router.scale, per_expert_scale: 1 + 0.1 z times a per-norm level:
///   the MoE branch norm (post_feedforward_layernorm_2) 1.0, the dense branch norm
///   (post_feedforward_layernorm_1) 0.3, the final post-FFN norm 0.3 (the FFN adds an update of
///   about 0.3 of the residual stream's RMS; larger updates make the random stack chaotic, so that
///   even tiny per-layer errors would decorrelate the streams over 30 layers); layer_scalar 0.96,
///   which keeps the residual stream's RMS near 1 over the stack.
/// - **Tokens.** T residual-stream vectors, z · (1 + 0.2 z_t): RMS near 1 per token.
///
/// The calibration (K_min, K_max, outliers_per_matrix) is chosen so that INT8 symmetric per-tensor
/// reproduces the per-layer hidden cosine range that per-tensor INT8 gives the real Gemma 4
/// 26B-A4B (about 0.9555 to 0.9999 over the layers), while INT8 per-channel stays
/// above 0.997 on every layer; see examples/gemma_moe/README.md for the measured values.
///
/// Randomness is counter-based: every value is splitmix64(seed, layer, tensor, index), so any
/// tensor (or any slice of it) can be regenerated independently, in parallel, in any order, with
/// the same result for every thread count.
#pragma once

#include "gemma4.hpp"

#include "orbitq/core/float16.hpp"
#include "orbitq/core/parallel.hpp"
#include "orbitq/io/safetensors.hpp"
#include "orbitq/moe/layer.hpp"
#include "orbitq/moe/source.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <numeric>
#include <span>
#include <string>
#include <vector>

namespace gemma4
{
    using orbitq::bfloat16_t;
    using orbitq::error;
    using orbitq::error_kind;
    using orbitq::moe::any_view;
    using orbitq::moe::config;
    using orbitq::moe::layer_weights;
    using orbitq::parallel_rows;
    using orbitq::to_bfloat16;
    using orbitq::to_float;

    /// @brief The parameters of the synthetic distribution (see the file brief).
    struct synthetic_options
    {
        std::size_t experts = 8;              ///< E (top_k stays 8 when E >= 8)
        std::size_t layers = 30;
        std::uint64_t seed = 0x6d6f652d67656d34ull;
        double k_min = 6.0;                   ///< mildest layer's outlier magnitude, in units of σ
        double k_max = 245.0;                 ///< most severe layer's outlier magnitude
        std::size_t outliers_per_matrix = 4;  ///< per expert matrix (gate_up[e], down[e])
        double row_spread = 0.15;             ///< log-normal σ of the per-row scale
        double expert_spread = 0.1;           ///< log-normal σ of the per-expert scale
        float moe_level = 1.0f;               ///< level of post_feedforward_layernorm_2 (MoE branch)
        float dense_level = 0.3f;             ///< level of post_feedforward_layernorm_1 (dense branch)
        float ffn_level = 0.3f;               ///< level of post_feedforward_layernorm (FFN output vs residual)
        float layer_scalar = 0.96f;
        float router_sigma = 1.5f;            ///< standard deviation of router.proj entries
        double severity_override = 0.0;       ///< > 0: every layer uses this K (calibration)
    };

    namespace detail
    {
        /// splitmix64's finaliser: a bijective 64-bit mix.
        constexpr std::uint64_t mix64(std::uint64_t z) noexcept
        {
            z += 0x9e3779b97f4a7c15ull;
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            return z ^ (z >> 31);
        }

        /// Unit-variance Irwin–Hall(4) variate from the four 16-bit lanes of a 64-bit hash.
        constexpr float normal_from(std::uint64_t h) noexcept
        {
            const std::uint32_t s = static_cast<std::uint32_t>(h & 0xffff) + static_cast<std::uint32_t>((h >> 16) & 0xffff)
                                    + static_cast<std::uint32_t>((h >> 32) & 0xffff) + static_cast<std::uint32_t>(h >> 48);
            // mean 4 * 65535/2, standard deviation 65536 * sqrt(4/12)
            return (static_cast<float>(s) - 131070.0f) * (1.0f / (65536.0f * 0.57735026919f));
        }

        /// Uniform in [0, 1) from the top 24 bits of a hash.
        constexpr float uniform_from(std::uint64_t h) noexcept { return static_cast<float>(h >> 40) * (1.0f / 16777216.0f); }

        /// Tensor identifiers in the hash key.
        enum class synth_tensor : std::uint64_t
        {
            gate_up = 1,
            down,
            dense_gate,
            dense_up,
            dense_down,
            router_proj,
            router_scale,
            per_expert_scale,
            layer_scalar,
            norm0,  // norm0 + n for norm n
            tokens = 64
        };
    }

    /// @brief The synthetic model: configuration, per-layer severity, and generators.
    class synthetic_model
    {
    public:
        explicit synthetic_model(synthetic_options o = {})
            : m_opt(o)
            , m_cfg(default_config())
        {
            m_cfg.experts = o.experts;
            m_cfg.layers = o.layers;
            m_cfg.top_k = std::min<std::size_t>(8, o.experts);
            m_cfg.check();
            // Severity schedule: a seeded shuffle of log-spaced values between k_min and k_max.
            std::vector<std::size_t> order(o.layers);
            std::iota(order.begin(), order.end(), std::size_t{0});
            for (std::size_t i = order.size(); i > 1; --i)
            {
                std::swap(order[i - 1], order[detail::mix64(o.seed ^ (0x5eedull + i)) % i]);
            }
            m_severity.resize(o.layers);
            for (std::size_t l = 0; l < o.layers; ++l)
            {
                const double f = o.layers > 1 ? static_cast<double>(order[l]) / static_cast<double>(o.layers - 1) : 1.0;
                m_severity[l] = o.severity_override > 0 ? o.severity_override : o.k_min * std::pow(o.k_max / o.k_min, f);
            }
        }

        const config& cfg() const noexcept { return m_cfg; }
        const synthetic_options& options() const noexcept { return m_opt; }

        /// @brief K_L: outlier magnitude of layer L in units of the bulk σ.
        double severity(std::size_t layer) const { return m_severity.at(layer); }

        /// @brief Fills `out` (the whole tensor named by `name`, in checkpoint layout) with bf16
        ///        values. Knows every tensor of checkpoint_tensor_shapes().
        /// @throws error (invalid_argument) for an unknown name or a wrong size.
        void fill(const std::string& name, std::size_t layer, bfloat16_t* out, std::size_t count, unsigned threads) const
        {
            const config& c = m_cfg;
            const std::size_t H = c.hidden, E = c.experts, I = c.expert_intermediate, D = c.dense_intermediate;
            using detail::synth_tensor;
            const std::string prefix = orbitq::moe::names::layer_prefix(c, layer);
            if (name.rfind(prefix, 0) != 0) throw error(error_kind::invalid_argument, "the synthetic model has no tensor '" + name + "'");
            const std::string rel = name.substr(prefix.size());
            const orbitq::moe::architecture& a = c.arch;
            auto need = [&](std::size_t n) {
                if (count != n) throw error(error_kind::invalid_argument, "synthetic tensor '" + name + "': wrong size");
            };
            auto dense = [&](std::size_t k) { return rel == a.dense + "." + orbitq::moe::names::mlp_stems[k] + ".weight"; };
            const float inv_sqrt_h = 1.0f / std::sqrt(float(H));
            if (rel == a.experts + ".gate_up_proj")
            {
                need(E * 2 * I * H);
                fill_experts(synth_tensor::gate_up, layer, out, 2 * I, H, threads);
            }
            else if (rel == a.experts + ".down_proj")
            {
                need(E * H * I);
                fill_experts(synth_tensor::down, layer, out, H, I, threads);
            }
            else if (dense(0) || dense(1))
            {
                need(D * H);
                fill_bulk(key(dense(0) ? synth_tensor::dense_gate : synth_tensor::dense_up, layer, 0), out, D, H, inv_sqrt_h, threads);
            }
            else if (dense(2))
            {
                need(H * D);
                fill_bulk(key(synth_tensor::dense_down, layer, 0), out, H, D, 1.0f / std::sqrt(float(D)), threads);
            }
            else if (rel == a.router)
            {
                need(E * H);
                const std::uint64_t k = key(synth_tensor::router_proj, layer, 0);
                for (std::size_t i = 0; i < E * H; ++i) out[i] = to_bfloat16(m_opt.router_sigma * detail::normal_from(detail::mix64(k + i)));
            }
            else if (rel == a.router_scale)
            {
                need(H);
                fill_near(key(synth_tensor::router_scale, layer, 0), out, H, 1.0f);
            }
            else if (rel == a.per_expert_scale)
            {
                need(E);
                fill_near(key(synth_tensor::per_expert_scale, layer, 0), out, E, 1.0f);
            }
            else if (rel == a.layer_scalar)
            {
                need(1);
                out[0] = to_bfloat16(m_opt.layer_scalar);
            }
            else
            {
                for (std::size_t n = 0; n < norm_stems.size(); ++n)
                {
                    if (rel != norm_stems[n]) continue;
                    need(H);
                    const float level = n == 3 ? m_opt.dense_level : n == 5 ? m_opt.moe_level : n == 6 ? m_opt.ffn_level : 1.0f;
                    fill_near(key(static_cast<synth_tensor>(static_cast<std::uint64_t>(synth_tensor::norm0) + n), layer, 0), out, H, level);
                    return;
                }
                throw error(error_kind::invalid_argument, "the synthetic model has no tensor '" + name + "'");
            }
        }

        /// @brief T input tokens (tokens × H), the residual stream entering layer 0.
        std::vector<float> tokens(std::size_t T) const
        {
            const std::size_t H = m_cfg.hidden;
            std::vector<float> x(T * H);
            for (std::size_t t = 0; t < T; ++t)
            {
                const std::uint64_t k = key(detail::synth_tensor::tokens, t, 0);
                const float s = 1.0f + 0.2f * detail::normal_from(detail::mix64(k ^ 0xabcdefull));
                for (std::size_t i = 0; i < H; ++i) x[t * H + i] = s * detail::normal_from(detail::mix64(k + i + 1));
            }
            return x;
        }

    private:
        std::uint64_t key(detail::synth_tensor t, std::size_t layer, std::size_t sub) const noexcept
        {
            return detail::mix64(m_opt.seed ^ detail::mix64((static_cast<std::uint64_t>(t) << 48) ^ (std::uint64_t(layer) << 24) ^ sub));
        }

        /// 1 + 0.1 z, times level.
        static void fill_near(std::uint64_t k, bfloat16_t* out, std::size_t n, float level)
        {
            for (std::size_t i = 0; i < n; ++i) out[i] = to_bfloat16(level * (1.0f + 0.1f * detail::normal_from(detail::mix64(k + i))));
        }

        /// Bulk law: sigma · s_r · z over a rows x cols matrix (s_r log-normal per row).
        void fill_bulk(std::uint64_t k, bfloat16_t* out, std::size_t rows, std::size_t cols, float sigma, unsigned threads) const
        {
            const float spread = static_cast<float>(m_opt.row_spread);
            parallel_rows(rows, threads, [&](std::size_t first, std::size_t last) {
                for (std::size_t r = first; r < last; ++r)
                {
                    const std::uint64_t kr = detail::mix64(k ^ (0x726f77ull + r));
                    const float s = sigma * std::exp(spread * detail::normal_from(kr));
                    bfloat16_t* o = out + r * cols;
                    for (std::size_t c = 0; c < cols; ++c) o[c] = to_bfloat16(s * detail::normal_from(detail::mix64(kr + c)));
                }
            });
        }

        /// E experts of rows x cols each: bulk law with a per-expert scale, then the outliers.
        void fill_experts(detail::synth_tensor t, std::size_t layer, bfloat16_t* out, std::size_t rows, std::size_t cols,
                          unsigned threads) const
        {
            const float sigma = 1.0f / std::sqrt(static_cast<float>(cols));
            const double K = m_severity.at(layer);
            for (std::size_t e = 0; e < m_cfg.experts; ++e)
            {
                const std::uint64_t k = key(t, layer, e + 1);
                const float se = std::exp(static_cast<float>(m_opt.expert_spread) * detail::normal_from(detail::mix64(k ^ 0x657870ull)));
                bfloat16_t* o = out + e * rows * cols;
                fill_bulk(k, o, rows, cols, sigma * se, threads);
                for (std::size_t j = 0; j < m_opt.outliers_per_matrix; ++j)
                {
                    const std::uint64_t h = detail::mix64(k ^ (0x6f75746cull + j));
                    const std::size_t pos = static_cast<std::size_t>(h % (rows * cols));
                    const float u = detail::uniform_from(detail::mix64(h));
                    const float sign = (h >> 63) ? -1.0f : 1.0f;
                    o[pos] = to_bfloat16(sign * static_cast<float>(K) * sigma * (0.75f + 0.5f * u));
                }
            }
        }

        synthetic_options m_opt;
        config m_cfg;
        std::vector<double> m_severity;
    };

    /// @brief Owns the bf16 buffers of one generated layer and exposes them as layer_weights.
    ///        Reused layer after layer, so memory stays at one layer.
    class synthetic_layer
    {
    public:
        /// @brief Generates layer `layer` of `m` (replacing the previous contents).
        const layer_weights& generate(const synthetic_model& m, std::size_t layer, unsigned threads)
        {
            const config& c = m.cfg();
            const std::string prefix = orbitq::moe::names::layer_prefix(c, layer);
            auto generated = [&](const std::string& name, std::size_t n) -> std::vector<bfloat16_t>& {
                auto& buf = m_buf[name.substr(prefix.size())];  // one buffer per tensor of a layer
                buf.resize(n);
                m.fill(name, layer, buf.data(), n, threads);
                return buf;
            };
            const auto shapes = orbitq::moe::layer_tensor_shapes(c, layer);
            auto shape_of = [&](const std::string& name) -> const orbitq::shape_type& {
                const auto it = std::find_if(shapes.begin(), shapes.end(), [&](const auto& s) { return s.first == name; });
                if (it == shapes.end()) throw error(error_kind::invalid_argument, "the synthetic model has no tensor '" + name + "'");
                return it->second;
            };
            auto view = [&](const std::string& name) -> any_view {
                const orbitq::shape_type& shape = shape_of(name);
                return orbitq::make_view<bfloat16_t>(generated(name, orbitq::shape_elements(shape)).data(), shape, name);
            };
            auto vec = [&](const std::string& rel) {
                const std::string name = prefix + rel;
                const auto& buf = generated(name, orbitq::shape_elements(shape_of(name)));
                std::vector<float> v(buf.size());
                for (std::size_t i = 0; i < buf.size(); ++i) v[i] = to_float(buf[i]);
                return v;
            };
            m_w = layer_weights{};
            const any_view gate_up = view(orbitq::moe::names::stacked_experts(c, layer, 0));
            const any_view down = view(orbitq::moe::names::stacked_experts(c, layer, 1));
            m_w.experts = orbitq::moe::stacked_experts(c, gate_up, down);
            orbitq::moe::load_non_experts(c, layer, m_w, view, vec);
            return m_w;
        }

    private:
        std::map<std::string, std::vector<bfloat16_t>> m_buf;
        layer_weights m_w;
    };

    /// @brief The synthetic model as a model_source.
    class synthetic_source : public orbitq::moe::model_source
    {
    public:
        explicit synthetic_source(synthetic_options o)
            : m_model(o)
        {
        }
        const synthetic_model& model() const noexcept { return m_model; }
        const config& cfg() const override { return m_model.cfg(); }
        const layer_weights& load_layer(std::size_t layer, unsigned threads) override { return m_layer.generate(m_model, layer, threads); }
        std::vector<orbitq::io::tensor_decl> tensors() const override
        {
            std::vector<orbitq::io::tensor_decl> out;
            for (std::size_t l = 0; l < cfg().layers; ++l)
            {
                for (auto& [name, shape] : checkpoint_tensor_shapes(cfg(), l)) out.push_back({name, orbitq::io::dtype::bf16, shape});
            }
            std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
            return out;
        }
        void read(const std::string& name, std::span<std::byte> out, unsigned threads) const override
        {
            m_model.fill(name, layer_of(name), reinterpret_cast<bfloat16_t*>(out.data()), out.size() / 2, threads);
        }
        nlohmann::json config_json() const override { return config_to_json(cfg()); }

    private:
        std::size_t layer_of(const std::string& name) const
        {
            const std::string p = cfg().arch.prefix + "layers.";
            if (name.rfind(p, 0) != 0) throw error(error_kind::invalid_argument, "the synthetic model has no tensor '" + name + "'");
            return std::stoul(name.substr(p.size()));
        }
        synthetic_model m_model;
        synthetic_layer m_layer;
    };

    /// @brief Writes the synthetic model as a sharded Hugging Face checkpoint plus config.json.
    /// @param max_shard_bytes shard size limit (default 2 GiB).
    inline void write_synthetic_checkpoint(const std::filesystem::path& dir, const synthetic_source& src, unsigned threads,
                                           std::size_t max_shard_bytes = std::size_t(2) << 30, bool overwrite = false)
    {
        orbitq::io::write_checkpoint(
            dir, src.tensors(), [&](const orbitq::io::tensor_decl& d, std::span<std::byte> out) { src.read(d.name, out, threads); },
            max_shard_bytes, {{"format", "pt"}}, overwrite);
        orbitq::io::write_file_atomic(dir / "config.json", src.config_json().dump(2) + "\n", true);
    }
}
