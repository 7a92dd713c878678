"""Convert pytorch-fid's FID Inception checkpoint to the .npz read by
diffusion_jax.metrics.inception.load_inception (no network access is needed or attempted).

    python scripts/convert_inception_weights.py \
        --input pt_inception-2015-12-05-6726825d.pth --output fid_inception.npz

Needs only ``torch`` (to read the .pth, with ``torch.load(..., weights_only=True)``: a .pth is
never unpickled as code). The .pth is the PyTorch port of the TensorFlow FID graph
``pt_inception-2015-12-05`` (Heusel et al. 2017) published by pytorch-fid; obtain it yourself. The
output holds every ``state_dict`` array under its PyTorch name and layout (float32), skipping
``num_batches_tracked`` counters. If ``pytorch_fid`` (and a working ``torchvision``) import, the
script also runs the PyTorch model on a fixed input and stores ``reference.input`` (NHWC, in
[-1, 1], 299x299), ``reference.pool3`` and ``reference.logits_unbiased`` (``pool3 @ fc.weight^T``,
the Inception Score's logits) so the JAX port can be checked against it
(``DIFFUSION_JAX_INCEPTION_WEIGHTS=fid_inception.npz pytest tests/test_metrics.py``). When they do
not import (missing, or a torchvision that fails with e.g. "operator torchvision::nms does not
exist"), a warning is printed and the weights are written without the reference.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def reference_input():
    """A fixed smooth 2x299x299x3 test image batch in [-1, 1] (no randomness involved)."""
    grid = np.linspace(-1.0, 1.0, 299, dtype=np.float32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    first = np.stack([np.sin(3 * xx), np.cos(2 * yy), xx * yy], axis=-1)
    second = np.stack([np.tanh(xx - yy), np.sin(5 * xx * yy), 0.5 * xx], axis=-1)
    return np.stack([first, second]).astype(np.float32)


def import_reference_model():
    """pytorch-fid's Inception building blocks, or ``None`` with a warning on stderr when they do
    not import (not installed, or a broken torchvision raising ``RuntimeError`` at import)."""
    try:
        from pytorch_fid import inception
    except Exception as error:  # noqa: BLE001 - any import failure only skips the optional check
        print(f"warning: pytorch_fid unavailable ({type(error).__name__}: {error}); "
              "no reference features stored", file=sys.stderr)
        return None
    return inception


def torch_reference(inception, state_dict, images):
    """pool3 and unbiased logits (``pool3 @ fc.weight^T``) of pytorch-fid's FID Inception on
    already-preprocessed images; ``inception`` is :func:`import_reference_model`'s module."""
    import torch

    # Built by hand as pytorch-fid's fid_inception_v3() does, minus its weight download.
    model = inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    model.Mixed_5b = inception.FIDInceptionA(192, pool_features=32)
    model.Mixed_5c = inception.FIDInceptionA(256, pool_features=64)
    model.Mixed_5d = inception.FIDInceptionA(288, pool_features=64)
    model.Mixed_6b = inception.FIDInceptionC(768, channels_7x7=128)
    model.Mixed_6c = inception.FIDInceptionC(768, channels_7x7=160)
    model.Mixed_6d = inception.FIDInceptionC(768, channels_7x7=160)
    model.Mixed_6e = inception.FIDInceptionC(768, channels_7x7=192)
    model.Mixed_7b = inception.FIDInceptionE_1(1280)
    model.Mixed_7c = inception.FIDInceptionE_2(2048)
    model.load_state_dict(state_dict)
    model.eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
                     "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c",
                     "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(model, name)(x)
        pool3 = x.mean(dim=(2, 3))
        logits = pool3 @ model.fc.weight.T
    return pool3.numpy(), logits.numpy()


def convert(input_path, output_path):
    """Write the .npz of ``input_path``'s state_dict (plus the optional PyTorch reference)."""
    import torch

    state_dict = torch.load(input_path, map_location="cpu", weights_only=True)
    arrays = {
        name: tensor.detach().cpu().numpy().astype(np.float32)
        for name, tensor in state_dict.items()
        if not name.endswith("num_batches_tracked")
    }
    inception = import_reference_model()
    if inception is not None:
        images = reference_input()
        pool3, logits = torch_reference(inception, state_dict, images)
        arrays.update({"reference.input": images, "reference.pool3": pool3,
                       "reference.logits_unbiased": logits})
        print("stored PyTorch reference features for the fixed test input")
    np.savez(output_path, **arrays)
    print(f"wrote {len(arrays)} arrays to {output_path}")
    return arrays


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--output", required=True, help="destination .npz")
    args = parser.parse_args()
    convert(args.input, args.output)


if __name__ == "__main__":
    main()
