"""D3PM (absorbing, jsd schedule, hybrid loss lambda = 0.001) on scikit-learn's digits as
17-level categorical 8x8 images, a small token transformer, CPU-sized."""

from configs import digits_masked


def get_config():
    """``digits_masked`` with the D3PM absorbing process (time-conditioned network)."""
    config = digits_masked.get_config()
    config.discrete.process = "d3pm"
    config.discrete.d3pm_kind = "absorbing"
    config.discrete.num_timesteps = 250
    config.discrete.hybrid_coeff = 0.001
    config.discrete.time_conditioning = True
    config.discrete.sample_steps = 128  # unused by D3PM (it always takes T steps)
    return config
