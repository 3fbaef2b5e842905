#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <orbitq/orbitq.hpp>
TEST_CASE("smoke") {
    std::vector<float> w = {1.0f, -2.0f, 0.5f, 4.0f, 0.0f, -1.0f};
    auto q = orbitq::quantize<orbitq::quantizer<orbitq::per_channel, orbitq::symmetric<8>>>(orbitq::make_view(w.data(), 2, 3));
    CHECK(q.code(0,0) == 64);
}
