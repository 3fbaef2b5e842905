/// @file forward.hpp
/// @brief The reference forward pass of one MoE layer's FFN (see architecture.hpp for the steps),
///        on a batch of tokens.
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
#include "orbitq/moe/architecture.hpp"
#include "orbitq/moe/layer.hpp"
#include "orbitq/quantize.hpp"

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <numeric>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace orbitq::moe
{
    /// @name Elementwise pieces of the forward pass
    /// @{
    /// @brief gelu with the tanh approximation (PyTorch `gelu(approximate="tanh")`).
    inline float gelu_tanh(float x) noexcept
    {
        constexpr float k = 0.7978845608028654f;  // sqrt(2/pi)
        return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
    }

    /// @brief silu(x) = x · sigmoid(x).
    inline float silu(float x) noexcept { return x / (1.0f + std::exp(-x)); }

    /// @brief The activation of `kind` at x.
    inline float activate(activation_kind kind, float x) noexcept { return kind == activation_kind::silu ? silu(x) : gelu_tanh(x); }

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
        std::vector<float> weights;        ///< (renormalised) probability × per_expert_scale
    };

    /// @brief Top-k of probabilities p, renormalised to sum 1 when `renormalize`, times
    ///        per_expert_scale (when not empty).
    /// @pre 0 < k <= p.size(); per_expert_scale is empty or has p.size() values.
    inline token_route top_k_route(const std::vector<float>& p, std::size_t k, const std::vector<float>& per_expert_scale,
                                   bool renormalize = true)
    {
        std::vector<std::size_t> idx(p.size());
        std::iota(idx.begin(), idx.end(), std::size_t{0});
        std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(),
                          [&](std::size_t a, std::size_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
        token_route r;
        r.experts.assign(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k));
        double sum = 0.0;
        for (std::size_t e : r.experts) sum += p[e];
        for (std::size_t e : r.experts)
        {
            const float w = renormalize ? static_cast<float>(p[e] / sum) : p[e];
            r.weights.push_back(per_expert_scale.empty() ? w : w * per_expert_scale[e]);
        }
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
                s0 = kernels::simd::detail::mul_add(batch::load_unaligned(a + i), batch::load_unaligned(b + i), s0);
                s1 = kernels::simd::detail::mul_add(batch::load_unaligned(a + i + w), batch::load_unaligned(b + i + w), s1);
                s2 = kernels::simd::detail::mul_add(batch::load_unaligned(a + i + 2 * w), batch::load_unaligned(b + i + 2 * w), s2);
                s3 = kernels::simd::detail::mul_add(batch::load_unaligned(a + i + 3 * w), batch::load_unaligned(b + i + 3 * w), s3);
            }
            for (; i + w <= n; i += w) s0 = kernels::simd::detail::mul_add(batch::load_unaligned(a + i), batch::load_unaligned(b + i), s0);
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
        none,               ///< weight-only: activations stay in floating point
        int8_per_token,     ///< dynamic symmetric int8, one scale per token (W8A8 kernels)
        fp8_per_token,      ///< dynamic E4M3, scale amax / 448 per token (FP8 per-channel weights)
        fp8_per_tensor,     ///< dynamic E4M3, one scale amax / 448 over the tokens of a product
        fp8_per_group128,   ///< dynamic E4M3 per group of 128 of each token (FP8 block weights)
        mxfp4_per_group32,  ///< dynamic MXFP4 per group of 32 of each token (MXFP4 weights)
        nvfp4_per_group16   ///< NVFP4 per group of 16 of each token: dynamic E4M3 group scales under a
                            ///< static global scale per product input (input_global_scales; W4A4 NVFP4)
    };

    /// @brief The static global scales of NVFP4 activations (448 · 6 / amax of the input over the
    ///        calibration tokens), one per input of a layer's products: `experts[k]` for expert
    ///        projection k of layer_weights::experts (shared by every expert, as the engines use
    ///        one per layer), `dense[k]` for dense matrix k. Empty when the activations are not NVFP4.
    struct input_global_scales
    {
        std::vector<float> experts;
        std::vector<float> dense;
    };

    /// @brief Replaces `count` values with their float-code quantization, dequantized, under one
    ///        scale chosen from their max |x|: E4M3 with scale amax / 448, or MXFP4 (E2M1 with
    ///        the power-of-two scale of quantize_float.hpp). A zero span stays zero.
    inline void quantize_span_float(float* v, std::size_t count, bool mxfp4)
    {
        float amax = 0.0f;
        for (std::size_t i = 0; i < count; ++i) amax = std::max(amax, std::fabs(v[i]));
        if (amax == 0.0f) return;
        const float scale = mxfp4 ? orbitq::detail::float_schemes::mxfp4(amax).scale : amax / e4m3_max;
        for (std::size_t i = 0; i < count; ++i)
        {
            const float q = v[i] / scale;
            v[i] = (mxfp4 ? e2m1_to_float(to_e2m1(q)) : e4m3_to_float(to_e4m3(q))) * scale;
        }
    }

    /// @brief Replaces each token of `x` (tokens × n) by its NVFP4 quantization, dequantized, as
    ///        vLLM's reference (ref_nvfp4_quant) computes it: per group of 16 values of a token,
    ///        scale s = e4m3(min(global · (amax · 1/6), 448)), codes E2M1 of clamp(x · o, ±6) with
    ///        o = 1 / (s · (1 / global)), value = code / o; a group whose s is 0 becomes zero.
    /// @pre global > 0 and finite.
    inline void quantize_tokens_nvfp4(float* x, std::size_t tokens, std::size_t n, float global)
    {
        constexpr std::size_t g = 16;
        const float inv_global = 1.0f / global;
        for (std::size_t t = 0; t < tokens; ++t)
        {
            for (std::size_t c0 = 0; c0 < n; c0 += g)
            {
                float* v = x + t * n + c0;
                const std::size_t m = std::min(g, n - c0);
                float amax = 0.0f;
                for (std::size_t i = 0; i < m; ++i) amax = std::max(amax, std::fabs(v[i]));
                const float s = e4m3_to_float(to_e4m3(std::min(global * (amax * (1.0f / e2m1_max)), e4m3_max)));
                if (s == 0.0f)
                {
                    std::fill_n(v, m, 0.0f);
                    continue;
                }
                const float o = 1.0f / (s * inv_global);
                for (std::size_t i = 0; i < m; ++i) v[i] = e2m1_to_float(to_e2m1(std::clamp(v[i] * o, -e2m1_max, e2m1_max))) / o;
            }
        }
    }

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

    /// @brief Replaces x (tokens × n) by its quantization under `a`, dequantized, as the engine's
    ///        kernels quantize the activations entering a product.
    /// @param global the static global scale of nvfp4_per_group16 (unused by the others).
    /// @throws error (invalid_argument) for nvfp4_per_group16 without a positive finite global.
    inline void quantize_activations(activation_quantization a, float* x, std::size_t tokens, std::size_t n, float global = 0.0f)
    {
        switch (a)
        {
            case activation_quantization::none: return;
            case activation_quantization::nvfp4_per_group16:
                if (!(global > 0.0f && std::isfinite(global)))
                {
                    throw error(error_kind::invalid_argument, "NVFP4 activations need a positive finite global scale (input_global_scale)");
                }
                return quantize_tokens_nvfp4(x, tokens, n, global);
            case activation_quantization::int8_per_token: return quantize_tokens_int8(x, tokens, n);
            case activation_quantization::fp8_per_tensor: return quantize_span_float(x, tokens * n, false);
            case activation_quantization::fp8_per_token:
            case activation_quantization::fp8_per_group128:
            case activation_quantization::mxfp4_per_group32:
            {
                const std::size_t g = a == activation_quantization::fp8_per_token ? n : a == activation_quantization::fp8_per_group128 ? 128 : 32;
                for (std::size_t t = 0; t < tokens; ++t)
                {
                    for (std::size_t c0 = 0; c0 < n; c0 += g) quantize_span_float(x + t * n + c0, std::min(g, n - c0), a == activation_quantization::mxfp4_per_group32);
                }
                return;
            }
        }
    }

    /// @brief The matrix products of one layer's FFN. Implementations decide how weights are
    ///        stored (source precision, quantized, ...); the forward pass only calls these.
    class ffn_operators
    {
    public:
        virtual ~ffn_operators() = default;
        /// @brief y[t*rows + r] = (M x_t)[r] for dense-MLP matrix k (gate, up, down).
        virtual void dense(std::size_t k, const float* x, std::size_t tokens, float* y) const = 0;
        /// @brief y = M x for expert e's block of projection k (layer_weights::experts[k]).
        virtual void expert(std::size_t e, std::size_t k, const float* x, std::size_t tokens, float* y) const = 0;
    };

    /// @brief ffn_operators on the source weights of a layer.
    class view_operators : public ffn_operators
    {
    public:
        view_operators(const layer_weights& w, unsigned threads)
            : m_w(w)
            , m_threads(threads)
        {
        }
        void dense(std::size_t k, const float* x, std::size_t tokens, float* y) const override
        {
            apply(m_w.dense.at(k), x, tokens, y, m_threads);
        }
        void expert(std::size_t e, std::size_t k, const float* x, std::size_t tokens, float* y) const override
        {
            apply(m_w.experts.at(k).blocks.at(e), x, tokens, y, m_threads);
            if (k + 1 == m_w.experts.size() && m_w.release_expert) m_w.release_expert(e);
        }

    private:
        const layer_weights& m_w;
        unsigned m_threads;
    };

    /// @brief One expert's quantized blocks, one per projection of layer_weights::experts. A null
    ///        tensor means "not quantized: use the source weights".
    struct expert_slices
    {
        std::vector<const quantized_tensor*> q;
    };

    /// @brief ffn_operators on quantized weights: experts through a provider (which may quantize
    ///        expert by expert on demand), dense matrices quantized or (null) source.
    class quantized_operators : public ffn_operators
    {
    public:
        using expert_provider = std::function<expert_slices(std::size_t e)>;

        /// @param experts returns expert e's quantized blocks; called once per use.
        /// @param dense_q {gate, up, down} quantized, or nullptrs (or empty) to use the source views.
        /// @param acts how the activations entering a quantized product are quantized first.
        /// @param globals the static global scales of NVFP4 activations (nvfp4_per_group16).
        quantized_operators(const layer_weights& w, expert_provider experts, std::vector<const quantized_tensor*> dense_q,
                            unsigned threads, activation_quantization acts = activation_quantization::none, input_global_scales globals = {})
            : m_w(w)
            , m_src(w, threads)
            , m_experts(std::move(experts))
            , m_dense(std::move(dense_q))
            , m_threads(threads)
            , m_acts(acts)
            , m_globals(std::move(globals))
        {
        }

        void dense(std::size_t k, const float* x, std::size_t tokens, float* y) const override
        {
            const quantized_tensor* q = k < m_dense.size() ? m_dense[k] : nullptr;
            if (q == nullptr) m_src.dense(k, x, tokens, y);
            else apply_quantized(*q, x, tokens, y, global_of(m_globals.dense, k));
        }
        void expert(std::size_t e, std::size_t k, const float* x, std::size_t tokens, float* y) const override
        {
            const expert_slices s = m_experts(e);
            const quantized_tensor* q = k < s.q.size() ? s.q[k] : nullptr;
            if (q == nullptr) return m_src.expert(e, k, x, tokens, y);
            const expert_tensor& t = m_w.experts.at(k);
            if (q->rows != t.rows || q->cols != t.cols)
            {
                throw error(error_kind::shape_mismatch, "quantized expert " + std::to_string(e) + " of '" + t.name + "' has the wrong shape");
            }
            apply_quantized(*q, x, tokens, y, global_of(m_globals.experts, k));
        }

    private:
        static float global_of(const std::vector<float>& g, std::size_t k) noexcept { return k < g.size() ? g[k] : 0.0f; }

        void apply_quantized(const quantized_tensor& q, const float* x, std::size_t tokens, float* y, float global) const
        {
            if (m_acts == activation_quantization::none) return apply(q, x, tokens, y, m_threads);
            std::vector<float> xq(x, x + tokens * q.cols);
            quantize_activations(m_acts, xq.data(), tokens, q.cols, global);
            apply(q, xq.data(), tokens, y, m_threads);
        }

        const layer_weights& m_w;
        view_operators m_src;
        expert_provider m_experts;
        std::vector<const quantized_tensor*> m_dense;
        unsigned m_threads;
        activation_quantization m_acts;
        input_global_scales m_globals;
    };

    /// @brief ffn_operators that forwards to another and records the largest |x| entering each
    ///        product: per expert projection k (over every expert) and per dense matrix k, the
    ///        calibration of input_global_scales.
    class input_amax_recorder : public ffn_operators
    {
    public:
        /// @param inner the operators that compute the products (they outlive the recorder).
        input_amax_recorder(const layer_weights& w, const ffn_operators& inner)
            : m_w(w)
            , m_inner(inner)
            , m_experts(w.experts.size(), 0.0f)
            , m_dense(w.dense.size(), 0.0f)
        {
        }
        void dense(std::size_t k, const float* x, std::size_t tokens, float* y) const override
        {
            record(m_dense, k, x, tokens * cols(k, true));
            m_inner.dense(k, x, tokens, y);
        }
        void expert(std::size_t e, std::size_t k, const float* x, std::size_t tokens, float* y) const override
        {
            record(m_experts, k, x, tokens * cols(k, false));
            m_inner.expert(e, k, x, tokens, y);
        }
        /// @brief The NVFP4 global scales of the recorded inputs, 448 · 6 / amax (1 where an
        ///        input was never seen or was all zero).
        /// @throws error (invalid_argument) where amax is too small for a float32 global scale.
        input_global_scales global_scales(const std::string& layer) const
        {
            input_global_scales g;
            for (std::size_t k = 0; k < m_experts.size(); ++k)
            {
                g.experts.push_back(orbitq::detail::float_schemes::nvfp4_global(m_experts[k], layer + " expert input " + std::to_string(k)));
            }
            for (std::size_t k = 0; k < m_dense.size(); ++k)
            {
                g.dense.push_back(orbitq::detail::float_schemes::nvfp4_global(m_dense[k], layer + " dense input " + std::to_string(k)));
            }
            return g;
        }

    private:
        std::size_t cols(std::size_t k, bool dense) const { return dense ? cols_of(m_w.dense.at(k)) : m_w.experts.at(k).cols; }
        static void record(std::vector<float>& amax, std::size_t k, const float* x, std::size_t count)
        {
            float m = amax.at(k);
            for (std::size_t i = 0; i < count; ++i) m = std::max(m, std::fabs(x[i]));
            amax[k] = m;
        }

        const layer_weights& m_w;
        const ffn_operators& m_inner;
        mutable std::vector<float> m_experts;
        mutable std::vector<float> m_dense;
    };

    /// @brief out = RMSNorm_w(v) per token when the norm is present, else a copy of v.
    inline void norm_tokens(const norm_weight& w, const float* v, std::size_t tokens, std::size_t n, double eps, float* out)
    {
        for (std::size_t t = 0; t < tokens; ++t)
        {
            if (w) rms_norm(v + t * n, n, *w, eps, out + t * n);
            else if (out != v) std::copy_n(v + t * n, n, out + t * n);
        }
    }

    /// @brief Router of one layer for a batch of tokens (the router is never quantized).
    /// @param x tokens × H residual stream; h the experts' normed input (same shape).
    inline std::vector<token_route> route(const config& c, const layer_weights& w, const float* x, const float* h,
                                          std::size_t tokens, unsigned threads)
    {
        const std::size_t H = c.hidden, E = c.experts;
        std::vector<float> r;
        const float* in = h;
        if (c.arch.router_in == router_input::residual_rms_scaled)
        {
            r.resize(tokens * H);
            const float inv_sqrt_h = static_cast<float>(1.0 / std::sqrt(static_cast<double>(H)));
            for (std::size_t t = 0; t < tokens; ++t)
            {
                rms_norm(x + t * H, H, w.router_scale, c.rms_eps, r.data() + t * H);
                for (std::size_t i = 0; i < H; ++i) r[t * H + i] *= inv_sqrt_h;
            }
            in = r.data();
        }
        std::vector<float> logits(tokens * E);
        apply(w.router, in, tokens, logits.data(), threads);
        std::vector<token_route> out;
        out.reserve(tokens);
        for (std::size_t t = 0; t < tokens; ++t)
        {
            std::vector<float> p(logits.begin() + static_cast<std::ptrdiff_t>(t * E),
                                 logits.begin() + static_cast<std::ptrdiff_t>((t + 1) * E));
            softmax(p);
            out.push_back(top_k_route(p, c.top_k, w.per_expert_scale, c.renormalize));
        }
        return out;
    }

    namespace detail
    {
        /// The dense MLP branch: RMSNorm_dense_output(down(act(gate·g) ⊙ (up·g))), g = RMSNorm_dense_input(x).
        inline std::vector<float> dense_branch(const config& c, const layer_weights& w, const ffn_operators& ops, const float* x,
                                               std::size_t tokens)
        {
            const std::size_t H = c.hidden, D = c.dense_intermediate;
            std::vector<float> h(tokens * H), g(tokens * D), u(tokens * D), b(tokens * H);
            norm_tokens(w.dense_input_norm, x, tokens, H, c.rms_eps, h.data());
            ops.dense(0, h.data(), tokens, g.data());
            ops.dense(1, h.data(), tokens, u.data());
            for (std::size_t i = 0; i < tokens * D; ++i) g[i] = activate(c.arch.activation, g[i]) * u[i];
            ops.dense(2, g.data(), tokens, b.data());
            norm_tokens(w.dense_output_norm, b.data(), tokens, H, c.rms_eps, b.data());
            return b;
        }

        /// The expert branch on normed input h: Σ over each token's chosen experts of weight ·
        /// down(act(gate·h) ⊙ (up·h)), gathering the tokens routed to each expert, one expert at a
        /// time; accumulated in double, in expert order.
        inline std::vector<float> expert_branch(const config& c, const layer_weights& w, const ffn_operators& ops, const float* h,
                                                const std::vector<token_route>& rt, std::size_t tokens)
        {
            const std::size_t H = c.hidden, I = c.expert_intermediate;
            const std::size_t inputs = w.experts.size() - 1;  // the projections before down
            std::vector<double> acc(tokens * H, 0.0);
            std::vector<float> xe, gu, part, a, out;
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
                for (std::size_t j = 0; j < n; ++j) std::copy_n(h + chosen[j].first * H, H, xe.data() + j * H);
                // gu: n × 2I, each token's [gate | up], from one fused projection or several.
                gu.resize(n * 2 * I);
                if (inputs == 1) ops.expert(e, 0, xe.data(), n, gu.data());
                else
                {
                    std::size_t offset = 0;
                    for (std::size_t k = 0; k < inputs; ++k)
                    {
                        const std::size_t rows = w.experts[k].rows;
                        part.resize(n * rows);
                        ops.expert(e, k, xe.data(), n, part.data());
                        for (std::size_t j = 0; j < n; ++j) std::copy_n(part.data() + j * rows, rows, gu.data() + j * 2 * I + offset);
                        offset += rows;
                    }
                }
                a.resize(n * I);
                for (std::size_t j = 0; j < n; ++j)
                {
                    for (std::size_t i = 0; i < I; ++i) a[j * I + i] = activate(c.arch.activation, gu[j * 2 * I + i]) * gu[j * 2 * I + I + i];
                }
                out.resize(n * H);
                ops.expert(e, inputs, a.data(), n, out.data());
                for (std::size_t j = 0; j < n; ++j)
                {
                    const double wt = chosen[j].second;
                    double* dst = acc.data() + chosen[j].first * H;
                    for (std::size_t i = 0; i < H; ++i) dst[i] += wt * out[j * H + i];
                }
            }
            std::vector<float> m(tokens * H);
            for (std::size_t i = 0; i < tokens * H; ++i) m[i] = static_cast<float>(acc[i]);
            return m;
        }
    }

    /// @brief The FFN part of one layer on a batch of tokens (see architecture.hpp).
    /// @param x tokens × H input (residual stream after attention).
    /// @param y tokens × H output (may not alias x).
    /// @param routes if not null, receives each token's routing.
    inline void ffn_forward(const config& c, const layer_weights& w, const ffn_operators& ops, const float* x, std::size_t tokens,
                            float* y, std::vector<token_route>* routes = nullptr, unsigned threads = 1)
    {
        const std::size_t H = c.hidden;
        std::vector<float> d;
        if (c.has_dense()) d = detail::dense_branch(c, w, ops, x, tokens);
        std::vector<float> h(tokens * H);
        norm_tokens(w.expert_input_norm, x, tokens, H, c.rms_eps, h.data());
        std::vector<token_route> rt = route(c, w, x, h.data(), tokens, threads);
        std::vector<float> m = detail::expert_branch(c, w, ops, h.data(), rt, tokens);
        for (std::size_t t = 0; t < tokens; ++t)
        {
            float* mt = m.data() + t * H;
            if (w.expert_output_norm) rms_norm(mt, H, *w.expert_output_norm, c.rms_eps, mt);
            if (!d.empty())
            {
                const float* dt = d.data() + t * H;
                for (std::size_t i = 0; i < H; ++i) mt[i] += dt[i];
            }
            if (w.ffn_output_norm) rms_norm(mt, H, *w.ffn_output_norm, c.rms_eps, mt);
            const float* xt = x + t * H;
            float* yt = y + t * H;
            for (std::size_t i = 0; i < H; ++i) yt[i] = (xt[i] + mt[i]) * w.layer_scalar;
        }
        if (routes) *routes = std::move(rt);
    }
}
