// One side of bench/compare (bench/paired/): this translation unit is compiled twice, once against each header
// tree, with -Dorbitq=orbitq_a / orbitq_b (so the two copies of every template are distinct
// symbols) and -DORBITQ_COMPARE_SIDE=a / b (the name of the entry point).
#include <orbitq/quantize.hpp>

#include <chrono>
#include <cstddef>
#include <vector>

#define ORBITQ_COMPARE_CAT2(a, b) a##b
#define ORBITQ_COMPARE_CAT(a, b) ORBITQ_COMPARE_CAT2(a, b)

namespace
{
    // kernel k < 16: bit 0 bf16 (else f32), bit 1 asymmetric, bit 2 int4, bit 3 per_group 32
    // (else per_channel); k >= 16: the float formats, bit 0 bf16, (k - 16) / 2 = fp8 per_channel,
    // nvfp4, mxfp4, fp8 per_tensor, fp8 per_block 128x128
    orbitq::quant_spec spec_of(int k)
    {
        orbitq::quant_spec s;
        if (k >= 16)
        {
            const int f = (k - 16) / 2;
            s.scheme = f == 1 ? orbitq::scheme_kind::nvfp4 : f == 2 ? orbitq::scheme_kind::mxfp4 : orbitq::scheme_kind::fp8_e4m3;
            s.bits = f == 1 || f == 2 ? 4 : 8;
            s.scale_type = orbitq::element_type::f32;
            s.granularity = f == 0 ? orbitq::granularity_kind::per_channel
                          : f == 3 ? orbitq::granularity_kind::per_tensor
                          : f == 4 ? orbitq::granularity_kind::per_block
                                   : orbitq::granularity_kind::per_group;
            s.group_size = f == 1 ? 16 : f == 2 ? 32 : f == 4 ? 128 : 0;
            s.block_rows = f == 4 ? 128 : 1;
            return s;
        }
        s.scheme = (k & 2) ? orbitq::scheme_kind::asymmetric : orbitq::scheme_kind::symmetric;
        s.bits = (k & 4) ? 4 : 8;
        if (k & 8)
        {
            s.granularity = orbitq::granularity_kind::per_group;
            s.group_size = 32;
        }
        else
        {
            s.granularity = orbitq::granularity_kind::per_channel;
        }
        return s;
    }

    orbitq::quantized_tensor results[26];
}

/// Quantizes the rows x cols matrix (f32 `x` or bf16 bits `xb`) with kernel k on one thread and
/// returns the seconds it took. The parameter buffers are swapped in from the caller, so both
/// sides write the same memory; the codes stay with each side (their vector's type is the
/// revision's own), allocated by the first run and reused.
double ORBITQ_COMPARE_CAT(run_, ORBITQ_COMPARE_SIDE)(int k, const float* x, const void* xb, std::size_t rows, std::size_t cols,
                                                     std::vector<float>& scales, std::vector<int>& zero_points)
{
    orbitq::quantized_tensor& q = results[k];
    q.scales.swap(scales);
    q.zero_points.swap(zero_points);
    const auto t0 = std::chrono::steady_clock::now();
    if (k & 1) orbitq::quantize_into(orbitq::make_view(static_cast<const orbitq::bfloat16_t*>(xb), rows, cols, "w"), q, spec_of(k), 1);
    else orbitq::quantize_into(orbitq::make_view(x, rows, cols, "w"), q, spec_of(k), 1);
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    q.scales.swap(scales);
    q.zero_points.swap(zero_points);
    return t;
}
