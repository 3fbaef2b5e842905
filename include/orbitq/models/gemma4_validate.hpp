/// @file gemma4_validate.hpp
/// @brief Validation of a quantized Gemma 4 MoE FFN, layer by layer and over the stack, for
///        several granularities in one pass over the weights.
///
/// For every selected layer (in order) and every granularity compared:
/// - the expert tensors (and, with include_dense, the dense MLP) are quantized once;
/// - per tensor and per expert: cosine, SQNR, max abs error, condition number max|W|/RMS(W) of
///   the source, bits lost per row to the granularity's scale;
/// - **layer test**: the FFN forward on the same input x (the original stream entering the
///   layer) with source and with quantized weights; cos(hidden) per token and its minimum;
/// - **stack**: the original stream and one quantized stream per granularity are pushed
///   separately through every selected layer; cos per token after each layer;
/// - **router agreement**: the fraction of tokens whose top-k expert set on the quantized stream
///   equals the set on the original stream at that layer (the router itself is never quantized,
///   so on the same input it always agrees; on the stack the inputs drift apart).
///
/// The source-weight forward is computed once per layer and shared by all granularities. Memory:
/// one layer's source weights (views, not copies, for a memory-mapped checkpoint) plus one
/// granularity's quantized expert tensors at a time.
#pragma once

#include "orbitq/analyze.hpp"
#include "orbitq/metrics.hpp"
#include "orbitq/models/gemma4.hpp"
#include "orbitq/quantize.hpp"

#include <array>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <tuple>
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
        /// If set, picks the one spec of a layer's tensors that the gated granularity quantizes
        /// (automatic granularity): called once per layer with the source views of those tensors
        /// (gate_up and down of the experts, then the dense matrices included) and the gated
        /// spec; the result replaces the gated spec for all of them (the other granularities are
        /// unaffected). One spec per layer: engines load a MoE layer only when gate, up and down
        /// share it. It may throw to stop the run.
        std::function<quant_spec(const std::vector<const any_view*>&, const quant_spec&)> choose;
        /// Activations the engine quantizes before each quantized product: none, or int8 per
        /// token (symmetric, scale = amax/127, round half to even), as W8A8 kernels do; the
        /// gated granularity's forward pass simulates it, so the gates judge what will run.
        activation_quantization activations = activation_quantization::none;
        /// A NaN or infinity in a tensor that would be quantized: false (default) stops the run
        /// with an error naming the tensor and the position (expert, row, column); true keeps such
        /// tensors in source precision (copied unquantized) and lists them in
        /// validation_report::skipped.
        bool skip_nonfinite = false;
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
        bool quantized = false;           ///< false: kept in source precision (below min_elements, or skipped)
        quant_spec spec;                  ///< the spec it was quantized with (meaningful when quantized)
        std::string skipped;              ///< why it was kept unquantized despite its size (a non-finite value), else empty
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
        double predicted_amplification_from_cosine = 1.0;  ///< (1 + (1 − min layer cos))^N (amplification_from_cosine)
        double predicted_amplification = 1.0;              ///< (Π(1 + ε_i) − 1) / max ε_i, ε_i = layer relative error
        double predicted_relative_error = 0.0;             ///< Π(1 + ε_i) − 1
        double predicted_cosine_floor = 1.0;               ///< cos(Σ acos(layer cos_i))
        double measured_amplification = 1.0;               ///< final stack relative error / max ε_i
        double layer_cos_min = 1.0;                        ///< min over layers of hidden_cos_min
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
        std::vector<std::string> skipped;     ///< tensors kept unquantized for a non-finite value: "name: where"
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

    /// @brief Receives the gated granularity's quantized tensors as they are produced (to write
    ///        a converted checkpoint): begin_layer, then expert() once per expert in any order,
    ///        then end_layer. The quantized tensors are only valid during the call.
    class conversion_sink
    {
    public:
        virtual ~conversion_sink() = default;
        /// @brief experts: {gate_up, down} will be quantized; dense: {gate, up, down} will be;
        ///        specs: the spec of each of {gate_up, down, dense gate, up, down}.
        virtual void begin_layer(const layer_weights& w, std::array<bool, 2> experts, std::array<bool, 3> dense,
                                 const std::array<quant_spec, 5>& specs) = 0;
        /// @brief Expert e's matrices (a null tensor: that stacked tensor is not quantized).
        virtual void expert(const layer_weights& w, std::size_t e, const expert_slices& s) = 0;
        /// @brief dense: {gate, up, down} quantized, or null for those kept in source precision.
        virtual void end_layer(const layer_weights& w, std::array<const quantized_tensor*, 3> dense) = 0;
    };

    namespace detail
    {
        inline std::size_t element_bytes(const any_view& v)
        {
            return std::visit([](const auto& m) { return sizeof(typename std::decay_t<decltype(m)>::value_type); }, v);
        }

        /// Per-row error accumulators and source row amax of rows [q_row0, q_row0 + w.rows) of a
        /// quantized tensor against the view w, written at acc[out0 + r], row_amax[out0 + r].
        template <weight_element T>
        void measure_rows(const matrix_view<T>& w, const quantized_tensor& q, std::size_t q_row0, std::vector<error_accumulator>& acc,
                          std::vector<float>& row_amax, std::size_t out0, unsigned threads)
        {
            parallel_rows(w.rows, threads, [&](std::size_t first, std::size_t last) {
                std::vector<float> buf(w.cols);
                for (std::size_t r = first; r < last; ++r)
                {
                    dequantize_row(q, q_row0 + r, buf.data());
                    error_accumulator a;
                    a.add(w.row(r), buf.data(), w.cols, (out0 + r) * w.cols);
                    acc[out0 + r] = a;
                    float m = 0.0f;
                    for (std::size_t c = 0; c < w.cols; ++c) m = std::max(m, std::fabs(to_float(w.row(r)[c])));
                    row_amax[out0 + r] = m;
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

        /// The first (row-major) NaN or infinity of a view: {row, col, value}, or nothing.
        template <weight_element T>
        std::optional<std::tuple<std::size_t, std::size_t, float>> first_non_finite(const matrix_view<T>& m, unsigned threads)
        {
            std::mutex mu;
            std::optional<std::tuple<std::size_t, std::size_t, float>> best;
            parallel_rows(m.rows, threads, [&](std::size_t first, std::size_t last) {
                for (std::size_t r = first; r < last; ++r)
                {
                    const T* x = m.row(r);
                    bool bad = false;
                    for (std::size_t c = 0; c < m.cols; ++c) bad |= !std::isfinite(to_float(x[c]));
                    if (!bad) continue;
                    for (std::size_t c = 0; c < m.cols; ++c)
                    {
                        const float v = to_float(x[c]);
                        if (std::isfinite(v)) continue;
                        std::lock_guard lock(mu);
                        if (!best || std::get<0>(*best) > r) best = std::tuple{r, c, v};
                        return;
                    }
                }
            });
            return best;
        }

        /// "expert e, row r, column c" (stacked tensors: rows are experts x rows_per_expert) or
        /// "row r, column c".
        inline std::string position(std::size_t row, std::size_t col, std::size_t experts, std::size_t rows)
        {
            if (experts > 1 && rows % experts == 0)
            {
                const std::size_t per = rows / experts;
                return "expert " + std::to_string(row / per) + ", row " + std::to_string(row % per) + ", column " + std::to_string(col);
            }
            return "row " + std::to_string(row) + ", column " + std::to_string(col);
        }

        inline bool same_set(std::vector<std::size_t> a, std::vector<std::size_t> b)
        {
            std::sort(a.begin(), a.end());
            std::sort(b.begin(), b.end());
            return a == b;
        }
    }

    /// @brief The report of one tensor from its per-row accumulators (per expert when experts > 1).
    inline tensor_report report_from_rows(const any_view& v, const quant_spec& spec, std::size_t experts,
                                          const std::vector<error_accumulator>& acc, const std::vector<float>& row_amax,
                                          double bits_per_weight, error_accumulator& combined)
    {
        tensor_report rep;
        std::visit([&](const auto& m) { rep.name = m.name; rep.shape = m.shape; }, v);
        const std::size_t rows = rows_of(v), cols = cols_of(v);
        const float tensor_amax = *std::max_element(row_amax.begin(), row_amax.end());
        if (experts > 1)
        {
            // Per expert first, then the tensor as the combine of the experts (the same order the
            // accumulators would be combined in row order).
            const std::size_t per = rows / experts;
            for (std::size_t e = 0; e < experts; ++e)
            {
                rep.experts.push_back(detail::summarize(acc, row_amax, e * per, (e + 1) * per, cols, spec.granularity, tensor_amax));
            }
        }
        rep.total = detail::summarize(acc, row_amax, 0, rows, cols, spec.granularity, tensor_amax, &combined);
        rep.quantized = true;
        rep.spec = spec;
        rep.bits_per_weight = bits_per_weight;
        return rep;
    }

    /// @brief Quantizes a row block (one expert) of a larger tensor with the per-tensor scale of
    ///        the whole tensor, given that tensor's statistic: the codes and parameters equal those
    ///        rows of quantize(whole tensor, per_tensor spec), without holding the whole result.
    /// @pre `whole` is the min_max of the whole tensor (compute_statistics(...).tensor).
    /// @throws error (invalid_argument) unless spec.granularity is per_tensor; as quantize
    ///         otherwise (bad bits, a scale not representable in spec.scale_type).
    template <weight_element T>
    void quantize_block_per_tensor(const matrix_view<T>& block, const min_max& whole, const quant_spec& spec, quantized_tensor& q,
                                   unsigned threads)
    {
        if (spec.granularity != granularity_kind::per_tensor)
        {
            throw error(error_kind::invalid_argument, "quantize_block_per_tensor needs a per_tensor spec");
        }
        orbitq::detail::analysis::with_scheme(spec, [&](auto scheme) {
            using S = decltype(scheme);
            const auto p = orbitq::detail::analysis::resolve<S>(spec, whole, block.name);
            q.shape = {block.rows, block.cols};
            q.rows = block.rows;
            q.cols = block.cols;
            q.spec = spec;
            q.layout = make_layout<per_tensor>(block.rows, block.cols);
            q.codes.resize(q.rows * q.row_bytes());
            q.scales.assign(1, p.stored_scale);
            if constexpr (S::has_zero_point) q.zero_points.assign(1, p.enc.params.zero_point);
            else q.zero_points.clear();
            parallel_rows(block.rows, threads, [&](std::size_t first, std::size_t last) {
                std::vector<std::int8_t> row_buf(S::bits == 4 ? block.cols : 0);
                for (std::size_t r = first; r < last; ++r)
                {
                    std::int8_t* out = S::bits == 8 ? q.codes.data() + r * block.cols : row_buf.data();
                    if (spec.rounding == rounding_kind::half_to_even) kernels::simd::quantize_span<half_to_even>(block.row(r), block.cols, p.enc, out);
                    else kernels::simd::quantize_span<half_away_from_zero>(block.row(r), block.cols, p.enc, out);
                    if constexpr (S::bits == 4) kernels::simd::pack_int4(row_buf.data(), block.cols, q.codes.data() + r * q.row_bytes());
                }
            });
        });
    }

    /// @brief Quantizes a whole tensor and measures it (per expert when experts > 1).
    inline tensor_report quantize_and_measure(const any_view& v, const quant_spec& spec, std::size_t experts, quantized_tensor& q,
                                              error_accumulator& combined, unsigned threads)
    {
        std::vector<error_accumulator> acc(rows_of(v));
        std::vector<float> row_amax(rows_of(v));
        std::visit(
            [&](const auto& m) {
                q = quantize(m, spec, threads);
                detail::measure_rows(m, q, 0, acc, row_amax, 0, threads);
            },
            v);
        return report_from_rows(v, spec, experts, acc, row_amax, q.bits_per_weight(), combined);
    }

    /// @brief Runs the layer tests and the stack for every granularity of `opt.specs`.
    /// @param load returns the weights of a layer (valid until the next call).
    /// @param x0 tokens × H residual stream entering the first selected layer.
    /// @param sink if not null, receives the gated granularity's quantized tensors.
    /// @param progress if set, called after each layer.
    /// @throws error on a bad option or a shape mismatch.
    inline validation_report validate(const config& c, const std::function<const layer_weights&(std::size_t)>& load,
                                      std::vector<float> x0, validate_options opt, conversion_sink* sink = nullptr,
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

            // NaN/Inf in a tensor that would be quantized: an error naming the position, or (with
            // skip_nonfinite) the tensor is kept in source precision.
            std::set<std::string> nonfinite;
            {
                std::vector<std::pair<const any_view*, std::size_t>> scan = {{&w.gate_up, c.experts}, {&w.down, c.experts}};
                if (opt.include_dense) scan.insert(scan.end(), {{&w.dense_gate, 1}, {&w.dense_up, 1}, {&w.dense_down, 1}});
                for (const auto& entry : scan)
                {
                    const any_view* v = entry.first;
                    const std::size_t experts = entry.second;  // a plain variable: lambdas may capture it (clang 14)
                    if (rows_of(*v) * cols_of(*v) <= opt.min_elements) continue;
                    std::visit(
                        [&](const auto& m) {
                            const auto bad = detail::first_non_finite(m, opt.threads);
                            if (!bad) return;
                            const auto [r, col, value] = *bad;
                            const std::string where = "non-finite value " + std::to_string(value) + " at "
                                                      + detail::position(r, col, experts, m.rows);
                            if (!opt.skip_nonfinite)
                            {
                                throw error(error_kind::non_finite, "tensor '" + m.name + "' (layer " + std::to_string(layer) + "): " + where
                                                                        + "; fix the checkpoint, or pass --skip-nonfinite to copy such tensors unquantized");
                            }
                            nonfinite.insert(m.name);
                            rep.skipped.push_back(m.name + ": " + where);
                        },
                        *v);
                }
                if (w.release_expert)
                {
                    for (std::size_t e = 0; e < c.experts; ++e) w.release_expert(e);
                }
            }

            view_operators src(c, w, opt.threads);
            std::vector<token_route> routes_orig;
            ffn_forward(c, w, src, x_orig.data(), T, y_orig.data(), &routes_orig, opt.threads);

            for (std::size_t g = 0; g < G; ++g)
            {
                const quant_spec& spec = opt.specs[g];
                granularity_layer gl;
                auto t0 = clock::now();
                const bool sinking = sink && g == opt.gated;
                std::array<quantized_tensor, 3> dense_qs;
                std::array<const quantized_tensor*, 3> dq = {nullptr, nullptr, nullptr};
                error_accumulator layer_acc;
                auto kept = [&](const any_view& v) {
                    tensor_report t;
                    std::visit([&](const auto& m) { t.name = m.name; t.shape = m.shape; }, v);
                    if (nonfinite.count(t.name)) t.skipped = "non-finite values";
                    else
                    {
                        // A partner (the other expert tensor, or another dense matrix) has them.
                        const bool expert = &v == &w.gate_up || &v == &w.down;
                        for (const any_view* p : expert ? std::vector<const any_view*>{&w.gate_up, &w.down}
                                                        : std::vector<const any_view*>{&w.dense_gate, &w.dense_up, &w.dense_down})
                        {
                            const std::string pn = std::visit([](const auto& m) { return m.name; }, *p);
                            if (nonfinite.count(pn)) t.skipped = "kept with '" + pn + "' (non-finite values): one scheme per layer";
                        }
                    }
                    t.bits_per_weight = 8.0 * static_cast<double>(detail::element_bytes(v));
                    return t;
                };
                auto wanted = [&](const any_view& v) {
                    if (rows_of(v) * cols_of(v) <= opt.min_elements) return false;
                    return std::visit([&](const auto& m) { return !nonfinite.count(m.name); }, v);
                };

                // Experts are quantized one at a time, on demand (when the forward first needs
                // them; the unrouted ones after it), so memory holds one expert's codes. Finer
                // granularities give the same codes as the stacked tensor (their orbits lie inside
                // rows); per-tensor first reduces the stacked tensor's statistic, block by block.
                const std::array<const any_view*, 2> ev = {&w.gate_up, &w.down};
                const std::array<std::size_t, 2> erows = {2 * c.expert_intermediate, c.hidden};
                // The experts' gate_up and down are quantized together or not at all, and so are
                // the three dense matrices: engines load a MoE layer (and a fused gate_up) only in
                // one scheme, so a tensor kept in source precision keeps its partners too.
                const bool experts_wanted = wanted(w.gate_up) && wanted(w.down);
                const bool dense_wanted = opt.include_dense && wanted(w.dense_gate) && wanted(w.dense_up) && wanted(w.dense_down);
                std::array<bool, 2> equant = {experts_wanted, experts_wanted};
                const std::array<bool, 3> dquant = {dense_wanted, dense_wanted, dense_wanted};
                // The spec of each tensor: the granularity's, or the layer's chosen one (automatic).
                std::array<quant_spec, 5> tspec = {spec, spec, spec, spec, spec};
                if (g == opt.gated && opt.choose && (experts_wanted || dense_wanted))
                {
                    std::vector<const any_view*> chosen_for;
                    if (experts_wanted) chosen_for.insert(chosen_for.end(), {&w.gate_up, &w.down});
                    if (dense_wanted) chosen_for.insert(chosen_for.end(), {&w.dense_gate, &w.dense_up, &w.dense_down});
                    tspec.fill(opt.choose(chosen_for, spec));
                    if (w.release_expert)
                    {
                        for (std::size_t e = 0; e < c.experts; ++e) w.release_expert(e);
                    }
                }
                if (sinking) sink->begin_layer(w, equant, dquant, tspec);
                std::array<std::vector<error_accumulator>, 2> eacc;
                std::array<std::vector<float>, 2> eamax;
                std::array<double, 2> ebpw = {0.0, 0.0};
                std::array<min_max, 2> stacked_stat;
                const std::array<bool, 2> whole = {tspec[0].granularity == granularity_kind::per_tensor,
                                                   tspec[1].granularity == granularity_kind::per_tensor};
                for (std::size_t k = 0; k < 2; ++k)
                {
                    if (!equant[k]) continue;
                    eacc[k].resize(rows_of(*ev[k]));
                    eamax[k].resize(rows_of(*ev[k]));
                }
                if (whole[0] || whole[1])
                {
                    // The stacked tensors' statistics, one expert block at a time.
                    for (std::size_t e = 0; e < c.experts; ++e)
                    {
                        for (std::size_t k = 0; k < 2; ++k)
                        {
                            if (!equant[k] || !whole[k]) continue;
                            std::visit(
                                [&](const auto& m) {
                                    const auto block = row_block(m, e * erows[k], erows[k], m.name);
                                    const min_max st = compute_statistics(block, block.cols, opt.threads).tensor;
                                    stacked_stat[k] = e == 0 ? st : combine(stacked_stat[k], st);
                                },
                                *ev[k]);
                        }
                        if (w.release_expert) w.release_expert(e);
                    }
                }
                std::vector<bool> done(c.experts, false);
                std::size_t cached = static_cast<std::size_t>(-1);
                std::array<quantized_tensor, 2> per_expert;
                auto provide = [&](std::size_t e) -> expert_slices {
                    expert_slices s;
                    for (std::size_t k = 0; k < 2; ++k)
                    {
                        if (!equant[k]) continue;
                        s.q[k] = &per_expert[k];
                        if (cached == e) continue;
                        const auto tq = clock::now();
                        std::visit(
                            [&](const auto& m) {
                                const auto block = row_block(m, e * erows[k], erows[k], m.name);
                                if (whole[k]) quantize_block_per_tensor(block, stacked_stat[k], tspec[k], per_expert[k], opt.threads);
                                else quantize_into(block, per_expert[k], tspec[k], opt.threads);
                                detail::measure_rows(block, per_expert[k], 0, eacc[k], eamax[k], e * erows[k], opt.threads);
                            },
                            *ev[k]);
                        quantize_s += std::chrono::duration<double>(clock::now() - tq).count();
                        if (e == 0) ebpw[k] = per_expert[k].bits_per_weight();
                        rep.quantized_source_bytes += static_cast<double>(erows[k] * cols_of(*ev[k]) * detail::element_bytes(*ev[k]));
                    }
                    cached = e;
                    if (!done[e])
                    {
                        done[e] = true;
                        if (sinking) sink->expert(w, e, s);
                        if (w.release_expert) w.release_expert(e);
                    }
                    return s;
                };

                // Dense MLP (whole matrices; optional).
                const std::array<const any_view*, 3> dv = {&w.dense_gate, &w.dense_up, &w.dense_down};
                std::array<tensor_report, 3> dense_reports;
                for (std::size_t k = 0; k < 3; ++k)
                {
                    if (!dquant[k])
                    {
                        dense_reports[k] = kept(*dv[k]);
                    }
                    else
                    {
                        error_accumulator acc;
                        dense_reports[k] = quantize_and_measure(*dv[k], tspec[2 + k], 1, dense_qs[k], acc, opt.threads);
                        layer_acc = combine(layer_acc, acc);
                        rep.quantized_source_bytes += static_cast<double>(rows_of(*dv[k]) * cols_of(*dv[k]) * detail::element_bytes(*dv[k]));
                        dq[k] = &dense_qs[k];
                    }
                }
                quantize_s += std::chrono::duration<double>(clock::now() - t0).count();

                // Quantized weights on 2T tokens: the original stream (layer test) and this
                // granularity's own stream (stack).
                std::copy(x_orig.begin(), x_orig.end(), xin.begin());
                std::copy(x_q[g].begin(), x_q[g].end(), xin.begin() + static_cast<std::ptrdiff_t>(T * H));
                quantized_operators qops(c, w, provide, dq, opt.threads,
                                         g == opt.gated ? opt.activations : activation_quantization::none);
                std::vector<token_route> routes_q;
                ffn_forward(c, w, qops, xin.data(), 2 * T, yq.data(), &routes_q, opt.threads);
                // Experts no token chose: quantized for the metrics and the output all the same.
                for (std::size_t e = 0; e < c.experts; ++e)
                {
                    if (!done[e]) provide(e);
                }
                if (sinking) sink->end_layer(w, dq);

                std::vector<tensor_report> expert_reports;
                for (std::size_t k = 0; k < 2; ++k)
                {
                    if (!equant[k])
                    {
                        expert_reports.push_back(kept(*ev[k]));
                        continue;
                    }
                    error_accumulator acc;
                    expert_reports.push_back(report_from_rows(*ev[k], tspec[k], c.experts, eacc[k], eamax[k], ebpw[k], acc));
                    layer_acc = combine(layer_acc, acc);
                }
                gl.tensors = std::move(expert_reports);
                for (auto& t : dense_reports) gl.tensors.push_back(std::move(t));
                gl.weight_sqnr_db = layer_acc.count ? layer_acc.sqnr_db() : std::numeric_limits<double>::infinity();

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
            s.predicted_amplification_from_cosine = amplification_from_cosine(s.layer_cos_min, N);
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
