/// @file gemma4.hpp
/// @brief Gemma 4 26B-A4B MoE FFN: configuration, tensor names, and the reference forward pass of
///        the FFN part of one decoder layer (router, top-k experts, dense branch, norms).
///
/// The forward pass follows the Hugging Face transformers implementation of Gemma 4 exactly:
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
/// with rms(v) = v·(mean(v²)+eps)^-1/2 and RMSNorm_w(v) = rms(v) ⊙ w (weight used as-is).
///
/// Every matrix product goes through `ffn_operators`, so the same forward runs on the source
/// weights (`view_operators`, float32 dot products of the widened rows) and on quantized weights
/// (`quantized_operators`, orbitq::gemm on the codes and stored scales): what is validated is the
/// arithmetic an inference engine performs on the stored codes and scales.
///
/// Token batches are row-major: token t of a batch of vectors of length n is x[t*n, (t+1)*n).
#pragma once

#include "orbitq/core/error.hpp"
#include "orbitq/core/float16.hpp"
#include "orbitq/core/parallel.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/gemv.hpp"
#include "orbitq/quantize.hpp"

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <functional>
#include <numeric>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace orbitq::models::gemma4
{
    /// @brief The FFN shape of a Gemma 4 MoE text model (defaults: 26B-A4B).
    struct config
    {
        std::size_t hidden = 2816;               ///< H
        std::size_t layers = 30;
        std::size_t experts = 128;               ///< E
        std::size_t top_k = 8;
        std::size_t expert_intermediate = 704;   ///< I; gate_up has 2I rows per expert
        std::size_t dense_intermediate = 2112;   ///< width of the dense (shared) MLP
        double rms_eps = 1e-6;
        std::string prefix = "model.language_model.";  ///< prefix of the text weights

        /// @brief Checks the invariants the forward pass relies on.
        /// @throws error (invalid_argument) naming the offending field.
        void check() const
        {
            auto need = [](bool ok, const std::string& what) {
                if (!ok) throw error(error_kind::invalid_argument, "gemma4 config: " + what);
            };
            need(hidden > 0 && layers > 0 && experts > 0 && expert_intermediate > 0 && dense_intermediate > 0,
                 "every dimension must be > 0");
            need(top_k > 0 && top_k <= experts, "top_k must be in [1, experts], got top_k " + std::to_string(top_k)
                                                    + " with " + std::to_string(experts) + " experts");
            need(rms_eps > 0.0, "rms_eps must be > 0");
        }
    };

    /// @brief The seven RMSNorm weights of a layer, each [H].
    enum class norm_id
    {
        input,
        post_attention,
        pre_ffn,
        post_ffn_1,
        pre_ffn_2,
        post_ffn_2,
        post_ffn
    };
    inline constexpr std::size_t norm_count = 7;

    /// @brief The three dense-MLP matrices: gate and up [Dd, H], down [H, Dd].
    enum class dense_matrix
    {
        gate,
        up,
        down
    };

    /// @brief The two stacked expert tensors: gate_up [E, 2I, H] and down [E, H, I].
    enum class expert_matrix
    {
        gate_up,
        down
    };

    /// @brief Tensor names of the Hugging Face checkpoint.
    namespace names
    {
        /// @brief `<prefix>layers.<L>.`
        inline std::string layer_prefix(const config& c, std::size_t layer)
        {
            return c.prefix + "layers." + std::to_string(layer) + ".";
        }
        inline std::string norm(const config& c, std::size_t layer, norm_id n)
        {
            static constexpr std::array<const char*, norm_count> stem = {
                "input_layernorm",          "post_attention_layernorm",     "pre_feedforward_layernorm",
                "post_feedforward_layernorm_1", "pre_feedforward_layernorm_2", "post_feedforward_layernorm_2",
                "post_feedforward_layernorm"};
            return layer_prefix(c, layer) + stem[static_cast<std::size_t>(n)] + ".weight";
        }
        inline std::string expert(const config& c, std::size_t layer, expert_matrix m)
        {
            return layer_prefix(c, layer) + (m == expert_matrix::gate_up ? "experts.gate_up_proj" : "experts.down_proj");
        }
        inline std::string dense(const config& c, std::size_t layer, dense_matrix m)
        {
            static constexpr std::array<const char*, 3> stem = {"mlp.gate_proj.weight", "mlp.up_proj.weight",
                                                                "mlp.down_proj.weight"};
            return layer_prefix(c, layer) + stem[static_cast<std::size_t>(m)];
        }
        inline std::string router_proj(const config& c, std::size_t layer) { return layer_prefix(c, layer) + "router.proj.weight"; }
        inline std::string router_scale(const config& c, std::size_t layer) { return layer_prefix(c, layer) + "router.scale"; }
        inline std::string per_expert_scale(const config& c, std::size_t layer)
        {
            return layer_prefix(c, layer) + "router.per_expert_scale";
        }
        inline std::string layer_scalar(const config& c, std::size_t layer) { return layer_prefix(c, layer) + "layer_scalar"; }

        /// @brief Per-expert Linear names of a converted checkpoint (vLLM's per-expert naming):
        ///        `<P>experts.<e>.<proj>.<suffix>`, proj gate_proj / up_proj / down_proj.
        inline std::string split_expert(const config& c, std::size_t layer, std::size_t e, const std::string& proj,
                                        const std::string& suffix)
        {
            return layer_prefix(c, layer) + "experts." + std::to_string(e) + "." + proj + "." + suffix;
        }
    }

    /// @brief The expected shape of every FFN tensor of a layer, by name (for checking a checkpoint).
    inline std::vector<std::pair<std::string, shape_type>> ffn_tensor_shapes(const config& c, std::size_t layer)
    {
        const std::size_t H = c.hidden, E = c.experts, I = c.expert_intermediate, D = c.dense_intermediate;
        std::vector<std::pair<std::string, shape_type>> out = {
            {names::expert(c, layer, expert_matrix::gate_up), {E, 2 * I, H}},
            {names::expert(c, layer, expert_matrix::down), {E, H, I}},
            {names::dense(c, layer, dense_matrix::gate), {D, H}},
            {names::dense(c, layer, dense_matrix::up), {D, H}},
            {names::dense(c, layer, dense_matrix::down), {H, D}},
            {names::router_proj(c, layer), {E, H}},
            {names::router_scale(c, layer), {H}},
            {names::per_expert_scale(c, layer), {E}},
            {names::layer_scalar(c, layer), {1}},
        };
        for (std::size_t n = 0; n < norm_count; ++n) out.push_back({names::norm(c, layer, static_cast<norm_id>(n)), {H}});
        return out;
    }

    /// @brief A view of a weight in whichever element type the checkpoint stores.
    using any_view = std::variant<matrix_view<float>, matrix_view<bfloat16_t>, matrix_view<float16_t>>;

    /// @brief Rows x cols of an any_view.
    inline std::size_t rows_of(const any_view& v) { return std::visit([](const auto& m) { return m.rows; }, v); }
    inline std::size_t cols_of(const any_view& v) { return std::visit([](const auto& m) { return m.cols; }, v); }

    /// @brief Copies an any_view (any rank) to float32, flat.
    inline std::vector<float> to_floats(const any_view& v)
    {
        return std::visit(
            [](const auto& m) {
                std::vector<float> out(m.rows * m.cols);
                for (std::size_t r = 0; r < m.rows; ++r)
                {
                    for (std::size_t c = 0; c < m.cols; ++c) out[r * m.cols + c] = to_float(m.row(r)[c]);
                }
                return out;
            },
            v);
    }

    /// @brief Rows [first, first + count) of a view, as a view with shape {count, cols}.
    template <weight_element T>
    matrix_view<T> row_block(const matrix_view<T>& m, std::size_t first, std::size_t count, std::string name)
    {
        if (first + count > m.rows) throw error(error_kind::shape_mismatch, "row block outside tensor '" + m.name + "'");
        return matrix_view<T>{m.row(first), count, m.cols, m.stride, shape_type{count, m.cols}, std::move(name)};
    }

    /// @brief The weights of one layer's FFN: the matrices as views (not owned), the small
    ///        vectors widened to float32 (owned).
    struct layer_weights
    {
        std::size_t layer = 0;
        any_view gate_up;       ///< [E, 2I, H] seen as E*2I rows of H
        any_view down;          ///< [E, H, I] seen as E*H rows of I
        any_view dense_gate;    ///< [Dd, H]
        any_view dense_up;      ///< [Dd, H]
        any_view dense_down;    ///< [H, Dd]
        any_view router_proj;   ///< [E, H]
        std::vector<float> router_scale;                     ///< [H]
        std::vector<float> per_expert_scale;                 ///< [E]
        std::array<std::vector<float>, norm_count> norms;    ///< each [H]
        float layer_scalar = 1.0f;
        /// Optional: tells the source that expert e's matrices are not needed for now (a
        /// memory-mapped checkpoint drops their pages; they are re-read on the next use).
        std::function<void(std::size_t e)> release_expert;

        const std::vector<float>& norm(norm_id n) const { return norms[static_cast<std::size_t>(n)]; }

        /// @brief Checks every shape against the config.
        /// @throws error (shape_mismatch) naming the tensor.
        void check(const config& c) const
        {
            auto need = [&](const any_view& v, std::size_t rows, std::size_t cols, const char* what) {
                if (rows_of(v) != rows || cols_of(v) != cols)
                {
                    throw error(error_kind::shape_mismatch,
                                "layer " + std::to_string(layer) + " " + what + ": expected " + std::to_string(rows) + " x "
                                    + std::to_string(cols) + " rows x cols, got " + std::to_string(rows_of(v)) + " x "
                                    + std::to_string(cols_of(v)));
                }
            };
            const std::size_t H = c.hidden, E = c.experts, I = c.expert_intermediate, D = c.dense_intermediate;
            need(gate_up, E * 2 * I, H, "experts.gate_up_proj");
            need(down, E * H, I, "experts.down_proj");
            need(dense_gate, D, H, "mlp.gate_proj");
            need(dense_up, D, H, "mlp.up_proj");
            need(dense_down, H, D, "mlp.down_proj");
            need(router_proj, E, H, "router.proj");
            auto need_vec = [&](const std::vector<float>& v, std::size_t n, const char* what) {
                if (v.size() != n)
                {
                    throw error(error_kind::shape_mismatch, "layer " + std::to_string(layer) + " " + what + ": expected "
                                                                + std::to_string(n) + " values, got " + std::to_string(v.size()));
                }
            };
            need_vec(router_scale, H, "router.scale");
            need_vec(per_expert_scale, E, "router.per_expert_scale");
            for (const auto& n : norms) need_vec(n, H, "norm weight");
        }
    };

    /// @name Elementwise pieces of the forward pass
    /// @{
    /// @brief gelu with the tanh approximation (PyTorch `gelu(approximate="tanh")`).
    inline float gelu_tanh(float x) noexcept
    {
        constexpr float k = 0.7978845608028654f;  // sqrt(2/pi)
        return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
    }

    /// @brief out = v · (mean(v²) + eps)^-1/2 ⊙ w (w empty: no weight). Mean in double.
    /// @pre out and v have n elements; w is empty or has n elements. out may alias v.
    inline void rms_norm(const float* v, std::size_t n, const std::vector<float>& w, double eps, float* out) noexcept
    {
        double ss = 0.0;
        for (std::size_t i = 0; i < n; ++i) ss += static_cast<double>(v[i]) * v[i];
        const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
        if (w.empty())
        {
            for (std::size_t i = 0; i < n; ++i) out[i] = v[i] * inv;
        }
        else
        {
            for (std::size_t i = 0; i < n; ++i) out[i] = v[i] * inv * w[i];
        }
    }

    /// @brief In-place softmax (max-subtracted, accumulated in double).
    inline void softmax(std::vector<float>& v) noexcept
    {
        if (v.empty()) return;
        const float m = *std::max_element(v.begin(), v.end());
        double sum = 0.0;
        for (float& x : v)
        {
            x = std::exp(x - m);
            sum += x;
        }
        for (float& x : v) x = static_cast<float>(x / sum);
    }

    /// @brief One token's routing: the chosen experts (ascending probability rank) and weights.
    struct token_route
    {
        std::vector<std::size_t> experts;  ///< top-k, highest probability first (ties: lower index)
        std::vector<float> weights;        ///< renormalised probability × per_expert_scale
    };

    /// @brief Top-k of probabilities p, renormalised to sum 1, times per_expert_scale.
    /// @pre 0 < k <= p.size() == per_expert_scale.size()
    inline token_route top_k_route(const std::vector<float>& p, std::size_t k, const std::vector<float>& per_expert_scale)
    {
        std::vector<std::size_t> idx(p.size());
        std::iota(idx.begin(), idx.end(), std::size_t{0});
        std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(),
                          [&](std::size_t a, std::size_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
        token_route r;
        r.experts.assign(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k));
        double sum = 0.0;
        for (std::size_t e : r.experts) sum += p[e];
        for (std::size_t e : r.experts) r.weights.push_back(static_cast<float>(p[e] / sum) * per_expert_scale[e]);
        return r;
    }
    /// @}

    namespace detail
    {
        /// Dot product of two float vectors with xsimd batches (four accumulators).
        inline float dot(const float* a, const float* b, std::size_t n) noexcept
        {
            using batch = xsimd::batch<float>;
            constexpr std::size_t w = batch::size;
            batch s0(0.0f), s1(0.0f), s2(0.0f), s3(0.0f);
            std::size_t i = 0;
            for (; i + 4 * w <= n; i += 4 * w)
            {
                s0 = xsimd::fma(batch::load_unaligned(a + i), batch::load_unaligned(b + i), s0);
                s1 = xsimd::fma(batch::load_unaligned(a + i + w), batch::load_unaligned(b + i + w), s1);
                s2 = xsimd::fma(batch::load_unaligned(a + i + 2 * w), batch::load_unaligned(b + i + 2 * w), s2);
                s3 = xsimd::fma(batch::load_unaligned(a + i + 3 * w), batch::load_unaligned(b + i + 3 * w), s3);
            }
            for (; i + w <= n; i += w) s0 = xsimd::fma(batch::load_unaligned(a + i), batch::load_unaligned(b + i), s0);
            // Horizontal sum through memory (GCC 12 warns inside its own AVX-512 shuffle intrinsics).
            alignas(64) float lanes[w];
            ((s0 + s1) + (s2 + s3)).store_aligned(lanes);
            float s = 0.0f;
            for (std::size_t k = 0; k < w; ++k) s += lanes[k];
            for (; i < n; ++i) s += a[i] * b[i];
            return s;
        }

        /// Widens a row of 16-bit floats (or returns the float row itself).
        template <weight_element T>
        const float* row_as_float(const T* row, std::size_t n, float* buf) noexcept
        {
            if constexpr (std::same_as<T, float>)
            {
                return row;
            }
            else
            {
                for (std::size_t i = 0; i < n; ++i) buf[i] = to_float(row[i]);
                return buf;
            }
        }
    }

    /// @brief y[t*rows + r] = Σ_c W[r, c] · x[t*cols + c] for t < tokens, where row r of W is
    ///        produced on demand by `get_row(r, buf)` (returning a pointer to cols floats, either
    ///        buf or stored float data). Rows are split across threads; every output element is
    ///        computed by one thread in one order, so the result does not depend on `threads`.
    template <class RowFn>
    void apply_rows(std::size_t rows, std::size_t cols, RowFn&& get_row, const float* x, std::size_t tokens, float* y,
                    unsigned threads)
    {
        if (tokens == 0 || rows == 0) return;
        parallel_rows(rows, threads, [&](std::size_t first, std::size_t last) {
            std::vector<float> buf(cols);
            for (std::size_t r = first; r < last; ++r)
            {
                const float* w = get_row(r, buf.data());
                for (std::size_t t = 0; t < tokens; ++t) y[t * rows + r] = detail::dot(w, x + t * cols, cols);
            }
        });
    }

    /// @brief y = W x over a batch of tokens for a (source-precision) matrix view.
    inline void apply(const any_view& w, const float* x, std::size_t tokens, float* y, unsigned threads)
    {
        std::visit(
            [&](const auto& m) {
                apply_rows(
                    m.rows, m.cols, [&](std::size_t r, float* buf) { return detail::row_as_float(m.row(r), m.cols, buf); }, x,
                    tokens, y, threads);
            },
            w);
    }

    /// @brief y = Ŵ x for a quantized tensor, computed by the inference kernel orbitq::gemm
    ///        straight from the codes and stored scales (in batches of at most gemm_max_tokens
    ///        tokens): what is validated is what inference computes.
    inline void apply(const quantized_tensor& q, const float* x, std::size_t tokens, float* y, unsigned threads)
    {
        for (std::size_t t0 = 0; t0 < tokens; t0 += gemm_max_tokens)
        {
            const std::size_t n = std::min(gemm_max_tokens, tokens - t0);
            gemm(q, std::span<const float>(x + t0 * q.cols, n * q.cols), n, std::span<float>(y + t0 * q.rows, n * q.rows), threads);
        }
    }

    /// @brief How an engine quantizes the activations entering a quantized product.
    enum class activation_quantization
    {
        none,           ///< weight-only: activations stay in floating point
        int8_per_token  ///< dynamic symmetric int8, one scale per token (W8A8 kernels)
    };

    /// @brief Replaces each token of `x` (tokens × n) by its dynamic symmetric int8 quantization,
    ///        dequantized: scale = amax/127, code = round half to even (x/scale) clamped to
    ///        [-128, 127], value = code·scale; a zero token stays zero. The product with
    ///        quantized weights then equals the engine's int8 × int8 product, rescaled.
    inline void quantize_tokens_int8(float* x, std::size_t tokens, std::size_t n)
    {
        for (std::size_t t = 0; t < tokens; ++t)
        {
            float* v = x + t * n;
            float amax = 0.0f;
            for (std::size_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(v[i]));
            if (amax == 0.0f) continue;
            const float scale = amax / 127.0f;
            for (std::size_t i = 0; i < n; ++i) v[i] = std::clamp(std::nearbyint(v[i] / scale), -128.0f, 127.0f) * scale;
        }
    }

    /// @brief The matrix products of one layer's FFN. Implementations decide how weights are
    ///        stored (source precision, quantized, ...); the forward pass only calls these.
    class ffn_operators
    {
    public:
        virtual ~ffn_operators() = default;
        /// @brief y[t*rows + r] = (M x_t)[r] for a dense-MLP matrix M.
        virtual void dense(dense_matrix m, const float* x, std::size_t tokens, float* y) const = 0;
        /// @brief y = M_e x for expert e's slice of a stacked expert tensor (gate_up: 2I rows of
        ///        H; down: H rows of I).
        virtual void expert(std::size_t e, expert_matrix m, const float* x, std::size_t tokens, float* y) const = 0;
    };

    /// @brief ffn_operators on the source weights of a layer.
    class view_operators : public ffn_operators
    {
    public:
        view_operators(const config& c, const layer_weights& w, unsigned threads)
            : m_cfg(c)
            , m_w(w)
            , m_threads(threads)
        {
        }
        void dense(dense_matrix m, const float* x, std::size_t tokens, float* y) const override
        {
            apply(m == dense_matrix::gate ? m_w.dense_gate : m == dense_matrix::up ? m_w.dense_up : m_w.dense_down, x, tokens, y,
                  m_threads);
        }
        void expert(std::size_t e, expert_matrix m, const float* x, std::size_t tokens, float* y) const override
        {
            const std::size_t rows = m == expert_matrix::gate_up ? 2 * m_cfg.expert_intermediate : m_cfg.hidden;
            const any_view& v = m == expert_matrix::gate_up ? m_w.gate_up : m_w.down;
            std::visit([&](const auto& s) { apply(any_view{row_block(s, e * rows, rows, s.name)}, x, tokens, y, m_threads); }, v);
            if (m == expert_matrix::down && m_w.release_expert) m_w.release_expert(e);
        }

    private:
        const config& m_cfg;
        const layer_weights& m_w;
        unsigned m_threads;
    };

    /// @brief One expert's quantized matrices {gate_up [2I, H], down [H, I]}. A null tensor means
    ///        "not quantized: use the source weights".
    struct expert_slices
    {
        std::array<const quantized_tensor*, 2> q = {nullptr, nullptr};
    };

    /// @brief ffn_operators on quantized weights: experts through a provider (which may quantize
    ///        expert by expert on demand), dense matrices quantized or (null) source.
    class quantized_operators : public ffn_operators
    {
    public:
        using expert_provider = std::function<expert_slices(std::size_t e)>;

        /// @param experts returns expert e's quantized slices; called once per use.
        /// @param dense_q {gate, up, down} quantized, or nullptrs to use the source views.
        /// @param acts how the activations entering a quantized product are quantized first.
        quantized_operators(const config& c, const layer_weights& w, expert_provider experts,
                            std::array<const quantized_tensor*, 3> dense_q, unsigned threads,
                            activation_quantization acts = activation_quantization::none)
            : m_cfg(c)
            , m_src(c, w, threads)
            , m_experts(std::move(experts))
            , m_dense(dense_q)
            , m_threads(threads)
            , m_acts(acts)
        {
        }

        void dense(dense_matrix m, const float* x, std::size_t tokens, float* y) const override
        {
            const quantized_tensor* q = m_dense[static_cast<std::size_t>(m)];
            if (q == nullptr) m_src.dense(m, x, tokens, y);
            else apply_quantized(*q, x, tokens, y);
        }
        void expert(std::size_t e, expert_matrix m, const float* x, std::size_t tokens, float* y) const override
        {
            const std::size_t k = static_cast<std::size_t>(m);
            const expert_slices s = m_experts(e);
            if (s.q[k] == nullptr) return m_src.expert(e, m, x, tokens, y);
            const std::size_t rows = m == expert_matrix::gate_up ? 2 * m_cfg.expert_intermediate : m_cfg.hidden;
            if (s.q[k]->rows != rows || s.q[k]->cols != (m == expert_matrix::gate_up ? m_cfg.hidden : m_cfg.expert_intermediate))
            {
                throw error(error_kind::shape_mismatch, "quantized expert " + std::to_string(e) + " has the wrong shape");
            }
            apply_quantized(*s.q[k], x, tokens, y);
        }

    private:
        void apply_quantized(const quantized_tensor& q, const float* x, std::size_t tokens, float* y) const
        {
            if (m_acts == activation_quantization::none) return apply(q, x, tokens, y, m_threads);
            std::vector<float> xq(x, x + tokens * q.cols);
            quantize_tokens_int8(xq.data(), tokens, q.cols);
            apply(q, xq.data(), tokens, y, m_threads);
        }

        const config& m_cfg;
        view_operators m_src;
        expert_provider m_experts;
        std::array<const quantized_tensor*, 3> m_dense;
        unsigned m_threads;
        activation_quantization m_acts;
    };

    /// @brief Router of one layer for a batch of tokens (the router is never quantized).
    /// @param x tokens × H residual stream.
    inline std::vector<token_route> route(const config& c, const layer_weights& w, const float* x, std::size_t tokens,
                                          unsigned threads)
    {
        const std::size_t H = c.hidden, E = c.experts;
        std::vector<float> r(tokens * H);
        const float inv_sqrt_h = static_cast<float>(1.0 / std::sqrt(static_cast<double>(H)));
        for (std::size_t t = 0; t < tokens; ++t)
        {
            rms_norm(x + t * H, H, w.router_scale, c.rms_eps, r.data() + t * H);
            for (std::size_t i = 0; i < H; ++i) r[t * H + i] *= inv_sqrt_h;
        }
        std::vector<float> logits(tokens * E);
        apply(w.router_proj, r.data(), tokens, logits.data(), threads);
        std::vector<token_route> out;
        out.reserve(tokens);
        for (std::size_t t = 0; t < tokens; ++t)
        {
            std::vector<float> p(logits.begin() + static_cast<std::ptrdiff_t>(t * E),
                                 logits.begin() + static_cast<std::ptrdiff_t>((t + 1) * E));
            softmax(p);
            out.push_back(top_k_route(p, c.top_k, w.per_expert_scale));
        }
        return out;
    }

    /// @brief The FFN part of one layer on a batch of tokens: y = (x + RMSNorm_post_ffn(b1 + b2)) ·
    ///        layer_scalar (see the file brief).
    /// @param x tokens × H input (residual stream after attention).
    /// @param y tokens × H output (may not alias x).
    /// @param routes if not null, receives each token's routing.
    inline void ffn_forward(const config& c, const layer_weights& w, const ffn_operators& ops, const float* x,
                            std::size_t tokens, float* y, std::vector<token_route>* routes = nullptr, unsigned threads = 1)
    {
        const std::size_t H = c.hidden, I = c.expert_intermediate, D = c.dense_intermediate;
        // Dense branch.
        std::vector<float> h(tokens * H), g(tokens * D), u(tokens * D), b1(tokens * H);
        for (std::size_t t = 0; t < tokens; ++t) rms_norm(x + t * H, H, w.norm(norm_id::pre_ffn), c.rms_eps, h.data() + t * H);
        ops.dense(dense_matrix::gate, h.data(), tokens, g.data());
        ops.dense(dense_matrix::up, h.data(), tokens, u.data());
        for (std::size_t i = 0; i < tokens * D; ++i) g[i] = gelu_tanh(g[i]) * u[i];
        ops.dense(dense_matrix::down, g.data(), tokens, b1.data());
        for (std::size_t t = 0; t < tokens; ++t)
        {
            rms_norm(b1.data() + t * H, H, w.norm(norm_id::post_ffn_1), c.rms_eps, b1.data() + t * H);
        }

        // Expert branch: gather the tokens routed to each expert, one expert at a time.
        std::vector<token_route> rt = route(c, w, x, tokens, threads);
        for (std::size_t t = 0; t < tokens; ++t) rms_norm(x + t * H, H, w.norm(norm_id::pre_ffn_2), c.rms_eps, h.data() + t * H);
        std::vector<double> acc(tokens * H, 0.0);
        std::vector<float> xe, gu, a, out;
        for (std::size_t e = 0; e < c.experts; ++e)
        {
            std::vector<std::pair<std::size_t, float>> chosen;  // (token, weight)
            for (std::size_t t = 0; t < tokens; ++t)
            {
                for (std::size_t k = 0; k < rt[t].experts.size(); ++k)
                {
                    if (rt[t].experts[k] == e) chosen.emplace_back(t, rt[t].weights[k]);
                }
            }
            if (chosen.empty()) continue;
            const std::size_t n = chosen.size();
            xe.resize(n * H);
            for (std::size_t j = 0; j < n; ++j) std::copy_n(h.data() + chosen[j].first * H, H, xe.data() + j * H);
            gu.resize(n * 2 * I);
            ops.expert(e, expert_matrix::gate_up, xe.data(), n, gu.data());
            a.resize(n * I);
            for (std::size_t j = 0; j < n; ++j)
            {
                for (std::size_t i = 0; i < I; ++i) a[j * I + i] = gelu_tanh(gu[j * 2 * I + i]) * gu[j * 2 * I + I + i];
            }
            out.resize(n * H);
            ops.expert(e, expert_matrix::down, a.data(), n, out.data());
            for (std::size_t j = 0; j < n; ++j)
            {
                const double wt = chosen[j].second;
                double* dst = acc.data() + chosen[j].first * H;
                for (std::size_t i = 0; i < H; ++i) dst[i] += wt * out[j * H + i];
            }
        }
        std::vector<float> b2(tokens * H);
        for (std::size_t i = 0; i < tokens * H; ++i) b2[i] = static_cast<float>(acc[i]);
        for (std::size_t t = 0; t < tokens; ++t)
        {
            float* bt = b2.data() + t * H;
            rms_norm(bt, H, w.norm(norm_id::post_ffn_2), c.rms_eps, bt);
            const float* b1t = b1.data() + t * H;
            for (std::size_t i = 0; i < H; ++i) bt[i] += b1t[i];
            rms_norm(bt, H, w.norm(norm_id::post_ffn), c.rms_eps, bt);
            const float* xt = x + t * H;
            float* yt = y + t * H;
            for (std::size_t i = 0; i < H; ++i) yt[i] = (xt[i] + bt[i]) * w.layer_scalar;
        }
        if (routes) *routes = std::move(rt);
    }
}
