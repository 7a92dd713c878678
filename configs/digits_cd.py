"""Consistency distillation (CD; Song et al. 2023, Alg. 2) of the default job's EDM run on 8x8
digits: one Heun step of the teacher (``flowmap.teacher_sampler``; Euler and DPM-Solver++ work
too) between neighbouring levels of the N = 18 Karras discretisation, the EMA student as the
target (mu = 0.95, the paper's CIFAR-10 value), the student started from the teacher's weights.
The teacher run is ``flowmap.teacher_workdir`` (default ``runs/digits``: ``python train.py
--config configs/digits_edm.py --workdir runs/digits``)."""

from configs import digits_edm


def get_config():
    """Digits, CD from the default job's run."""
    config = digits_edm.get_config()
    config.model.family = "flowmap"
    config.flowmap.objective = "cd"
    config.flowmap.teacher_workdir = "runs/digits"
    config.flowmap.teacher_sampler = "heun"
    config.flowmap.teacher_num_steps = 18
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 0
    config.train.num_steps = 800
    config.train.ema_half_lives = (2000.0,)
    config.train.sample_every = 400
    config.train.checkpoint_every = 400
    config.sample.num_steps = 1
    return config
