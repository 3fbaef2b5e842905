/// @file xtensor.hpp
/// @brief Adaptors between orbitq and xtensor containers (zero-copy views in, arrays out).
#pragma once

#include "orbitq/core/view.hpp"
#include "orbitq/quantize.hpp"

#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xlayout.hpp>

#include <string>

namespace orbitq
{
    /// @brief Views an evaluated, contiguous, row-major xtensor container (xarray, xtensor,
    ///        adaptors over a mapped file) as a weight matrix without copying.
    /// @pre the container outlives the view. Checked: row-major contiguous layout.
    template <class E>
        requires weight_element<typename std::decay_t<E>::value_type>
    auto make_view(const E& e, std::string name = {})
    {
        using T = typename std::decay_t<E>::value_type;
        // contiguous row-major: the strides are those of a packed row-major array
        std::size_t expect = 1;
        for (std::size_t d = e.dimension(); d-- > 0;)
        {
            if (e.shape()[d] != 1 && static_cast<std::size_t>(e.strides()[d]) != expect)
            {
                throw error(error_kind::invalid_argument, "tensor '" + name + "' is not a contiguous row-major container");
            }
            expect *= e.shape()[d];
        }
        shape_type shape(e.shape().begin(), e.shape().end());
        return make_view<T>(e.data(), shape, std::move(name));
    }

    /// @brief Dequantizes `q` into an xarray of its original shape.
    inline xt::xarray<float> dequantize_xarray(const quantized_tensor& q)
    {
        std::vector<float> flat = dequantize(q);
        xt::xarray<float> out = xt::adapt(flat, q.shape);
        return out;
    }
}
