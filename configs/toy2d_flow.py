"""Rectified flow / conditional flow matching on a 2-D toy set (Liu et al. 2023; Lipman et al.
2023): the MLP predicts the velocity in process time, t ~ U[0, 1]."""

from configs import toy2d_edm


def get_config():
    """Toy 2-D data, flow-matching loss, velocity network wrapped by ``ProcessDenoiser``."""
    config = toy2d_edm.get_config()
    config.data.name = "checkerboard"
    config.process.name = "rectified_flow"
    config.model.preconditioning = "process"
    config.model.parameterisation = "velocity"
    config.model.embedding = "fourier"
    config.loss.name = "flow_matching"
    config.loss.t_distribution = "uniform"
    config.loss.t_min = 0.0
    config.sample.sampler = "euler"
    config.sample.grid = "log_uniform"
    config.sample.sigma_min = 1e-3
    config.sample.sigma_max = 1e3
    config.sample.num_steps = 64
    return config
