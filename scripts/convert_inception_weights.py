"""Convert pytorch-fid's FID Inception checkpoint to the .npz read by
diffusion_jax.metrics.inception.load_inception (no network access is needed or attempted).

    python scripts/convert_inception_weights.py \
        --input pt_inception-2015-12-05-6726825d.pth --output fid_inception.npz

Needs ``torch`` (to read the .pth). The .pth is the PyTorch port of the TensorFlow FID graph
``pt_inception-2015-12-05`` (Heusel et al. 2017) published by pytorch-fid; obtain it yourself. The
output holds every ``state_dict`` array under its PyTorch name and layout (float32), skipping
``num_batches_tracked`` counters. If ``pytorch_fid`` is importable, the script also runs the
PyTorch model on a fixed input and stores ``reference.input`` (NHWC, in [-1, 1], 299x299) and
``reference.pool3`` / ``reference.logits`` so the JAX port can be checked against it
(``DIFFUSION_JAX_INCEPTION_WEIGHTS=fid_inception.npz pytest tests/test_metrics.py``).
"""

from __future__ import annotations

import argparse

import numpy as np


def reference_input():
    """A fixed smooth 2x299x299x3 test image batch in [-1, 1] (no randomness involved)."""
    grid = np.linspace(-1.0, 1.0, 299, dtype=np.float32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    first = np.stack([np.sin(3 * xx), np.cos(2 * yy), xx * yy], axis=-1)
    second = np.stack([np.tanh(xx - yy), np.sin(5 * xx * yy), 0.5 * xx], axis=-1)
    return np.stack([first, second]).astype(np.float32)


def torch_reference(state_dict, images):
    """pool3 and logits of pytorch-fid's FID Inception on already-preprocessed images."""
    import torch
    from pytorch_fid.inception import (
        FIDInceptionA,
        FIDInceptionC,
        FIDInceptionE_1,
        FIDInceptionE_2,
        _inception_v3,
    )

    # Built by hand as pytorch-fid's fid_inception_v3() does, minus its weight download.
    model = _inception_v3(num_classes=1008, aux_logits=False, weights=None)
    model.Mixed_5b = FIDInceptionA(192, pool_features=32)
    model.Mixed_5c = FIDInceptionA(256, pool_features=64)
    model.Mixed_5d = FIDInceptionA(288, pool_features=64)
    model.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    model.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    model.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    model.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    model.Mixed_7b = FIDInceptionE_1(1280)
    model.Mixed_7c = FIDInceptionE_2(2048)
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
        logits = model.fc(pool3)
    return pool3.numpy(), logits.numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--output", required=True, help="destination .npz")
    args = parser.parse_args()
    import torch

    state_dict = torch.load(args.input, map_location="cpu")
    arrays = {
        name: tensor.detach().cpu().numpy().astype(np.float32)
        for name, tensor in state_dict.items()
        if not name.endswith("num_batches_tracked")
    }
    try:
        images = reference_input()
        pool3, logits = torch_reference(state_dict, images)
        arrays.update({"reference.input": images, "reference.pool3": pool3,
                       "reference.logits": logits})
        print("stored PyTorch reference features for the fixed test input")
    except ImportError:
        print("pytorch_fid not installed: no reference features stored")
    np.savez(args.output, **arrays)
    print(f"wrote {len(arrays)} arrays to {args.output}")


if __name__ == "__main__":
    main()
