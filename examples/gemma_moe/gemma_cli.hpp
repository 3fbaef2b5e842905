/// @file gemma_cli.hpp
/// @brief The orbitq-gemma command line: converts and validates the MoE expert weights of a
///        Gemma 4 checkpoint (or of the built-in synthetic one). `run_gemma` is the whole program,
///        callable in-process (the tests do); main.cpp only forwards to it.
///
/// Exit status: 0 when every gate of the converted granularity (--granularity) passes, 2 when one
/// fails, 1 on an error (with a message that says what to do).
#pragma once

#include <cstddef>
#include <iostream>
#include <string>
#include <vector>

namespace orbitq::gemma_cli
{
    /// @brief The whole program: parses argv (argv[0] is the program name), runs, and returns
    ///        the exit status; errors are reported on `err` as exit status 1, never thrown.
    int run_gemma(int argc, const char* const* argv, std::ostream& out = std::cout, std::ostream& err = std::cerr);

    /// @brief Parses "0-29", "3", "0,5,10-12" into layer indices (in the order given).
    /// @throws error (invalid_argument) on a malformed list or a layer >= n_layers.
    std::vector<std::size_t> parse_layers(const std::string& text, std::size_t n_layers);
}
