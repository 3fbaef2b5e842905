/// @file validate.hpp
/// @brief Validation of a quantized MoE FFN, layer by layer and over the stack, for several
///        granularities in one pass over the weights.
///
/// For every selected layer (in order) and every granularity compared:
/// - the expert projections (and, with include_dense, the dense MLP) are quantized once;
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
/// expert's quantized blocks at a time.
#pragma once

#include "orbitq/analyze.hpp"
#include "orbitq/metrics.hpp"
#include "orbitq/moe/forward.hpp"
#include "orbitq/moe/validate_report.hpp"
#include "orbitq/quantize.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

namespace orbitq::moe
{
    namespace detail
    {
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
    /// @param rows_per_expert rows of each expert's block (all rows when experts == 1).
    inline tensor_report report_from_rows(const std::string& name, const shape_type& shape, std::size_t cols, const quant_spec& spec,
                                          std::size_t experts, const std::vector<error_accumulator>& acc,
                                          const std::vector<float>& row_amax, double bits_per_weight, error_accumulator& combined)
    {
        tensor_report rep;
        rep.name = name;
        rep.shape = shape;
        const std::size_t rows = acc.size();
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
        if (spec.scales == scale_search::mse)
        {
            throw error(error_kind::invalid_argument, "quantize_block_per_tensor: a searched (mse) scale needs every block of the tensor at once; "
                                                      "quantize the whole tensor, or use scale_search::amax");
        }
        if (is_float_scheme(spec.scheme))
        {
            orbitq::detail::check_input(block);
            return orbitq::detail::quantize_float(block, q, spec, threads, whole.to_abs_max().value);
        }
        orbitq::detail::analysis::with_scheme(spec, [&](auto scheme) {
            using S = decltype(scheme);
            const auto p = orbitq::detail::analysis::resolve<S>(spec, whole, block.name);
            orbitq::detail::prepare_integer_tensor<S>(q, {block.rows, block.cols}, spec, make_layout<per_tensor>(block.rows, block.cols));
            q.scales[0] = p.stored_scale;
            if constexpr (S::has_zero_point) q.zero_points[0] = p.enc.params.zero_point;
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

    /// @brief Quantizes a whole tensor and measures it.
    inline tensor_report quantize_and_measure(const any_view& v, const quant_spec& spec, quantized_tensor& q, error_accumulator& combined,
                                              unsigned threads)
    {
        std::vector<error_accumulator> acc(rows_of(v));
        std::vector<float> row_amax(rows_of(v));
        std::visit(
            [&](const auto& m) {
                quantize_into(m, q, spec, threads);
                detail::measure_rows(m, q, 0, acc, row_amax, 0, threads);
            },
            v);
        return report_from_rows(name_of(v), shape_of(v), cols_of(v), spec, 1, acc, row_amax,
                                q.bits_per_weight(), combined);
    }

    namespace detail
    {
        using clock = std::chrono::steady_clock;

        inline double seconds_since(clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); }

        /// Checks the options against the model and the input; fills in every layer when none is selected.
        inline void check_options(const config& c, validate_options& opt, std::size_t input_size)
        {
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
            if (input_size != opt.tokens * c.hidden) throw error(error_kind::shape_mismatch, "validate: input tokens must be tokens x hidden");
        }

        /// With an importance function: every tensor the selected layers quantize with an mse
        /// spec has an importance of its shape (opt.importance throws naming the first that has
        /// none), checked before the first layer is read, so a file that misses one stops the
        /// run before any work. The tensors are those with_importance is asked for: the experts
        /// under a searched spec other than per_tensor (a per-tensor orbit of stacked experts
        /// is quantized block by block without it), the dense MLP under any searched spec.
        inline void check_importance_coverage(const config& c, const validate_options& opt)
        {
            if (!opt.importance) return;
            const auto searched = [&](bool per_tensor_too) {
                return std::any_of(opt.specs.begin(), opt.specs.end(), [&](const quant_spec& s) {
                    return s.scales == scale_search::mse && (per_tensor_too || s.granularity != granularity_kind::per_tensor);
                });
            };
            const bool experts = searched(false), dense = opt.include_dense && c.has_dense() && searched(true);
            for (std::size_t l : opt.layers)
            {
                if (experts)
                {
                    for (const auto& [name, cols] : expert_projections(c, l)) (void)opt.importance(name, 0, c.experts, cols);
                }
                if (dense)
                {
                    for (std::size_t k = 0; k < 3; ++k) (void)opt.importance(names::dense_linear(c, l, k) + ".weight", 0, 1, k == 2 ? c.dense_intermediate : c.hidden);
                }
            }
        }

        /// The names of the tensors of a layer that would be quantized but hold a NaN or an
        /// infinity: an error naming the first position, or (skip_nonfinite) listed in `skipped`.
        inline std::set<std::string> scan_nonfinite(const config& c, const layer_weights& w, const validate_options& opt,
                                                    std::vector<std::string>& skipped)
        {
            std::set<std::string> bad_tensors;
            auto found = [&](const std::string& name, const std::string& where) {
                if (!opt.skip_nonfinite)
                {
                    throw error(error_kind::non_finite, "tensor '" + name + "' (layer " + std::to_string(w.layer) + "): " + where
                                                            + "; fix the checkpoint, or pass --skip-nonfinite to copy such tensors unquantized");
                }
                bad_tensors.insert(name);
                skipped.push_back(name + ": " + where);
            };
            auto first_bad = [&](const any_view& v) {
                return std::visit([&](const auto& m) { return first_non_finite(m, opt.threads); }, v);
            };
            for (const expert_tensor& t : w.experts)
            {
                if (t.elements() <= opt.min_elements) continue;
                for (std::size_t e = 0; e < t.blocks.size(); ++e)
                {
                    const auto bad = first_bad(t.blocks[e]);
                    if (!bad) continue;
                    const auto [r, col, value] = *bad;
                    found(t.name, "non-finite value " + std::to_string(value) + " at " + position(e * t.rows + r, col, t.blocks.size(), t.blocks.size() * t.rows));
                    break;
                }
            }
            if (opt.include_dense)
            {
                for (const any_view& v : w.dense)
                {
                    if (rows_of(v) * cols_of(v) <= opt.min_elements) continue;
                    if (const auto bad = first_bad(v))
                    {
                        const auto [r, col, value] = *bad;
                        found(name_of(v), "non-finite value " + std::to_string(value) + " at " + position(r, col, 1, rows_of(v)));
                    }
                }
            }
            w.release_all(c.experts);
            return bad_tensors;
        }

        /// What one granularity quantizes in a layer: the experts and the dense MLP each all
        /// together or not at all (engines load a MoE layer, and a fused gate_up, in one scheme
        /// only, so a tensor kept in source precision keeps its partners), with one spec.
        struct layer_plan
        {
            bool experts = false;
            bool dense = false;
            quant_spec spec;
        };

        inline layer_plan plan_layer(const config& c, const layer_weights& w, const validate_options& opt, std::size_t g,
                                     const std::set<std::string>& nonfinite)
        {
            layer_plan p;
            p.spec = opt.specs[g];
            auto wanted = [&](const std::string& name, std::size_t elements) { return elements > opt.min_elements && !nonfinite.count(name); };
            p.experts = std::all_of(w.experts.begin(), w.experts.end(), [&](const expert_tensor& t) { return wanted(t.name, t.elements()); });
            p.dense = opt.include_dense && c.has_dense()
                      && std::all_of(w.dense.begin(), w.dense.end(), [&](const any_view& v) { return wanted(name_of(v), rows_of(v) * cols_of(v)); });
            if (g == opt.gated && opt.choose && (p.experts || p.dense))
            {
                std::vector<any_view> tensors;
                if (p.experts)
                {
                    for (const expert_tensor& t : w.experts)
                    {
                        if (t.stacked) tensors.push_back(*t.stacked);
                        else tensors.insert(tensors.end(), t.blocks.begin(), t.blocks.end());
                    }
                }
                if (p.dense) tensors.insert(tensors.end(), w.dense.begin(), w.dense.end());
                p.spec = opt.choose(tensors, p.spec);
                w.release_all(c.experts);
            }
            return p;
        }

        /// The report of a tensor kept in source precision, with the reason when it is not its size.
        inline tensor_report kept_report(const layer_weights& w, const std::string& name, const shape_type& shape, std::size_t bytes,
                                         bool expert, const std::set<std::string>& nonfinite)
        {
            tensor_report t;
            t.name = name;
            t.shape = shape;
            if (nonfinite.count(name)) t.skipped = "non-finite values";
            else
            {
                std::vector<std::string> partners;
                if (expert)
                {
                    for (const auto& p : w.experts) partners.push_back(p.name);
                }
                else
                {
                    for (const auto& v : w.dense) partners.push_back(name_of(v));
                }
                for (const auto& pn : partners)
                {
                    if (nonfinite.count(pn)) t.skipped = "kept with '" + pn + "' (non-finite values): one scheme per layer";
                }
            }
            t.bits_per_weight = 8.0 * static_cast<double>(bytes);
            return t;
        }

        using importance_function = decltype(validate_options::importance);

        /// spec with the importance of expert `e` of `tensor` when spec searches (mse) and an
        /// importance is given; else spec.
        inline quant_spec with_importance(quant_spec spec, const importance_function& f, const std::string& tensor, std::size_t e, std::size_t experts,
                                          std::size_t cols)
        {
            if (f && spec.scales == scale_search::mse) spec.importance = f(tensor, e, experts, cols);
            return spec;
        }

        /// Quantizes a layer's experts one at a time, on demand (when the forward first needs
        /// them; the unrouted ones after it), so memory holds one expert's codes, and measures
        /// them. Finer granularities give the same codes as the stacked tensor (their orbits lie
        /// inside rows); per_tensor first reduces each projection's statistic over all experts.
        class expert_quantizer
        {
        public:
            expert_quantizer(const config& c, const layer_weights& w, const quant_spec& spec, const validate_options& opt, conversion_sink* sink,
                             validation_report& rep, double& quantize_s, std::vector<quantized_tensor>& q)
                : m_c(c)
                , m_w(w)
                , m_spec(spec)
                , m_importance(opt.importance)
                , m_threads(opt.threads)
                , m_sink(sink)
                , m_rep(rep)
                , m_quantize_s(quantize_s)
                , m_acc(w.experts.size())
                , m_amax(w.experts.size())
                , m_bpw(w.experts.size(), 0.0)
                , m_stat(w.experts.size())
                , m_q(q)
                , m_done(c.experts, false)
            {
                m_q.resize(w.experts.size());
                for (std::size_t k = 0; k < w.experts.size(); ++k)
                {
                    m_acc[k].resize(w.experts[k].blocks.size() * w.experts[k].rows);
                    m_amax[k].resize(m_acc[k].size());
                }
                if (spec.granularity == granularity_kind::per_tensor) reduce_statistics();
            }

            /// Expert e's quantized blocks (quantized on first use, handed to the sink once).
            expert_slices provide(std::size_t e)
            {
                expert_slices s;
                for (std::size_t k = 0; k < m_w.experts.size(); ++k)
                {
                    s.q.push_back(&m_q[k]);
                    if (m_cached != e) quantize(k, e);
                }
                m_cached = e;
                if (!m_done[e])
                {
                    m_done[e] = true;
                    if (m_sink) m_sink->expert(m_w, e, s);
                    if (m_w.release_expert) m_w.release_expert(e);
                }
                return s;
            }

            /// Quantizes the experts no token chose (for the metrics and the output all the same).
            void finish()
            {
                for (std::size_t e = 0; e < m_c.experts; ++e)
                {
                    if (!m_done[e]) provide(e);
                }
            }

            /// One report per projection; adds their errors to `layer_acc`.
            std::vector<tensor_report> reports(error_accumulator& layer_acc) const
            {
                std::vector<tensor_report> out;
                for (std::size_t k = 0; k < m_w.experts.size(); ++k)
                {
                    const expert_tensor& t = m_w.experts[k];
                    error_accumulator acc;
                    out.push_back(report_from_rows(t.name, t.shape(),
                                                   t.cols, m_spec, m_c.experts, m_acc[k], m_amax[k], m_bpw[k], acc));
                    layer_acc = combine(layer_acc, acc);
                }
                return out;
            }

        private:
            void reduce_statistics()
            {
                for (std::size_t e = 0; e < m_c.experts; ++e)
                {
                    for (std::size_t k = 0; k < m_w.experts.size(); ++k)
                    {
                        std::visit(
                            [&](const auto& m) {
                                const min_max st = compute_statistics(m, m.cols, m_threads).tensor;
                                m_stat[k] = e == 0 ? st : combine(m_stat[k], st);
                            },
                            m_w.experts[k].blocks[e]);
                    }
                    if (m_w.release_expert) m_w.release_expert(e);
                }
            }

            void quantize(std::size_t k, std::size_t e)
            {
                const auto t0 = clock::now();
                const expert_tensor& t = m_w.experts[k];
                std::visit(
                    [&](const auto& block) {
                        if (m_spec.granularity == granularity_kind::per_tensor) quantize_block_per_tensor(block, m_stat[k], m_spec, m_q[k], m_threads);
                        else quantize_into(block, m_q[k], with_importance(m_spec, m_importance, t.name, e, m_c.experts, t.cols), m_threads);
                        measure_rows(block, m_q[k], 0, m_acc[k], m_amax[k], e * t.rows, m_threads);
                    },
                    t.blocks[e]);
                m_quantize_s += seconds_since(t0);
                if (e == 0) m_bpw[k] = m_q[k].bits_per_weight();
                m_rep.quantized_source_bytes += static_cast<double>(t.rows * t.cols * element_bytes(t.blocks[e]));
            }

            const config& m_c;
            const layer_weights& m_w;
            quant_spec m_spec;
            const importance_function& m_importance;
            unsigned m_threads;
            conversion_sink* m_sink;
            validation_report& m_rep;
            double& m_quantize_s;
            std::vector<std::vector<error_accumulator>> m_acc;
            std::vector<std::vector<float>> m_amax;
            std::vector<double> m_bpw;
            std::vector<min_max> m_stat;
            std::vector<quantized_tensor>& m_q;  ///< the caller's, reused from layer to layer
            std::vector<bool> m_done;
            std::size_t m_cached = static_cast<std::size_t>(-1);
        };

        /// The same-input (layer test) and stack metrics of one granularity from the quantized
        /// forward on 2T tokens: the original stream's first, then the granularity's own.
        inline void measure_outputs(granularity_layer& gl, std::size_t T, std::size_t H, const std::vector<float>& y_orig,
                                    const std::vector<float>& yq, const std::vector<token_route>& routes_orig,
                                    const std::vector<token_route>& routes_q)
        {
            std::size_t agree = 0;
            for (std::size_t t = 0; t < T; ++t)
            {
                const float* ref = y_orig.data() + t * H;
                const double hc = cosine(std::span<const float>(ref, H), std::span<const float>(yq.data() + t * H, H));
                gl.hidden_cos.push_back(hc);
                gl.hidden_rel_err_max = std::max(gl.hidden_rel_err_max, relative_error(ref, yq.data() + t * H, H));
                const float* ys = yq.data() + (T + t) * H;
                gl.stack_cos.push_back(cosine(std::span<const float>(ref, H), std::span<const float>(ys, H)));
                gl.stack_rel_err_max = std::max(gl.stack_rel_err_max, relative_error(ref, ys, H));
                if (same_set(routes_orig[t].experts, routes_q[T + t].experts)) ++agree;
            }
            gl.hidden_cos_min = *std::min_element(gl.hidden_cos.begin(), gl.hidden_cos.end());
            gl.stack_cos_min = *std::min_element(gl.stack_cos.begin(), gl.stack_cos.end());
            gl.router_agreement = static_cast<double>(agree) / static_cast<double>(T);
        }

        /// The residual streams pushed through the stack: the original, and one per granularity.
        struct streams
        {
            std::vector<float> orig;                 ///< T x H entering the current layer
            std::vector<float> orig_out;             ///< T x H leaving it (source weights)
            std::vector<std::vector<float>> quantized;
            std::vector<token_route> routes_orig;
            input_global_scales input_globals;      ///< the current layer's (NVFP4 activations only)
            /// Per granularity, the quantized experts and dense matrices of the current layer,
            /// kept from layer to layer so that same-shaped layers reuse their storage.
            std::vector<std::vector<quantized_tensor>> expert_q, dense_q;
        };

        /// One granularity on one layer: quantizes (experts on demand, dense whole), runs the
        /// quantized forward on the original and the granularity's streams, measures.
        inline granularity_layer validate_granularity(const config& c, const layer_weights& w, const validate_options& opt, std::size_t g,
                                                      const std::set<std::string>& nonfinite, streams& s, conversion_sink* sink,
                                                      validation_report& rep, double& quantize_s)
        {
            const std::size_t T = opt.tokens, H = c.hidden;
            const auto t0 = clock::now();
            conversion_sink* out = g == opt.gated ? sink : nullptr;
            const layer_plan plan = plan_layer(c, w, opt, g, nonfinite);
            if (out) out->begin_layer(w, plan.experts, plan.dense, plan.spec);
            std::optional<expert_quantizer> experts;
            if (plan.experts) experts.emplace(c, w, plan.spec, opt, out, rep, quantize_s, s.expert_q[g]);

            // Dense MLP (whole matrices; optional).
            error_accumulator layer_acc;
            std::vector<quantized_tensor>& dense_qs = s.dense_q[g];
            dense_qs.resize(w.dense.size());
            std::vector<const quantized_tensor*> dq;
            std::vector<tensor_report> dense_reports;
            for (std::size_t k = 0; k < w.dense.size(); ++k)
            {
                const any_view& v = w.dense[k];
                if (!plan.dense)
                {
                    dense_reports.push_back(kept_report(w, name_of(v), shape_of(v),
                                                        element_bytes(v), false, nonfinite));
                    continue;
                }
                error_accumulator acc;
                const quant_spec spec = with_importance(plan.spec, opt.importance, name_of(v), 0, 1, cols_of(v));
                dense_reports.push_back(quantize_and_measure(v, spec, dense_qs[k], acc, opt.threads));
                layer_acc = combine(layer_acc, acc);
                rep.quantized_source_bytes += static_cast<double>(rows_of(v) * cols_of(v) * element_bytes(v));
                dq.push_back(&dense_qs[k]);
            }
            quantize_s += seconds_since(t0);

            std::vector<float> xin(2 * T * H), yq(2 * T * H);
            std::copy(s.orig.begin(), s.orig.end(), xin.begin());
            std::copy(s.quantized[g].begin(), s.quantized[g].end(), xin.begin() + static_cast<std::ptrdiff_t>(T * H));
            auto provide = [&](std::size_t e) { return experts ? experts->provide(e) : expert_slices{}; };
            const bool gated = g == opt.gated;
            const activation_quantization acts = !gated              ? activation_quantization::none
                                               : opt.activations_for ? opt.activations_for(plan.spec)
                                                                     : opt.activations;
            const quantized_operators qops(w, provide, dq, opt.threads, acts, gated ? s.input_globals : input_global_scales{});
            std::vector<token_route> routes_q;
            ffn_forward(c, w, qops, xin.data(), 2 * T, yq.data(), &routes_q, opt.threads);
            if (experts) experts->finish();
            if (out) out->end_layer(w, dq);

            granularity_layer gl;
            if (experts) gl.tensors = experts->reports(layer_acc);
            else
            {
                for (const expert_tensor& t : w.experts)
                {
                    gl.tensors.push_back(kept_report(w, t.name, t.shape(),
                                                     element_bytes(t.blocks.at(0)), true, nonfinite));
                }
            }
            for (auto& t : dense_reports) gl.tensors.push_back(std::move(t));
            gl.weight_sqnr_db = layer_acc.count ? layer_acc.sqnr_db() : std::numeric_limits<double>::infinity();
            measure_outputs(gl, T, H, s.orig_out, yq, s.routes_orig, routes_q);
            std::copy(yq.begin() + static_cast<std::ptrdiff_t>(T * H), yq.end(), s.quantized[g].begin());
            return gl;
        }

        /// Stack summaries and gates of every granularity.
        inline void summarize_stack(validation_report& rep, const validate_options& opt)
        {
            const std::size_t N = rep.layers.size();
            for (std::size_t g = 0; g < rep.stack.size(); ++g)
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
        }
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
        const auto t_start = detail::clock::now();
        detail::check_options(c, opt, x0.size());
        detail::check_importance_coverage(c, opt);
        const std::size_t G = opt.specs.size();
        validation_report rep;
        rep.stack.resize(G);
        detail::streams s;
        s.orig = std::move(x0);
        s.orig_out.resize(s.orig.size());
        s.quantized.assign(G, s.orig);
        s.expert_q.resize(G);
        s.dense_q.resize(G);
        double quantize_s = 0.0;
        for (std::size_t li = 0; li < opt.layers.size(); ++li)
        {
            const layer_weights& w = load(opt.layers[li]);
            w.check(c);
            layer_report lr;
            lr.layer = opt.layers[li];
            const std::set<std::string> nonfinite = detail::scan_nonfinite(c, w, opt, rep.skipped);
            const view_operators source(w, opt.threads);
            if (opt.activations == activation_quantization::nvfp4_per_group16)
            {
                // the static activation scales, calibrated on the original stream through the
                // source weights, as a calibration run would
                const input_amax_recorder recorder(w, source);
                ffn_forward(c, w, recorder, s.orig.data(), opt.tokens, s.orig_out.data(), &s.routes_orig, opt.threads);
                s.input_globals = recorder.global_scales("layer " + std::to_string(w.layer));
                if (sink) sink->activation_scales(w, s.input_globals);
            }
            else ffn_forward(c, w, source, s.orig.data(), opt.tokens, s.orig_out.data(), &s.routes_orig, opt.threads);
            for (std::size_t g = 0; g < G; ++g) lr.by_spec.push_back(detail::validate_granularity(c, w, opt, g, nonfinite, s, sink, rep, quantize_s));
            s.orig.swap(s.orig_out);
            rep.layers.push_back(std::move(lr));
            if (progress) progress({li + 1, opt.layers.size(), opt.layers[li], detail::seconds_since(t_start), rep.quantized_source_bytes});
        }
        detail::summarize_stack(rep, opt);
        rep.quantize_seconds = quantize_s;
        rep.total_seconds = detail::seconds_since(t_start);
        return rep;
    }
}
