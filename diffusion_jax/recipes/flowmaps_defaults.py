"""The flow-map family's config group ``config.flowmap`` (added to the base config by
:func:`add_defaults`, called from ``base_config``; idempotent).

Noise levels are VE-frame ``sigma`` (``x = x0 + sigma eps``) throughout, as in every denoiser of
the library; the MeanFlow / shortcut / TrigFlow adapters convert to their own time inside.
"""

from __future__ import annotations

import ml_collections

__all__ = ["add_defaults"]


def _group():
    group = ml_collections.ConfigDict()
    # progressive | cd | ct | ict | ect | scd | sct | ctm | meanflow | shortcut
    group.objective = "ict"
    # the teacher / initial run of the distillation and tuning objectives (progressive, cd, ect,
    # scd, ctm); made by `python train.py --config configs/digits_edm.py --workdir runs/digits`
    group.teacher_workdir = "runs/digits"
    group.init_from_teacher = True  # start the student from the teacher's (EMA) weights
    group.target_decay = 0.95  # cd / ctm / shortcut: the EMA target's decay (CD CIFAR-10: 0.95)
    group.teacher_sampler = "heun"  # cd / ctm: the teacher's ODE step (euler | heun | dpm_solver_pp...)
    group.teacher_num_steps = 18  # cd: N of the discretisation; ctm: teacher steps per jump
    # noise range of the consistency parameterisation (Song et al. 2023, App. C) and its data scale
    group.sigma_min = 0.002
    group.sigma_max = 80.0
    group.sigma_data = 0.5
    group.rho = 7.0
    # discretisation curricula: CT N(k) from s0 to s1 (Song et al. 2023, App. C), iCT doubling
    # from s0 to s1 (Song & Dhariwal 2023, Sec. 3.4); over train.num_steps
    group.curriculum_s0 = 0  # 0: the objective's published value (ct 2, ict 10)
    group.curriculum_s1 = 0  # 0: the published value (ct 150, ict 1280)
    group.mu0 = 0.9  # ct: EMA-teacher decay at k = 0 (Song et al. 2023, App. C)
    group.p_mean = -1.1  # ict / ect / scm: log-normal noise levels (Song & Dhariwal 2023)
    group.p_std = 2.0
    # pseudo-Huber c of ict / ect (0: the objective's own: iCT 0.00054 sqrt(d), Song & Dhariwal
    # 2023; ECT 0, the Euclidean norm); < 0: c = 0
    group.huber_c = 0.0
    # ect (Geng et al. 2024): r = t (1 - (1 - 1/q^stage) n(t)), stage doubling every `ect_stage_steps`
    group.ect_q = 2.0
    group.ect_stage_steps = 0  # 0: train.num_steps // 8
    # progressive distillation (Salimans & Ho 2022): the student of each stage takes half the
    # steps of its teacher; stage k runs train.num_steps // num_stages steps
    group.progressive_teacher_steps = 16  # the steps of the first teacher (the library denoiser)
    group.progressive_num_stages = 3
    group.time_scale = 1.0  # trigflow / meanflow / shortcut: the network sees c_noise = scale * t
    # sCM (Lu & Song 2024)
    group.scm_adaptive_weight = True  # learned log-variance u(t) trained with the network
    group.scm_warmup_steps = 0  # tangent warm-up of r (0: train.num_steps // 10)
    group.scm_tangent_c = 0.1  # g / (||g|| + c)
    # MeanFlow (Geng et al. 2025)
    group.meanflow_ratio = 0.25  # fraction of pairs with r != t
    group.meanflow_power = 1.0  # adaptive weight 1 / sg(||delta||^2 + c)^p
    group.meanflow_c = 1e-3
    group.meanflow_time_mean = -0.4  # logit-normal (t, r) draws (the paper's ImageNet default)
    group.meanflow_time_std = 1.0
    group.meanflow_guidance = 1.0  # training-time CFG omega (1: none)
    # shortcut models (Frans et al. 2024)
    group.shortcut_fraction = 0.25  # fraction of the batch with self-consistency targets
    group.shortcut_max_steps = 128  # d on the dyadic grid 1/128 ... 1
    # CTM (Kim et al. 2023)
    group.ctm_dsm_weight = 1.0  # weight of the denoising (DSM) term beside soft consistency
    group.ctm_teacher_steps = 2  # teacher solver steps of each jump t -> u
    # sampling: config.sample.num_steps flow-map jumps on this grid (1: one step)
    # "" (the objective's) | karras (num_steps + 1 Karras levels, the last -> 0) | uniform_time
    group.sample_grid = ""
    group.sampler = ""  # "" (the objective's) | flow_map (jumps) | consistency (Alg. 1, re-noise)
    group.gamma = 0.0  # flow_map: CTM's gamma-sampling (0 deterministic jumps, 1 re-noise to 0)
    return group


def add_defaults(config):
    """Add ``config.flowmap`` to an unlocked ``config`` (no-op if it is already there)."""
    if "flowmap" not in config:
        config.flowmap = _group()
    return config
