/// @file validate_report.hpp
/// @brief What a MoE validation is asked (validate_options) and what it reports, layer by layer
///        and over the stack; and the sink that receives the converted tensors.
#pragma once

#include "orbitq/moe/forward.hpp"
#include "orbitq/moe/layer.hpp"
#include "orbitq/quantize.hpp"

#include <cstddef>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace orbitq::moe
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
        /// (each expert projection as its stacked tensor, or, stored per expert, as its experts'
        /// blocks; then the dense matrices included) and the gated spec; the result replaces the
        /// gated spec for all of them (the other granularities are unaffected). One spec per
        /// layer: engines load a MoE layer only when gate, up and down share it. It may throw to
        /// stop the run.
        std::function<quant_spec(const std::vector<any_view>&, const quant_spec&)> choose;
        /// Activations the engine quantizes before each quantized product: none, or int8 per
        /// token (symmetric, scale = amax/127, round half to even), as W8A8 kernels do, or the
        /// float formats' (NVFP4's static global scales are calibrated per layer on the original
        /// stream's tokens); the gated granularity's forward pass simulates it, so the gates
        /// judge what will run.
        activation_quantization activations = activation_quantization::none;
        /// If set, the activations of the gated granularity's layer, from the spec it quantizes
        /// the layer with (with `choose`, the one chosen for it), in place of `activations`: the
        /// float formats' engine methods fix theirs. It does not return nvfp4_per_group16, whose
        /// calibration `activations` asks for.
        std::function<activation_quantization(const quant_spec&)> activations_for;
        /// A NaN or infinity in a tensor that would be quantized: false (default) stops the run
        /// with an error naming the tensor and the position (expert, row, column); true keeps such
        /// tensors in source precision (copied unquantized) and lists them in
        /// validation_report::skipped.
        bool skip_nonfinite = false;
        /// If set, the column importance (quant_spec::importance) of each tensor quantized
        /// with scale_search::mse: called with the tensor's name (as reported), the expert, the
        /// experts of the tensor (0 and 1 for a dense matrix) and its columns, before that
        /// expert's rows are quantized. An empty result leaves the tensor unweighted; it may
        /// throw to stop the run (io::importance_table::columns does for a missing entry).
        std::function<column_importance(const std::string& tensor, std::size_t expert, std::size_t experts, std::size_t cols)> importance;
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
        /// @brief experts: the expert projections will be quantized (all of them); dense: the
        ///        dense matrices will be (all three); spec: the layer's one spec.
        virtual void begin_layer(const layer_weights& w, bool experts, bool dense, const quant_spec& spec) = 0;
        /// @brief Expert e's blocks, one per projection of w.experts.
        virtual void expert(const layer_weights& w, std::size_t e, const expert_slices& s) = 0;
        /// @brief dense: {gate, up, down} quantized, or empty when kept in source precision.
        virtual void end_layer(const layer_weights& w, const std::vector<const quantized_tensor*>& dense) = 0;
        /// @brief The static global scales of NVFP4 activations for layer w, calibrated before
        ///        its begin_layer (only with activation_quantization::nvfp4_per_group16).
        virtual void activation_scales(const layer_weights& w, const input_global_scales& g)
        {
            (void)w;
            (void)g;
        }
    };
}
