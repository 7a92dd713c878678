"""Couplings: exact OT is the sorting permutation in 1-D with the right pairing direction,
Sinkhorn tends to the exact plan, every plan has uniform marginals, the minibatch OT pairs of two
Gaussians approach the closed-form Monge map, C2OT pairs within a class, and bad input fails."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.flows import couplings, gaussian


def _brute_force_permutation(cost):
    n = cost.shape[0]
    best = min(itertools.permutations(range(n)), key=lambda p: sum(cost[i, p[i]] for i in range(n)))
    return np.array(best)


def test_exact_ot_in_1d_is_the_sorting_permutation_and_direction_is_data_to_source():
    key_a, key_b = jax.random.split(jax.random.key(0))
    x_data = jax.random.normal(key_a, (64, 1))
    x_source = 3.0 + 2.0 * jax.random.normal(key_b, (64, 1))
    perm = np.asarray(couplings.exact_ot_permutation(couplings.squared_distances(x_data, x_source)))
    # the monotone map: the k-th smallest data point pairs with the k-th smallest source point
    expected = np.empty(64, int)
    expected[np.argsort(np.asarray(x_data[:, 0]))] = np.argsort(np.asarray(x_source[:, 0]))
    np.testing.assert_array_equal(perm, expected)
    paired_data, paired_source, _ = couplings.ot_coupling(x_data, x_source)
    np.testing.assert_array_equal(paired_data, x_data)  # data rows keep their order
    np.testing.assert_allclose(paired_source, x_source[expected])
    # the inverse permutation (the torchcfm PR 178 bug) is not monotone
    inverse = np.argsort(expected)
    assert not np.array_equal(inverse, expected)
    ranks = np.argsort(np.argsort(np.asarray(x_source[inverse, 0])))
    assert not np.array_equal(ranks, np.argsort(np.argsort(np.asarray(x_data[:, 0]))))


@pytest.mark.parametrize("solver", couplings.SOLVERS)
def test_exact_ot_matches_brute_force_on_small_random_costs(solver):
    rng = np.random.default_rng(0)
    solve = jax.jit(lambda c: couplings.exact_ot_permutation(c, solver=solver))
    for _ in range(5):
        cost = rng.uniform(size=(6, 6)).astype(np.float32)
        perm = np.asarray(solve(jnp.asarray(cost)))
        brute = _brute_force_permutation(cost)
        assert cost[np.arange(6), perm].sum() == pytest.approx(cost[np.arange(6), brute].sum())
    # vmapped (blockwise) solves agree between the two solvers
    costs = jnp.asarray(rng.uniform(size=(3, 16, 16)), jnp.float32)
    np.testing.assert_array_equal(
        jax.vmap(lambda c: couplings.exact_ot_permutation(c, solver=solver))(costs),
        jax.vmap(couplings.exact_ot_permutation)(costs))


def test_sinkhorn_plan_tends_to_the_exact_plan_and_has_uniform_marginals(x64):
    key_a, key_b = jax.random.split(jax.random.key(1))
    x = jax.random.normal(key_a, (16, 2), jnp.float64)
    y = jax.random.normal(key_b, (16, 2), jnp.float64) + 1.0
    cost = couplings.squared_distances(x, y)
    perm = couplings.exact_ot_permutation(cost)
    exact_plan = jnp.zeros((16, 16)).at[jnp.arange(16), perm].set(1.0 / 16)
    errors = []
    for epsilon, iters in [(1.0, 200), (0.1, 1000), (0.01, 4000)]:
        plan = couplings.sinkhorn_plan(cost, epsilon, num_iters=iters)
        np.testing.assert_allclose(plan.sum(0), 1.0 / 16, atol=1e-12)  # exact after each g-step
        np.testing.assert_allclose(plan.sum(1), 1.0 / 16, atol=1e-5)  # converged (5e-5 relative)
        errors.append(float(jnp.abs(plan - exact_plan).sum()))
    # total-variation distance to the exact plan: 1.44, 0.45, 0.004 measured
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-2, errors
    # the plan's transport cost tends to the exact OT cost
    assert float(jnp.sum(plan * cost)) == pytest.approx(float(cost[jnp.arange(16), perm].mean()),
                                                          rel=1e-3)


def test_sampled_plan_marginals_are_uniform_and_permutation_from_exact_plan():
    cost = couplings.squared_distances(jnp.arange(8.0)[:, None], jnp.arange(8.0)[::-1, None])
    plan = couplings.sinkhorn_plan(cost, 0.05, num_iters=500)
    rows, cols = couplings.sample_plan(jax.random.key(0), plan, 80000, replace=True)
    np.testing.assert_allclose(np.bincount(np.asarray(rows), minlength=8) / 80000, 1 / 8, atol=6e-3)
    np.testing.assert_allclose(np.bincount(np.asarray(cols), minlength=8) / 80000, 1 / 8, atol=6e-3)
    # exact plan: source j = 7 - i
    np.testing.assert_array_equal(np.asarray(cols), 7 - np.asarray(rows))
    rows, cols = couplings.sample_plan(jax.random.key(1), plan, 8, replace=False)
    assert len(set(zip(np.asarray(rows).tolist(), np.asarray(cols).tolist(), strict=True))) == 8
    perm = couplings.permutation_from_plan(plan)
    np.testing.assert_array_equal(perm, 7 - np.arange(8))
    assert sorted(np.asarray(couplings.permutation_from_plan(plan, jax.random.key(2)))) == list(
        range(8))


def test_minibatch_ot_pairs_approach_the_gaussian_monge_map(x64):
    """Between two Gaussians the OT map is T(x) = m_b + A (x - m_a); the minibatch pairs' mean
    squared deviation from it falls with the batch size (measured slope -0.68 in 2-D)."""
    cov_a = jnp.array([[1.0, 0.3], [0.3, 0.5]])
    cov_b = jnp.array([[0.4, -0.1], [-0.1, 2.0]])
    mean_a, mean_b = jnp.array([0.0, 1.0]), jnp.array([2.0, -1.0])
    matrix, _, _ = gaussian.gaussian_ot_map(mean_a, cov_a, mean_b, cov_b)
    # the map pushes N(a) to N(b): A cov_a A = cov_b, and A is symmetric positive definite
    np.testing.assert_allclose(matrix @ cov_a @ matrix, cov_b, atol=1e-12)
    chol_a, chol_b = jnp.linalg.cholesky(cov_a), jnp.linalg.cholesky(cov_b)
    sizes, deviations = [32, 128, 512], []
    for n in sizes:
        values = []
        for seed in range(3):
            ka, kb = jax.random.split(jax.random.key(seed))
            xa = mean_a + jax.random.normal(ka, (n, 2), jnp.float64) @ chol_a.T
            xb = mean_b + jax.random.normal(kb, (n, 2), jnp.float64) @ chol_b.T
            _, paired, _ = couplings.ot_coupling(xa, xb, solver="scipy")
            target = mean_b + (xa - mean_a) @ matrix.T
            values.append(float(jnp.mean(jnp.sum((paired - target) ** 2, -1))))
        deviations.append(np.mean(values))
    slope = np.polyfit(np.log(sizes), np.log(deviations), 1)[0]
    # measured: 0.49, 0.22, 0.075 at n = 32, 128, 512 (slope -0.68)
    assert deviations[0] > deviations[1] > deviations[2]
    assert -0.9 < slope < -0.3, (deviations, slope)


def test_condition_aware_ot_pairs_within_a_class():
    key_a, key_b, key_c = jax.random.split(jax.random.key(3), 3)
    x_data = jax.random.normal(key_a, (32, 2))
    x_source = jax.random.normal(key_b, (32, 2))
    labels = jax.random.randint(key_c, (32,), 0, 3)
    _, paired_source, cond = couplings.ot_coupling(x_data, x_source, cond=labels)
    np.testing.assert_array_equal(cond, labels)
    # each source point is used once and pairs are optimal within each class: recover the
    # source index of each pair and check its class slot (source j carries label labels[j])
    source_index = np.array([int(np.argmin(np.sum((np.asarray(x_source) - p) ** 2, -1)))
                             for p in np.asarray(paired_source)])
    assert sorted(source_index) == list(range(32))
    np.testing.assert_array_equal(np.asarray(labels)[source_index], np.asarray(labels))
    # a continuous condition with a large weight gives the same within-class pairing
    _, weighted, _ = couplings.ot_coupling(x_data, x_source, cond=labels.astype(jnp.float32)[:, None],
                                           condition_weight=1e4)
    np.testing.assert_allclose(weighted, paired_source)
    # plain OT crosses classes on the same batch
    _, plain, _ = couplings.ot_coupling(x_data, x_source)
    plain_index = np.array([int(np.argmin(np.sum((np.asarray(x_source) - p) ** 2, -1)))
                            for p in np.asarray(plain)])
    assert np.any(np.asarray(labels)[plain_index] != np.asarray(labels))


def test_blockwise_coupling_equals_separate_solves_and_jits():
    key_a, key_b = jax.random.split(jax.random.key(4))
    x_data = jax.random.normal(key_a, (16, 2))
    x_source = jax.random.normal(key_b, (16, 2))
    _, blocked, _ = jax.jit(lambda a, b: couplings.ot_coupling(a, b, num_blocks=2))(x_data, x_source)
    for block in range(2):
        rows = slice(8 * block, 8 * block + 8)
        _, separate, _ = couplings.ot_coupling(x_data[rows], x_source[rows])
        np.testing.assert_allclose(blocked[rows], separate)


def test_sinkhorn_coupling_keeps_conditions_with_their_data_point():
    key_a, key_b = jax.random.split(jax.random.key(5))
    x_data = jax.random.normal(key_a, (12, 2))
    x_source = jax.random.normal(key_b, (12, 2))
    labels = jnp.arange(12) % 2
    paired_data, _, cond = couplings.sinkhorn_coupling(
        x_data, x_source, jax.random.key(0), cond=labels, epsilon=0.1
    )
    for point, label in zip(np.asarray(paired_data), np.asarray(cond), strict=True):
        index = int(np.argmin(np.sum((np.asarray(x_data) - point) ** 2, -1)))
        assert labels[index] == label


def test_bad_input_gets_one_line_errors():
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="equal size"):
        couplings.ot_coupling(x, jnp.zeros((5, 2)))
    with pytest.raises(ValueError, match="one entry per data point"):
        couplings.ot_coupling(x, x, cond=jnp.arange(3))
    with pytest.raises(ValueError, match="non-finite"):
        couplings.ot_coupling(x.at[0, 0].set(jnp.nan), x)
    with pytest.raises(ValueError, match="non-finite"):
        couplings.sinkhorn_plan(jnp.full((2, 2), jnp.inf), 0.1)
    with pytest.raises(ValueError, match="epsilon"):
        couplings.sinkhorn_plan(jnp.ones((2, 2)), 0.0)
    with pytest.raises(ValueError, match="per-example shape"):
        couplings.ot_coupling(x, jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="integer labels"):
        couplings.ot_coupling(x, x, cond=jnp.zeros(4))
    with pytest.raises(ValueError, match="unknown OT solver"):
        couplings.ot_coupling(x, x, solver="lemon")
    with pytest.raises(ValueError, match="unknown coupling"):
        couplings.make_coupling("emd")
    with pytest.raises(ValueError, match="pass a key"):
        couplings.sinkhorn_coupling(x, x, None, epsilon=0.1)


_SHARDED_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from diffusion_jax.flows import couplings
mesh = Mesh(np.array(jax.devices()), ("data",))
rows = NamedSharding(mesh, P("data"))
x = jax.random.normal(jax.random.key(0), (64, 2))
y = jax.random.normal(jax.random.key(1), (64, 2)) + 1.0
xs, ys = jax.device_put(x, rows), jax.device_put(y, rows)
global_pairs = jax.jit(lambda a, b: couplings.ot_coupling(a, b)[1])(xs, ys)
blocked = jax.jit(lambda a, b: couplings.ot_coupling(a, b, num_blocks=8)[1])(xs, ys)
one = couplings.ot_coupling(x, y)[1]
per_block = jnp.concatenate([couplings.ot_coupling(x[8 * k:8 * k + 8], y[8 * k:8 * k + 8])[1]
                             for k in range(8)])
json.dump({"devices": len(jax.devices()),
           "global_diff": float(jnp.abs(global_pairs - one).max()),
           "blocked_diff": float(jnp.abs(blocked - per_block).max()),
           "global_cost": float(jnp.sum((x - one) ** 2)),
           "blocked_cost": float(jnp.sum((x - per_block) ** 2))}, open(sys.argv[1], "w"))
"""


def test_sharded_batch_global_and_per_device_blocks(tmp_path):
    """On 8 devices the default coupling is global (equals the 1-device solve) and
    ``num_blocks=8`` couples each device's rows alone (equals 8 separate solves, costs more)."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "sharded.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT, str(out)], check=True, timeout=300,
                   env=env)
    result = json.loads(out.read_text())
    assert result["devices"] == 8
    assert result["global_diff"] == 0.0 and result["blocked_diff"] == 0.0
    assert result["blocked_cost"] > result["global_cost"]
