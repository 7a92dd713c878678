"""UniPC (Zhao et al. 2023, "UniPC: a unified predictor-corrector framework"), data prediction,
in the VE frame (``alpha = 1``, ``lambda = -log sigma``).

Each step ending above 0 runs the predictor UniP-p, evaluates ``x0_hat`` at the predicted point
(the step's only evaluation) and applies the corrector UniC-p with it, which raises the order by
one at no extra cost (Zhao et al. 2023, Alg. 2/3 and App. "data prediction"). The model output
kept for the next step is the one at the predicted point. The last step above 0 skips the
corrector, and the step to 0 returns that last ``x0_hat`` (no extra evaluation).
"""

from __future__ import annotations

import jax.numpy as jnp

from diffusion_jax.samplers._core import check_order, denoise, expand, sample
from diffusion_jax.samplers._info import SamplerInfo, Variant, one_per_step
from diffusion_jax.samplers.dpm_solver import step_orders

__all__ = ["unipc"]


def _unipc_coefficients(ratios, h, order, variant):
    """``(rhos_predictor, rhos_corrector, B(h), h phi_1)`` of UniP-p / UniC-p for ``order = p``.

    ``ratios`` are ``r_k = (lambda_{i-k} - lambda_i) / h`` of the ``p - 1`` previous points.
    Solves ``R rho = b`` with ``R_jk = r_k^(j-1)`` and ``b_j = (h phi_{j+1}(-h)) j! / B(h)`` in
    the scaled form of Zhao et al. 2023, Alg. 3 / eq. (9). The small linear solves run in at
    least float32 (LAPACK has no half precision); the coefficients come back in ``h``'s dtype.
    """
    dtype = h.dtype
    solve_dtype = jnp.promote_types(dtype, jnp.float32)
    h = h.astype(solve_dtype)
    ratios = [ratio.astype(solve_dtype) for ratio in ratios]
    hh = -h
    h_phi_1 = jnp.expm1(hh)
    b_of_h = hh if variant == "bh1" else jnp.expm1(hh)
    nodes = list(ratios) + [jnp.ones_like(h)]
    rows, rhs = [], []
    h_phi_k = h_phi_1 / hh - 1.0
    factorial = 1
    for j in range(1, order + 1):
        rows.append(jnp.stack([node ** (j - 1) for node in nodes]))
        rhs.append(h_phi_k * factorial / b_of_h)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    matrix, vector = jnp.stack(rows), jnp.stack(rhs)
    if order == 1:
        rhos_predictor = jnp.zeros((0,), h.dtype)
        rhos_corrector = jnp.full((1,), 0.5, h.dtype)
    elif order == 2:
        rhos_predictor = jnp.full((1,), 0.5, h.dtype)
        rhos_corrector = jnp.linalg.solve(matrix, vector)
    else:
        rhos_predictor = jnp.linalg.solve(matrix[:-1, :-1], vector[:-1])
        rhos_corrector = jnp.linalg.solve(matrix, vector)
    return tuple(
        value.astype(dtype) for value in (rhos_predictor, rhos_corrector, b_of_h, h_phi_1)
    )


def unipc(
    denoiser, noise, sigmas, *, key=None, cond=None, return_trajectory=False, callback=None,
    unroll=None, checkpoint=False,
    order=3, variant="bh2", lower_order_final=True,
):
    """UniPC-p with ``B(h) = h`` (``variant="bh1"``) or ``B(h) = e^h - 1`` (``"bh2"``), orders
    1-3 with lower-order warm-up (Zhao et al. 2023, Alg. 3; the ``rho = 1/2`` shortcuts for UniP-2
    and UniC-1 of their Sec. 3.3). The corrector costs no evaluation and is skipped on the last
    step. The corrector raises the order by one for ``order`` 1 and 2; for ``order = 3`` the
    measured global order is 3, not 4 (the warm-up and the uncorrected last step limit it).

    ``noise`` is UNIT Gaussian (scaled by ``sigmas[0]`` here; a warning flags pre-scaled noise).
    NFE for a grid of N steps: N.
    """
    del key
    check_order(order, (1, 2, 3), "unipc")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unipc: variant must be 'bh1' or 'bh2'; got {variant!r}")

    def first_history(x_start, sigmas):
        history = jnp.zeros((order,) + x_start.shape, x_start.dtype)
        return history.at[0].set(denoise(denoiser, x_start, sigmas[0], cond))

    def placeholder_lambdas(x_start, sigmas):
        # logSNRs of the empty history: distinct, finite, below lambda_start
        return -jnp.log(sigmas[0]) - jnp.arange(order, dtype=sigmas.dtype)

    def step(denoiser, carry, inputs, cond):
        x, history, lambdas = carry
        sigma, sigma_next, _, step_order, correct = inputs
        lambda_next = -jnp.log(sigma_next)
        h = lambda_next - lambdas[0]
        differences = [
            (history[k] - history[0]) / expand((lambdas[k] - lambdas[0]) / h, x)
            for k in range(1, order)
        ]
        x_linear = None
        predicted = corrected_terms = None
        for p in range(1, order + 1):
            ratios = [(lambdas[k] - lambdas[0]) / h for k in range(1, p)]
            rhos_p, rhos_c, b_of_h, h_phi_1 = _unipc_coefficients(ratios, h, p, variant)
            if x_linear is None:
                x_linear = expand(sigma_next / sigma, x) * x - expand(h_phi_1, x) * history[0]
            residual_p = _weighted_sum(rhos_p, differences, p - 1, x)
            residual_c = _weighted_sum(rhos_c, differences, p - 1, x)
            candidate_p = x_linear - expand(b_of_h, x) * residual_p
            candidate = (candidate_p, residual_c, rhos_c[-1] * b_of_h, b_of_h)
            if predicted is None:
                predicted, corrected_terms = candidate_p, candidate
            else:
                take = step_order == p
                predicted = jnp.where(take, candidate_p, predicted)
                corrected_terms = tuple(
                    jnp.where(take, new, old)
                    for new, old in zip(candidate, corrected_terms, strict=True)
                )
        x0_next = denoiser(predicted, sigma_next, cond)
        _, residual_c, last_weight, b_of_h = corrected_terms
        corrected = x_linear - expand(b_of_h, x) * residual_c - expand(last_weight, x) * (
            x0_next - history[0]
        )
        x_next = jnp.where(correct, corrected, predicted)
        new_history = jnp.concatenate([x0_next[None], history[:-1]], axis=0)
        lambdas = jnp.concatenate([lambda_next[None], lambdas[:-1]])
        return (x_next, new_history, lambdas), history[0]

    def final(denoiser, carry, sigma, index, cond):
        x0 = carry[1][0]  # the last evaluation, at the last state above 0: no new evaluation
        return x0, x0

    return sample(
        step, denoiser, noise, sigmas, cond=cond, callback=callback,
        unroll=unroll, checkpoint=checkpoint,
        return_trajectory=return_trajectory, carry_rest=(first_history, placeholder_lambdas),
        per_step=(
            lambda n: step_orders(n, order, lower_order_final),
            lambda n: jnp.arange(n) < n - 1,
        ),
        final=final,
    )


def _weighted_sum(weights, terms, count, x):
    """``sum_k weights[k] terms[k]`` over ``k < count`` (zeros for ``count = 0``)."""
    return sum((expand(weights[k], x) * terms[k] for k in range(count)), start=jnp.zeros_like(x))


SAMPLERS = (
    SamplerInfo(
        "unipc", unipc, stochastic=False, needs_key=False, order=3, nfe=one_per_step,
        options=("order", "variant", "lower_order_final"),
        summary="UniPC predictor-corrector (bh1 / bh2), orders 1-3, corrector at no cost",
        source="Zhao et al. 2023 Alg. 3",
        variants=(
            Variant({"order": 1, "variant": "bh1"}, 2, one_per_step),
            Variant({"order": 2}, 3, one_per_step),
            Variant({"variant": "bh1"}, 3, one_per_step),
        ),
    ),
)
