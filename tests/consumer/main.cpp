// A downstream project: quantizes a small matrix through the installed package.
#include <orbitq/orbitq.hpp>

#include <cstdio>
#include <vector>

int main()
{
    std::vector<float> w = {1.0f, -2.0f, 0.5f, 4.0f, 0.0f, -1.0f};
    const auto q = orbitq::quantize<orbitq::quantizer<orbitq::per_channel, orbitq::symmetric<8>>>(orbitq::make_view(w.data(), 2, 3));
    // row 0: amax 2 -> codes {64, -127, 32}; row 1: amax 4 -> {127, 0, -32}
    const bool ok = q.code(0, 1) == -127 && q.code(0, 0) == 64 && q.code(1, 0) == 127 && q.code(1, 2) == -32;
    std::printf("consumer: %s\n", ok ? "ok" : "WRONG");
    return ok ? 0 : 1;
}
