"""Progressive distillation (Salimans & Ho 2022, Alg. 2) of the default job's EDM run on 8x8
digits: stage k trains a student to take in one DDIM step what its teacher takes in two, so the
steps halve each stage, 16 -> 8 -> 4 -> 2 -> 1 (four stages of train.num_steps / 4 steps, the
student of each stage the teacher of the next, every student started from its teacher), target
x~ of their eq. (in the VE frame) with weight max(SNR, 1). The first teacher is
``flowmap.teacher_workdir`` (default ``runs/digits``: ``python train.py --config
configs/digits_edm.py --workdir runs/digits``)."""

from configs import digits_edm


def get_config():
    """Digits, progressive distillation 16 -> 1 steps."""
    config = digits_edm.get_config()
    config.model.family = "flowmap"
    config.flowmap.objective = "progressive"
    config.flowmap.teacher_workdir = "runs/digits"
    config.flowmap.progressive_teacher_steps = 16
    config.flowmap.progressive_num_stages = 4
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 0
    config.train.num_steps = 1600
    config.train.ema_half_lives = (500.0,)
    config.train.sample_every = 400
    config.train.checkpoint_every = 400
    config.sample.num_steps = 1
    return config
