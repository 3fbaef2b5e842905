/// @file layer.hpp
/// @brief The weights of one MoE layer's FFN as views in the checkpoint's element type: the
///        experts as per-expert blocks of their projections, the dense MLP, the router, norms.
#pragma once

#include "orbitq/core/error.hpp"
#include "orbitq/core/float16.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/moe/architecture.hpp"

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace orbitq::moe
{
    /// @brief A view of a weight in whichever element type the checkpoint stores.
    using any_view = std::variant<matrix_view<float>, matrix_view<bfloat16_t>, matrix_view<float16_t>>;

    /// @brief Rows x cols of an any_view.
    inline std::size_t rows_of(const any_view& v) { return std::visit([](const auto& m) { return m.rows; }, v); }
    inline std::size_t cols_of(const any_view& v) { return std::visit([](const auto& m) { return m.cols; }, v); }
    /// @brief The name of the tensor an any_view shows.
    inline const std::string& name_of(const any_view& v)
    {
        return std::visit([](const auto& m) -> const std::string& { return m.name; }, v);
    }
    /// @brief The shape of the tensor an any_view shows.
    inline const shape_type& shape_of(const any_view& v)
    {
        return std::visit([](const auto& m) -> const shape_type& { return m.shape; }, v);
    }
    /// @brief The element type of an any_view.
    inline element_type element_of(const any_view& v)
    {
        return std::visit([](const auto& m) { return element_type_of<typename std::decay_t<decltype(m)>::value_type>(); }, v);
    }
    /// @brief Bytes per element of an any_view.
    inline std::size_t element_bytes(const any_view& v)
    {
        return std::visit([](const auto& m) { return sizeof(typename std::decay_t<decltype(m)>::value_type); }, v);
    }

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
    /// @throws error (shape_mismatch) when the block leaves the view.
    template <weight_element T>
    matrix_view<T> row_block(const matrix_view<T>& m, std::size_t first, std::size_t count, std::string name)
    {
        if (first + count > m.rows) throw error(error_kind::shape_mismatch, "row block outside tensor '" + m.name + "'");
        return matrix_view<T>{m.row(first), count, m.cols, m.stride, shape_type{count, m.cols}, std::move(name)};
    }
    /// @brief row_block of an any_view, keeping the view's name.
    inline any_view row_block(const any_view& v, std::size_t first, std::size_t count)
    {
        return std::visit([&](const auto& m) { return any_view{row_block(m, first, count, m.name)}; }, v);
    }

    /// @brief One Linear of an expert inside a projection's block: rows [row0, row0 + rows) are
    ///        the Linear `stem` (gate_proj, up_proj or down_proj).
    struct linear_part
    {
        std::string stem;
        std::size_t row0 = 0;
        std::size_t rows = 0;
    };

    /// @brief One projection of all experts (gate_up, or gate, up, down): E blocks of rows x cols,
    ///        one per expert, reported and (per_tensor) scaled as one stacked tensor.
    struct expert_tensor
    {
        std::string name;              ///< the stacked tensor's name, or `<experts>.*.<stem>.weight`
        std::size_t rows = 0;          ///< per expert
        std::size_t cols = 0;
        std::vector<any_view> blocks;  ///< expert e's rows x cols
        std::vector<linear_part> linears;  ///< the per-expert Linears a block holds
        std::optional<any_view> stacked;   ///< the one tensor holding every block, when the checkpoint has it

        /// @brief Elements over all experts.
        std::size_t elements() const noexcept { return blocks.size() * rows * cols; }
        /// @brief {E, rows, cols}
        shape_type shape() const { return {blocks.size(), rows, cols}; }
    };

    /// @brief A norm weight [H], or none (the step is skipped).
    using norm_weight = std::optional<std::vector<float>>;

    /// @brief The weights of one layer's FFN: the matrices as views (not owned), the small vectors
    ///        widened to float32 (owned).
    struct layer_weights
    {
        std::size_t layer = 0;
        /// The experts' projections: those read by the experts' input first, whose rows
        /// concatenate to [gate | up] (2I), then down [H, I] last.
        std::vector<expert_tensor> experts;
        std::vector<any_view> dense;        ///< {gate [D, H], up [D, H], down [H, D]}, or empty
        any_view router;                    ///< [E, H]
        std::vector<float> router_scale;    ///< [H] or empty
        std::vector<float> per_expert_scale;  ///< [E] or empty
        norm_weight expert_input_norm, expert_output_norm, dense_input_norm, dense_output_norm, ffn_output_norm;
        float layer_scalar = 1.0f;
        /// Optional: tells the source that expert e's matrices are not needed for now (a
        /// memory-mapped checkpoint drops their pages; they are re-read on the next use).
        std::function<void(std::size_t e)> release_expert;

        /// @brief Calls release_expert for every expert, if set.
        void release_all(std::size_t experts_count) const
        {
            if (!release_expert) return;
            for (std::size_t e = 0; e < experts_count; ++e) release_expert(e);
        }

        /// @brief Checks every shape against the config.
        /// @throws error (shape_mismatch) naming the tensor.
        void check(const config& c) const
        {
            const std::string where = "layer " + std::to_string(layer) + " ";
            auto need = [&](const any_view& v, std::size_t rows, std::size_t cols, const std::string& what) {
                if (rows_of(v) != rows || cols_of(v) != cols)
                {
                    throw error(error_kind::shape_mismatch, where + what + ": expected " + std::to_string(rows) + " x " + std::to_string(cols)
                                                                + " rows x cols, got " + std::to_string(rows_of(v)) + " x "
                                                                + std::to_string(cols_of(v)));
                }
            };
            const std::size_t H = c.hidden, E = c.experts, I = c.expert_intermediate, D = c.dense_intermediate;
            if (experts.size() < 2 || experts.size() > 3) throw error(error_kind::shape_mismatch, where + "needs 2 or 3 expert projections");
            std::size_t input_rows = 0;
            for (std::size_t k = 0; k < experts.size(); ++k)
            {
                const expert_tensor& t = experts[k];
                const bool down = k + 1 == experts.size();
                if (t.blocks.size() != E) throw error(error_kind::shape_mismatch, where + t.name + ": expected one block per expert");
                for (const any_view& b : t.blocks) need(b, down ? H : t.rows, down ? I : H, t.name);
                if (t.rows != rows_of(t.blocks[0])) throw error(error_kind::shape_mismatch, where + t.name + ": rows disagree with its blocks");
                if (!down) input_rows += t.rows;
            }
            if (input_rows != 2 * I) throw error(error_kind::shape_mismatch, where + "the experts' gate and up rows must total 2I");
            if (c.has_dense())
            {
                if (dense.size() != 3) throw error(error_kind::shape_mismatch, where + "needs the dense MLP's three matrices");
                need(dense[0], D, H, "dense gate");
                need(dense[1], D, H, "dense up");
                need(dense[2], H, D, "dense down");
            }
            need(router, E, H, "router");
            auto need_vec = [&](const std::vector<float>& v, std::size_t n, const std::string& what) {
                if (v.size() != n)
                {
                    throw error(error_kind::shape_mismatch, where + what + ": expected " + std::to_string(n) + " values, got " + std::to_string(v.size()));
                }
            };
            if (!c.arch.router_scale.empty()) need_vec(router_scale, H, "router scale");
            if (!c.arch.per_expert_scale.empty()) need_vec(per_expert_scale, E, "per-expert scale");
            for (const norm_weight* n : {&expert_input_norm, &expert_output_norm, &dense_input_norm, &dense_output_norm, &ffn_output_norm})
            {
                if (*n) need_vec(**n, H, "norm weight");
            }
        }
    };

    /// @brief The expert projections of a stacked layout: gate_up [E, 2I, H] and down [E, H, I]
    ///        seen as E*2I and E*H rows; each expert's block is a row block of them.
    inline std::vector<expert_tensor> stacked_experts(const config& c, const any_view& gate_up, const any_view& down)
    {
        const std::size_t I = c.expert_intermediate, H = c.hidden;
        std::vector<expert_tensor> out(2);
        out[0].name = name_of(gate_up);
        out[0].rows = 2 * I;
        out[0].cols = H;
        out[0].linears = {{"gate_proj", 0, I}, {"up_proj", I, I}};
        out[1].name = name_of(down);
        out[1].rows = H;
        out[1].cols = I;
        out[1].linears = {{"down_proj", 0, H}};
        out[0].stacked = gate_up;
        out[1].stacked = down;
        for (std::size_t e = 0; e < c.experts; ++e)
        {
            out[0].blocks.push_back(row_block(gate_up, e * 2 * I, 2 * I));
            out[1].blocks.push_back(row_block(down, e * H, H));
        }
        return out;
    }

    /// @brief The expert projections of a per-expert layout: gate, up, down, from `view(name)`
    ///        of each expert's Linear weight.
    template <class ViewFn>
    std::vector<expert_tensor> per_expert_tensors(const config& c, std::size_t layer, ViewFn&& view)
    {
        const std::size_t I = c.expert_intermediate, H = c.hidden;
        std::vector<expert_tensor> out(3);
        const auto projections = expert_projections(c, layer);
        for (std::size_t k = 0; k < 3; ++k)
        {
            const std::string stem = names::mlp_stems[k];
            out[k].name = projections[k].first;
            out[k].rows = k == 2 ? H : I;
            out[k].cols = k == 2 ? I : H;
            out[k].linears = {{stem, 0, out[k].rows}};
            for (std::size_t e = 0; e < c.experts; ++e) out[k].blocks.push_back(view(names::expert_linear(c, layer, e, stem) + ".weight"));
        }
        return out;
    }
}
