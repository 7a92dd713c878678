"""Rectified flow on MNIST (Liu et al. 2023): velocity U-Net, logit-normal time (Esser et al.
2024, SD3 eq. 19)."""

from configs import mnist_edm


def get_config():
    """MNIST, flow matching, ``ProcessDenoiser`` with velocity parameterisation."""
    config = mnist_edm.get_config()
    config.process.name = "rectified_flow"
    config.model.preconditioning = "process"
    config.model.parameterisation = "velocity"
    config.model.time_scale = 1000.0
    config.loss.name = "flow_matching"
    config.loss.t_distribution = "logit_normal"
    config.loss.p_mean = 0.0
    config.loss.p_std = 1.0
    config.sample.sampler = "euler"
    config.sample.grid = "time_uniform"
    config.sample.num_steps = 50
    return config
