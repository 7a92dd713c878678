"""Continuous-time consistency training (sCT; Lu & Song 2024, CIFAR-10 setting) from scratch:
TrigFlow, log-normal sigma (-1.0, 1.4), tangent normalisation c = 0.1, r warmed up over 10k
iterations, adaptive log-variance weighting, batch 512, Adam lr 1e-4 (beta2 0.99), dropout 0.2,
EMA 0.9999; published FID 2.97 (1 step) / 2.06 (2 steps). ``--config.flowmap.objective=scd``
with ``flowmap.teacher_workdir`` distils a teacher instead. For users with the data and
accelerators."""

from configs import cifar10_edm


def get_config():
    """CIFAR-10, sCT."""
    config = cifar10_edm.get_config()
    config.model.family = "flowmap"
    config.flowmap.objective = "sct"
    config.flowmap.init_from_teacher = False
    config.flowmap.p_mean = -1.0
    config.flowmap.p_std = 1.4
    config.flowmap.scm_warmup_steps = 10_000
    config.model.embedding = "positional"
    config.flowmap.time_scale = 1000.0  # positional embedding of 1000 t
    config.model.dropout = 0.2
    config.optim.learning_rate = 1e-4
    config.optim.warmup_steps = 0
    config.optim.b2 = 0.99
    config.train.batch_size = 512
    config.train.num_steps = 400_000
    config.train.ema_half_lives = ()
    config.train.ema_decays = (0.9999,)
    config.sample.num_steps = 1
    return config
