"""Consistency trajectory model (CTM; Kim et al. 2023) distilled from the default job's EDM run
on 8x8 digits: the anytime-to-anytime map G(x, t, s) = (s/t) x + (1 - s/t) g(x, t, s) on a
two-time U-Net (started from the teacher's weights, the second time branch at zero), soft
consistency against the teacher's Heun solve plus the denoising (DSM) loss; the GAN term of the
paper is not included. Sampled by gamma-sampling (``flowmap.gamma``: 0 deterministic jumps, 1
consistency multistep). Teacher run: ``flowmap.teacher_workdir`` (default ``runs/digits``:
``python train.py --config configs/digits_edm.py --workdir runs/digits``)."""

from configs import digits_cd


def get_config():
    """Digits, CTM from the default job's run (CD's teacher, optimiser and schedule)."""
    config = digits_cd.get_config()
    config.flowmap.objective = "ctm"
    return config
