/// @file safetensors_header.hpp
/// @brief Validation of a whole safetensors image: the header length, the JSON header and every
///        tensor entry, before any tensor can be touched.
///
/// The format (https://huggingface.co/docs/safetensors): an unsigned little-endian 64-bit header
/// length N, N bytes of UTF-8 JSON, then the data section. The JSON is an object mapping tensor
/// names to {"dtype", "shape", "data_offsets": [begin, end]} (byte offsets relative to the data
/// section) plus an optional "__metadata__" object of string to string.
///
/// parse_safetensors (and so safetensors_file::open, which maps the file read-only) throws
/// orbitq::error(error_kind::format) naming the file (and the tensor) when: the file is shorter
/// than 8 bytes; N is 0, above 100 000 000 or past the end of the file; the header is not JSON, not
/// UTF-8 or not an object; a key appears twice in any JSON object (duplicate tensor names included;
/// plain JSON parsers silently keep the last one); an entry is not an object or lacks
/// dtype/shape/data_offsets or has them with the wrong JSON type; the dtype is unknown; a shape
/// entry is negative or not an integer; the element count or byte size overflows 64 bits;
/// data_offsets is not [begin, end] with begin <= end <= data section size; end - begin differs
/// from elements x dtype size; two non-empty tensors overlap; "__metadata__" is not a
/// string-to-string object; JSON nests deeper than 64 levels. Gaps between tensors are allowed, as
/// the specification allows them. Unknown keys inside a tensor entry are ignored (their values are
/// not even stored, so a hostile header cannot make the reader hold much more memory than the
/// header's own size).
#pragma once

#include "orbitq/core/error.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/io/dtype.hpp"
#include "orbitq/io/strict_json.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace orbitq::io
{
    namespace detail
    {
        inline constexpr std::uint64_t max_header_size = 100'000'000;  // the Rust reader's limit

        inline std::string file_context(std::string_view label)
        {
            return "safetensors file '" + std::string(label) + "'";
        }

        inline std::string tensor_context(std::string_view label, std::string_view tensor)
        {
            return file_context(label) + ", tensor '" + printable(tensor) + "'";
        }

        /// @brief The validated contents of a safetensors header.
        struct parsed_header
        {
            std::size_t header_size = 0;  ///< N: the JSON's length in bytes
            std::vector<tensor_info> tensors;
            std::map<std::string, std::string> metadata;
        };

        inline tensor_info parse_tensor_entry(const std::string& name, const nlohmann::json& entry,
                                              std::size_t data_size, std::string_view label)
        {
            const std::string ctx = tensor_context(label, name);
            if (!entry.is_object()) format_error(ctx + ": entry is " + json_type_text(entry) + ", not an object");
            tensor_info t;
            t.name = name;

            const auto d = entry.find("dtype");
            if (d == entry.end()) format_error(ctx + ": missing \"dtype\"");
            if (!d->is_string()) format_error(ctx + ": \"dtype\" is " + json_type_text(*d) + ", not a string");
            const auto& dname = d->get_ref<const std::string&>();
            const auto ty = find_dtype(dname);
            if (!ty) format_error(ctx + ": unknown or unsupported dtype '" + printable(dname) + "'");
            t.type = *ty;

            const auto s = entry.find("shape");
            if (s == entry.end()) format_error(ctx + ": missing \"shape\"");
            if (!s->is_array()) format_error(ctx + ": \"shape\" is " + json_type_text(*s) + ", not an array");
            t.shape.reserve(s->size());
            for (const auto& e : *s)
            {
                const auto v = as_size(e);
                if (!v) format_error(ctx + ": shape entry " + json_type_text(e) + " is not a non-negative integer");
                t.shape.push_back(*v);
            }

            const auto o = entry.find("data_offsets");
            if (o == entry.end()) format_error(ctx + ": missing \"data_offsets\"");
            if (!o->is_array() || o->size() != 2)
            {
                format_error(ctx + ": \"data_offsets\" must be an array [begin, end], got " + printable(o->dump(), 80));
            }
            const auto b = as_size((*o)[0]);
            const auto en = as_size((*o)[1]);
            if (!b || !en) format_error(ctx + ": \"data_offsets\" entries must be non-negative integers, got " + printable(o->dump(), 80));
            if (*b > *en)
            {
                format_error(ctx + ": data_offsets [" + std::to_string(*b) + ", " + std::to_string(*en) + "] has begin > end");
            }
            if (*en > data_size)
            {
                format_error(ctx + ": data_offsets end " + std::to_string(*en) + " is beyond the data section of "
                             + std::to_string(data_size) + " bytes (file truncated?)");
            }
            t.begin = *b;
            t.end = *en;

            const auto n = checked_elements(t.shape);
            if (!n) format_error(ctx + ": shape " + shape_string(t.shape) + " has more than 2^64 elements");
            const auto nbytes = checked_mul(*n, dtype_size(t.type));
            if (!nbytes) format_error(ctx + ": shape " + shape_string(t.shape) + " of " + std::string(dtype_name(t.type)) + " overflows 2^64 bytes");
            if (t.end - t.begin != *nbytes)
            {
                format_error(ctx + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] hold "
                             + std::to_string(t.end - t.begin) + " bytes but shape " + shape_string(t.shape) + " of "
                             + std::string(dtype_name(t.type)) + " needs " + std::to_string(*nbytes));
            }
            return t;
        }

        /// @brief Validates a whole safetensors image (see the file's brief for the checks).
        inline parsed_header parse_safetensors(std::span<const std::byte> file, std::string_view label)
        {
            const std::string ctx = file_context(label);
            if (file.size() < 8)
            {
                format_error(ctx + ": file is " + std::to_string(file.size())
                             + " bytes, shorter than the 8-byte header length (not a safetensors file, or truncated)");
            }
            std::uint64_t n = 0;
            for (int i = 7; i >= 0; --i) n = (n << 8) | std::to_integer<std::uint64_t>(file[static_cast<std::size_t>(i)]);
            if (n == 0) format_error(ctx + ": header length is 0");
            if (n > max_header_size)
            {
                format_error(ctx + ": header length " + std::to_string(n) + " exceeds the limit of "
                             + std::to_string(max_header_size) + " bytes (not a safetensors file?)");
            }
            if (n > file.size() - 8)
            {
                format_error(ctx + ": header length " + std::to_string(n) + " runs past the end of the file ("
                             + std::to_string(file.size()) + " bytes; truncated?)");
            }
            parsed_header out;
            out.header_size = static_cast<std::size_t>(n);
            const std::size_t data_size = file.size() - 8 - out.header_size;
            const std::string_view text(reinterpret_cast<const char*>(file.data() + 8), out.header_size);

            std::vector<std::string> order;
            const nlohmann::json j = parse_json_strict(text, ctx, "header", &order, /*skip_unknown_entry_fields=*/true);
            if (!j.is_object()) format_error(ctx + ": header is a JSON " + std::string(j.type_name()) + ", not an object");

            out.tensors.reserve(order.size());
            for (const std::string& key : order)
            {
                const nlohmann::json& v = j.find(key).value();
                if (key == "__metadata__")
                {
                    if (!v.is_object()) format_error(ctx + ": \"__metadata__\" is " + json_type_text(v) + ", not an object");
                    for (auto it = v.begin(); it != v.end(); ++it)
                    {
                        if (!it->is_string())
                        {
                            format_error(ctx + ": \"__metadata__\" must map strings to strings, but key '" + printable(it.key())
                                         + "' holds " + json_type_text(*it));
                        }
                        out.metadata.emplace(it.key(), it->get<std::string>());
                    }
                    continue;
                }
                out.tensors.push_back(parse_tensor_entry(key, v, data_size, label));
            }

            // Overlaps: sort non-empty tensors by begin; each must start at or after the furthest
            // end seen so far.
            std::vector<const tensor_info*> by_offset;
            by_offset.reserve(out.tensors.size());
            for (const auto& t : out.tensors)
            {
                if (t.end > t.begin) by_offset.push_back(&t);
            }
            std::sort(by_offset.begin(), by_offset.end(),
                      [](const tensor_info* a, const tensor_info* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
            const tensor_info* furthest = nullptr;
            for (const tensor_info* t : by_offset)
            {
                if (furthest != nullptr && t->begin < furthest->end)
                {
                    format_error(ctx + ": tensors '" + printable(furthest->name) + "' [" + std::to_string(furthest->begin) + ", "
                                 + std::to_string(furthest->end) + ") and '" + printable(t->name) + "' [" + std::to_string(t->begin)
                                 + ", " + std::to_string(t->end) + ") overlap");
                }
                if (furthest == nullptr || t->end > furthest->end) furthest = t;
            }
            return out;
        }
    }
}
