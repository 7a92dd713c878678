"""Continuous-time consistency distillation (sCD; Lu & Song 2024, "Simplifying, stabilizing and
scaling continuous-time consistency models") of the default job's EDM run on 8x8 digits: the
TrigFlow consistency function, the `jax.jvp` tangent with the teacher's dx/dt, tangent
normalisation g / (||g|| + 0.1), a linear warm-up of r and the adaptive log-variance weighting.
The student starts from random weights (TrigFlow's network input differs from EDM's); the
teacher run is ``flowmap.teacher_workdir`` (default ``runs/digits``: ``python train.py
--config configs/digits_edm.py --workdir runs/digits``). ``--config.flowmap.objective=sct`` trains
the same model without a teacher (sCT)."""

from configs import digits_edm


def get_config():
    """Digits, sCD from the default job's run."""
    config = digits_edm.get_config()
    config.model.family = "flowmap"
    config.flowmap.objective = "scd"
    config.flowmap.teacher_workdir = "runs/digits"
    config.flowmap.init_from_teacher = False  # TrigFlow's network is not EDM's (time input, sign)
    config.model.embedding = "fourier"
    config.flowmap.p_mean = -1.0  # sCM's CIFAR-10 log-normal (Lu & Song 2024)
    config.flowmap.p_std = 1.4
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 0
    config.optim.b2 = 0.99
    config.train.num_steps = 800
    config.train.ema_half_lives = (2000.0,)
    config.train.sample_every = 400
    config.train.checkpoint_every = 400
    config.sample.num_steps = 1
    return config
