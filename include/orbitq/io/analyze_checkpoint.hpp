/// @file analyze_checkpoint.hpp
/// @brief orbitq::analyze over every weight of any safetensors file or checkpoint, whatever the
///        model: which tensors are analysed, what a channel is, and the JSON form of the results.
///
/// Analysed: every F32, BF16 or F16 tensor of rank >= 2 with more than `min_elements` elements.
/// The channel rule is core/view.hpp's: rank 2 [R, C] has R rows of C; rank 3 stacked experts
/// [E, R, C] have E*R rows of C; rank 4 convolutions [O, I, kh, kw] have O rows of I*kh*kw.
/// Each tensor is read once through the memory map (twice with analyze's second pass) and its
/// pages are released afterwards, so resident memory stays near one tensor.
#pragma once

#include "orbitq/analyze.hpp"
#include "orbitq/io/safetensors.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

namespace orbitq::io
{
    /// @brief Options of analyze_checkpoint().
    struct checkpoint_analysis_options
    {
        std::size_t min_elements = 0;          ///< analyse only tensors with more elements than this
        std::vector<quant_spec> candidates;    ///< empty: default_candidates(cols) for each tensor
        bool float_formats = false;            ///< with no candidates given: float_format_candidates(cols) too
        analyze_options analysis;              ///< top rows / weights, threads
    };

    /// @brief Names of the tensors analyze_checkpoint() analyses, in name order.
    inline std::vector<std::string> analyzable_tensors(const checkpoint& ckpt, std::size_t min_elements)
    {
        std::vector<std::string> out;
        for (const std::string& name : ckpt.names())
        {
            const tensor_info& t = ckpt.info(name);
            if (t.shape.size() >= 2 && as_element_type(t.type) && t.elements() > min_elements) out.push_back(name);
        }
        return out;
    }

    namespace detail
    {
        /// The candidates that fit a row length: per_group specs whose group does not divide
        /// the row (and are not ragged) are dropped; none given: the defaults (and the float
        /// formats when asked).
        inline std::vector<quant_spec> fitting_candidates(const std::vector<quant_spec>& given, std::size_t cols, bool float_formats = false)
        {
            if (given.empty()) return default_candidates(cols, float_formats);
            std::vector<quant_spec> out;
            for (const quant_spec& s : given)
            {
                const bool fits = s.granularity != granularity_kind::per_group
                                  || (s.group_size > 0 && (cols % s.group_size == 0 || s.ragged_groups));
                if (fits) out.push_back(s);
            }
            return out;
        }

        template <weight_element T>
        tensor_analysis analyze_tensor(const checkpoint& ckpt, const std::string& name, const checkpoint_analysis_options& o)
        {
            const tensor_info& t = ckpt.info(name);
            const std::span<const std::byte> b = ckpt.bytes(name);
            const auto [rows, cols] = matrix_extents(t.shape);
            const std::vector<quant_spec> cands = fitting_candidates(o.candidates, cols, o.float_formats);
            if (cands.empty())
            {
                throw error(error_kind::invalid_argument, "tensor '" + name + "': no candidate fits its row length " + std::to_string(cols));
            }
            if (reinterpret_cast<std::uintptr_t>(b.data()) % alignof(T) == 0)
            {
                return analyze(ckpt.view<T>(name), cands, o.analysis);
            }
            // misaligned in the file (a header not padded to 8 bytes): analyse an aligned copy
            std::vector<T> copy(t.elements());
            std::memcpy(copy.data(), b.data(), b.size());
            return analyze(make_view(copy.data(), t.shape, name), cands, o.analysis);
        }
    }

    /// @brief Analyses one tensor of a checkpoint (see the file brief for the rules).
    /// @throws error when the tensor is not a floating-point tensor of rank >= 2, when no
    ///         candidate fits it, or on NaN/Inf (naming row and column).
    inline tensor_analysis analyze_checkpoint_tensor(const checkpoint& ckpt, const std::string& name,
                                                     const checkpoint_analysis_options& o = {})
    {
        const tensor_info& t = ckpt.info(name);
        const auto et = as_element_type(t.type);
        if (!et || t.shape.size() < 2)
        {
            throw error(error_kind::invalid_argument, "tensor '" + name + "' (" + std::string(dtype_name(t.type)) + ", rank "
                                                          + std::to_string(t.shape.size()) + ") is not a floating-point weight of rank >= 2");
        }
        tensor_analysis a;
        switch (*et)
        {
            case element_type::f32: a = detail::analyze_tensor<float>(ckpt, name, o); break;
            case element_type::bf16: a = detail::analyze_tensor<bfloat16_t>(ckpt, name, o); break;
            case element_type::f16: a = detail::analyze_tensor<float16_t>(ckpt, name, o); break;
        }
        ckpt.release(name);
        return a;
    }

    /// @brief Analyses every analysable tensor of a checkpoint, calling `progress(i, n, name)`
    ///        before tensor i of n.
    inline std::vector<tensor_analysis> analyze_checkpoint(
        const checkpoint& ckpt, const checkpoint_analysis_options& o = {},
        const std::function<void(std::size_t, std::size_t, const std::string&)>& progress = {})
    {
        const std::vector<std::string> names = analyzable_tensors(ckpt, o.min_elements);
        std::vector<tensor_analysis> out;
        out.reserve(names.size());
        for (std::size_t i = 0; i < names.size(); ++i)
        {
            if (progress) progress(i, names.size(), names[i]);
            out.push_back(analyze_checkpoint_tensor(ckpt, names[i], o));
        }
        return out;
    }

    namespace detail
    {
        /// JSON has no infinity: an exact reconstruction's SQNR is written as null.
        inline nlohmann::json finite_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }
    }

    /// @brief The JSON form of one candidate: granularity, group_size (0 unless per_group; a
    ///        block's columns for per_block, with block_rows), bits, scheme, scales ("amax" or
    ///        "mse"), bits_per_weight, cos, sqnr_db (null if infinite), max_abs_err.
    inline nlohmann::json to_json(const candidate_result& c)
    {
        const bool block = c.spec.granularity == granularity_kind::per_block;
        nlohmann::json j = {{"granularity", to_string(c.spec.granularity)},
                {"group_size", c.spec.granularity == granularity_kind::per_group || block ? c.spec.group_size : 0},
                {"bits", c.spec.bits},
                {"scheme", to_string(c.spec.scheme)},
                {"scales", c.spec.scales_name()},
                {"bits_per_weight", c.bits_per_weight},
                {"cos", c.cosine},
                {"sqnr_db", detail::finite_or_null(c.sqnr_db)},
                {"max_abs_err", c.max_abs_err}};
        if (block) j["block_rows"] = c.spec.block_rows;
        return j;
    }

    /// @brief The JSON form of a tensor's analysis: name, shape, rows, cols, condition_number,
    ///        candidates[], worst_rows[] {row, row_amax, bits_lost}, largest_weights[] {row, col,
    ///        value, ratio_to_row_rms}.
    inline nlohmann::json to_json(const tensor_analysis& a)
    {
        nlohmann::json j = {{"name", a.name}, {"shape", a.shape}, {"rows", a.rows}, {"cols", a.cols},
                            {"condition_number", a.condition_number}};
        j["candidates"] = nlohmann::json::array();
        for (const candidate_result& c : a.candidates) j["candidates"].push_back(to_json(c));
        j["worst_rows"] = nlohmann::json::array();
        for (const row_loss& r : a.worst_rows)
        {
            j["worst_rows"].push_back({{"row", r.row}, {"row_amax", r.row_amax}, {"bits_lost", detail::finite_or_null(r.bits_lost)}});
        }
        j["largest_weights"] = nlohmann::json::array();
        for (const outlier& w : a.largest_weights)
        {
            j["largest_weights"].push_back({{"row", w.row}, {"col", w.col}, {"value", w.value}, {"ratio_to_row_rms", w.ratio_to_row_rms}});
        }
        return j;
    }
}
