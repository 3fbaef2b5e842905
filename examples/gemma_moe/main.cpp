// orbitq-gemma: see gemma_cli.hpp and README.md.
#include "gemma_cli.hpp"

int main(int argc, char** argv) { return orbitq::gemma_cli::run_gemma(argc, argv); }
