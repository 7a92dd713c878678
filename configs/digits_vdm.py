"""VDM with a learned noise schedule on digits (Kingma et al. 2021, Sec. 5.2 / App. I.2): an
epsilon U-Net on the continuous-time bound, the monotone log-SNR network trained by the gradient of
the squared loss (the estimator's variance). ``python train.py --config configs/digits_vdm.py
--workdir runs/digits_vdm``; ``--config.vdm.learn_schedule=False`` keeps the initial schedule."""

import ml_collections

from configs import digits_edm


def get_config():
    """Digits' data, network and optimiser settings (unconditional), the vdm group (its presence
    selects the VDM recipe in ``train.py``)."""
    config = digits_edm.get_config()
    config.train.class_conditional = False
    config.train.num_steps = 1200
    config.train.batch_size = 64
    config.train.log_every = 100
    with config.unlocked():
        config.vdm = ml_collections.ConfigDict({
            "learn_schedule": True,
            "schedule_learning_rate": 3e-3,
            "hidden": 64,  # VDM uses 1024 for CIFAR-10
            "gamma_min": -13.3,  # VDM's initial end points
            "gamma_max": 5.0,
        })
    return config
