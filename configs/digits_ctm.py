"""Consistency trajectory model (CTM; Kim et al. 2023) distilled from the default job's EDM run
on 8x8 digits: the anytime-to-anytime map G(x, t, s) = (s/t) x + (1 - s/t) g(x, t, s) on a
two-time U-Net (started from the teacher's weights, the second time branch at zero), soft
consistency against the teacher's Heun solve plus the denoising (DSM) loss; the GAN term of the
paper is not included. Sampled by gamma-sampling (``flowmap.gamma``: 0 deterministic jumps, 1
consistency multistep). Teacher run: ``flowmap.teacher_workdir`` (default ``runs/digits``:
``python train.py --config configs/digits_edm.py --workdir runs/digits``)."""

from configs import digits_edm


def get_config():
    """Digits, CTM from the default job's run."""
    config = digits_edm.get_config()
    config.model.family = "flowmap"
    config.flowmap.objective = "ctm"
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
