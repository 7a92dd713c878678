"""OT-CFM on the torchcfm toy protocol: exact minibatch OT coupling (Hungarian) of each batch of
256 (Tong et al. 2023, Sec. 3.2), otherwise as ``toy2d_fm``. The assignment runs in scipy on the
host (``flow.ot_solver = "scipy"``: ~15x faster than the pure-JAX Hungarian on CPU; set
"hungarian" on accelerators). Library time: t = 0 data."""

from configs import toy2d_fm


def get_config():
    """Exact minibatch OT coupling (scipy assignment on the host)."""
    config = toy2d_fm.flow_toy_config("ot")
    config.flow.ot_solver = "scipy"
    return config
