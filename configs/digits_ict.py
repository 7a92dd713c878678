"""Improved consistency training (iCT; Song & Dhariwal 2023) on 8x8 digits from scratch, with the
U-Net of ``digits_edm``: pseudo-Huber on the whole vector (c = 0.00054 sqrt(d)), discretised
log-normal pair sampling (P_mean = -1.1, P_std = 2.0), the doubling curriculum 10 -> 1280 (stages
11, 21, ..., 1281 over train.num_steps), weight 1 / (sigma_{i+1} - sigma_i), target = the online
network under stop-gradient (no EMA teacher). ``python train.py --config configs/digits_ict.py
--workdir runs/digits_ict``; ``python sample.py --workdir runs/digits_ict --num_steps 1``."""

from configs import digits_edm


def get_config():
    """Digits, iCT from scratch."""
    config = digits_edm.get_config()
    config.model.family = "flowmap"
    config.flowmap.objective = "ict"
    config.optim.learning_rate = 1e-3
    config.optim.b2 = 0.995  # iCT's Adam (0.9, 0.995)
    config.train.num_steps = 3000
    config.train.ema_half_lives = (2000.0,)  # the sampling EMA (not a teacher)
    config.train.sample_every = 1000
    config.train.checkpoint_every = 1000
    config.sample.num_steps = 1
    return config
