"""2-rectified flow on digits: pairs (noise, label, sample) of a ``digits_rf1`` run (RK4, 16
steps) are the coupling (Liu et al. 2023, Sec. 2.2). ``python train.py --config
configs/digits_rf2.py --config.flow.teacher_workdir runs/digits_rf1 --workdir runs/digits_rf2``.
Library time: t = 0 data."""

from configs import digits_rf1


def get_config():
    """Reflow on teacher pairs (pass flow.teacher_workdir)."""
    config = digits_rf1.get_config()
    config.flow.coupling = "pairs"
    config.flow.num_pairs = 8192
    config.flow.pair_shard_size = 2048
    config.flow.pair_sampler = "rk4"
    config.flow.pair_num_steps = 16
    return config
