/// @file compressed_tensors.hpp
/// @brief Quantized Linear weights in the compressed-tensors checkpoint format (the format vLLM
///        loads), and its `quantization_config`.
///
/// Two formats, per Linear named `base` with weight [out, in]:
/// - `pack-quantized` (weight-only, 4 or 8 bits; vLLM's WNA16 kernels, Marlin for MoE):
///   `base.weight_packed` I32 [out, ceil(in·b/32)]: value j of word k is column k·(32/b)+j, at
///   bits [j·b, (j+1)·b), stored unsigned as code + 2^(b−1); `base.weight_shape` I64 [2] =
///   {out, in}; `base.weight_scale` in the model's float dtype, [out, 1] per channel or
///   [out, in/G] per group; asymmetric only, `base.weight_zero_point` I32 [ceil(out·b/32), scale
///   columns]: the zero points packed the same way along the output dimension.
/// - `int-quantized` (W8A8: int8 weights, dynamic per-token int8 activations): `base.weight` I8
///   [out, in] (signed codes) and `base.weight_scale` [out, 1]; symmetric per channel only.
///
/// Three more for the float schemes (quantize_float.hpp), each the per-expert set of
/// parameters of vLLM's MoE method for it:
/// - `float-quantized` (FP8 E4M3 weights, dynamic FP8 activations; CompressedTensorsW8A8Fp8MoEMethod):
///   `base.weight` F8_E4M3 [out, in] and `base.weight_scale` F32 [1] (tensor), [out, 1] (channel)
///   or [ceil(out/R), ceil(in/C)] (R x C blocks);
/// - `nvfp4-pack-quantized` (NVFP4 weights, CompressedTensorsW4A4Nvfp4MoEMethod, weight-only in
///   its A16 mode): `base.weight_packed` U8 [out, in/2] (two E2M1 codes a byte, the first in the
///   low nibble), `base.weight_scale` F8_E4M3 [out, in/16], `base.weight_global_scale` F32 [1];
///   with NVFP4 activations (W4A4) also `base.input_global_scale` F32 [1], the activations'
///   static global scale (vLLM: a13_scale = 1 / input_global_scale);
/// - `mxfp4-pack-quantized` (MXFP4 weights, dynamic MXFP4 activations;
///   CompressedTensorsW4A4Mxfp4MoEMethod): `base.weight_packed` U8 [out, in/2] and
///   `base.weight_scale` U8 [out, in/32] (E8M0 exponent bytes).
///
/// Dequantization, as compressed-tensors defines it: w = (code − zero_point) · scale, with the
/// scale (and zero point) of column c taken from group c / G; float codes: value(code) · scale
/// (NVFP4: scale / global_scale).
///
/// A per-tensor quantization is written with strategy `channel` and its one scale (and zero
/// point) repeated on every row: the numbers are unchanged, and vLLM's MoE kernels take
/// channel scales but not tensor ones.
#pragma once

#include "orbitq/core/error.hpp"
#include "orbitq/core/float16.hpp"
#include "orbitq/io/safetensors.hpp"
#include "orbitq/quantize.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <regex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace orbitq::io::compressed_tensors
{
    /// @brief How a Linear's codes are stored.
    enum class format
    {
        pack_quantized,        ///< weight-only: codes packed in int32 words
        int_quantized,         ///< W8A8: int8 codes as they are, activations quantized per token at run time
        float_quantized,       ///< FP8 E4M3 codes as they are, FP8 activations at run time
        nvfp4_pack_quantized,  ///< NVFP4: E2M1 codes two a byte, E4M3 group scales, a global scale
        mxfp4_pack_quantized   ///< MXFP4: E2M1 codes two a byte, E8M0 group scales
    };

    /// @brief The format's name in `quantization_config`.
    inline std::string_view format_name(format f) noexcept
    {
        switch (f)
        {
            case format::pack_quantized: return "pack-quantized";
            case format::int_quantized: return "int-quantized";
            case format::float_quantized: return "float-quantized";
            case format::nvfp4_pack_quantized: return "nvfp4-pack-quantized";
            case format::mxfp4_pack_quantized: return "mxfp4-pack-quantized";
        }
        return "?";
    }

    /// @brief Dynamic activation quantization declared with integer weights (`input_activations`);
    ///        the float formats declare the activations of their vLLM method (see activation_args_json).
    enum class activations
    {
        none,            ///< weight-only
        int8_per_token,  ///< symmetric int8, one scale per token computed at run time
        nvfp4_per_group  ///< with NVFP4 weights (W4A4): NVFP4 per group of 16 of each token, E4M3
                         ///< group scales at run time under a static `input_global_scale` per Linear
    };

    /// @brief The format that stores `spec` (the float schemes' own, else by the activations).
    inline format format_for(const quant_spec& spec, activations a) noexcept
    {
        switch (spec.scheme)
        {
            case scheme_kind::fp8_e4m3: return format::float_quantized;
            case scheme_kind::nvfp4: return format::nvfp4_pack_quantized;
            case scheme_kind::mxfp4: return format::mxfp4_pack_quantized;
            default: return a == activations::none ? format::pack_quantized : format::int_quantized;
        }
    }

    /// @brief Codes per int32 word.
    constexpr std::size_t pack_factor(int bits) noexcept { return 32u / static_cast<unsigned>(bits); }

    /// @brief Words of a packed row of `n` codes.
    constexpr std::size_t packed_words(std::size_t n, int bits) noexcept { return (n + pack_factor(bits) - 1) / pack_factor(bits); }

    /// @brief Packs `rows` × `cols` signed codes (row-major, `code(r, c)`) into int32 words along
    ///        each row: value j of word k is column k·(32/b)+j at bits j·b, as code + 2^(b−1).
    ///        Bits past the last column of a row are 0.
    /// @pre bits is 4 or 8; every code lies in [−2^(b−1), 2^(b−1)−1].
    template <class CodeAt>
    std::vector<std::uint32_t> pack_rows(std::size_t rows, std::size_t cols, int bits, CodeAt code)
    {
        const std::size_t words = packed_words(cols, bits), pf = pack_factor(bits);
        const std::uint32_t mask = (1u << bits) - 1u, offset = 1u << (bits - 1);
        std::vector<std::uint32_t> out(rows * words, 0u);
        for (std::size_t r = 0; r < rows; ++r)
        {
            for (std::size_t c = 0; c < cols; ++c)
            {
                const auto u = (static_cast<std::uint32_t>(code(r, c)) + offset) & mask;
                out[r * words + c / pf] |= u << (bits * static_cast<int>(c % pf));
            }
        }
        return out;
    }

    /// @brief Packs `rows` × `cols` signed values along the rows (dimension 0), as
    ///        compressed-tensors packs zero points: word [k, c] holds rows k·(32/b)+j, j = 0..,
    ///        at bits j·b, as value + 2^(b−1).
    template <class ValueAt>
    std::vector<std::uint32_t> pack_columns(std::size_t rows, std::size_t cols, int bits, ValueAt value)
    {
        const std::size_t pf = pack_factor(bits);
        const std::uint32_t mask = (1u << bits) - 1u, offset = 1u << (bits - 1);
        std::vector<std::uint32_t> out(packed_words(rows, bits) * cols, 0u);
        for (std::size_t r = 0; r < rows; ++r)
        {
            for (std::size_t c = 0; c < cols; ++c)
            {
                const auto u = (static_cast<std::uint32_t>(value(r, c)) + offset) & mask;
                out[(r / pf) * cols + c] |= u << (bits * static_cast<int>(r % pf));
            }
        }
        return out;
    }

    /// @brief Why vLLM's fused-MoE kernels cannot load experts quantized with `spec` in `f`
    ///        (empty: they can). `input_widths` are the in_features of every expert projection
    ///        (Gemma 4: hidden 2816 for gate and up, 704 for down), `output_widths` their
    ///        out_features (704 for gate and up, 2816 for down).
    ///
    /// Weight-only (`pack-quantized`): 4 or 8 bits, per channel (per tensor written as channel),
    /// or groups of 32, 64 or 128 that divide every input width (the Marlin MoE kernel's rule),
    /// symmetric or asymmetric. W8A8 (`int-quantized`): 8 bits, symmetric, per channel. FP8:
    /// per tensor, per channel, or R x C blocks with R dividing every output width (vLLM's
    /// create_weights refuses gate and up otherwise: Gemma 4's 704 rules out 128) and C every
    /// input width. MXFP4 and NVFP4: their group (32, 16) dividing every input width.
    inline std::optional<std::string> moe_refusal(const quant_spec& spec, format f, std::span<const std::size_t> input_widths,
                                                  std::span<const std::size_t> output_widths = {})
    {
        const auto divides_all = [](std::size_t n, std::span<const std::size_t> widths) {
            return std::all_of(widths.begin(), widths.end(), [n](std::size_t w) { return n != 0 && w % n == 0; });
        };
        if (is_float_scheme(spec.scheme))
        {
            if (f != format_for(spec, activations::none)) return std::string(to_string(spec.scheme)) + " is written as " + std::string(format_name(format_for(spec, activations::none)));
            if (spec.scheme == scheme_kind::fp8_e4m3)
            {
                if (spec.granularity == granularity_kind::per_group) return "vLLM's FP8 MoE method takes per_tensor, per_channel or per_block weights";
                if (spec.granularity != granularity_kind::per_block) return std::nullopt;
                if (!divides_all(spec.block_rows, output_widths))
                {
                    return "FP8 blocks of " + std::to_string(spec.block_rows) + " rows do not divide every expert projection's output width";
                }
                if (!divides_all(spec.group_size, input_widths))
                {
                    return "FP8 blocks of " + std::to_string(spec.group_size) + " columns do not divide every expert projection's input width";
                }
                return std::nullopt;
            }
            if (!divides_all(spec.group_size, input_widths))
            {
                return std::string(to_string(spec.scheme)) + "'s groups of " + std::to_string(spec.group_size) + " do not divide every input width";
            }
            return std::nullopt;
        }
        if (spec.bits != 4 && spec.bits != 8) return "only 4 and 8 bits load";
        if (f == format::int_quantized)
        {
            if (spec.bits != 8 || spec.scheme != scheme_kind::symmetric || spec.granularity != granularity_kind::per_channel)
            {
                return "int8 weights with int8 activations need int8 symmetric per_channel weights";
            }
            return std::nullopt;
        }
        if (spec.granularity != granularity_kind::per_group) return std::nullopt;
        if (spec.group_size != 32 && spec.group_size != 64 && spec.group_size != 128)
        {
            return "group size " + std::to_string(spec.group_size) + " is not one of 32, 64, 128";
        }
        for (std::size_t w : input_widths)
        {
            if (w % spec.group_size != 0)
            {
                return "group size " + std::to_string(spec.group_size) + " does not divide the input width " + std::to_string(w);
            }
        }
        return std::nullopt;
    }

    /// @brief For people: the specs moe_refusal() accepts for projections of these input widths.
    inline std::string moe_loadable_summary(std::span<const std::size_t> input_widths)
    {
        std::string groups;
        for (std::size_t g : {32u, 64u, 128u})
        {
            bool all = true;
            for (std::size_t w : input_widths) all = all && w % g == 0;
            if (all) groups += (groups.empty() ? "" : ", ") + std::string("per_group:") + std::to_string(g);
        }
        return "vLLM's MoE kernels load int8 or int4, symmetric or asymmetric, per_channel, per_tensor (written per channel)"
               + (groups.empty() ? std::string() : ", " + groups)
               + "; with --activations int8, int8 symmetric per_channel; fp8_e4m3 per_tensor, per_channel or per_block with blocks "
                 "dividing every projection; mxfp4; nvfp4";
    }

    /// @brief The `weights` QuantizationArgs of `spec` as written (per tensor becomes channel for
    ///        integer codes; float codes keep tensor, and NVFP4's groups are `tensor_group`).
    inline nlohmann::json weight_args_json(const quant_spec& spec)
    {
        if (is_float_scheme(spec.scheme))
        {
            const bool block = spec.granularity == granularity_kind::per_block, group = spec.granularity == granularity_kind::per_group;
            const char* strategy = spec.scheme == scheme_kind::nvfp4 ? "tensor_group"
                                 : block                           ? "block"
                                 : group                           ? "group"
                                 : spec.granularity == granularity_kind::per_tensor ? "tensor"
                                                                                    : "channel";
            return {{"num_bits", spec.bits},
                    {"type", "float"},
                    {"symmetric", true},
                    {"strategy", strategy},
                    {"group_size", group ? nlohmann::json(spec.group_size) : nlohmann::json(nullptr)},
                    {"block_structure", block ? nlohmann::json::array({spec.block_rows, spec.group_size}) : nlohmann::json(nullptr)},
                    {"dynamic", false},
                    {"actorder", nullptr},
                    {"observer", "minmax"},
                    {"observer_kwargs", nlohmann::json::object()}};
        }
        const bool group = spec.granularity == granularity_kind::per_group;
        return {{"num_bits", spec.bits},
                {"type", "int"},
                {"symmetric", spec.scheme == scheme_kind::symmetric},
                {"strategy", group ? "group" : "channel"},
                {"group_size", group ? nlohmann::json(spec.group_size) : nlohmann::json(nullptr)},
                {"block_structure", nullptr},
                {"dynamic", false},
                {"actorder", nullptr},
                {"observer", "minmax"},
                {"observer_kwargs", nlohmann::json::object()}};
    }

    /// @brief The `input_activations` QuantizationArgs (null for weight-only): for float weights
    ///        the dynamic activations of their vLLM method (FP8 per token for channel weights, per
    ///        tensor for tensor weights, per group of 128 for blocks; MXFP4 per group of 32;
    ///        NVFP4's preset with nvfp4_per_group, else none: NVFP4A16).
    inline nlohmann::json activation_args_json(const quant_spec& spec, activations a)
    {
        if (is_float_scheme(spec.scheme))
        {
            if (spec.scheme == scheme_kind::nvfp4)
            {
                if (a != activations::nvfp4_per_group) return nullptr;
                // compressed-tensors' NVFP4 preset: a static global scale, dynamic local scales
                return {{"num_bits", 4},
                        {"type", "float"},
                        {"symmetric", true},
                        {"strategy", "tensor_group"},
                        {"group_size", 16},
                        {"block_structure", nullptr},
                        {"dynamic", "local"},
                        {"actorder", nullptr},
                        {"observer", "minmax"},
                        {"observer_kwargs", nlohmann::json::object()}};
            }
            const bool mx = spec.scheme == scheme_kind::mxfp4;
            const char* strategy = mx || spec.granularity == granularity_kind::per_block ? "group"
                                 : spec.granularity == granularity_kind::per_tensor   ? "tensor"
                                                                                      : "token";
            const bool group = std::string_view(strategy) == "group";
            return {{"num_bits", mx ? 4 : 8},
                    {"type", "float"},
                    {"symmetric", true},
                    {"strategy", strategy},
                    {"group_size", group ? nlohmann::json(mx ? 32 : 128) : nlohmann::json(nullptr)},
                    {"block_structure", nullptr},
                    {"dynamic", true},
                    {"actorder", nullptr},
                    {"observer", nullptr},
                    {"observer_kwargs", nlohmann::json::object()}};
        }
        if (a == activations::none) return nullptr;
        return {{"num_bits", 8},
                {"type", "int"},
                {"symmetric", true},
                {"strategy", "token"},
                {"group_size", nullptr},
                {"block_structure", nullptr},
                {"dynamic", true},
                {"actorder", nullptr},
                {"observer", nullptr},
                {"observer_kwargs", nlohmann::json::object()}};
    }

    /// @brief One config group: the modules matching `targets` use `spec`.
    inline nlohmann::json config_group_json(const quant_spec& spec, activations a, const std::vector<std::string>& targets)
    {
        const format f = format_for(spec, a);
        return {{"targets", targets},
                {"weights", weight_args_json(spec)},
                {"input_activations", activation_args_json(spec, a)},
                {"output_activations", nullptr},
                {"format", format_name(f)}};
    }

    /// @brief The tensors of one quantized Linear [rows, cols] named `base`, in the order
    ///        encode_linear produces them.
    /// @throws error (invalid_argument) for bits other than 4 and 8, or int_quantized with 4 bits,
    ///         or a float scheme in another format than its own.
    inline std::vector<tensor_decl> linear_decls(const quant_spec& spec, format f, std::size_t rows, std::size_t cols,
                                                 const std::string& base, dtype scale_type, activations a = activations::none)
    {
        if (is_float_scheme(spec.scheme) || f == format::float_quantized || f == format::nvfp4_pack_quantized || f == format::mxfp4_pack_quantized)
        {
            if (f != format_for(spec, activations::none))
            {
                throw error(error_kind::invalid_argument, base + ": " + spec.describe() + " is not stored as " + std::string(format_name(f)));
            }
            std::vector<tensor_decl> d;
            if (spec.scheme == scheme_kind::fp8_e4m3)
            {
                const auto cdiv = [](std::size_t a, std::size_t b) { return (a + b - 1) / b; };
                const shape_type scale_shape = spec.granularity == granularity_kind::per_tensor  ? shape_type{1}
                                             : spec.granularity == granularity_kind::per_channel ? shape_type{rows, 1}
                                             : spec.granularity == granularity_kind::per_block
                                                 ? shape_type{cdiv(rows, spec.block_rows), cdiv(cols, spec.group_size)}
                                                 : shape_type{rows, cdiv(cols, spec.group_size)};
                d.push_back({base + ".weight", dtype::f8_e4m3, {rows, cols}});
                d.push_back({base + ".weight_scale", dtype::f32, scale_shape});
                return d;
            }
            d.push_back({base + ".weight_packed", dtype::u8, {rows, (cols + 1) / 2}});
            const std::size_t groups = (cols + spec.group_size - 1) / spec.group_size;
            d.push_back({base + ".weight_scale", spec.scheme == scheme_kind::nvfp4 ? dtype::f8_e4m3 : dtype::u8, {rows, groups}});
            if (spec.scheme == scheme_kind::nvfp4) d.push_back({base + ".weight_global_scale", dtype::f32, {1}});
            if (spec.scheme == scheme_kind::nvfp4 && a == activations::nvfp4_per_group) d.push_back({base + ".input_global_scale", dtype::f32, {1}});
            return d;
        }
        if (spec.bits != 4 && spec.bits != 8) throw error(error_kind::invalid_argument, base + ": compressed-tensors stores 4 or 8 bits");
        const std::size_t scale_cols = spec.granularity == granularity_kind::per_group ? (cols + spec.group_size - 1) / spec.group_size : 1;
        std::vector<tensor_decl> d;
        if (f == format::int_quantized)
        {
            if (spec.bits != 8 || spec.scheme != scheme_kind::symmetric)
            {
                throw error(error_kind::invalid_argument, base + ": int-quantized stores int8 symmetric weights");
            }
            d.push_back({base + ".weight", dtype::i8, {rows, cols}});
            d.push_back({base + ".weight_scale", scale_type, {rows, scale_cols}});
            return d;
        }
        d.push_back({base + ".weight_packed", dtype::i32, {rows, packed_words(cols, spec.bits)}});
        d.push_back({base + ".weight_shape", dtype::i64, {2}});
        d.push_back({base + ".weight_scale", scale_type, {rows, scale_cols}});
        if (spec.scheme == scheme_kind::asymmetric)
        {
            d.push_back({base + ".weight_zero_point", dtype::i32, {packed_words(rows, spec.bits), scale_cols}});
        }
        return d;
    }

    namespace detail
    {
        /// Floats stored as `t` (f32, bf16 or f16), little-endian.
        inline std::vector<std::byte> encode_floats(const std::vector<float>& v, dtype t)
        {
            std::vector<std::byte> out(v.size() * dtype_size(t));
            for (std::size_t i = 0; i < v.size(); ++i)
            {
                switch (t)
                {
                    case dtype::f32: std::memcpy(out.data() + 4 * i, &v[i], 4); break;
                    case dtype::bf16:
                    {
                        const auto h = to_bfloat16(v[i]);
                        std::memcpy(out.data() + 2 * i, &h, 2);
                        break;
                    }
                    case dtype::f16:
                    {
                        const auto h = to_float16(v[i]);
                        std::memcpy(out.data() + 2 * i, &h, 2);
                        break;
                    }
                    default: throw error(error_kind::invalid_argument, "scales are stored as F32, BF16 or F16");
                }
            }
            return out;
        }

        template <class T>
        std::vector<std::byte> as_bytes(const std::vector<T>& v)
        {
            std::vector<std::byte> out(v.size() * sizeof(T));
            std::memcpy(out.data(), v.data(), out.size());
            return out;
        }

        /// encode_linear for the float schemes: the codes' rows as they are (E4M3 bytes, or E2M1
        /// nibbles two a byte, which is already the packing of compressed-tensors' fp4
        /// compressors), the scales of the rows' orbits (F32 values, or the E4M3 / E8M0 bytes),
        /// NVFP4's global scale. @throws error (invalid_argument) when row0 or rows split a block.
        inline std::vector<std::vector<std::byte>> encode_float_linear(const quantized_tensor& q, std::size_t row0, std::size_t rows)
        {
            const orbit_layout& L = q.layout;
            const std::size_t br = L.block_rows;
            if (br > 1 && (row0 % br != 0 || (rows % br != 0 && row0 + rows != q.rows)))
            {
                throw error(error_kind::invalid_argument, "rows [" + std::to_string(row0) + ", " + std::to_string(row0 + rows) + ") split blocks of "
                                                              + std::to_string(br) + " rows");
            }
            std::vector<std::vector<std::byte>> o;
            const std::size_t rb = q.row_bytes();
            std::vector<std::byte> codes(rows * rb);
            std::memcpy(codes.data(), q.codes.data() + row0 * rb, codes.size());
            o.push_back(std::move(codes));
            const std::size_t orbit_rows = L.tensor_wide ? 1 : (br > 1 ? (rows + br - 1) / br : rows);
            const std::size_t first = L.tensor_wide ? 0 : row0 / br;
            const std::size_t per_row = L.tensor_wide ? 1 : L.groups_per_row;
            if (q.spec.scheme == scheme_kind::fp8_e4m3)
            {
                const std::vector<float> s(q.scales.begin() + static_cast<std::ptrdiff_t>(first * per_row),
                                           q.scales.begin() + static_cast<std::ptrdiff_t>((first + orbit_rows) * per_row));
                o.push_back(encode_floats(s, dtype::f32));
                return o;
            }
            std::vector<std::byte> sc(orbit_rows * per_row);
            std::memcpy(sc.data(), q.scale_codes.data() + first * per_row, sc.size());
            o.push_back(std::move(sc));
            if (q.spec.scheme == scheme_kind::nvfp4) o.push_back(as_bytes(std::vector<float>{q.global_scale}));
            return o;
        }
    }

    /// @brief The bytes of one Linear, rows [row0, row0 + rows) of `q`, in linear_decls order.
    ///        Every column of those rows belongs to the Linear (a stacked expert tensor is split
    ///        by rows only).
    /// @param input_global_scale NVFP4 W4A4's activation global scale, appended last (the
    ///        declarations of linear_decls with activations::nvfp4_per_group); unset otherwise.
    /// @pre f is int_quantized only for an 8-bit symmetric q; the host is little-endian.
    /// @throws error (invalid_argument) for an input_global_scale with weights other than NVFP4.
    inline std::vector<std::vector<std::byte>> encode_linear(const quantized_tensor& q, format f, std::size_t row0, std::size_t rows,
                                                             dtype scale_type, std::optional<float> input_global_scale = std::nullopt)
    {
        if (input_global_scale)
        {
            if (q.spec.scheme != scheme_kind::nvfp4) throw error(error_kind::invalid_argument, "input_global_scale is written with NVFP4 weights only");
            auto o = detail::encode_float_linear(q, row0, rows);
            o.push_back(detail::as_bytes(std::vector<float>{*input_global_scale}));
            return o;
        }
        if (is_float_scheme(q.spec.scheme)) return detail::encode_float_linear(q, row0, rows);
        const std::size_t cols = q.cols;
        const bool group = q.spec.granularity == granularity_kind::per_group;
        const std::size_t scale_cols = group ? (cols + q.spec.group_size - 1) / q.spec.group_size : 1;
        // Orbit of (row r of the Linear, scale column g): per tensor repeats orbit 0 on every row.
        auto orbit = [&](std::size_t r, std::size_t g) {
            return q.spec.granularity == granularity_kind::per_tensor ? std::size_t{0} : q.layout.orbit(row0 + r, g);
        };
        std::vector<std::vector<std::byte>> o;
        if (f == format::int_quantized)
        {
            std::vector<std::byte> codes(rows * cols);
            std::memcpy(codes.data(), q.codes.data() + row0 * cols, rows * cols);
            o.push_back(std::move(codes));
        }
        else
        {
            o.push_back(detail::as_bytes(pack_rows(rows, cols, q.spec.bits, [&](std::size_t r, std::size_t c) { return q.code(row0 + r, c); })));
            o.push_back(detail::as_bytes(std::vector<std::int64_t>{static_cast<std::int64_t>(rows), static_cast<std::int64_t>(cols)}));
        }
        std::vector<float> scales(rows * scale_cols);
        for (std::size_t r = 0; r < rows; ++r)
        {
            for (std::size_t g = 0; g < scale_cols; ++g) scales[r * scale_cols + g] = q.scales[orbit(r, g)];
        }
        o.push_back(detail::encode_floats(scales, scale_type));
        if (f == format::pack_quantized && q.spec.scheme == scheme_kind::asymmetric)
        {
            o.push_back(detail::as_bytes(pack_columns(rows, scale_cols, q.spec.bits, [&](std::size_t r, std::size_t g) { return q.zero_point(orbit(r, g)); })));
        }
        return o;
    }

    /// @brief A `quantization_config` target or ignore entry, matched as vLLM and
    ///        compressed-tensors match them: `re:PATTERN` matches from the start of the name
    ///        (Python's re.match: anchored at the start, not at the end unless the pattern ends
    ///        with `$`); any other entry must equal the name. The pattern is compiled once.
    /// @pre PATTERN is valid in both Python's and ECMAScript's regex syntax (the common subset:
    ///      `.`, `\.`, `\d`, `*`, `+`, `?`, groups, alternation, `$`).
    class entry_matcher
    {
    public:
        explicit entry_matcher(const std::string& entry)
            : m_regex(entry.rfind("re:", 0) == 0)
            , m_exact(m_regex ? std::string() : entry)
            , m_pattern(m_regex ? std::regex(entry.substr(3), std::regex::ECMAScript) : std::regex())
        {
        }
        bool matches(const std::string& name) const
        {
            return m_regex ? std::regex_search(name, m_pattern, std::regex_constants::match_continuous) : name == m_exact;
        }

    private:
        bool m_regex;
        std::string m_exact;
        std::regex m_pattern;
    };

    /// @brief Whether `name` matches the entry (see entry_matcher).
    inline bool entry_matches(const std::string& entry, const std::string& name) { return entry_matcher(entry).matches(name); }
}
