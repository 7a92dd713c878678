"""Metric writers of a run: ``metrics.jsonl`` (one JSON row per step) and TensorBoard event files
through tensorboardX (scalars, and sample grids as images beside them)."""

from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["MetricWriter"]


class MetricWriter:
    """Appends rows to ``workdir/metrics.jsonl`` and writes TensorBoard events into ``workdir``
    (``tensorboard --logdir workdir``; ``pip install tensorboard`` to view them). Only the
    primary process writes (``enabled=False`` elsewhere)."""

    def __init__(self, workdir, *, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tensorboard = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(logdir=workdir, flush_secs=30)

    def rows(self, rows):
        """Append ``rows`` (dicts with a ``step``) to the JSONL file; the last one also goes to
        TensorBoard as scalars."""
        if not self.enabled or not rows:
            return
        with open(self.path, "a") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        self.scalars(rows[-1]["step"], {k: v for k, v in rows[-1].items() if k != "step"})

    def scalars(self, step: int, values: dict):
        """One TensorBoard scalar per entry of ``values`` at ``step``."""
        if not self.enabled:
            return
        for tag, value in values.items():
            self._tensorboard.add_scalar(tag, float(value), global_step=step)
        self._tensorboard.flush()

    def image(self, step: int, tag: str, image_uint8):
        """An ``(H, W, C)`` uint8 image (e.g. a sample grid) in TensorBoard."""
        if not self.enabled:
            return
        image = np.asarray(image_uint8)
        if image.ndim == 2:
            image = image[..., None]
        self._tensorboard.add_image(tag, image, global_step=step, dataformats="HWC")
        self._tensorboard.flush()

    def last_row(self):
        """The last row of an existing ``metrics.jsonl`` (``None`` if there is none)."""
        if not os.path.exists(self.path):
            return None
        last = None
        with open(self.path) as handle:
            for line in handle:
                if line.strip():
                    last = line
        return json.loads(last) if last else None

    def close(self):
        """Flush and close the event file."""
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
