"""score_sde-style VP on CelebA 64x64: epsilon network, c_noise = 999 t, t ~ U[1e-5, 1]."""

from configs import celeba64_edm


def get_config():
    """CelebA 64x64, VP SDE, epsilon MSE."""
    config = celeba64_edm.get_config()
    config.process.name = "vp"
    config.model.preconditioning = "process"
    config.model.parameterisation = "epsilon"
    config.model.time_scale = 999.0
    config.loss.t_distribution = "uniform"
    config.loss.t_min = 1e-5
    config.loss.weighting = "epsilon"
    config.train.ema_half_lives = ()
    config.train.ema_decays = (0.9999,)
    config.sample.grid = "edm_vp"
    return config
