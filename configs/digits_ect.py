"""Easy consistency tuning (ECT; Geng et al. 2024, "Consistency models made easy") on 8x8 digits:
the student starts from the teacher run's EMA weights (``flowmap.teacher_workdir``, default
``runs/digits``, made by ``python train.py --config configs/digits_edm.py --workdir runs/digits``)
and tunes with the continuous-time pair r = t (1 - (1 - 1/q^stage) n(t)), the doubling stages of
the paper (q = 2) and the online network under stop-gradient as the target."""

from configs import digits_cd


def get_config():
    """Digits, ECT from the default job's run (CD's schedule, a higher learning rate)."""
    config = digits_cd.get_config()
    config.flowmap.objective = "ect"
    config.optim.learning_rate = 5e-4
    return config
