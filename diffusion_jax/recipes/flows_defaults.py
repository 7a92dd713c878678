"""The flow family's config group ``config.flow`` (added to the base config by
:func:`add_defaults`; the lead calls it from ``base_config``).

Library time throughout: ``t = 0`` data, ``t = 1`` source.
"""

import ml_collections

__all__ = ["add_defaults"]


def add_defaults(config):
    """Add ``config.flow`` to an unlocked ``config`` (no-op if it is already there)."""
    if "flow" in config:
        return config
    config.flow = flow = ml_collections.ConfigDict()
    flow.source = "gaussian"  # gaussian (N(0, I)) | eight_gaussians_torchcfm | a toy 2-D set name
    flow.coupling = "independent"  # independent | ot | sinkhorn | pairs (reflow, from disk) |
    #                                teacher (reflow, online from flow.teacher_workdir)
    flow.path = "deterministic"  # deterministic | brownian_bridge (SB-CFM) | quadratic
    flow.sigma = 0.0  # brownian_bridge: sigma of sigma sqrt(t (1 - t)); quadratic: its scale
    flow.sinkhorn_epsilon = 0.0  # 0: 2 sigma^2 (SB-CFM, Tong et al. 2023)
    flow.sinkhorn_iters = 100
    flow.sample_replace = True  # sinkhorn: draw pairs from the plan with replacement (torchcfm)
    flow.condition_aware = True  # class-conditional OT pairs only within a class (C2OT)
    flow.ot_solver = "hungarian"  # hungarian (pure JAX, any device) | scipy (host, faster on CPU)
    flow.num_blocks = 1  # couple B / num_blocks rows at a time (per device when aligned)
    flow.t_min = 0.0  # t ~ U[t_min, 1 - t_min]
    flow.time_scale = 1.0  # the network sees c_noise = time_scale * t
    flow.t_end = 0.0  # sampling integrates t = 1 -> t_end
    flow.rtol = 1e-5  # sampler "dopri5"
    flow.atol = 1e-5
    flow.teacher_workdir = ""  # reflow: the run whose samples are the new data
    flow.pairs_dir = ""  # reflow: pair shards (default: <teacher_workdir>/reflow_pairs)
    flow.num_pairs = 0  # reflow: pairs to generate (0: train.batch_size * 64)
    flow.pair_shard_size = 4096
    flow.pair_sampler = "dopri5"  # euler | midpoint | heun | rk4 | dopri5
    flow.pair_num_steps = 32
    flow.distill = False  # one-step distillation loss on the pairs instead of flow matching
    flow.target = ""  # evaluation target set name (default: data.name)
    return config
