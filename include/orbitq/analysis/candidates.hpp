/// @file candidates.hpp
/// @brief What analyze evaluates and reports: the candidate policies (default_candidates), their
///        storage cost (bits_per_weight), the options, and the per-tensor results.
#pragma once

#include "orbitq/algebra/orbits.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/policy/granularity.hpp"
#include "orbitq/policy/quant_spec.hpp"

#include <cstddef>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace orbitq
{
    /// @brief A candidate policy for analysis is a complete run-time quantization spec.
    using candidate = quant_spec;

    /// @brief What one candidate would cost the tensor.
    struct candidate_result
    {
        quant_spec spec;               ///< the candidate
        double bits_per_weight = 0.0;  ///< codes + scales + zero points, per weight
        double cosine = 1.0;           ///< flat cosine of W and its reconstruction
        double relative_error = 0.0;   ///< ‖W − Ŵ‖ / ‖W‖
        double sqnr_db = std::numeric_limits<double>::infinity();  ///< −20 log10 relative_error
        double max_abs_err = 0.0;      ///< max |w − ŵ|
        std::size_t max_row = 0;       ///< where max_abs_err occurs (first in row-major order)
        std::size_t max_col = 0;
    };

    /// @brief A weight that is large relative to the RMS of its row.
    struct outlier
    {
        std::size_t row = 0;
        std::size_t col = 0;
        float value = 0.0f;             ///< the weight (as float32)
        double ratio_to_row_rms = 0.0;  ///< |value| / RMS(row)
    };

    /// @brief How much precision a row loses when it shares the per-tensor scale.
    struct row_loss
    {
        std::size_t row = 0;
        float row_amax = 0.0f;  ///< max |w| of the row
        double bits_lost = 0.0; ///< log2(tensor amax / row amax); +inf for an all-zero row
    };

    /// @brief Options of analyze().
    struct analyze_options
    {
        std::size_t top_rows = 10;     ///< rows kept in tensor_analysis::worst_rows
        std::size_t top_weights = 10;  ///< weights kept in tensor_analysis::largest_weights
        unsigned threads = 1;          ///< rows split across this many threads (0 = hardware concurrency)
        std::size_t block_rows = 64;   ///< rows per deterministic accumulation block (> 0)
    };

    /// @brief Everything analyze() finds out about one tensor.
    struct tensor_analysis
    {
        std::string name;                          ///< the view's name
        shape_type shape;                          ///< original tensor shape
        std::size_t rows = 0;                      ///< matrix rows (channel rule of core/view.hpp)
        std::size_t cols = 0;                      ///< matrix columns
        double condition_number = 0.0;             ///< max|W| / RMS(W) (0 for an all-zero tensor)
        std::vector<candidate_result> candidates;  ///< one per candidate, in the order given
        std::vector<row_loss> worst_rows;          ///< most bits lost first (ties: lower row first)
        std::vector<outlier> largest_weights;      ///< largest |w| / row RMS first (ties: row-major order)
    };

    /// @brief Storage cost of quantizing a rows x cols matrix with `spec`, in bits per weight:
    ///        the same formula as quantized_tensor::bits_per_weight() (codes, plus one scale in
    ///        spec.scale_type and, when asymmetric, one zero point in the code width per orbit).
    /// @throws error (bad_group_size) as make_layout for a per_group spec that does not fit.
    inline double bits_per_weight(const quant_spec& spec, std::size_t rows, std::size_t cols)
    {
        std::size_t orbits = 1;
        if (spec.granularity == granularity_kind::per_channel) orbits = rows;
        else if (spec.granularity == granularity_kind::per_group)
        {
            orbits = make_layout<per_group<>>(rows, cols, spec.group_size, spec.ragged_groups).orbits();
        }
        else if (spec.granularity == granularity_kind::per_block) orbits = make_block_layout(rows, cols, spec.block_rows, spec.group_size).orbits();
        const double n = static_cast<double>(rows * cols);
        // E8M0 / E4M3 scale bytes for the fp4 formats, and NVFP4's float32 global scale
        const bool byte_scales = spec.scheme == scheme_kind::mxfp4 || spec.scheme == scheme_kind::nvfp4;
        const double scale_bits = byte_scales ? 8.0 : 8.0 * static_cast<double>(element_size(spec.scale_type));
        const double zp_bits = spec.scheme == scheme_kind::asymmetric ? spec.bits : 0.0;
        const double global_bits = spec.scheme == scheme_kind::nvfp4 ? 32.0 : 0.0;
        return spec.bits + (static_cast<double>(orbits) * (scale_bits + zp_bits) + global_bits) / n;
    }

    inline std::vector<quant_spec> default_candidates(std::size_t cols)
    {
        std::vector<std::pair<granularity_kind, std::size_t>> grains{{granularity_kind::per_tensor, 0},
                                                                     {granularity_kind::per_channel, 0}};
        for (std::size_t g : {32u, 64u, 128u})
        {
            if (cols > g && cols % g == 0) grains.emplace_back(granularity_kind::per_group, g);
        }
        std::vector<quant_spec> out;
        for (const auto& [kind, g] : grains)
        {
            for (int bits : {8, 4})
            {
                for (scheme_kind s : {scheme_kind::symmetric, scheme_kind::asymmetric})
                {
                    quant_spec q;
                    q.granularity = kind;
                    q.group_size = g;
                    q.bits = bits;
                    q.scheme = s;
                    out.push_back(q);
                }
            }
        }
        return out;
    }

    /// @brief The float formats as candidates for rows of `cols` values: fp8_e4m3 per tensor
    ///        and per channel (scales stored float32, as written), mxfp4 (groups of 32) and
    ///        nvfp4 (groups of 16) where their group divides the row. Each brings its engine
    ///        method's activations at run time, which analyze does not measure (weights only).
    inline std::vector<quant_spec> float_format_candidates(std::size_t cols)
    {
        std::vector<quant_spec> out;
        for (granularity_kind k : {granularity_kind::per_tensor, granularity_kind::per_channel})
        {
            quant_spec q;
            q.scheme = scheme_kind::fp8_e4m3;
            q.granularity = k;
            q.scale_type = element_type::f32;
            out.push_back(q);
        }
        for (const auto& [scheme, group] : {std::pair{scheme_kind::mxfp4, std::size_t{32}}, std::pair{scheme_kind::nvfp4, std::size_t{16}}})
        {
            if (cols < group || cols % group != 0) continue;
            quant_spec q;
            q.scheme = scheme;
            q.bits = 4;
            q.granularity = granularity_kind::per_group;
            q.group_size = group;
            out.push_back(q);
        }
        return out;
    }

    /// @brief default_candidates(cols), followed by float_format_candidates(cols) when
    ///        `float_formats`: what analyze evaluates when no candidates are given.
    inline std::vector<quant_spec> default_candidates(std::size_t cols, bool float_formats)
    {
        std::vector<quant_spec> out = default_candidates(cols);
        if (float_formats)
        {
            for (const quant_spec& f : float_format_candidates(cols)) out.push_back(f);
        }
        return out;
    }
}
