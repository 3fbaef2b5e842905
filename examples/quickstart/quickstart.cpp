// The usage example shown in README.md; tests/CMakeLists.txt builds and runs it as a test.
#include <orbitq/orbitq.hpp>
#include <cstdio>
#include <vector>

int main()
{
    std::vector<float> w(4 * 704);                                   // 4 output rows of 704 inputs
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = 0.02f * float((i * 7919) % 201) / 100.0f - 0.02f;
    w[5] = 1.0f;                                                     // one outlier in row 0
    auto view = orbitq::make_view(w.data(), 4, 704, "demo.weight");  // zero-copy (f32, bf16 or f16)
    using per_row = orbitq::quantizer<orbitq::per_channel, orbitq::symmetric<8>>;
    orbitq::quantized_tensor q = orbitq::quantize<per_row>(view);    // int8 codes + one f32 scale per row
    orbitq::quant_spec spec{.granularity = orbitq::granularity_kind::per_tensor};
    auto qt = orbitq::quantize(view, spec);                          // run-time policy choice
    auto m = orbitq::measure(view, q), mt = orbitq::measure(view, qt);
    std::printf("per-channel cos %.6f SQNR %.1f dB | per-tensor cos %.6f SQNR %.1f dB\n",
                m.cosine, m.sqnr_db, mt.cosine, mt.sqnr_db);
    return m.sqnr_db > mt.sqnr_db ? 0 : 1;
}
