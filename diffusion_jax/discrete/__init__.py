"""The discrete-data family: categorical forward processes, ELBO losses, samplers with a
tail-keeping categorical draw, likelihoods in bits, token networks and categorical data.

Conventions (tested in ``tests/test_discrete_processes.py``):

=================  ==========================  ===========================  =====================
process            noise end                   data end                     marginal
=================  ==========================  ===========================  =====================
``D3PM``           step ``T`` (uniform / mask)  step 0 (paper labels; the    ``onehot(x0) @ Qbar_t``
                                               D3PM code's x_0..x_{T-1}
                                               are the noisy states)
``MaskedDiffusion`` ``t = 1`` (all mask)        ``t = 0``                    ``P(mask) = 1 - alpha_t``
``MixturePath``    ``t = 0`` (mask / uniform)  ``t = 1``                    ``P(x_t = x_1) = kappa_t``
=================  ==========================  ===========================  =====================

* Transition matrices are **row-stochastic**: ``Q[i, j] = q(x_t = j | x_{t-1} = i)``.
* Data classes are ``0..K-1``; the mask (where there is one) is state ``K``.
* Networks: ``network(tokens, t, cond=None) -> logits (B, ..., K)``, ``t`` in the process's own
  time (D3PM: ``step / T``); the mask is never predicted (SUBS).

Modules: ``processes``, ``losses`` (D3PM hybrid, masked NELBO, DFM generalised KL / CE),
``samplers`` (D3PM ancestral, masked ancestral with caching, DFM Euler), ``categorical``,
``likelihood`` (NELBO in bits with standard error), ``networks`` (``TokenTransformer``,
``UNetLogits``), ``data`` (17-level digits, the pydoc character corpus), ``toys`` (enumerable
distributions with exact posteriors), ``checks``.
"""
