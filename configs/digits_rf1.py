"""1-rectified flow (flow matching with the independent coupling from N(0, I)) on
scikit-learn's 8x8 digits with the small U-Net of ``digits_edm`` (Liu et al. 2023; Lipman et al.
2023). Library time: t = 0 data, t = 1 noise. ``python train.py --config configs/digits_rf1.py
--workdir runs/digits_rf1``."""

from configs import digits_edm


def get_config():
    """Digits, rectified flow, the class-conditional U-Net and schedule of ``digits_edm``."""
    config = digits_edm.get_config()
    config.model.family = "flow"
    config.process.name = "rectified_flow"
    config.flow.source = "gaussian"
    config.flow.coupling = "independent"
    config.model.embedding = "fourier"
    config.model.class_dropout = 0.0
    config.loss.name = "flow_matching"
    config.loss.weighting = "flow_matching"
    config.loss.t_distribution = "uniform"
    config.loss.t_min = 0.0
    config.sample.sampler = "rk4"
    config.sample.num_steps = 16
    return config
