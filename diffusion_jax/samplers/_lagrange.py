"""Lagrange-basis quadrature weights and the stable exponential moments used by the
multistep samplers (Hairer, Norsett & Wanner, "Solving ODEs I", III.1; Hochbruck & Ostermann 2010,
"Exponential integrators", Sec. 2.3 for the phi functions)."""

from __future__ import annotations

import math

import jax.numpy as jnp


def lagrange_weights(nodes, moments):
    """``w_j = sum_k a_jk m_k`` where ``l_j(tau) = sum_k a_jk tau^k`` is the Lagrange basis on
    ``nodes`` and ``m_k`` the ``k``-th moment of the integration weight over the step."""
    order = len(nodes)
    weights = []
    for j in range(order):
        coefficients = [jnp.ones_like(nodes[0])]  # polynomial in tau, lowest degree first
        denominator = jnp.ones_like(nodes[0])
        for m in range(order):
            if m == j:
                continue
            shifted = [jnp.zeros_like(nodes[0])] + coefficients  # tau * p
            scaled = [-nodes[m] * c for c in coefficients] + [jnp.zeros_like(nodes[0])]
            coefficients = [a + b for a, b in zip(shifted, scaled, strict=True)]
            denominator = denominator * (nodes[j] - nodes[m])
        weights.append(sum(c * moments[k] for k, c in enumerate(coefficients)) / denominator)
    return weights


def power_moments(step, order):
    """``m_k = int_0^step tau^k dtau = step^(k+1) / (k+1)`` for ``k < order``."""
    return [step ** (k + 1) / (k + 1) for k in range(order)]


def phi(k, z, terms=24):
    """``phi_k(z) = sum_m z^m / (m + k)!`` (``phi_0 = exp``): Taylor series for ``|z| < 1``,
    the recursion ``phi_{k+1} = (phi_k - 1/k!) / z`` elsewhere."""
    series = sum(z**m * (1.0 / math.factorial(m + k)) for m in range(terms))
    small = jnp.abs(z) < 1.0
    z_safe = jnp.where(small, 1.0, z)
    value = jnp.exp(z_safe)
    for j in range(k):
        value = (value - 1.0 / math.factorial(j)) / z_safe
    return jnp.where(small, series, value)


def exponential_moments(step, order):
    """``m_k = int_0^step exp(-tau) tau^k dtau = step^(k+1) k! exp(-step) phi_{k+1}(step)``."""
    return [
        step ** (k + 1) * math.factorial(k) * jnp.exp(-step) * phi(k + 1, step)
        for k in range(order)
    ]
