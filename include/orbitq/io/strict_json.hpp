/// @file strict_json.hpp
/// @brief Strict JSON for untrusted headers and indexes: duplicate keys in any object and deep
///        nesting are errors, the top-level keys are recorded in document order, and the values
///        of unknown tensor-entry fields are not stored, so a hostile header cannot make the
///        reader hold much more memory than its own size.
#pragma once

#include "orbitq/io/dtype.hpp"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace orbitq::io
{
    namespace detail
    {
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
    }
}
