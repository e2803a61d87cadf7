"""eps / v / x0 conversions and the training loss (with Min-SNR weighting)."""

import itertools

import pytest
import torch

from ldmkit.diffusion import (
    NoiseSchedule,
    convert,
    diffusion_loss,
    eps_from,
    min_snr_weight,
    training_target,
    v_target,
    x0_from,
)
from ldmkit.errors import UserError

PREDS = ("eps", "v", "x0")


def _frame(t, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = NoiseSchedule.create("scaled_linear")
    x0 = torch.randn(len(t), 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    alpha, sigma = s.coefficients(torch.tensor(t), x0)
    return x0, eps, alpha, sigma, alpha * x0 + sigma * eps


@pytest.mark.parametrize("source,target", list(itertools.product(PREDS, PREDS)))
def test_conversions_recover_truth(source, target):
    x0, eps, alpha, sigma, x_t = _frame([0, 250, 999])
    truth = {"eps": eps, "x0": x0, "v": v_target(x0, eps, alpha, sigma)}
    out = convert(truth[source], x_t, alpha, sigma, source, target)
    assert torch.allclose(out, truth[target], atol=1e-10, rtol=0)


def test_round_trip_through_every_parameterisation():
    x0, eps, alpha, sigma, x_t = _frame([5, 600])
    pred = torch.randn_like(x0)  # any prediction, not only the true one
    for a, b in itertools.permutations(PREDS, 2):
        back = convert(convert(pred, x_t, alpha, sigma, a, b), x_t, alpha, sigma, b, a)
        assert torch.allclose(back, pred, atol=1e-10, rtol=0), (a, b)


def test_v_definition_and_x_t_identity():
    x0, eps, alpha, sigma, x_t = _frame([100])
    v = v_target(x0, eps, alpha, sigma)
    # Salimans & Ho 2022: x = alpha x_t - sigma v and eps = sigma x_t + alpha v.
    assert torch.allclose(alpha * x_t - sigma * v, x0, atol=1e-12)
    assert torch.allclose(sigma * x_t + alpha * v, eps, atol=1e-12)
    assert torch.allclose(x0_from(v, x_t, alpha, sigma, "v"), x0, atol=1e-12)
    assert torch.allclose(eps_from(x0, x_t, alpha, sigma, "x0"), eps, atol=1e-10)


def test_unknown_prediction_is_user_error():
    x0, eps, alpha, sigma, x_t = _frame([1])
    with pytest.raises(UserError):
        x0_from(x0, x_t, alpha, sigma, "epsilon")


# -- loss --------------------------------------------------------------------------------------


def test_loss_of_exact_model_is_zero_and_uses_given_t_and_noise():
    s = NoiseSchedule.create("linear")
    x0 = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    seen = {}

    def oracle(x_t, tt):
        seen["t"] = tt
        alpha, sigma = s.coefficients(tt, x_t)
        return v_target(x0, noise, alpha, sigma)

    loss = diffusion_loss(oracle, x0, s, prediction="v", t=t, noise=noise)
    assert loss.item() < 1e-20
    assert seen["t"].dtype == torch.float32 and seen["t"].tolist() == t.tolist()
    wrong = diffusion_loss(oracle, x0, s, prediction="eps", t=t, noise=noise)
    assert wrong.item() > 0.1


def test_bayes_optimal_eps_loss_on_gaussian_data():
    # x0 ~ N(mu, s^2): the best eps estimate is E[eps | x_t] and the remaining error is
    # Var(eps | x_t) = a s^2 / (a s^2 + 1 - a). Monte Carlo over 8 x 4096 values: relative
    # standard error of a mean of chi-square-like terms ~ sqrt(2/32768) ~ 0.8%, tol 4%.
    mu, sd = 0.7, 0.4
    s = NoiseSchedule.create("linear")
    g = torch.Generator().manual_seed(1)
    x0 = mu + sd * torch.randn(8, 4096, generator=g, dtype=torch.float64)
    t = torch.full((8,), 300)

    def eps_model(x_t, tt):
        a = s.alpha_bar_at(tt).view(-1, 1)
        x0_hat = mu + a.sqrt() * sd**2 / (a * sd**2 + 1 - a) * (x_t - a.sqrt() * mu)
        return (x_t - a.sqrt() * x0_hat) / (1 - a).sqrt()

    loss = diffusion_loss(eps_model, x0, s, t=t, generator=g)
    a = s.alphas_cumprod[300].item()
    assert loss.item() == pytest.approx(a * sd**2 / (a * sd**2 + 1 - a), rel=0.04)


def test_min_snr_weighting_is_the_same_objective_in_every_parameterisation():
    # Hang et al. 2023: the weights per target are chosen so that the weighted losses all
    # equal min(SNR, gamma) ||x0 - x0_hat||^2. Check with an imperfect model, per sample.
    s = NoiseSchedule.create("scaled_linear")
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(6, 2, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 50, 400, 800, 999])

    def model_for(prediction):
        def fn(x_t, tt):
            alpha, sigma = s.coefficients(tt, x_t)
            x0_hat = 0.8 * x0 + 0.05 * x_t  # some x0 estimate, deliberately wrong
            eps_hat = (x_t - alpha * x0_hat) / sigma
            return training_target(prediction, x0_hat, eps_hat, alpha, sigma)
        return fn

    gamma = 5.0
    losses = [diffusion_loss(model_for(p), x0, s, prediction=p, min_snr_gamma=gamma, t=t, noise=noise,
                             return_per_sample=True)[1] for p in PREDS]
    x0_err = ((0.8 * x0 + 0.05 * s.add_noise(x0, noise, t) - x0) ** 2).flatten(1).mean(1)
    expected = s.snr(t).clamp(max=gamma).float() * x0_err.float()
    for per_sample in losses:
        assert torch.allclose(per_sample, expected, rtol=1e-5)
    assert not torch.allclose(losses[0], diffusion_loss(model_for("eps"), x0, s, t=t, noise=noise,
                                                        return_per_sample=True)[1])


def test_min_snr_weight_values_and_zero_snr():
    snr = torch.tensor([0.0, 0.5, 5.0, 50.0], dtype=torch.float64)
    # At SNR 0 every target gets weight 1 (its plain loss): min(0, gamma) = 0 left t = T - 1 untrained.
    assert min_snr_weight(snr, 5.0, "x0").tolist() == [1.0, 0.5, 5.0, 5.0]
    eps_w = torch.tensor([1.0, 1.0, 1.0, 0.1], dtype=torch.float64)
    v_w = torch.tensor([1.0, 0.5 / 1.5, 5 / 6, 5 / 51], dtype=torch.float64)
    assert torch.allclose(min_snr_weight(snr, 5.0, "eps"), eps_w)
    assert torch.allclose(min_snr_weight(snr, 5.0, "v"), v_w)


def test_loss_draws_t_uniformly_and_reproducibly():
    s = NoiseSchedule.create("linear", num_steps=10)
    x0 = torch.zeros(2000, 1)
    seen = []

    def fn(x_t, t):
        seen.append(t)
        return torch.zeros_like(x_t)

    diffusion_loss(fn, x0, s, generator=torch.Generator().manual_seed(3))
    diffusion_loss(fn, x0, s, generator=torch.Generator().manual_seed(3))
    assert torch.equal(seen[0], seen[1])
    counts = torch.bincount(seen[0].long(), minlength=10)
    assert counts.min() > 150 and counts.max() < 250  # 200 expected each, sd ~ 13
    with pytest.raises(UserError):
        diffusion_loss(fn, x0, s, min_snr_gamma=0.0)


@pytest.mark.parametrize("output", [lambda x: x.mean(1, keepdim=True), lambda x: x[:1]])
def test_a_model_returning_another_shape_is_refused_not_broadcast(output):
    x0 = torch.randn(2, 4, 8, 8)
    with pytest.raises(UserError, match="must return its input's shape"):
        diffusion_loss(lambda x, t: output(x), x0, NoiseSchedule.create())
