// Shared by the in-process orbitq-gemma tests: a scratch directory per test process, and
// run_gemma called with an argument list, its stdout and stderr captured.
#pragma once

#include "gemma_cli.hpp"

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

namespace gemma_test
{
    /// A fresh directory under the system temp dir, named after `tag` and the process id,
    /// removed with everything in it at the end of the scope.
    struct scratch
    {
        std::filesystem::path dir;
        explicit scratch(const std::string& tag = "orbitq_test_gemma")
            : dir(std::filesystem::temp_directory_path() / (tag + "_" + std::to_string(::getpid())))
        {
            std::filesystem::remove_all(dir);
            std::filesystem::create_directories(dir);
        }
        ~scratch() { std::filesystem::remove_all(dir); }
    };

    /// The prefix of Gemma 4's decoder-layer tensor names.
    inline const std::string layer_prefix = "model.language_model.layers.";

    /// What one run of the tool returned and printed.
    struct cli_result
    {
        int rc;
        std::string out, err;
    };

    /// Runs orbitq-gemma in-process with `args` (argv[0] is supplied).
    inline cli_result cli(std::vector<std::string> args)
    {
        args.insert(args.begin(), "orbitq-gemma");
        std::vector<const char*> argv;
        for (auto& a : args) argv.push_back(a.c_str());
        std::ostringstream out, err;
        const int rc = orbitq::gemma_cli::run_gemma(static_cast<int>(argv.size()), argv.data(), out, err);
        return {rc, out.str(), err.str()};
    }
}
