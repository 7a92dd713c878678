"""Noise-conditional classifier on digits for classifier guidance (Dhariwal & Nichol 2021, Sec. 4):
``python train.py --config configs/digits_classifier.py --workdir runs/digits_classifier``, then
``sample.py --workdir runs/digits --guidance classifier --guide_workdir runs/digits_classifier``."""

import ml_collections

from configs import digits_edm


def get_config():
    """Digits' data and optimiser settings, the classifier group (its presence selects the
    classifier recipe in ``train.py``)."""
    config = digits_edm.get_config()
    config.train.num_steps = 1500
    config.train.batch_size = 128
    config.train.log_every = 250
    config.optim.learning_rate = 1e-3
    with config.unlocked():
        config.classifier = ml_collections.ConfigDict({
            "base_channels": 32,
            "channel_multipliers": (1, 2),
            "num_res_blocks": 1,
            "dropout": 0.0,
            "sigma_data": config.model.sigma_data,  # the diffusion run's preconditioning
            "p_mean": config.loss.p_mean,  # the diffusion run's training noise levels
            "p_std": config.loss.p_std,
            "ema_half_life": 20000.0,
        })
    return config
