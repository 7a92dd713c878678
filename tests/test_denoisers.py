"""Parameterisations, preconditioning and the denoiser adapters."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import denoisers as D
from diffusion_jax import processes as P
from diffusion_jax.analytic import GaussianMixture

PROCESSES = [P.VP(), P.SubVP(), P.VE(), P.EDM(), P.Cosine(), P.RectifiedFlow(), P.TrigFlow()]
PIDS = [type(p).__name__ for p in PROCESSES]


def _mixture():
    return GaussianMixture.create(
        jnp.array([[1.0, -1.0, 0.5], [-1.5, 0.5, 0.0]]),
        variances=jnp.array([[0.3, 0.1, 0.2], [0.05, 0.4, 0.1]]),
        weights=jnp.array([0.4, 0.6]),
    )


def _sample(process, t, batch=5):
    key0, key1 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(key0, (batch, 3))
    eps = jax.random.normal(key1, (batch, 3))
    return x0, eps, process.perturb(x0, eps, t)


@pytest.mark.parametrize("process", PROCESSES, ids=PIDS)
def test_every_parameterisation_converts_to_every_other_and_back(x64, process):
    t = jnp.linspace(0.1, 0.9, 5) * float(process.t_max)
    x0, eps, x_t = _sample(process, t)
    coefficients = (process.alpha(t), process.sigma(t), process.d_alpha(t), process.d_sigma(t))
    for source in D.PARAMETERISATIONS:
        prediction = D.from_x0_epsilon(x0, eps, source, *coefficients)
        recovered = D.to_x0_epsilon(prediction, source, x_t, *coefficients)
        np.testing.assert_allclose(recovered[0], x0, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(recovered[1], eps, rtol=1e-10, atol=1e-10)
        for target in D.PARAMETERISATIONS:
            there = D.convert(prediction, source, target, x_t, t, process)
            back = D.convert(there, target, source, x_t, t, process)
            np.testing.assert_allclose(back, prediction, rtol=1e-9, atol=1e-9)


def test_known_parameterisation_values(x64):
    process = P.VP()
    t = 0.3
    x0, eps, x_t = _sample(process, t)
    alpha, sigma = process.alpha(t), process.sigma(t)
    v = D.convert(eps, "epsilon", "v", x_t, t, process)
    np.testing.assert_allclose(v, alpha * eps - sigma * x0, rtol=1e-10)
    score = D.convert(x0, "x0", "score", x_t, t, process)
    np.testing.assert_allclose(score, -eps / sigma, rtol=1e-10)
    rf = P.RectifiedFlow()
    _, _, x_rf = _sample(rf, t)
    velocity = D.convert(x0, "x0", "velocity", x_rf, t, rf)
    np.testing.assert_allclose(velocity, eps - x0, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("process", PROCESSES, ids=PIDS)
def test_x0_error_scale_relates_errors_of_parameterisations(x64, process):
    t = 0.37 * float(process.t_max)
    x0, eps, x_t = _sample(process, t)
    x0_hat = x0 + 0.1 * jax.random.normal(jax.random.key(3), x0.shape)
    eps_hat = (x_t - process.alpha(t) * x0_hat) / process.sigma(t)
    coefficients = (process.alpha(t), process.sigma(t), process.d_alpha(t), process.d_sigma(t))
    for name in D.PARAMETERISATIONS:
        error = D.from_x0_epsilon(x0_hat, eps_hat, name, *coefficients) - D.from_x0_epsilon(
            x0, eps, name, *coefficients
        )
        np.testing.assert_allclose(
            error, D.x0_error_scale(name, process, t) * (x0_hat - x0), rtol=1e-8
        )


def _exact_prediction(mixture, process, x_t, t, cond, *, parameterisation):
    alpha, sigma = process.alpha(t)[:, None], process.sigma(t)[:, None]
    x0 = mixture.denoise(x_t / alpha, (sigma / alpha)[:, 0])
    eps = (x_t - alpha * x0) / sigma
    return D.from_x0_epsilon(
        x0,
        eps,
        parameterisation,
        alpha,
        sigma,
        process.d_alpha(t)[:, None],
        process.d_sigma(t)[:, None],
    )


def _exact_network(mixture, process, parameterisation):
    """A 'network' in process time that predicts `parameterisation` exactly (parameters as leaves)."""
    return jax.tree_util.Partial(_PREDICTORS[parameterisation], mixture, process)


_PREDICTORS = {
    name: functools.partial(_exact_prediction, parameterisation=name)
    for name in D.PARAMETERISATIONS
}


@pytest.mark.parametrize("process", PROCESSES, ids=PIDS)
@pytest.mark.parametrize("parameterisation", D.PARAMETERISATIONS)
def test_process_denoiser_adapts_exact_networks(x64, process, parameterisation):
    mixture = _mixture()
    denoiser = D.ProcessDenoiser(
        _exact_network(mixture, process, parameterisation), process, parameterisation
    )
    x = mixture.sample(jax.random.key(2), 6, sigma=1.0)
    sigma = jnp.geomspace(0.05, 5.0, 6)
    np.testing.assert_allclose(denoiser(x, sigma), mixture(x, sigma), rtol=1e-8, atol=1e-9)
    # ProcessModel is the inverse adapter: back to an x0 model in process time.
    t = process.t_of_ve_sigma(sigma)
    model = D.ProcessModel(denoiser, process)
    x_t = process.alpha(t)[:, None] * x
    np.testing.assert_allclose(model(x_t, t), mixture(x, sigma), rtol=1e-8, atol=1e-9)


def test_edm_preconditioning_values_and_unit_variance_target(x64):
    precond = D.EDMPreconditioning(sigma_data=0.5)
    c_skip, c_out, c_in, c_noise = precond.coefficients(jnp.asarray(2.0))
    np.testing.assert_allclose(
        [c_skip, c_out, c_in, c_noise],
        [0.25 / 4.25, 1.0 / 4.25**0.5, 4.25**-0.5, 0.25 * np.log(2.0)],
    )
    # EDM eq. 8 design: c_in x has unit variance and the network target (x0 - c_skip x)/c_out too.
    key0, key1 = jax.random.split(jax.random.key(0))
    x0 = 0.5 * jax.random.normal(key0, (200000,))
    for sigma in [0.01, 0.5, 3.0, 80.0]:
        c_skip, c_out, c_in, _ = precond.coefficients(jnp.asarray(sigma))
        x = x0 + sigma * jax.random.normal(key1, x0.shape)
        np.testing.assert_allclose(jnp.std(c_in * x), 1.0, atol=0.01)
        np.testing.assert_allclose(jnp.std((x0 - c_skip * x) / c_out), 1.0, atol=0.01)


@pytest.mark.parametrize(
    "precond",
    [D.EDMPreconditioning(0.5), D.VPPreconditioning(), D.VEPreconditioning()],
    ids=["edm", "vp", "ve"],
)
def test_preconditioned_denoiser_recovers_exact_target(x64, precond):
    mixture = _mixture()

    def network(x_in, c_noise, cond):
        # Undo the preconditioning around the exact denoiser: F = (D* - c_skip x)/c_out.
        sigma = sigma_of_c_noise(c_noise)
        c_skip, c_out, c_in, _ = precond.coefficients(sigma)
        x = x_in / c_in[:, None]
        return (mixture(x, sigma) - c_skip[:, None] * x) / c_out[:, None]

    if isinstance(precond, D.EDMPreconditioning):
        sigma_of_c_noise = lambda c: jnp.exp(4 * c)
    elif isinstance(precond, D.VEPreconditioning):
        sigma_of_c_noise = lambda c: 2 * jnp.exp(c)
    else:
        sigma_of_c_noise = lambda c: P.VP().ve_sigma(c / 999.0)
    denoiser = D.PreconditionedDenoiser(jax.tree_util.Partial(network), precond)
    x = mixture.sample(jax.random.key(4), 4, sigma=2.0)
    sigma = jnp.array([0.02, 0.3, 1.0, 7.0])
    np.testing.assert_allclose(denoiser(x, sigma), mixture(x, sigma), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(
        D.score_from_denoiser(denoiser, x, sigma), mixture.score(x, sigma), rtol=1e-6, atol=1e-8
    )
    np.testing.assert_allclose(
        D.probability_flow_derivative(denoiser, x, sigma),
        -sigma[:, None] * mixture.score(x, sigma),
        rtol=1e-6,
        atol=1e-8,
    )


def test_denoisers_jit_as_pytrees_without_recompiling(x64):
    mixture = _mixture()
    denoiser = D.ProcessDenoiser(_exact_network(mixture, P.VP(), "v"), P.VP(), "v")
    traces = []

    @jax.jit
    def apply(d, x, sigma):
        traces.append(1)
        return d(x, sigma)

    x = mixture.sample(jax.random.key(0), 3)
    first = apply(denoiser, x, 0.5)
    moved = GaussianMixture.create(mixture.means + 1.0, variances=mixture.eigenvalues)
    other = D.ProcessDenoiser(
        _exact_network(moved, P.VP(beta_max=15.0), "v"), P.VP(beta_max=15.0), "v"
    )
    second = apply(other, x + 1.0, 0.7)
    assert len(traces) == 1
    np.testing.assert_allclose(first, mixture(x, 0.5), rtol=1e-9)
    np.testing.assert_allclose(second, moved(x + 1.0, 0.7), rtol=1e-9)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown parameterisation"):
        D.convert(jnp.ones((2, 3)), "eps", "x0", jnp.ones((2, 3)), 0.5, P.VP())
    with pytest.raises(ValueError, match="unknown parameterisation"):
        D.ProcessDenoiser(None, P.VP(), "noise")
    denoiser = D.PreconditionedDenoiser(
        jax.tree_util.Partial(lambda x, c, cond: x), D.EDMPreconditioning()
    )
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="sigma"):
        denoiser(x, -1.0)
    with pytest.raises(ValueError, match="finite"):
        denoiser(x, float("nan"))
    with pytest.raises(ValueError, match="shape"):
        denoiser(x, jnp.ones(3))
    with pytest.raises(ValueError, match="batch axis"):
        denoiser(jnp.ones(3), 1.0)
    bad_network = D.PreconditionedDenoiser(
        jax.tree_util.Partial(lambda x, c, cond: x[:, :2]), D.EDMPreconditioning()
    )
    with pytest.raises(ValueError, match="network output shape"):
        bad_network(x, 1.0)


OBJECTS = {"x0": D.X0(), "epsilon": D.Epsilon(), "v": D.V(), "score": D.Score(),
           "velocity": D.Velocity()}


@pytest.mark.parametrize("process", [P.VP(), P.RectifiedFlow()], ids=["VP", "RectifiedFlow"])
def test_parameterisation_objects_give_the_numbers_of_their_names(x64, process):
    """Objects and names are interchangeable: bitwise-equal conversions, error scales, loss
    weights and adapter outputs."""
    from diffusion_jax import schedules

    t = jnp.linspace(0.1, 0.9, 5) * float(process.t_max)
    x0, eps, x_t = _sample(process, t)
    coefficients = (process.alpha(t), process.sigma(t), process.d_alpha(t), process.d_sigma(t))
    assert tuple(OBJECTS) == D.PARAMETERISATIONS

    def network(x_t, t, cond=None):
        return 0.3 * x_t * t[:, None]

    for name, kind in OBJECTS.items():
        assert D.as_parameterisation(name) == kind and D.as_parameterisation(kind) is kind
        assert kind.name == name
        prediction = D.from_x0_epsilon(x0, eps, name, *coefficients)
        np.testing.assert_array_equal(D.from_x0_epsilon(x0, eps, kind, *coefficients), prediction)
        for by_name, by_object in zip(
            D.to_x0_epsilon(prediction, name, x_t, *coefficients),
            D.to_x0_epsilon(prediction, kind, x_t, *coefficients),
            strict=True,
        ):
            np.testing.assert_array_equal(by_object, by_name)
        np.testing.assert_array_equal(
            D.x0_error_scale(kind, process, t), D.x0_error_scale(name, process, t)
        )
        np.testing.assert_array_equal(
            schedules.EDMWeighting().weight_for(kind, process, t),
            schedules.EDMWeighting().weight_for(name, process, t),
        )
        np.testing.assert_array_equal(
            D.ProcessDenoiser(network, process, kind)(x_t, 0.7),
            D.ProcessDenoiser(network, process, name)(x_t, 0.7),
        )


def test_unknown_parameterisation_lists_the_names():
    for bad in ("eps", 3, None):
        with pytest.raises(ValueError, match=r"unknown parameterisation .*'x0', 'epsilon'"):
            D.as_parameterisation(bad)
    with pytest.raises(ValueError, match="needs d_alpha and d_sigma"):
        D.to_x0_epsilon(jnp.ones((2, 3)), "velocity", jnp.ones((2, 3)), 1.0, 0.5)
