/// @file gemma4_validate.hpp
/// @brief Validation of a quantized Gemma 4 MoE FFN, layer by layer and over the stack, for
///        several granularities in one pass over the weights.
///
/// For every selected layer (in order) and every granularity compared:
/// - the expert tensors (and, with include_dense, the dense MLP) are quantized once;
/// - per tensor and per expert: cosine, SQNR, max abs error, condition number max|W|/RMS(W) of
///   the source, bits lost per row to the granularity's scale;
/// - **layer test (T4.1)**: the FFN forward on the same input x (the original stream entering
///   the layer) with source and with quantized weights; cos(hidden) per token and its minimum;
/// - **stack (T4.3 analogue)**: the original stream and one quantized stream per granularity are
///   pushed separately through every selected layer; cos per token after each layer;
/// - **router agreement**: the fraction of tokens whose top-k expert set on the quantized stream
///   equals the set on the original stream at that layer (the router itself is never quantized,
///   so on the same input it always agrees; on the stack the inputs drift apart).
///
/// The source-weight forward is computed once per layer and shared by all granularities. Memory:
/// one layer's source weights (views, not copies, for a memory-mapped checkpoint) plus one
/// granularity's quantized expert tensors at a time.
#pragma once

#include "orbitq/metrics.hpp"
#include "orbitq/models/gemma4.hpp"
#include "orbitq/quantize.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace orbitq::models::gemma4
{
    /// @brief What to validate and how.
    struct validate_options
    {
        std::vector<quant_spec> specs = {quant_spec{.granularity = granularity_kind::per_tensor},
                                         quant_spec{.granularity = granularity_kind::per_channel}};
        std::size_t gated = 1;               ///< index in specs of the granularity being converted (gated)
        std::vector<std::size_t> layers;     ///< selected layers, in stack order (empty: all)
        std::size_t tokens = 8;              ///< T sample tokens
        bool include_dense = false;          ///< also quantize the dense MLP
        std::size_t min_elements = 0;        ///< quantize only tensors with more elements than this
        double gate_layer_cos = 0.997;
        double gate_stack_cos = 0.97;
        unsigned threads = 0;                ///< 0: hardware concurrency
    };

    /// @brief Metrics of one quantized tensor, or of one expert's slice of it.
    struct tensor_metrics
    {
        double cos = 1.0;
        double sqnr_db = std::numeric_limits<double>::infinity();
        double relative_error = 0.0;
        double max_abs_err = 0.0;
        double condition_number = 0.0;   ///< source max|W| / RMS(W)
        double bits_lost_mean = 0.0;     ///< mean over rows of log2(orbit amax / row amax)
        double bits_lost_max = 0.0;
    };

    /// @brief One tensor of one layer under one granularity.
    struct tensor_report
    {
        std::string name;
        shape_type shape;
        bool quantized = false;           ///< false: kept in source precision (below min_elements)
        double bits_per_weight = 0.0;
        tensor_metrics total;
        std::vector<tensor_metrics> experts;  ///< per expert for stacked expert tensors, else empty
    };

    /// @brief One layer under one granularity.
    struct granularity_layer
    {
        std::vector<tensor_report> tensors;
        std::vector<double> hidden_cos;       ///< per token, same input
        double hidden_cos_min = 1.0;
        double hidden_rel_err_max = 0.0;      ///< max over tokens of ‖ŷ − y‖ / ‖y‖, same input
        double weight_sqnr_db = 0.0;          ///< SQNR of all quantized weights of the layer together
        std::vector<double> stack_cos;        ///< per token, after this layer, separate streams
        double stack_cos_min = 1.0;
        double stack_rel_err_max = 0.0;
        double router_agreement = 1.0;        ///< on the stack streams
    };

    /// @brief One layer, all granularities.
    struct layer_report
    {
        std::size_t layer = 0;
        std::vector<granularity_layer> by_spec;  ///< parallel to validate_options::specs
    };

    /// @brief Stack summary for one granularity.
    struct stack_report
    {
        double final_cos_min = 1.0;
        double final_rel_err_max = 0.0;
        double predicted_amplification_seed = 1.0;  ///< (1 + (1 − min layer cos))^N, the seed's formula
        double predicted_amplification = 1.0;       ///< (Π(1 + ε_i) − 1) / max ε_i, ε_i = layer relative error
        double predicted_relative_error = 0.0;      ///< Π(1 + ε_i) − 1
        double predicted_cosine_floor = 1.0;        ///< cos(Σ acos(layer cos_i))
        double measured_amplification = 1.0;        ///< final stack relative error / max ε_i
        double layer_cos_min = 1.0;                 ///< min over layers of hidden_cos_min
        bool layer_gate_passed = true;
        bool stack_gate_passed = true;
    };

    /// @brief Everything validate() measured.
    struct validation_report
    {
        std::vector<layer_report> layers;
        std::vector<stack_report> stack;    ///< parallel to specs
        double quantize_seconds = 0.0;
        double total_seconds = 0.0;
        double quantized_source_bytes = 0.0;  ///< bytes of source weights quantized (all granularities)
        bool passed = true;                   ///< both gates of the gated granularity
    };

    /// @brief Progress of validate(): called after each layer.
    struct progress_info
    {
        std::size_t done = 0;       ///< layers finished
        std::size_t total = 0;
        std::size_t layer = 0;      ///< the layer just finished
        double elapsed_s = 0.0;
        double bytes = 0.0;         ///< source bytes quantized so far
    };

    /// @brief Called with the gated granularity's quantized tensors of each layer, for writing.
    ///        experts: {gate_up, down} (null when not quantized); dense: {gate, up, down}.
    using quantized_sink = std::function<void(const layer_weights&, std::array<const quantized_tensor*, 2> experts,
                                              std::array<const quantized_tensor*, 3> dense)>;

    namespace detail
    {
        inline std::size_t element_bytes(const any_view& v)
        {
            return std::visit([](const auto& m) { return sizeof(typename std::decay_t<decltype(m)>::value_type); }, v);
        }

        /// Per-row error accumulators and source row amax of a quantized tensor, in parallel.
        template <weight_element T>
        void measure_rows(const matrix_view<T>& w, const quantized_tensor& q, std::vector<error_accumulator>& acc,
                          std::vector<float>& row_amax, unsigned threads)
        {
            acc.assign(w.rows, error_accumulator{});
            row_amax.assign(w.rows, 0.0f);
            parallel_rows(w.rows, threads, [&](std::size_t first, std::size_t last) {
                std::vector<float> buf(w.cols);
                for (std::size_t r = first; r < last; ++r)
                {
                    dequantize_row(q, r, buf.data());
                    acc[r].add(w.row(r), buf.data(), w.cols, r * w.cols);
                    float m = 0.0f;
                    for (std::size_t c = 0; c < w.cols; ++c) m = std::max(m, std::fabs(to_float(w.row(r)[c])));
                    row_amax[r] = m;
                }
            });
        }

        /// Metrics of rows [first, last): accumulators combined in row order.
        inline tensor_metrics summarize(const std::vector<error_accumulator>& acc, const std::vector<float>& row_amax,
                                        std::size_t first, std::size_t last, std::size_t cols, granularity_kind g,
                                        float tensor_amax, error_accumulator* combined = nullptr)
        {
            error_accumulator a;
            float amax = 0.0f;
            for (std::size_t r = first; r < last; ++r)
            {
                a = combine(a, acc[r]);
                amax = std::max(amax, row_amax[r]);
            }
            if (combined) *combined = a;
            tensor_metrics m;
            const error_metrics e = finish(a, cols);
            m.cos = e.cosine;
            m.sqnr_db = e.sqnr_db;
            m.relative_error = e.relative_error;
            m.max_abs_err = e.max_abs_err;
            const double rms = a.count ? std::sqrt(a.ref_sq / static_cast<double>(a.count)) : 0.0;
            m.condition_number = rms > 0 ? amax / rms : 0.0;
            if (g == granularity_kind::per_tensor && last > first)
            {
                const auto lost = bits_lost_per_row(std::span<const float>(row_amax.data() + first, last - first), tensor_amax);
                double sum = 0.0, mx = 0.0;
                for (double b : lost)
                {
                    const double v = std::isfinite(b) ? b : 24.0;  // an all-zero row: all precision lost
                    sum += v;
                    mx = std::max(mx, v);
                }
                m.bits_lost_mean = sum / static_cast<double>(lost.size());
                m.bits_lost_max = mx;
            }
            return m;
        }

        inline double relative_error(const float* ref, const float* rec, std::size_t n)
        {
            error_accumulator a;
            a.add(ref, rec, n);
            return a.relative_error();
        }

        inline bool same_set(std::vector<std::size_t> a, std::vector<std::size_t> b)
        {
            std::sort(a.begin(), a.end());
            std::sort(b.begin(), b.end());
            return a == b;
        }
    }

    /// @brief Quantizes one tensor view and measures it (per expert when `experts` > 1).
    /// @param experts number of equal row blocks to report separately (1: none).
    inline tensor_report quantize_and_measure(const any_view& v, const quant_spec& spec, std::size_t experts,
                                              quantized_tensor& q, error_accumulator& combined, unsigned threads)
    {
        tensor_report rep;
        std::visit(
            [&](const auto& m) {
                rep.name = m.name;
                rep.shape = m.shape;
                q = quantize(m, spec, threads);
                std::vector<error_accumulator> acc;
                std::vector<float> row_amax;
                detail::measure_rows(m, q, acc, row_amax, threads);
                const float tensor_amax = *std::max_element(row_amax.begin(), row_amax.end());
                rep.total = detail::summarize(acc, row_amax, 0, m.rows, m.cols, spec.granularity, tensor_amax, &combined);
                if (experts > 1)
                {
                    const std::size_t per = m.rows / experts;
                    for (std::size_t e = 0; e < experts; ++e)
                    {
                        rep.experts.push_back(
                            detail::summarize(acc, row_amax, e * per, (e + 1) * per, m.cols, spec.granularity, tensor_amax));
                    }
                }
            },
            v);
        rep.quantized = true;
        rep.bits_per_weight = q.bits_per_weight();
        return rep;
    }

    /// @brief Runs the layer tests and the stack for every granularity of `opt.specs`.
    /// @param load returns the weights of a layer (valid until the next call).
    /// @param x0 tokens × H residual stream entering the first selected layer.
    /// @param sink if set, receives the gated granularity's quantized tensors of each layer.
    /// @param progress if set, called after each layer.
    /// @throws error on a bad option or a shape mismatch.
    inline validation_report validate(const config& c, const std::function<const layer_weights&(std::size_t)>& load,
                                      std::vector<float> x0, validate_options opt, const quantized_sink& sink = {},
                                      const std::function<void(const progress_info&)>& progress = {})
    {
        using clock = std::chrono::steady_clock;
        const auto t_start = clock::now();
        c.check();
        if (opt.specs.empty()) throw error(error_kind::invalid_argument, "validate: no granularity to compare");
        if (opt.gated >= opt.specs.size()) throw error(error_kind::invalid_argument, "validate: gated index out of range");
        if (opt.tokens == 0) throw error(error_kind::invalid_argument, "validate: need at least one token");
        if (opt.layers.empty())
        {
            for (std::size_t l = 0; l < c.layers; ++l) opt.layers.push_back(l);
        }
        for (std::size_t l : opt.layers)
        {
            if (l >= c.layers)
            {
                throw error(error_kind::invalid_argument,
                            "layer " + std::to_string(l) + " does not exist (the model has " + std::to_string(c.layers) + ")");
            }
        }
        const std::size_t H = c.hidden, T = opt.tokens, G = opt.specs.size();
        if (x0.size() != T * H) throw error(error_kind::shape_mismatch, "validate: input tokens must be tokens x hidden");

        validation_report rep;
        rep.stack.resize(G);
        std::vector<float> x_orig = std::move(x0);
        std::vector<std::vector<float>> x_q(G, x_orig);
        std::vector<float> y_orig(T * H), xin(2 * T * H), yq(2 * T * H);
        double quantize_s = 0.0;

        for (std::size_t li = 0; li < opt.layers.size(); ++li)
        {
            const std::size_t layer = opt.layers[li];
            const layer_weights& w = load(layer);
            w.check(c);
            layer_report lr;
            lr.layer = layer;

            view_operators src(c, w, opt.threads);
            std::vector<token_route> routes_orig;
            ffn_forward(c, w, src, x_orig.data(), T, y_orig.data(), &routes_orig, opt.threads);

            for (std::size_t g = 0; g < G; ++g)
            {
                const quant_spec& spec = opt.specs[g];
                granularity_layer gl;
                auto t0 = clock::now();
                std::array<quantized_tensor, 5> qs;
                std::array<const quantized_tensor*, 2> eq = {nullptr, nullptr};
                std::array<const quantized_tensor*, 3> dq = {nullptr, nullptr, nullptr};
                error_accumulator layer_acc;
                auto handle = [&](const any_view& v, std::size_t slot, std::size_t experts, bool wanted) -> const quantized_tensor* {
                    const std::size_t n = rows_of(v) * cols_of(v);
                    if (!wanted || n <= opt.min_elements)
                    {
                        tensor_report t;
                        std::visit([&](const auto& m) { t.name = m.name; t.shape = m.shape; }, v);
                        t.bits_per_weight = 8.0 * static_cast<double>(detail::element_bytes(v));
                        gl.tensors.push_back(std::move(t));
                        return nullptr;
                    }
                    error_accumulator acc;
                    gl.tensors.push_back(quantize_and_measure(v, spec, experts, qs[slot], acc, opt.threads));
                    layer_acc = combine(layer_acc, acc);
                    rep.quantized_source_bytes += static_cast<double>(n * detail::element_bytes(v));
                    return &qs[slot];
                };
                eq[0] = handle(w.gate_up, 0, c.experts, true);
                eq[1] = handle(w.down, 1, c.experts, true);
                dq[0] = handle(w.dense_gate, 2, 1, opt.include_dense);
                dq[1] = handle(w.dense_up, 3, 1, opt.include_dense);
                dq[2] = handle(w.dense_down, 4, 1, opt.include_dense);
                quantize_s += std::chrono::duration<double>(clock::now() - t0).count();
                gl.weight_sqnr_db = layer_acc.count ? layer_acc.sqnr_db() : std::numeric_limits<double>::infinity();

                // Quantized weights on 2T tokens: the original stream (layer test) and this
                // granularity's own stream (stack).
                std::copy(x_orig.begin(), x_orig.end(), xin.begin());
                std::copy(x_q[g].begin(), x_q[g].end(), xin.begin() + static_cast<std::ptrdiff_t>(T * H));
                quantized_operators qops(c, w, eq, dq, opt.threads);
                std::vector<token_route> routes_q;
                ffn_forward(c, w, qops, xin.data(), 2 * T, yq.data(), &routes_q, opt.threads);

                std::size_t agree = 0;
                for (std::size_t t = 0; t < T; ++t)
                {
                    const float* ref = y_orig.data() + t * H;
                    const double hc = cosine(std::span<const float>(ref, H), std::span<const float>(yq.data() + t * H, H));
                    gl.hidden_cos.push_back(hc);
                    gl.hidden_rel_err_max = std::max(gl.hidden_rel_err_max, detail::relative_error(ref, yq.data() + t * H, H));
                    const float* ys = yq.data() + (T + t) * H;
                    gl.stack_cos.push_back(cosine(std::span<const float>(ref, H), std::span<const float>(ys, H)));
                    gl.stack_rel_err_max = std::max(gl.stack_rel_err_max, detail::relative_error(ref, ys, H));
                    if (detail::same_set(routes_orig[t].experts, routes_q[T + t].experts)) ++agree;
                }
                gl.hidden_cos_min = *std::min_element(gl.hidden_cos.begin(), gl.hidden_cos.end());
                gl.stack_cos_min = *std::min_element(gl.stack_cos.begin(), gl.stack_cos.end());
                gl.router_agreement = static_cast<double>(agree) / static_cast<double>(T);
                std::copy(yq.begin() + static_cast<std::ptrdiff_t>(T * H), yq.end(), x_q[g].begin());
                if (g == opt.gated && sink) sink(w, eq, dq);
                lr.by_spec.push_back(std::move(gl));
            }
            x_orig.swap(y_orig);
            rep.layers.push_back(std::move(lr));
            if (progress)
            {
                progress({li + 1, opt.layers.size(), layer, std::chrono::duration<double>(clock::now() - t_start).count(),
                          rep.quantized_source_bytes});
            }
        }

        // Stack summaries and gates.
        const std::size_t N = rep.layers.size();
        for (std::size_t g = 0; g < G; ++g)
        {
            stack_report& s = rep.stack[g];
            std::vector<double> eps, cosines;
            for (const auto& lr : rep.layers)
            {
                eps.push_back(lr.by_spec[g].hidden_rel_err_max);
                cosines.push_back(lr.by_spec[g].hidden_cos_min);
            }
            s.layer_cos_min = *std::min_element(cosines.begin(), cosines.end());
            const double eps_max = *std::max_element(eps.begin(), eps.end());
            s.final_cos_min = rep.layers.back().by_spec[g].stack_cos_min;
            s.final_rel_err_max = rep.layers.back().by_spec[g].stack_rel_err_max;
            s.predicted_amplification_seed = amplification_seed(s.layer_cos_min, N);
            s.predicted_relative_error = predicted_relative_error(eps);
            s.predicted_amplification = eps_max > 0 ? s.predicted_relative_error / eps_max : static_cast<double>(N);
            s.predicted_cosine_floor = predicted_cosine_floor(cosines);
            s.measured_amplification = eps_max > 0 ? s.final_rel_err_max / eps_max : 1.0;
            s.layer_gate_passed = s.layer_cos_min >= opt.gate_layer_cos;
            s.stack_gate_passed = s.final_cos_min >= opt.gate_stack_cos;
        }
        rep.passed = rep.stack[opt.gated].layer_gate_passed && rep.stack[opt.gated].stack_gate_passed;
        rep.quantize_seconds = quantize_s;
        rep.total_seconds = std::chrono::duration<double>(clock::now() - t_start).count();
        return rep;
    }
}
