"""Easy consistency tuning (ECT; Geng et al. 2024, "Consistency models made easy") on 8x8 digits:
the student starts from the teacher run's EMA weights (``flowmap.teacher_workdir``, default
``runs/digits``, made by ``python train.py --config configs/digits_edm.py --workdir runs/digits``)
and tunes with the continuous-time pair r = t (1 - (1 - 1/q^stage) n(t)), the doubling stages of
the paper (q = 2) and the online network under stop-gradient as the target."""

from configs import digits_edm


def get_config():
    """Digits, ECT from the default job's run."""
    config = digits_edm.get_config()
    config.model.family = "flowmap"
    config.flowmap.objective = "ect"
    config.flowmap.teacher_workdir = "runs/digits"
    config.optim.learning_rate = 5e-4
    config.optim.warmup_steps = 0
    config.train.num_steps = 800
    config.train.ema_half_lives = (2000.0,)
    config.train.sample_every = 400
    config.train.checkpoint_every = 400
    config.sample.num_steps = 1
    return config
