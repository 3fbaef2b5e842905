/// @file safetensors.hpp
/// @brief A validating, memory-mapped safetensors reader, Hugging Face checkpoint directories
///        (sharded or single-file), and crash-safe streaming writers: the umbrella of the parts.
///
/// - dtype.hpp: the element types, tensor_info and tensor_decl.
/// - strict_json.hpp: the duplicate-rejecting, depth-bounded JSON parser of headers and indexes.
/// - safetensors_header.hpp: the format, and the validation of a whole file image.
/// - safetensors_file.hpp: safetensors_file, the validated memory-mapped reader.
/// - checkpoint.hpp: checkpoint, a sharded (index) or single-file checkpoint.
/// - safetensors_writer.hpp: safetensors_writer, one file written and published atomically.
/// - checkpoint_writer.hpp: write_checkpoint, a sharded checkpoint with its index.
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

#include "orbitq/io/checkpoint.hpp"
#include "orbitq/io/checkpoint_writer.hpp"
#include "orbitq/io/dtype.hpp"
#include "orbitq/io/safetensors_file.hpp"
#include "orbitq/io/safetensors_header.hpp"
#include "orbitq/io/safetensors_writer.hpp"
#include "orbitq/io/strict_json.hpp"
