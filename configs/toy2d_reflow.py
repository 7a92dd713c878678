"""2-rectified flow on the torchcfm toy protocol (Liu et al. 2023, Sec. 2.2): (source, sample)
pairs of a trained ``toy2d_fm`` run (Dopri5, written once to ``<teacher>/reflow_pairs`` in shards,
resumable) become the coupling of a new flow-matching run.

``python train.py --config configs/toy2d_reflow.py --config.flow.teacher_workdir runs/toy2d_fm
--workdir runs/toy2d_reflow``. Library time: t = 0 data."""

from configs import toy2d_fm


def get_config():
    """Reflow on teacher pairs (pass flow.teacher_workdir)."""
    config = toy2d_fm.flow_toy_config("pairs")
    config.flow.num_pairs = 65536
    config.flow.pair_shard_size = 8192
    config.flow.pair_sampler = "dopri5"
    return config
