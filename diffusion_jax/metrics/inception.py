"""Inception-v3 in Flax NNX with the FID feature layer (pool3, 2048-d) and 1008 logits.

The architecture is Szegedy et al. 2016 ("Rethinking the Inception architecture", Fig. 5-7 and
Table 1) in the variant of the TensorFlow graph ``pt_inception-2015-12-05`` that defines FID
(Heusel et al. 2017) and is ported to PyTorch by pytorch-fid (``FIDInceptionA/C/E_1/E_2``):
average pools exclude padding from the count, and the last block's pool branch is a max pool.
Batch norm uses ``eps = 1e-3``; there is no auxiliary head.

The logits returned for the Inception Score are ``pool3 @ fc.weight^T`` **without** the final
layer's bias, as in the original IS code (Salimans et al. 2016), guided-diffusion's evaluator,
torch-fidelity (``logits_unbiased``) and torchmetrics; ``fc.bias`` is not read.

Every convolution and the final matmul run at ``jax.lax.Precision.HIGHEST`` (full float32): the
backend default on GPU / TPU may be TF32 or bf16, which moves the features by 1e-2..1e-1 relative
and would make FIDs incomparable across machines.

**Weights are never downloaded.** :func:`load_inception` reads a local ``.npz`` whose arrays are the
PyTorch ``state_dict`` of pytorch-fid's FID Inception (``pt_inception-2015-12-05-6726825d.pth``)
under their PyTorch names and layouts (``Mixed_5b.branch1x1.conv.weight`` as ``(O, I, kh, kw)``,
``....bn.weight/bias/running_mean/running_var``, ``fc.weight (1008, 2048)``).
``scripts/convert_inception_weights.py`` writes that file from the ``.pth`` (needs ``torch``),
optionally adding ``reference.input`` / ``reference.pool3`` / ``reference.logits_unbiased``
computed by PyTorch for a fixed input so
the port can be checked (``tests/test_metrics.py`` does when ``DIFFUSION_JAX_INCEPTION_WEIGHTS``
names the file).

Preprocessing (pytorch-fid): images in ``[0, 1]`` are resized to 299x299 bilinearly (no
antialiasing, half-pixel centres) and mapped to ``[-1, 1]``. TensorFlow's original resize differs
slightly, so FIDs match pytorch-fid's, not bit-for-bit the TF reference implementation's.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusion_jax.data.pixels import to_unit_range, uint8_to_unit_range

__all__ = [
    "InceptionV3",
    "load_inception",
    "inception_feature_function",
    "preprocess_for_inception",
    "FID_FEATURE_DIM",
]

FID_FEATURE_DIM = 2048
NUM_LOGITS = 1008
INPUT_SIZE = 299
_BN_EPS = 1e-3
_PRECISION = jax.lax.Precision.HIGHEST


def _seed(rngs):
    return int(jax.random.randint(rngs.params(), (), 0, 2**31 - 1))


class ConvBN(nnx.Module):
    """Convolution without bias, inference batch norm (``eps = 1e-3``) and ReLU (torchvision's
    ``BasicConv2d``; Ioffe & Szegedy 2015, Alg. 2 at inference)."""

    def __init__(self, in_channels, out_channels, kernel_size, *, stride=1, padding=(0, 0),
                 rngs: nnx.Rngs):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        fan_in = kh * kw * in_channels
        # He-normal init drawn with numpy from a seed taken from ``rngs`` (one small jax op per
        # layer instead of one compiled random kernel per distinct shape: ~50x faster on CPU).
        generator = np.random.default_rng(_seed(rngs))
        kernel = generator.standard_normal((kh, kw, in_channels, out_channels)) * np.sqrt(
            2.0 / fan_in
        )
        self.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))
        self.scale = nnx.Param(jnp.ones((out_channels,)))
        self.bias = nnx.Param(jnp.zeros((out_channels,)))
        self.mean = nnx.BatchStat(jnp.zeros((out_channels,)))
        self.var = nnx.BatchStat(jnp.ones((out_channels,)))
        self.stride = stride
        self.padding = (padding, padding) if isinstance(padding, int) else tuple(padding)

    def __call__(self, x):
        y = jax.lax.conv_general_dilated(
            x, self.kernel[...], (self.stride, self.stride),
            [(self.padding[0], self.padding[0]), (self.padding[1], self.padding[1])],
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_PRECISION,
        )
        multiplier = self.scale[...] * jax.lax.rsqrt(self.var[...] + _BN_EPS)
        return jax.nn.relu((y - self.mean[...]) * multiplier + self.bias[...])


def _max_pool(x, size=3, stride=2, padding=0):
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, size, size, 1), (1, stride, stride, 1), pads
    )


def _avg_pool_exclude_padding(x):
    """3x3, stride 1, padding 1 average that divides by the number of real pixels
    (``count_include_pad=False``, as in the FID graph)."""
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
    return total / count


def _chain(x, *layers):
    """``layers[-1](...(layers[0](x)))``: one branch of an Inception block."""
    for layer in layers:
        x = layer(x)
    return x


class InceptionA(nnx.Module):
    """35x35 block (Szegedy et al. 2016, Fig. 5); pytorch-fid ``FIDInceptionA``."""

    def __init__(self, in_channels, pool_features, *, rngs):
        self.branch1x1 = ConvBN(in_channels, 64, 1, rngs=rngs)
        self.branch5x5_1 = ConvBN(in_channels, 48, 1, rngs=rngs)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = ConvBN(in_channels, pool_features, 1, rngs=rngs)

    def __call__(self, x):
        return jnp.concatenate([
            self.branch1x1(x),
            _chain(x, self.branch5x5_1, self.branch5x5_2),
            _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            self.branch_pool(_avg_pool_exclude_padding(x)),
        ], axis=-1)


class InceptionB(nnx.Module):
    """35x35 -> 17x17 grid reduction (Szegedy et al. 2016, Fig. 10)."""

    def __init__(self, in_channels, *, rngs):
        self.branch3x3 = ConvBN(in_channels, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x):
        return jnp.concatenate([
            self.branch3x3(x),
            _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            _max_pool(x),
        ], axis=-1)


class InceptionC(nnx.Module):
    """17x17 block with factorised 7x7 convolutions (Szegedy et al. 2016, Fig. 6); pytorch-fid
    ``FIDInceptionC``."""

    def __init__(self, in_channels, channels_7x7, *, rngs):
        c7 = channels_7x7
        self.branch1x1 = ConvBN(in_channels, 192, 1, rngs=rngs)
        self.branch7x7_1 = ConvBN(in_channels, c7, 1, rngs=rngs)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_1 = ConvBN(in_channels, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch_pool = ConvBN(in_channels, 192, 1, rngs=rngs)

    def __call__(self, x):
        return jnp.concatenate([
            self.branch1x1(x),
            _chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
            _chain(x, self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                   self.branch7x7dbl_4, self.branch7x7dbl_5),
            self.branch_pool(_avg_pool_exclude_padding(x)),
        ], axis=-1)


class InceptionD(nnx.Module):
    """17x17 -> 8x8 grid reduction (Szegedy et al. 2016, Fig. 10 variant)."""

    def __init__(self, in_channels, *, rngs):
        self.branch3x3_1 = ConvBN(in_channels, 192, 1, rngs=rngs)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = ConvBN(in_channels, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x):
        seven = _chain(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                       self.branch7x7x3_4)
        return jnp.concatenate(
            [_chain(x, self.branch3x3_1, self.branch3x3_2), seven, _max_pool(x)], axis=-1
        )


class InceptionE(nnx.Module):
    """8x8 block with expanded filter banks (Szegedy et al. 2016, Fig. 7); pytorch-fid
    ``FIDInceptionE_1`` (average pool without padding count) or ``FIDInceptionE_2`` (max pool)."""

    def __init__(self, in_channels, *, max_pool_branch, rngs):
        self.branch1x1 = ConvBN(in_channels, 320, 1, rngs=rngs)
        self.branch3x3_1 = ConvBN(in_channels, 384, 1, rngs=rngs)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = ConvBN(in_channels, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = ConvBN(in_channels, 192, 1, rngs=rngs)
        self.max_pool_branch = max_pool_branch

    def __call__(self, x):
        single = self.branch3x3_1(x)
        double = _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        if self.max_pool_branch:
            pooled = _max_pool(x, size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool_exclude_padding(x)
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch3x3_2a(single), self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], axis=-1)


class InceptionV3(nnx.Module):
    """FID Inception-v3 (Szegedy et al. 2016, Table 1; Heusel et al. 2017): ``__call__`` maps
    preprocessed images ``(N, H, W, 3)`` in ``[-1, 1]`` to ``(pool3 (N, 2048), logits (N, 1008))``
    (logits without the final bias, the Inception Score's convention). Attribute names follow
    torchvision / pytorch-fid so weights map one-to-one."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, max_pool_branch=False, rngs=rngs)
        self.Mixed_7c = InceptionE(2048, max_pool_branch=True, rngs=rngs)
        limit = 1.0 / np.sqrt(FID_FEATURE_DIM)
        generator = np.random.default_rng(_seed(rngs))
        self.fc_kernel = nnx.Param(jnp.asarray(
            generator.uniform(-limit, limit, (FID_FEATURE_DIM, NUM_LOGITS)), jnp.float32
        ))

    def blocks(self, x):
        """Named intermediate activations (``dict``), ending with ``Mixed_7c`` (8x8x2048 at 299)."""
        outputs = {}
        x = _chain(x, self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, _max_pool,
                   self.Conv2d_3b_1x1, self.Conv2d_4a_3x3, _max_pool)
        outputs["stem"] = x
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs

    def __call__(self, x):
        pool3 = jnp.mean(self.blocks(x)["Mixed_7c"], axis=(1, 2))
        # Unbiased logits: the Inception Score's standard definition (module docstring).
        logits = jnp.matmul(pool3, self.fc_kernel[...], precision=_PRECISION)
        return pool3, logits


def preprocess_for_inception(images, *, size=INPUT_SIZE):
    """pytorch-fid preprocessing: ``uint8`` images (``/255``) or floats in ``[-1, 1]`` (model range)
    ``(N, H, W, C)`` with ``C`` in {1, 3} -> bilinear resize to ``size`` (no antialiasing) ->
    ``[-1, 1]`` float32 ``(N, size, size, 3)``."""
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape (N, H, W, 1 or 3); got {images.shape}")
    if images.dtype == jnp.uint8:
        unit = uint8_to_unit_range(images)
    else:
        unit = to_unit_range(images.astype(jnp.float32))
    if images.shape[-1] == 1:
        unit = jnp.repeat(unit, 3, axis=-1)
    if unit.shape[1:3] != (size, size):
        unit = jax.image.resize(unit, (unit.shape[0], size, size, 3), "bilinear", antialias=False,
                                precision=_PRECISION)
    return 2.0 * unit - 1.0


def _conv_bn_modules(model):
    return [(".".join(str(p) for p in path), node) for path, node in nnx.iter_graph(model)
            if isinstance(node, ConvBN)]


def load_inception(path):
    """FID Inception-v3 with weights from a local ``.npz`` (PyTorch names and layouts, see the
    module docstring). ``FileNotFoundError`` when ``path`` does not exist: no download happens."""
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(
            f"FID Inception weight file not found: {path!r}. Download pytorch-fid's "
            "pt_inception-2015-12-05-6726825d.pth yourself and convert it with "
            "`python scripts/convert_inception_weights.py --input <pth> --output <npz>`."
        )
    model = InceptionV3(rngs=nnx.Rngs(0))
    with np.load(path) as data:
        weights = {name: data[name] for name in data.files}

    def take(name, shape):
        if name not in weights:
            raise ValueError(f"{path} has no array {name!r}")
        array = weights[name]
        if array.shape != shape:
            raise ValueError(f"{name}: file has shape {array.shape}, expected {shape}")
        return jnp.asarray(array, jnp.float32)

    for prefix, module in _conv_bn_modules(model):
        kh, kw, cin, cout = module.kernel[...].shape
        module.kernel[...] = take(f"{prefix}.conv.weight", (cout, cin, kh, kw)).transpose(
            2, 3, 1, 0
        )
        module.scale[...] = take(f"{prefix}.bn.weight", (cout,))
        module.bias[...] = take(f"{prefix}.bn.bias", (cout,))
        module.mean[...] = take(f"{prefix}.bn.running_mean", (cout,))
        module.var[...] = take(f"{prefix}.bn.running_var", (cout,))
    model.fc_kernel[...] = take("fc.weight", (NUM_LOGITS, FID_FEATURE_DIM)).T
    return model


def inception_feature_function(model):
    """A jitted ``images -> (pool3, logits)`` for :class:`InceptionV3` (any input accepted by
    :func:`preprocess_for_inception`); the graph is split once so calls do not retrace."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def apply(state, images):
        return nnx.merge(graphdef, state)(preprocess_for_inception(images))

    return lambda images: apply(state, images)
