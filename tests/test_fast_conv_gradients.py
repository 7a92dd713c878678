"""``networks.conv``: the canonical-layout VJP gives the gradients of ``lax.conv_general_dilated``
(every stride, kernel size, padding and odd size the networks use, and more);
``with_fast_conv_gradients`` converts a copy of a denoiser's convolutions and leaves the original
(forward mode included) as it was; a rolled sampler's gradient through the U-Net is unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusion_jax import denoisers, networks, samplers
from diffusion_jax.networks import conv

DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("size, kernel, stride, padding", [
    (8, 3, 1, "SAME"), (8, 3, 2, "SAME"), (7, 3, 2, "SAME"), (9, 1, 1, "SAME"),
    (8, 1, 2, "VALID"), (7, 3, 1, "VALID"), (10, 5, 3, ((2, 1), (0, 3))), (6, 3, 2, ((1, 0), (2, 2))),
])
def test_values_and_gradients_equal_those_of_lax(x64, size, kernel, stride, padding):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (2, size, size + 1, 3))
    w = jax.random.normal(keys[1], (kernel, kernel, 3, 4))

    def output(fn, x, w):
        return fn(x, w, (stride, stride), padding, dimension_numbers=DN)

    reference = output(jax.lax.conv_general_dilated, x, w)
    ours = output(conv.conv_general_dilated, x, w)
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-12)
    cotangent = jax.random.normal(keys[2], reference.shape)

    def loss(fn):
        return lambda x, w: jnp.sum(jnp.sin(output(fn, x, w)) * cotangent)

    expected = jax.grad(loss(jax.lax.conv_general_dilated), (0, 1))(x, w)
    got = jax.grad(loss(conv.conv_general_dilated), (0, 1))(x, w)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-10)
    # second order through the custom backward pass
    hvp = jax.grad(lambda w: jnp.sum(jax.grad(loss(conv.conv_general_dilated))(x, w) ** 2))(w)
    hvp_ref = jax.grad(lambda w: jnp.sum(jax.grad(loss(jax.lax.conv_general_dilated))(x, w) ** 2))(w)
    np.testing.assert_allclose(hvp, hvp_ref, rtol=1e-9, atol=1e-9)


def test_other_layouts_and_groups_pass_through_to_lax(x64):
    x = jax.random.normal(jax.random.key(0), (2, 4, 6, 6))
    w = jax.random.normal(jax.random.key(1), (4, 2, 3, 3))
    args = ((1, 1), "SAME")
    kwargs = {"dimension_numbers": ("NCHW", "OIHW", "NCHW"), "feature_group_count": 2}
    np.testing.assert_allclose(conv.conv_general_dilated(x, w, *args, **kwargs),
                               jax.lax.conv_general_dilated(x, w, *args, **kwargs), rtol=1e-12)
    # handed to lax unchanged (no custom VJP), while the canonical 2-D case gets one
    passed = str(jax.make_jaxpr(lambda x: conv.conv_general_dilated(x, w, *args, **kwargs))(x))
    assert "custom_vjp_call" not in passed
    x_nhwc, w_hwio = x.transpose(0, 2, 3, 1), jnp.ones((3, 3, 4, 2))
    canonical = str(jax.make_jaxpr(lambda x: conv.conv_general_dilated(
        x, w_hwio, *args, dimension_numbers=DN))(x_nhwc))
    assert "custom_vjp_call" in canonical


def _unet_and_loss():
    network = networks.UNet(image_shape=(8, 8, 1), base_channels=8, channel_multipliers=(1, 2),
                            num_res_blocks=1, attention_resolutions=(), rngs=nnx.Rngs(0))
    denoiser = denoisers.PreconditionedDenoiser(network, denoisers.EDMPreconditioning(0.5))
    noise = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    sigmas = samplers.karras_sigmas(3, 0.02, 20.0)

    def loss_of(denoiser):
        graphdef, params, rest = nnx.split(denoiser.network, nnx.Param, ...)
        params = jax.tree.map(lambda p: p + 0.05, params)  # every layer gets a gradient

        def loss(params):
            model = nnx.merge(graphdef, params, rest)
            plain = denoisers.PreconditionedDenoiser(model, denoiser.preconditioning)
            return jnp.mean(samplers.heun(plain, noise, sigmas, unroll=1) ** 2)

        return loss, params

    return denoiser, loss_of


def test_rolled_sampler_gradient_through_the_unet_is_unchanged():
    denoiser, loss_of = _unet_and_loss()
    fast = networks.with_fast_conv_gradients(denoiser)
    loss, params = loss_of(denoiser)
    fast_loss, fast_params = loss_of(fast)
    assert "custom_vjp_call" not in str(jax.make_jaxpr(loss)(params))
    assert str(jax.make_jaxpr(fast_loss)(fast_params)).count("custom_vjp_call") == 75
    expected = jax.jit(jax.grad(loss))(params)
    got = jax.jit(jax.grad(fast_loss))(fast_params)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(g, e, rtol=2e-4, atol=2e-6)


def test_the_original_keeps_forward_mode_and_the_copy_refuses_it():
    denoiser, loss_of = _unet_and_loss()
    fast = networks.with_fast_conv_gradients(denoiser)
    for model, works in ((denoiser, True), (fast, False), (denoiser, True)):
        loss, params = loss_of(model)
        tangent = jax.tree.map(jnp.ones_like, params)
        if works:
            assert np.isfinite(jax.jvp(loss, (params,), (tangent,))[1])
        else:
            with pytest.raises(TypeError, match="forward-mode"):
                jax.jvp(loss, (params,), (tangent,))
