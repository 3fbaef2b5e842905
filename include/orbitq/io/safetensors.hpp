/// @file safetensors.hpp
/// @brief A validating, memory-mapped safetensors reader, Hugging Face checkpoint directories
///        (sharded or single-file), and crash-safe streaming writers.
///
/// The format (https://huggingface.co/docs/safetensors): an unsigned little-endian 64-bit header
/// length N, N bytes of UTF-8 JSON, then the data section. The JSON is an object mapping tensor
/// names to {"dtype", "shape", "data_offsets": [begin, end]} (byte offsets relative to the data
/// section) plus an optional "__metadata__" object of string to string.
///
/// Reading. safetensors_file::open maps the file read-only and validates everything before any
/// tensor can be touched, throwing orbitq::error(error_kind::format) naming the file (and the
/// tensor) when: the file is shorter than 8 bytes; N is 0, above 100 000 000 or past the end of
/// the file; the header is not JSON, not UTF-8 or not an object; a key appears twice in any JSON
/// object (duplicate tensor names included; plain JSON parsers silently keep the last one); an
/// entry is not an object or lacks dtype/shape/data_offsets or has them with the wrong JSON type;
/// the dtype is unknown; a shape entry is negative or not an integer; the element count or byte
/// size overflows 64 bits; data_offsets is not [begin, end] with begin <= end <= data section
/// size; end - begin differs from elements x dtype size; two non-empty tensors overlap;
/// "__metadata__" is not a string-to-string object; JSON nests deeper than 64 levels. Gaps
/// between tensors are allowed, as the specification allows them. Unknown keys inside a tensor
/// entry are ignored (their values are not even stored, so a hostile header cannot make the
/// reader hold much more memory than the header's own size).
///
/// The mapping is MAP_PRIVATE, PROT_READ: nothing is ever written to an input. As with any mmap,
/// a file truncated by another process while mapped raises SIGBUS on access; do not modify
/// checkpoints while they are being read.
///
/// Writing. safetensors_writer writes the header at construction, each tensor's bytes at its
/// offset in any order, and publishes the file atomically on commit() (see atomic_file.hpp).
/// The header is padded with spaces to a multiple of 8 bytes and tensors are laid out in the data
/// section by decreasing element size (stable in declaration order), so every tensor starts at an
/// offset aligned to its element size, without gaps (the Rust safetensors reader rejects gaps).
/// The header's JSON keys keep the declaration order, which is the order tensors() reports.
///
/// Example:
/// @code
///   auto ckpt = orbitq::io::checkpoint::open("gemma-4-26b");           // index + shards
///   auto w = ckpt.view<orbitq::bfloat16_t>("model.language_model.layers.0.experts.down_proj");
///   // ... quantize w (zero-copy from the page cache), then drop its pages:
///   ckpt.release("model.language_model.layers.0.experts.down_proj");
///
///   orbitq::io::write_checkpoint("out", decls,
///       [&](const orbitq::io::tensor_decl& d, std::span<std::byte> buf) { fill(d, buf); });
/// @endcode
#pragma once

#include "orbitq/core/error.hpp"
#include "orbitq/core/float16.hpp"
#include "orbitq/core/view.hpp"
#include "orbitq/io/atomic_file.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace orbitq::io
{
    static_assert(std::endian::native == std::endian::little,
                  "safetensors data is little-endian; zero-copy views need a little-endian host");

    // ------------------------------------------------------------------------------------------
    // dtypes
    // ------------------------------------------------------------------------------------------

    /// @brief The safetensors element types this library accepts. Only f32, bf16 and f16 can be
    ///        viewed as weights; the others are read and copied as opaque bytes. The sub-byte
    ///        types (F4, F6_*) are rejected as unsupported.
    enum class dtype
    {
        f64,
        f32,
        f16,
        bf16,
        i64,
        i32,
        i16,
        i8,
        u8,
        boolean,
        u64,
        u32,
        u16,
        f8_e4m3,
        f8_e5m2,
        f8_e8m0,
        c64
    };

    namespace detail
    {
        using orbitq::detail::shape_string;

        struct dtype_entry
        {
            dtype type;
            std::string_view name;
            std::size_t size;
        };

        inline constexpr std::array<dtype_entry, 17> dtype_table{{
            {dtype::f64, "F64", 8},         {dtype::f32, "F32", 4},         {dtype::f16, "F16", 2},
            {dtype::bf16, "BF16", 2},       {dtype::i64, "I64", 8},         {dtype::i32, "I32", 4},
            {dtype::i16, "I16", 2},         {dtype::i8, "I8", 1},           {dtype::u8, "U8", 1},
            {dtype::boolean, "BOOL", 1},    {dtype::u64, "U64", 8},         {dtype::u32, "U32", 4},
            {dtype::u16, "U16", 2},         {dtype::f8_e4m3, "F8_E4M3", 1}, {dtype::f8_e5m2, "F8_E5M2", 1},
            {dtype::f8_e8m0, "F8_E8M0", 1}, {dtype::c64, "C64", 8},
        }};

        constexpr const dtype_entry& dtype_info(dtype t) noexcept
        {
            for (const auto& e : dtype_table)
            {
                if (e.type == t) return e;
            }
            return dtype_table[0];  // unreachable for valid enumerators
        }

        constexpr std::optional<dtype> find_dtype(std::string_view name) noexcept
        {
            for (const auto& e : dtype_table)
            {
                if (e.name == name) return e.type;
            }
            return std::nullopt;
        }

        /// @brief A printable, bounded rendering of untrusted text for error messages: control
        ///        and non-ASCII bytes as \xNN, cut after `limit` bytes.
        inline std::string printable(std::string_view s, std::size_t limit = 160)
        {
            static constexpr char hex[] = "0123456789abcdef";
            std::string out;
            for (std::size_t i = 0; i < s.size() && i < limit; ++i)
            {
                const auto c = static_cast<unsigned char>(s[i]);
                if (c >= 0x20 && c < 0x7f && c != '\\')
                {
                    out += static_cast<char>(c);
                }
                else
                {
                    out += "\\x";
                    out += hex[c >> 4];
                    out += hex[c & 15];
                }
            }
            if (s.size() > limit) out += "...(" + std::to_string(s.size()) + " bytes)";
            return out;
        }

        /// @brief a * b, or nullopt on 64-bit overflow.
        constexpr std::optional<std::uint64_t> checked_mul(std::uint64_t a, std::uint64_t b) noexcept
        {
            std::uint64_t r = 0;
            if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
            return r;
        }

        /// @brief Product of the extents (1 for a scalar), or nullopt on overflow.
        inline std::optional<std::uint64_t> checked_elements(const shape_type& shape) noexcept
        {
            std::uint64_t n = 1;
            for (std::size_t e : shape)
            {
                const auto m = checked_mul(n, e);
                if (!m) return std::nullopt;
                n = *m;
            }
            return n;
        }
    }

    /// @brief Bytes per element.
    constexpr std::size_t dtype_size(dtype t) noexcept { return detail::dtype_info(t).size; }

    /// @brief The safetensors spelling: "F32", "BF16", "I8", "BOOL", ...
    constexpr std::string_view dtype_name(dtype t) noexcept { return detail::dtype_info(t).name; }

    /// @brief Parses a safetensors dtype name (case-sensitive, as the format requires).
    /// @throws error_kind::format on an unknown or unsupported name.
    inline dtype parse_dtype(std::string_view name)
    {
        if (const auto t = detail::find_dtype(name)) return *t;
        throw error(error_kind::format, "unknown or unsupported safetensors dtype '" + detail::printable(name) + "'");
    }

    /// @brief The weight element type of a floating-point dtype (F32, BF16, F16), else nullopt.
    constexpr std::optional<element_type> as_element_type(dtype t) noexcept
    {
        switch (t)
        {
            case dtype::f32: return element_type::f32;
            case dtype::bf16: return element_type::bf16;
            case dtype::f16: return element_type::f16;
            default: return std::nullopt;
        }
    }

    /// @brief The dtype of a weight element type (inverse of as_element_type).
    constexpr dtype to_dtype(element_type t) noexcept
    {
        switch (t)
        {
            case element_type::bf16: return dtype::bf16;
            case element_type::f16: return dtype::f16;
            default: return dtype::f32;
        }
    }

    // ------------------------------------------------------------------------------------------
    // tensor descriptions
    // ------------------------------------------------------------------------------------------

    /// @brief One tensor of a safetensors file, as its header describes it.
    struct tensor_info
    {
        std::string name;
        dtype type = dtype::f32;
        shape_type shape;
        std::size_t begin = 0;  ///< first byte, relative to the data section
        std::size_t end = 0;    ///< one past the last byte, relative to the data section

        /// @brief Product of the shape (1 for a scalar). Validated not to overflow on read.
        std::size_t elements() const noexcept { return shape_elements(shape); }
        /// @brief elements() * dtype_size(type); equals end - begin for a validated tensor.
        std::size_t bytes() const noexcept { return elements() * dtype_size(type); }
    };

    /// @brief A tensor to be written: name, dtype and shape; offsets are assigned by the writer.
    struct tensor_decl
    {
        std::string name;
        dtype type = dtype::f32;
        shape_type shape;

        /// @brief Product of the shape (1 for a scalar). @pre does not overflow (the writers check).
        std::size_t elements() const noexcept { return shape_elements(shape); }
        /// @brief Bytes of data: elements() * dtype_size(type).
        std::size_t bytes() const noexcept { return elements() * dtype_size(type); }
    };

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

        [[noreturn]] inline void format_error(const std::string& msg) { throw error(error_kind::format, msg); }

        /// @brief A read-only private mapping of a whole file; unmapped on destruction.
        class mapping
        {
        public:
            mapping() = default;
            mapping(const void* p, std::size_t n) noexcept : m_ptr(p), m_size(n) {}
            mapping(mapping&& o) noexcept
                : m_ptr(std::exchange(o.m_ptr, nullptr))
                , m_size(std::exchange(o.m_size, 0))
            {
            }
            mapping& operator=(mapping&& o) noexcept
            {
                if (this != &o)
                {
                    reset();
                    m_ptr = std::exchange(o.m_ptr, nullptr);
                    m_size = std::exchange(o.m_size, 0);
                }
                return *this;
            }
            mapping(const mapping&) = delete;
            mapping& operator=(const mapping&) = delete;
            ~mapping() { reset(); }

            std::span<const std::byte> bytes() const noexcept
            {
                return {static_cast<const std::byte*>(m_ptr), m_size};
            }

        private:
            void reset() noexcept
            {
                if (m_ptr != nullptr) ::munmap(const_cast<void*>(m_ptr), m_size);
                m_ptr = nullptr;
                m_size = 0;
            }
            const void* m_ptr = nullptr;
            std::size_t m_size = 0;
        };

        /// @brief A SAX consumer that builds the DOM like nlohmann's own parser but stops at the
        ///        first duplicate key in any object (nlohmann keeps the last one silently) and
        ///        records the top-level keys in document order. Linear time: nlohmann's callback
        ///        parser rescans the parent object after every child object, which is quadratic
        ///        in the number of tensors.
        ///
        /// Bounded memory for hostile headers: nesting deeper than max_depth stops the parse, and
        /// with skip_unknown_entry_fields the values of unknown keys inside a top-level entry
        /// (anything but dtype/shape/data_offsets, outside "__metadata__") are not stored (the key
        /// is kept, holding null, so that duplicates are still caught).
        class strict_json_builder : public nlohmann::json_sax<nlohmann::json>
        {
        public:
            using json = nlohmann::json;
            static constexpr std::size_t max_depth = 64;

            strict_json_builder(json& root, std::vector<std::string>* top_level_keys, bool skip_unknown_entry_fields)
                : m_root(root)
                , m_top_level_keys(top_level_keys)
                , m_skip_unknown(skip_unknown_entry_fields)
            {
            }

            bool null() override { return add(nullptr); }
            bool boolean(bool v) override { return add(v); }
            bool number_integer(number_integer_t v) override { return add(v); }
            bool number_unsigned(number_unsigned_t v) override { return add(v); }
            bool number_float(number_float_t v, const string_t&) override { return add(v); }
            bool string(string_t& v) override { return add(std::move(v)); }
            bool binary(binary_t& v) override { return add(json::binary(std::move(v))); }
            bool start_object(std::size_t) override { return open(json::object()); }
            bool end_object() override { return close(); }
            bool start_array(std::size_t) override { return open(json::array()); }
            bool end_array() override { return close(); }

            bool key(string_t& k) override
            {
                if (m_skipping > 0) return true;
                json& obj = *m_stack.back();
                if (obj.contains(k))
                {
                    duplicate = k;
                    duplicate_at_top_level = m_stack.size() == 1;
                    return false;  // stops the parser
                }
                if (m_stack.size() == 1)
                {
                    if (m_top_level_keys != nullptr) m_top_level_keys->push_back(k);
                    m_in_metadata = k == "__metadata__";
                }
                m_skip_next = m_skip_unknown && m_stack.size() == 2 && !m_in_metadata && m_root.is_object() && k != "dtype"
                              && k != "shape" && k != "data_offsets";
                m_slot = &obj[k];
                return true;
            }

            bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override
            {
                error_text = e.what();
                return false;
            }

            std::optional<std::string> duplicate;
            bool duplicate_at_top_level = false;
            bool too_deep = false;
            std::string error_text;

        private:
            json* place(json&& v)
            {
                if (m_stack.empty())
                {
                    m_root = std::move(v);
                    return &m_root;
                }
                json& parent = *m_stack.back();
                if (parent.is_array())
                {
                    parent.push_back(std::move(v));
                    return &parent.back();
                }
                *m_slot = std::move(v);
                return m_slot;
            }
            bool add(json&& v)
            {
                if (m_skipping > 0) return true;
                if (std::exchange(m_skip_next, false)) return true;  // the key stays, holding null
                place(std::move(v));
                return true;
            }
            bool open(json&& v)
            {
                if (m_skipping > 0 || std::exchange(m_skip_next, false))
                {
                    ++m_skipping;
                }
                else
                {
                    m_stack.push_back(place(std::move(v)));
                }
                if (m_stack.size() + m_skipping > max_depth)
                {
                    too_deep = true;
                    return false;
                }
                return true;
            }
            bool close()
            {
                if (m_skipping > 0) --m_skipping;
                else m_stack.pop_back();
                return true;
            }

            json& m_root;
            std::vector<std::string>* m_top_level_keys;
            bool m_skip_unknown;
            std::vector<json*> m_stack;
            json* m_slot = nullptr;
            std::size_t m_skipping = 0;  // depth inside a value being skipped
            bool m_skip_next = false;    // the next value belongs to an unknown entry field
            bool m_in_metadata = false;
        };

        /// @brief Parses JSON text, rejecting duplicate keys in any object and nesting deeper
        ///        than strict_json_builder::max_depth, and records the top-level keys in document
        ///        order (see strict_json_builder for skip_unknown_entry_fields).
        /// @param what "header" or "index", for messages.
        /// @throws error_kind::format "<context>: <what> ..." on invalid JSON (including invalid
        ///         UTF-8 and NUL bytes), a duplicate key or too deep nesting.
        inline nlohmann::json parse_json_strict(std::string_view text, const std::string& context, std::string_view what,
                                                std::vector<std::string>* top_level_keys = nullptr,
                                                bool skip_unknown_entry_fields = false)
        {
            // nlohmann's lexer takes a NUL byte for the end of input and would silently ignore
            // whatever follows; a raw NUL is never valid JSON, so reject it here.
            if (const auto nul = text.find('\0'); nul != std::string_view::npos)
            {
                format_error(context + ": " + std::string(what) + " is not valid JSON: NUL byte at offset " + std::to_string(nul) + " of the JSON text");
            }
            nlohmann::json j;
            strict_json_builder builder(j, top_level_keys, skip_unknown_entry_fields);
            bool ok = false;
            try
            {
                ok = nlohmann::json::sax_parse(text.begin(), text.end(), &builder);
            }
            catch (const nlohmann::json::exception& e)
            {
                format_error(context + ": " + std::string(what) + " is not valid JSON: " + printable(e.what(), 400));
            }
            if (builder.duplicate)
            {
                format_error(context + (builder.duplicate_at_top_level ? ": duplicate tensor name '" : ": duplicate JSON key '")
                             + printable(*builder.duplicate) + "' in " + std::string(what));
            }
            if (builder.too_deep)
            {
                format_error(context + ": " + std::string(what) + " nests JSON deeper than "
                             + std::to_string(strict_json_builder::max_depth) + " levels");
            }
            if (!ok) format_error(context + ": " + std::string(what) + " is not valid JSON: " + printable(builder.error_text, 400));
            return j;
        }

        inline std::string json_type_text(const nlohmann::json& v)
        {
            std::string s = v.type_name();
            if (v.is_primitive()) s += " " + printable(v.dump(), 60);
            return s;
        }

        /// @brief A JSON value as a size_t, when it is a non-negative integer that fits.
        inline std::optional<std::size_t> as_size(const nlohmann::json& v)
        {
            if (!v.is_number_unsigned()) return std::nullopt;
            const auto u = v.get<std::uint64_t>();
            if (u > std::numeric_limits<std::size_t>::max()) return std::nullopt;
            return static_cast<std::size_t>(u);
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

    // ------------------------------------------------------------------------------------------
    // reader
    // ------------------------------------------------------------------------------------------

    /// @brief A validated, read-only, memory-mapped safetensors file. Move-only; unmaps on
    ///        destruction. Every accessor is const and safe to call from several threads.
    class safetensors_file
    {
    public:
        /// @brief Maps and validates the file at `path`.
        /// @throws error_kind::io if it cannot be opened, stat'ed or mapped (or is not a regular
        ///         file); error_kind::format naming the file (and tensor) if it is malformed.
        static safetensors_file open(const std::filesystem::path& path)
        {
            detail::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
            if (!fd) detail::throw_io("cannot open safetensors file", path, errno);
            struct ::stat st;
            if (::fstat(fd.get(), &st) != 0) detail::throw_io("cannot stat safetensors file", path, errno);
            if (!S_ISREG(st.st_mode)) throw error(error_kind::io, "safetensors file '" + path.string() + "' is not a regular file");
            const auto size = static_cast<std::size_t>(st.st_size);
            if (size < 8)
            {
                // Parse the few bytes for the uniform "too short" message; nothing to map.
                std::array<std::byte, 8> small{};
                const ::ssize_t r = size ? ::pread(fd.get(), small.data(), size, 0) : 0;
                if (r < 0) detail::throw_io("cannot read safetensors file", path, errno);
                (void)detail::parse_safetensors(std::span<const std::byte>(small.data(), static_cast<std::size_t>(r)), path.string());
            }
            void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
            if (p == MAP_FAILED) detail::throw_io("cannot memory-map safetensors file", path, errno);
            detail::mapping map(p, size);
            safetensors_file f = parse(map.bytes(), path.string());
            f.m_map = std::move(map);
            f.m_path = path;
            return f;
        }

        /// @brief Validates an in-memory safetensors image without copying it.
        /// @param buffer the whole file; must outlive the returned object (which does not own it).
        /// @param label  the name used in error messages and returned by path().
        /// @throws error_kind::format as open().
        static safetensors_file parse(std::span<const std::byte> buffer, std::string label)
        {
            detail::parsed_header h = detail::parse_safetensors(buffer, label);
            safetensors_file f;
            f.m_path = label;
            f.m_label = std::move(label);
            f.m_buffer = buffer;
            f.m_header_size = h.header_size;
            f.m_tensors = std::move(h.tensors);
            f.m_metadata = std::move(h.metadata);
            for (std::size_t i = 0; i < f.m_tensors.size(); ++i) f.m_index.emplace(f.m_tensors[i].name, i);
            return f;
        }

        safetensors_file(safetensors_file&&) noexcept = default;
        safetensors_file& operator=(safetensors_file&&) noexcept = default;
        safetensors_file(const safetensors_file&) = delete;
        safetensors_file& operator=(const safetensors_file&) = delete;
        ~safetensors_file() = default;

        /// @brief The path given to open() (or the label given to parse()).
        const std::filesystem::path& path() const noexcept { return m_path; }
        /// @brief Tensors in header order ("__metadata__" excluded).
        const std::vector<tensor_info>& tensors() const noexcept { return m_tensors; }
        /// @brief The "__metadata__" map (empty when absent).
        const std::map<std::string, std::string>& metadata() const noexcept { return m_metadata; }
        /// @brief N, the JSON header's length in bytes.
        std::size_t header_size() const noexcept { return m_header_size; }
        /// @brief The data section's offset in the file: 8 + N.
        std::size_t data_offset() const noexcept { return 8 + m_header_size; }
        /// @brief Size of the whole file in bytes.
        std::size_t file_size() const noexcept { return m_buffer.size(); }

        /// @brief The tensor named `name`, or nullptr.
        const tensor_info* find(std::string_view name) const
        {
            const auto it = m_index.find(name);
            return it == m_index.end() ? nullptr : &m_tensors[it->second];
        }

        /// @brief The tensor named `name`. @throws error_kind::format naming file and tensor if absent.
        const tensor_info& at(std::string_view name) const
        {
            if (const tensor_info* t = find(name)) return *t;
            detail::format_error(detail::file_context(m_label) + ": no tensor named '" + detail::printable(name) + "'");
        }

        /// @brief The raw little-endian bytes of a tensor (any dtype, any alignment).
        /// @pre `t` describes this file (checked: its span must lie inside the data section).
        std::span<const std::byte> bytes(const tensor_info& t) const
        {
            if (t.begin > t.end || t.end > m_buffer.size() - data_offset())
            {
                detail::format_error(detail::tensor_context(m_label, t.name) + ": data_offsets [" + std::to_string(t.begin) + ", "
                                     + std::to_string(t.end) + "] do not lie inside this file's data section");
            }
            return m_buffer.subspan(data_offset() + t.begin, t.end - t.begin);
        }

        /// @brief The bytes of the tensor named `name`. @throws as at().
        std::span<const std::byte> bytes(std::string_view name) const { return bytes(at(name)); }

        /// @brief A zero-copy matrix view of a float tensor (shape rule of core/view.hpp).
        /// @tparam T float, bfloat16_t or float16_t; must match the tensor's dtype exactly.
        /// @pre the tensor's data is aligned to alignof(T): true for files whose header is padded
        ///      to 8 bytes (Hugging Face's and this library's writers) with size-sorted tensors.
        /// @throws error_kind::format naming file and tensor if absent, if the dtype differs, if
        ///         the data is misaligned (use bytes() and copy), or if the shape is a scalar or
        ///         has a zero extent (error_kind::invalid_argument / empty_tensor).
        template <weight_element T>
        matrix_view<T> view(std::string_view name) const
        {
            const tensor_info& t = at(name);
            const element_type want = element_type_of<T>();
            if (as_element_type(t.type) != want)
            {
                detail::format_error(detail::tensor_context(m_label, t.name) + ": dtype " + std::string(dtype_name(t.type))
                                     + " cannot be viewed as " + std::string(element_name(want)));
            }
            const std::span<const std::byte> b = bytes(t);
            if (reinterpret_cast<std::uintptr_t>(b.data()) % alignof(T) != 0)
            {
                detail::format_error(detail::tensor_context(m_label, t.name) + ": data at file offset "
                                     + std::to_string(data_offset() + t.begin) + " is not aligned to " + std::to_string(alignof(T))
                                     + " bytes, so it cannot be viewed in place; copy bytes() instead");
            }
            try
            {
                return make_view(reinterpret_cast<const T*>(b.data()), t.shape, t.name);
            }
            catch (const error& e)
            {
                throw error(e.kind(), detail::tensor_context(m_label, t.name) + ": " + e.what());
            }
        }

        /// @brief Hints the kernel to read a tensor's pages ahead (MADV_WILLNEED). No-op for
        ///        parse()d buffers; never fails.
        void prefetch(const tensor_info& t) const noexcept { advise(t, MADV_WILLNEED); }

        /// @brief Drops a tensor's pages from this process's resident set (MADV_DONTNEED on the
        ///        read-only mapping; they are re-read from the file if touched again), so that a
        ///        pass over a 50 GB checkpoint keeps its RSS near the working set. Never fails.
        void release(const tensor_info& t) const noexcept { advise(t, MADV_DONTNEED); }

    private:
        safetensors_file() = default;

        void advise(const tensor_info& t, int advice) const noexcept
        {
            const auto all = m_map.bytes();
            if (all.empty() || t.begin >= t.end || t.end > all.size() - data_offset()) return;
            const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
            const auto base = reinterpret_cast<std::uintptr_t>(all.data());
            const std::uintptr_t lo = (base + data_offset() + t.begin) / page * page;
            const std::uintptr_t hi = base + data_offset() + t.end;
            ::madvise(reinterpret_cast<void*>(lo), hi - lo, advice);
        }

        std::filesystem::path m_path;
        std::string m_label;
        detail::mapping m_map;
        std::span<const std::byte> m_buffer;
        std::size_t m_header_size = 0;
        std::vector<tensor_info> m_tensors;
        std::map<std::string, std::size_t, std::less<>> m_index;
        std::map<std::string, std::string> m_metadata;
    };

    // ------------------------------------------------------------------------------------------
    // checkpoint directories
    // ------------------------------------------------------------------------------------------

    /// @brief A Hugging Face checkpoint: a directory with model.safetensors.index.json and its
    ///        shards, a directory with a single model.safetensors, or one .safetensors file.
    ///
    /// With an index, the tensors are exactly those of "weight_map" (each checked to exist in its
    /// shard with open()'s full validation); tensors present in a shard but not in the map are
    /// ignored, as transformers ignores them. Shard names must be relative paths without "..".
    class checkpoint
    {
    public:
        /// @brief Name of the index file of a sharded checkpoint.
        static constexpr std::string_view index_name = "model.safetensors.index.json";
        /// @brief Name of the single file of an unsharded checkpoint.
        static constexpr std::string_view single_name = "model.safetensors";

        /// @brief Opens and validates a checkpoint (see the class brief).
        /// @throws error_kind::io if the path, index or a shard cannot be read; error_kind::format
        ///         on a malformed index (no weight_map, non-string entries, unsafe shard names), a
        ///         tensor missing from its shard, or a malformed shard.
        static checkpoint open(const std::filesystem::path& path)
        {
            namespace fs = std::filesystem;
            checkpoint c;
            std::error_code ec;
            const auto st = fs::status(path, ec);
            if (ec || !fs::exists(st)) throw error(error_kind::io, "checkpoint path '" + path.string() + "' does not exist");
            if (fs::is_regular_file(st))
            {
                c.m_directory = path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
                c.add_all(safetensors_file::open(path));
                return c;
            }
            if (!fs::is_directory(st)) throw error(error_kind::io, "checkpoint path '" + path.string() + "' is neither a file nor a directory");
            c.m_directory = path;
            const fs::path index = path / index_name;
            if (fs::exists(index, ec))
            {
                c.open_index(index);
                return c;
            }
            const fs::path single = path / single_name;
            if (fs::exists(single, ec))
            {
                c.add_all(safetensors_file::open(single));
                return c;
            }
            throw error(error_kind::io, "checkpoint directory '" + path.string() + "' holds neither " + std::string(index_name)
                                            + " nor " + std::string(single_name));
        }

        /// @brief The directory holding the checkpoint's files.
        const std::filesystem::path& directory() const noexcept { return m_directory; }
        /// @brief The opened files (shards in first-use order of the weight map's sorted names).
        const std::vector<safetensors_file>& files() const noexcept { return m_files; }

        /// @brief All tensor names, sorted.
        std::vector<std::string> names() const
        {
            std::vector<std::string> out;
            out.reserve(m_entries.size());
            for (const auto& [name, e] : m_entries) out.push_back(name);
            return out;
        }
        /// @brief Number of tensors.
        std::size_t size() const noexcept { return m_entries.size(); }
        /// @brief True if a tensor of that name exists.
        bool contains(std::string_view name) const { return m_entries.find(name) != m_entries.end(); }

        /// @brief The tensor's description. @throws error_kind::format naming the checkpoint if absent.
        const tensor_info& info(std::string_view name) const
        {
            const entry& e = lookup(name);
            return m_files[e.file].tensors()[e.tensor];
        }
        /// @brief The shard holding the tensor. @throws as info().
        const safetensors_file& file_of(std::string_view name) const { return m_files[lookup(name).file]; }
        /// @brief The tensor's raw bytes. @throws as info().
        std::span<const std::byte> bytes(std::string_view name) const { return file_of(name).bytes(info(name)); }
        /// @brief Zero-copy matrix view, as safetensors_file::view. @throws as info() and view().
        template <weight_element T>
        matrix_view<T> view(std::string_view name) const
        {
            return file_of(name).template view<T>(name);
        }
        /// @brief See safetensors_file::prefetch.
        void prefetch(std::string_view name) const { file_of(name).prefetch(info(name)); }
        /// @brief See safetensors_file::release.
        void release(std::string_view name) const { file_of(name).release(info(name)); }

    private:
        struct entry
        {
            std::size_t file;
            std::size_t tensor;
        };

        checkpoint() = default;

        const entry& lookup(std::string_view name) const
        {
            const auto it = m_entries.find(name);
            if (it == m_entries.end())
            {
                detail::format_error("checkpoint '" + m_directory.string() + "': no tensor named '" + detail::printable(name) + "'");
            }
            return it->second;
        }

        void add_all(safetensors_file f)
        {
            const std::size_t fi = m_files.size();
            for (std::size_t i = 0; i < f.tensors().size(); ++i) m_entries.emplace(f.tensors()[i].name, entry{fi, i});
            m_files.push_back(std::move(f));
        }

        void open_index(const std::filesystem::path& index)
        {
            const std::string ctx = "checkpoint index '" + index.string() + "'";
            std::string text;
            {
                detail::unique_fd fd(::open(index.c_str(), O_RDONLY | O_CLOEXEC));
                if (!fd) detail::throw_io("cannot open checkpoint index", index, errno);
                char buf[65536];
                for (;;)
                {
                    const ::ssize_t r = ::read(fd.get(), buf, sizeof buf);
                    if (r < 0)
                    {
                        if (errno == EINTR) continue;
                        detail::throw_io("cannot read checkpoint index", index, errno);
                    }
                    if (r == 0) break;
                    text.append(buf, static_cast<std::size_t>(r));
                    if (text.size() > std::size_t(1) << 30) detail::format_error(ctx + ": larger than 1 GiB");
                }
            }
            const nlohmann::json j = detail::parse_json_strict(text, ctx, "index");
            if (!j.is_object()) detail::format_error(ctx + ": not a JSON object");
            const auto wm = j.find("weight_map");
            if (wm == j.end()) detail::format_error(ctx + ": missing \"weight_map\"");
            if (!wm->is_object()) detail::format_error(ctx + ": \"weight_map\" is " + detail::json_type_text(*wm) + ", not an object");

            std::map<std::string, std::size_t> shard_index;
            for (auto it = wm->begin(); it != wm->end(); ++it)
            {
                const std::string& name = it.key();
                if (!it->is_string())
                {
                    detail::format_error(ctx + ": weight_map entry for tensor '" + detail::printable(name) + "' is "
                                         + detail::json_type_text(*it) + ", not a file name");
                }
                const std::string& shard = it->get_ref<const std::string&>();
                auto s = shard_index.find(shard);
                if (s == shard_index.end())
                {
                    const std::filesystem::path rel(shard);
                    bool safe = !shard.empty() && rel.is_relative();
                    for (const auto& part : rel) safe = safe && part != "..";
                    if (!safe)
                    {
                        detail::format_error(ctx + ": tensor '" + detail::printable(name) + "' maps to unsafe shard path '"
                                             + detail::printable(shard) + "' (must be relative, without '..')");
                    }
                    const std::filesystem::path shard_path = m_directory / rel;
                    std::error_code ec;
                    if (!std::filesystem::exists(shard_path, ec))
                    {
                        throw error(error_kind::io, ctx + ": shard '" + shard_path.string() + "' (for tensor '" + detail::printable(name)
                                                        + "') does not exist (incomplete download?)");
                    }
                    s = shard_index.emplace(shard, m_files.size()).first;
                    m_files.push_back(safetensors_file::open(shard_path));
                }
                const safetensors_file& f = m_files[s->second];
                const tensor_info* t = f.find(name);
                if (t == nullptr)
                {
                    detail::format_error(ctx + ": tensor '" + detail::printable(name) + "' is listed in weight_map but not found in shard '"
                                         + f.path().string() + "'");
                }
                m_entries.emplace(name, entry{s->second, static_cast<std::size_t>(t - f.tensors().data())});
            }
        }

        std::filesystem::path m_directory;
        std::vector<safetensors_file> m_files;
        std::map<std::string, entry, std::less<>> m_entries;
    };

    // ------------------------------------------------------------------------------------------
    // writers
    // ------------------------------------------------------------------------------------------

    namespace detail
    {
        /// @brief Validates declarations (non-empty unique names, not "__metadata__", sizes that
        ///        fit 64 bits) and returns each one's byte size.
        /// @throws error_kind::invalid_argument naming `target` and the tensor.
        inline std::vector<std::uint64_t> checked_decl_bytes(const std::vector<tensor_decl>& decls, const std::string& target)
        {
            std::vector<std::uint64_t> out;
            out.reserve(decls.size());
            std::set<std::string_view> seen;
            for (const auto& d : decls)
            {
                const std::string ctx = "writing '" + target + "', tensor '" + printable(d.name) + "'";
                if (d.name == "__metadata__") throw error(error_kind::invalid_argument, ctx + ": the name is reserved");
                if (!seen.insert(d.name).second) throw error(error_kind::invalid_argument, ctx + ": declared twice");
                const auto n = checked_elements(d.shape);
                const auto b = n ? checked_mul(*n, dtype_size(d.type)) : std::nullopt;
                if (!b) throw error(error_kind::invalid_argument, ctx + ": shape " + shape_string(d.shape) + " overflows 64 bits");
                out.push_back(*b);
            }
            return out;
        }
    }

    /// @brief Streams one .safetensors file to disk and publishes it atomically.
    ///
    /// The header (offsets included) is written at construction; write() each declared tensor
    /// exactly once, in any order; commit() checks that every tensor was written, fsyncs, renames
    /// the hidden temporary onto the final path and fsyncs the directory. Destroying an
    /// uncommitted writer (an exception, an early return) removes the temporary, so the final path
    /// never holds a partial file. Disk space for the whole file is reserved at construction, so a
    /// full disk is reported before any data is produced. Move-only.
    class safetensors_writer
    {
    public:
        /// @param final_path where the file appears on commit(); its directory must exist.
        /// @param decls      the tensors, in header order.
        /// @param metadata   the "__metadata__" map (omitted from the header when empty).
        /// @param overwrite  when false, throws if final_path exists (checked now and at commit).
        /// @throws error_kind::invalid_argument on bad declarations (duplicate or reserved names,
        ///         sizes overflowing 64 bits, names that are not valid UTF-8); error_kind::io if
        ///         the temporary cannot be created or the disk space reserved.
        safetensors_writer(std::filesystem::path final_path, std::vector<tensor_decl> decls,
                           std::map<std::string, std::string> metadata = {}, bool overwrite = false)
        {
            const std::string target = final_path.string();
            const std::vector<std::uint64_t> sizes = detail::checked_decl_bytes(decls, target);

            // Data layout: by decreasing element size, stable, so each tensor is aligned to its
            // element size (all sizes are powers of two) with no gaps.
            std::vector<std::size_t> order(decls.size());
            for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
            std::stable_sort(order.begin(), order.end(),
                             [&](std::size_t a, std::size_t b) { return dtype_size(decls[a].type) > dtype_size(decls[b].type); });
            std::vector<std::uint64_t> begins(decls.size());
            std::uint64_t offset = 0;
            for (std::size_t i : order)
            {
                begins[i] = offset;
                if (__builtin_add_overflow(offset, sizes[i], &offset))
                {
                    throw error(error_kind::invalid_argument, "writing '" + target + "': total size overflows 64 bits");
                }
            }

            // Assembled entry by entry (an ordered_json object looks keys up linearly, which is
            // quadratic for shards of many tensors); the text equals ordered_json's compact dump.
            std::string text = "{";
            try
            {
                if (!metadata.empty()) text += "\"__metadata__\":" + nlohmann::json(metadata).dump() + ",";
                for (std::size_t i = 0; i < decls.size(); ++i)
                {
                    const nlohmann::ordered_json entry = {{"dtype", dtype_name(decls[i].type)},
                                                          {"shape", decls[i].shape},
                                                          {"data_offsets", {begins[i], begins[i] + sizes[i]}}};
                    text += nlohmann::json(decls[i].name).dump();
                    text += ':';
                    text += entry.dump();
                    text += ',';
                }
            }
            catch (const nlohmann::json::exception& e)
            {
                throw error(error_kind::invalid_argument, "writing '" + target + "': a tensor name or metadata string is not valid UTF-8 ("
                                                              + detail::printable(e.what()) + ")");
            }
            if (text.back() == ',') text.back() = '}';
            else text += '}';
            text.append((8 - text.size() % 8) % 8, ' ');
            if (text.size() > detail::max_header_size)
            {
                throw error(error_kind::invalid_argument, "writing '" + target + "': header of " + std::to_string(text.size())
                                                              + " bytes exceeds the format's limit");
            }

            m_file.emplace(std::move(final_path), overwrite);
            std::uint64_t total = 0;
            if (__builtin_add_overflow(8 + text.size(), offset, &total))
            {
                throw error(error_kind::invalid_argument, "writing '" + target + "': total size overflows 64 bits");
            }
            m_file->reserve(total);
            std::array<std::byte, 8> len{};
            for (std::size_t i = 0; i < 8; ++i) len[i] = static_cast<std::byte>((text.size() >> (8 * i)) & 0xff);
            m_file->write_at(0, len);
            m_file->write_at(8, std::as_bytes(std::span<const char>(text.data(), text.size())));

            m_data_offset = 8 + text.size();
            for (std::size_t i = 0; i < decls.size(); ++i)
            {
                m_slots.emplace(decls[i].name, slot{begins[i], sizes[i], false});
            }
            m_decls = std::move(decls);
        }

        /// @brief The path the file will have after commit().
        const std::filesystem::path& path() const noexcept { return m_file->final_path(); }
        /// @brief The declarations, in header order.
        const std::vector<tensor_decl>& declarations() const noexcept { return m_decls; }
        /// @brief True once commit() succeeded.
        bool committed() const noexcept { return m_file && m_file->committed(); }

        /// @brief Writes the bytes of tensor `name` (little-endian, row-major).
        /// @throws error_kind::invalid_argument if `name` is not declared, was already written, or
        ///         data.size() differs from its declared byte size; error_kind::io on write errors.
        void write(std::string_view name, std::span<const std::byte> data)
        {
            const auto it = m_slots.find(name);
            const std::string ctx = "writing '" + path().string() + "', tensor '" + detail::printable(name) + "'";
            if (it == m_slots.end()) throw error(error_kind::invalid_argument, ctx + ": not declared");
            if (it->second.written) throw error(error_kind::invalid_argument, ctx + ": already written");
            if (data.size() != it->second.size)
            {
                throw error(error_kind::invalid_argument, ctx + ": got " + std::to_string(data.size()) + " bytes, declared "
                                                              + std::to_string(it->second.size));
            }
            m_file->write_at(m_data_offset + it->second.begin, data);
            it->second.written = true;
        }

        /// @brief Typed convenience: writes a span of elements as bytes.
        template <class T>
            requires std::is_trivially_copyable_v<T>
        void write(std::string_view name, std::span<const T> data)
        {
            write(name, std::as_bytes(data));
        }

        /// @brief Publishes the file (see the class brief).
        /// @throws error_kind::invalid_argument naming the first tensor not written (the
        ///         temporary is kept, so writing it and committing again works);
        ///         error_kind::io if publishing fails (the final path is then untouched, except
        ///         that a failed directory fsync happens after the rename).
        void commit()
        {
            for (const auto& d : m_decls)
            {
                if (!m_slots.find(d.name)->second.written)
                {
                    throw error(error_kind::invalid_argument,
                                "writing '" + path().string() + "': tensor '" + detail::printable(d.name) + "' was never written");
                }
            }
            m_file->commit();
        }

    private:
        struct slot
        {
            std::uint64_t begin;
            std::uint64_t size;
            bool written;
        };

        std::optional<temp_file> m_file;
        std::vector<tensor_decl> m_decls;
        std::map<std::string, slot, std::less<>> m_slots;
        std::uint64_t m_data_offset = 0;
    };

    /// @brief The HF shard file name: model-0000K-of-0000M.safetensors (1-based K).
    inline std::string shard_file_name(std::size_t k, std::size_t m)
    {
        auto pad5 = [](std::size_t v) {
            std::string s = std::to_string(v);
            return s.size() < 5 ? std::string(5 - s.size(), '0') + s : s;
        };
        return "model-" + pad5(k) + "-of-" + pad5(m) + ".safetensors";
    }

    /// @brief True for names of the form model-NNNNN-of-NNNNN.safetensors (five or more digits).
    inline bool is_shard_file_name(std::string_view name)
    {
        auto digits = [&](std::size_t& i) {
            const std::size_t start = i;
            while (i < name.size() && name[i] >= '0' && name[i] <= '9') ++i;
            return i - start >= 5;
        };
        auto literal = [&](std::size_t& i, std::string_view lit) {
            if (name.substr(i, lit.size()) != lit) return false;
            i += lit.size();
            return true;
        };
        std::size_t i = 0;
        return literal(i, "model-") && digits(i) && literal(i, "-of-") && digits(i) && literal(i, ".safetensors") && i == name.size();
    }

    /// @brief Splits declarations, in order, into shards of at most max_shard_bytes of data; a
    ///        tensor larger than that gets a shard of its own. Returns each shard's [first, last)
    ///        range of declaration indices.
    inline std::vector<std::pair<std::size_t, std::size_t>> plan_shards(const std::vector<tensor_decl>& decls,
                                                                        std::size_t max_shard_bytes)
    {
        std::vector<std::pair<std::size_t, std::size_t>> shards;
        std::uint64_t current = 0;
        for (std::size_t i = 0; i < decls.size(); ++i)
        {
            const std::uint64_t b = decls[i].bytes();
            // A new shard starts when this tensor would push a shard that already holds data past
            // the limit; empty tensors never start one.
            if (shards.empty() || (b > 0 && current > 0 && (current + b > max_shard_bytes || current + b < current)))
            {
                shards.emplace_back(i, i);
                current = 0;
            }
            shards.back().second = i + 1;
            current += b;
        }
        return shards;
    }

    /// @brief Writes a sharded Hugging Face checkpoint into `dir` (created if missing).
    ///
    /// Shards are planned by plan_shards and named by shard_file_name (a single shard is still
    /// model-00001-of-00001.safetensors); each shard is a safetensors_writer carrying `metadata`.
    /// `produce` is called once per tensor, in declaration order, with a zero-filled buffer of
    /// exactly the tensor's bytes to fill; the buffer is reused, so peak memory is the largest
    /// tensor. model.safetensors.index.json ({"metadata": {"total_size": N}, "weight_map":
    /// {name: shard}}) is written last and is the commit point: a checkpoint is complete exactly
    /// when its index exists. Hence, with overwrite=false, an existing index is refused, while
    /// shard files without an index (left by an interrupted run) are replaced, and hidden
    /// temporaries of shards or index left by a killed process are removed first (see
    /// remove_stale_temporaries). With overwrite=true, the old index is removed before the first
    /// shard is written (an interrupted rewrite leaves no index, never an old index over a mix of
    /// old and new shards) and, once the new index is written, files named
    /// like shards (model-NNNNN-of-NNNNN.safetensors) that the new index does not name are
    /// removed, so that a smaller checkpoint replacing a larger one leaves no stray shards.
    /// @throws error_kind::invalid_argument on bad declarations or max_shard_bytes == 0;
    ///         error_kind::io on write failures or a refused overwrite; whatever `produce` throws.
    ///         On any exception, no file of this call is left under a final name except shards
    ///         already committed; the index is not written.
    inline void write_checkpoint(const std::filesystem::path& dir, const std::vector<tensor_decl>& decls,
                                 const std::function<void(const tensor_decl&, std::span<std::byte>)>& produce,
                                 std::size_t max_shard_bytes = std::size_t(4) << 30, std::map<std::string, std::string> metadata = {},
                                 bool overwrite = false)
    {
        namespace fs = std::filesystem;
        const fs::path index = dir / checkpoint::index_name;
        if (max_shard_bytes == 0) throw error(error_kind::invalid_argument, "writing checkpoint '" + dir.string() + "': max_shard_bytes is 0");
        const std::vector<std::uint64_t> sizes = detail::checked_decl_bytes(decls, dir.string());
        std::uint64_t total = 0;
        for (const auto s : sizes)
        {
            if (__builtin_add_overflow(total, s, &total))
            {
                throw error(error_kind::invalid_argument, "writing checkpoint '" + dir.string() + "': total size overflows 64 bits");
            }
        }
        if (!overwrite && detail::path_exists(index))
        {
            throw error(error_kind::io, "refusing to overwrite existing checkpoint '" + dir.string() + "' (" + index.string() + " exists)");
        }
        std::error_code ec;
        fs::create_directories(dir, ec);
        if (ec) throw error(error_kind::io, "cannot create checkpoint directory '" + dir.string() + "': " + ec.message());
        // A killed earlier run may have left (preallocated, possibly huge) temporaries.
        remove_stale_temporaries(dir, [](std::string_view name) { return name == checkpoint::index_name || is_shard_file_name(name); });
        // Replacing a checkpoint: withdraw its index first, so that an interrupted rewrite leaves
        // an incomplete checkpoint (no index), never an old index over a mix of old and new shards.
        if (overwrite && detail::path_exists(index))
        {
            if (::unlink(index.c_str()) != 0) detail::throw_io("cannot remove the old index", index, errno);
            detail::fsync_directory(dir);
        }

        const auto plan = plan_shards(decls, max_shard_bytes);
        if (plan.size() > 99999) throw error(error_kind::invalid_argument, "writing checkpoint '" + dir.string() + "': more than 99999 shards");
        nlohmann::json weight_map = nlohmann::json::object();
        std::unique_ptr<std::byte[]> buffer;
        std::size_t capacity = 0;
        for (std::size_t k = 0; k < plan.size(); ++k)
        {
            const auto [first, last] = plan[k];
            const std::string shard = shard_file_name(k + 1, plan.size());
            std::vector<tensor_decl> shard_decls(decls.begin() + static_cast<std::ptrdiff_t>(first),
                                                 decls.begin() + static_cast<std::ptrdiff_t>(last));
            safetensors_writer w(dir / shard, shard_decls, metadata, /*overwrite=*/true);
            for (std::size_t i = first; i < last; ++i)
            {
                const std::size_t n = static_cast<std::size_t>(sizes[i]);
                if (n > capacity)
                {
                    buffer = std::make_unique_for_overwrite<std::byte[]>(n);
                    capacity = n;
                }
                const std::span<std::byte> buf(buffer.get(), n);
                std::fill(buf.begin(), buf.end(), std::byte{0});
                produce(decls[i], buf);
                w.write(decls[i].name, buf);
                weight_map[decls[i].name] = shard;
            }
            w.commit();
        }
        const nlohmann::json index_json = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
        write_file_atomic(index, index_json.dump(2) + "\n", overwrite);

        // When replacing a checkpoint, shards of the old one that the new index does not name
        // would be picked up by tools that glob *.safetensors: remove them, now that the new
        // checkpoint is complete.
        if (overwrite)
        {
            std::set<std::string> current;
            for (std::size_t k = 0; k < plan.size(); ++k) current.insert(shard_file_name(k + 1, plan.size()));
            std::vector<fs::path> stale;
            for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
            {
                const std::string name = it->path().filename().string();
                if (is_shard_file_name(name) && current.count(name) == 0) stale.push_back(it->path());
            }
            for (const auto& p : stale) fs::remove(p, ec);
        }
    }
}
