"""SB-CFM on the torchcfm toy protocol: entropic OT coupling with epsilon = 2 sigma^2 and the
Brownian-bridge path x_t = (1 - t) x_data + t x_source + sigma sqrt(t (1 - t)) z, sigma = 0.5
(Tong et al. 2023, Sec. 3.4); sampled by the probability-flow ODE of its marginal velocity.
Library time: t = 0 data."""

from configs import toy2d_fm


def get_config():
    """Sinkhorn coupling (epsilon = 2 sigma^2 = 0.5) and Brownian-bridge noise."""
    config = toy2d_fm.flow_toy_config("sinkhorn")
    config.flow.path = "brownian_bridge"
    config.flow.sigma = 0.5
    config.flow.sinkhorn_iters = 100
    return config
