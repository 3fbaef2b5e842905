/// @file simd.hpp
/// @brief xsimd kernels for the statistics and quantize passes, compiled for the instruction set
///        of the build (xsimd::default_arch: AVX-512 with -march=native on an AVX-512 machine,
///        SSE2 on a baseline x86-64 build). Bit-identical to kernels::reference, which
///        tests/test_kernels.cpp, test_kernel_tiles.cpp and test_kernel_passes.cpp check on
///        every length class (tails included) in both builds.
///
/// Every kernel works on batches of `width` float32 lanes:
/// - 16-bit inputs (bfloat16, binary16) are widened in registers as they are loaded (bf16: a
///   zero-extend and a shift, or two unpacks per 32 or 64 bytes where the encode takes pairs of
///   batches, see load_pair; f16: the F16C conversion), never through a float32 copy. Their
///   statistics need no widening at all: max |x| on the 16-bit magnitudes, min and max on
///   ordered int16 keys of the raw bits (b ^ ((b >> 15) & 0x7fff)), widened once per result.
/// - Codes are narrowed from int32 lanes to int8 in registers (AVX-512 vpmovsdb, AVX2/SSE2
///   packs); every narrow saturates, which serves as the int8 clamp where the scaled values are
///   known to be bounded (see detail::needs_clamp and quantize_span's Bounded).
/// - quantize_groups fuses the statistics and the encode pass of every group of a row: a group
///   of up to 8 batches is loaded once, reduced, and encoded from registers.
/// - quantize_groups_with_params takes groups of 1, 2, 4, 8 or 16 batches `width` at a time (a
///   tile: groups of 32 are 2 batches with AVX-512, 4 with AVX2; groups of 128 are 8 and 16):
///   their statistics go through one transposing reduction, their parameters are computed in
///   vectors, and int4 codes are packed from L1 tile by tile.
/// - int8 codes of passes larger than the caches can be written with streaming stores (the
///   `Stream` parameters; see has_streaming_stores and stream_codes).
///
/// The instruction-set specific pieces are small helpers (load, narrow, reduce, the tile
/// reduction tree), each with a generic fallback written with xsimd batches and scalar code, so
/// any arch xsimd supports compiles and stays exact; the per-arch overloads are chosen by C++20
/// constraints on the arch.
///
/// The kernels are split by job, each file building on the one before: isa.hpp (arch, loads,
/// narrows, lane reductions), encode.hpp (rounding and encoding), statistics_spans.hpp,
/// int4_packing.hpp, groups.hpp (one orbit, the groups of a row), tile_params.hpp and tiles.hpp
/// (tiles of groups). Include this header for all of them.
#pragma once

#include "orbitq/kernels/tiles.hpp"
