/// @file metrics.hpp
/// @brief What quantization cost, measured in double precision.
///
/// For a reference W and its reconstruction Ŵ (flattened):
/// - cosine = <W, Ŵ> / (‖W‖ ‖Ŵ‖), 1 when both are zero, 0 when exactly one is;
/// - relative error ε = ‖W − Ŵ‖ / ‖W‖ (0 when both are zero, +inf when only W is);
/// - SQNR = −20 log10 ε dB (+inf for an exact reconstruction);
/// - max abs error and where it occurs;
/// - condition number κ = max|W| / RMS(W) (TAOCP 4.2: how much one outlier stretches a
///   per-tensor scale beyond the typical weight);
/// - bits lost per row to a coarser scale = log2(orbit amax / row amax).
///
/// Error amplification over N layers (see amplification_*): three views, side by side.
#pragma once

#include "orbitq/core/view.hpp"
#include "orbitq/quantize.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numbers>
#include <span>
#include <vector>

namespace orbitq
{
    /// @brief Running sums that every flat metric derives from. A commutative monoid under
    ///        `combine` (sums add, max takes the larger), so rows can be measured separately.
    struct error_accumulator
    {
        double ref_sq = 0.0;    ///< Σ w²
        double rec_sq = 0.0;    ///< Σ ŵ²
        double dot = 0.0;       ///< Σ w ŵ
        double err_sq = 0.0;    ///< Σ (w − ŵ)²
        double max_abs_err = 0.0;
        std::size_t max_index = 0;  ///< flat index of the max abs error
        std::size_t count = 0;

        /// @brief Adds n pairs; flat index of the first is `offset`.
        template <class A, class B>
        void add(const A* ref, const B* rec, std::size_t n, std::size_t offset = 0) noexcept
        {
            for (std::size_t i = 0; i < n; ++i)
            {
                const double a = to_float(ref[i]);
                const double b = to_float(rec[i]);
                const double d = a - b;
                ref_sq += a * a;
                rec_sq += b * b;
                dot += a * b;
                err_sq += d * d;
                if (std::fabs(d) > max_abs_err)
                {
                    max_abs_err = std::fabs(d);
                    max_index = offset + i;
                }
            }
            count += n;
        }

        friend error_accumulator combine(error_accumulator a, const error_accumulator& b) noexcept
        {
            a.ref_sq += b.ref_sq;
            a.rec_sq += b.rec_sq;
            a.dot += b.dot;
            a.err_sq += b.err_sq;
            if (b.max_abs_err > a.max_abs_err)
            {
                a.max_abs_err = b.max_abs_err;
                a.max_index = b.max_index;
            }
            a.count += b.count;
            return a;
        }

        /// @brief Cosine similarity (1 when both are zero, 0 when exactly one is).
        double cosine() const noexcept
        {
            if (ref_sq == 0.0 && rec_sq == 0.0) return 1.0;
            if (ref_sq == 0.0 || rec_sq == 0.0) return 0.0;
            return std::clamp(dot / std::sqrt(ref_sq * rec_sq), -1.0, 1.0);
        }
        /// @brief ‖W − Ŵ‖ / ‖W‖.
        double relative_error() const noexcept
        {
            if (err_sq == 0.0) return 0.0;
            if (ref_sq == 0.0) return std::numeric_limits<double>::infinity();
            return std::sqrt(err_sq / ref_sq);
        }
        /// @brief −20 log10 ε in dB.
        double sqnr_db() const noexcept
        {
            const double e = relative_error();
            return e == 0.0 ? std::numeric_limits<double>::infinity() : -20.0 * std::log10(e);
        }
    };

    /// @brief The flat metrics of a reconstruction.
    struct error_metrics
    {
        double cosine = 1.0;
        double relative_error = 0.0;
        double sqnr_db = std::numeric_limits<double>::infinity();
        double max_abs_err = 0.0;
        std::size_t max_row = 0;  ///< position of the max abs error
        std::size_t max_col = 0;
    };

    /// @brief Turns an accumulator of a rows x cols comparison into metrics.
    inline error_metrics finish(const error_accumulator& a, std::size_t cols) noexcept
    {
        return {a.cosine(), a.relative_error(), a.sqnr_db(), a.max_abs_err, cols ? a.max_index / cols : 0, cols ? a.max_index % cols : 0};
    }

    /// @brief Cosine similarity of two equal-length vectors, in double.
    /// @throws error (shape_mismatch) when the lengths differ.
    template <class A, class B>
    double cosine(std::span<const A> a, std::span<const B> b)
    {
        if (a.size() != b.size()) throw error(error_kind::shape_mismatch, "cosine of vectors of different lengths");
        error_accumulator acc;
        acc.add(a.data(), b.data(), a.size());
        return acc.cosine();
    }

    /// @brief Flat metrics of a reference against a reconstruction of the same length.
    /// @throws error (shape_mismatch) when the lengths differ.
    template <class A, class B>
    error_metrics compare(std::span<const A> ref, std::span<const B> rec, std::size_t cols = 0)
    {
        if (ref.size() != rec.size()) throw error(error_kind::shape_mismatch, "compare of tensors of different sizes");
        error_accumulator acc;
        acc.add(ref.data(), rec.data(), ref.size());
        return finish(acc, cols);
    }

    /// @brief Metrics of `q` against the weights it was quantized from, dequantizing row by row
    ///        (no full-size copy). Optionally fills the per-row cosines.
    /// @throws error (shape_mismatch) when the shapes differ.
    template <weight_element T>
    error_metrics measure(const matrix_view<T>& w, const quantized_tensor& q, std::vector<double>* row_cosines = nullptr)
    {
        if (w.rows != q.rows || w.cols != q.cols)
        {
            throw error(error_kind::shape_mismatch, "tensor '" + w.name + "' is " + std::to_string(w.rows) + " x "
                                                        + std::to_string(w.cols) + " but its quantized form is "
                                                        + std::to_string(q.rows) + " x " + std::to_string(q.cols));
        }
        if (row_cosines) row_cosines->assign(w.rows, 0.0);
        std::vector<float> buf(w.cols);
        error_accumulator total;
        for (std::size_t r = 0; r < w.rows; ++r)
        {
            dequantize_row(q, r, buf.data());
            error_accumulator row;
            row.add(w.row(r), buf.data(), w.cols, r * w.cols);
            if (row_cosines) (*row_cosines)[r] = row.cosine();
            total = combine(total, row);
        }
        return finish(total, w.cols);
    }

    /// @brief Per-row cosines of two rows x cols row-major buffers.
    template <class A, class B>
    std::vector<double> row_cosines(std::span<const A> ref, std::span<const B> rec, std::size_t cols)
    {
        if (ref.size() != rec.size() || cols == 0 || ref.size() % cols != 0)
        {
            throw error(error_kind::shape_mismatch, "row_cosines: sizes differ or are not a multiple of cols");
        }
        std::vector<double> out(ref.size() / cols);
        for (std::size_t r = 0; r < out.size(); ++r)
        {
            error_accumulator a;
            a.add(ref.data() + r * cols, rec.data() + r * cols, cols);
            out[r] = a.cosine();
        }
        return out;
    }

    /// @brief Condition number max|W| / RMS(W) of a weight (0 for an all-zero weight).
    /// @throws non_finite_error on NaN or infinity.
    template <weight_element T>
    double condition_number(const matrix_view<T>& w)
    {
        double amax = 0.0;
        double sum = 0.0;
        for (std::size_t r = 0; r < w.rows; ++r)
        {
            const T* x = w.row(r);
            for (std::size_t c = 0; c < w.cols; ++c)
            {
                const double v = to_float(x[c]);
                if (!std::isfinite(v)) throw non_finite_error(w.name, r, c, static_cast<float>(v));
                amax = std::max(amax, std::fabs(v));
                sum += v * v;
            }
        }
        const double rms = std::sqrt(sum / static_cast<double>(w.size()));
        return rms == 0.0 ? 0.0 : amax / rms;
    }

    /// @brief Bits of precision each row loses when quantized with a coarser orbit's scale:
    ///        log2(orbit_amax / row_amax). 0 for a row whose amax equals the orbit's; +inf for an
    ///        all-zero row under a non-zero orbit (every weight of it rounds to 0).
    /// @pre orbit_amax >= every row_amax.
    inline std::vector<double> bits_lost_per_row(std::span<const float> row_amax, float orbit_amax)
    {
        std::vector<double> out(row_amax.size());
        for (std::size_t r = 0; r < out.size(); ++r)
        {
            if (orbit_amax == 0.0f) out[r] = 0.0;
            else if (row_amax[r] == 0.0f) out[r] = std::numeric_limits<double>::infinity();
            else out[r] = std::log2(static_cast<double>(orbit_amax) / static_cast<double>(row_amax[r]));
        }
        return out;
    }

    /// @brief Bits each row of a statistics pyramid loses under the per-tensor scale.
    inline std::vector<double> bits_lost_per_row(const statistics_pyramid& p)
    {
        std::vector<float> amax(p.rows);
        for (std::size_t r = 0; r < p.rows; ++r) amax[r] = p.row_stats[r].to_abs_max().value;
        return bits_lost_per_row(amax, p.tensor.to_abs_max().value);
    }

    /// @name Error amplification over N layers
    /// Three views of how a per-layer error grows through a stack of N layers:
    /// - amplification_from_cosine: (1 + δ)^N with δ = 1 − cos (per-layer cosine).
    ///   A heuristic growth factor; it understates large errors because 1 − cos ≈ θ²/2 is
    ///   second order in the angle θ.
    /// - predicted_relative_error: the first-order bound on the final relative error when every
    ///   layer adds relative error ε_i to a stream it propagates with gain ≤ 1:
    ///   Π(1 + ε_i) − 1. Its ratio to the single-layer error is amplification_relative.
    /// - predicted_cosine_floor: angles obey the triangle inequality, so the final angle is at most
    ///   Σ θ_i, θ_i = acos(cos_i): cos_final ≥ cos(min(Σθ_i, π)).
    /// The measured value (running the stack) is the one to trust; these are for planning.
    /// @{
    /// @brief (1 + δ)^n with δ = 1 − layer_cos: the per-layer cosine's shortfall compounded over n layers.
    inline double amplification_from_cosine(double layer_cos, std::size_t n) noexcept
    {
        return std::pow(1.0 + (1.0 - layer_cos), static_cast<double>(n));
    }

    /// @brief Π(1 + ε_i) − 1: bound on the final relative error from per-layer relative errors.
    inline double predicted_relative_error(std::span<const double> layer_eps) noexcept
    {
        double p = 1.0;
        for (double e : layer_eps) p *= 1.0 + e;
        return p - 1.0;
    }

    /// @brief ((1 + ε)^N − 1) / ε: how many times the single-layer relative error ε grows over N
    ///        layers: N for ε → 0 (the value returned at ε = 0), 1 for N = 1.
    inline double amplification_relative(double eps, std::size_t n) noexcept
    {
        if (eps <= 0.0) return static_cast<double>(n);
        return (std::pow(1.0 + eps, static_cast<double>(n)) - 1.0) / eps;
    }

    /// @brief cos(min(Σ acos(cos_i), π)): a floor for the final cosine of the stack.
    inline double predicted_cosine_floor(std::span<const double> layer_cos) noexcept
    {
        double theta = 0.0;
        for (double c : layer_cos) theta += std::acos(std::clamp(c, -1.0, 1.0));
        return std::cos(std::min(theta, std::numbers::pi));
    }
    /// @}
}
