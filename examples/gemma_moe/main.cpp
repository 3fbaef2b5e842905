// orbitq-gemma: see gemma_cli.hpp and README.md.
#include "gemma_cli.hpp"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

int main(int argc, char** argv)
{
#if defined(__GLIBC__)
    // Blocks of 1 MiB and more are mapped and unmapped, never kept in the heap. glibc otherwise
    // raises its mapping threshold after the first such block is freed, and the heap then keeps
    // freed layer buffers resident: peak RSS would grow with the layers, by how much depending
    // on the order of allocations.
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
    return orbitq::gemma_cli::run_gemma(argc, argv);
}
