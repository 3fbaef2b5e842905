// A downstream project using the safetensors I/O of the installed package.
#include <orbitq/io/safetensors.hpp>

#include <cstdio>

int main()
{
    try
    {
        (void)orbitq::io::safetensors_file::open("/nonexistent/model.safetensors");
    }
    catch (const orbitq::error& e)
    {
        std::printf("consumer_io: %s\n", e.what());
        return e.kind() == orbitq::error_kind::io ? 0 : 1;
    }
    return 1;
}
