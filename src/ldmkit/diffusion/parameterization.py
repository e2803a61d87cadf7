"""What the network predicts: eps, v or x0, and the conversions between them.

All functions work in the variance-preserving frame x_t = alpha x_0 + sigma eps with
alpha = sqrt(a_t), sigma = sqrt(1 - a_t) (Ho et al. 2020, eq. 4), so alpha^2 + sigma^2 = 1.
`alpha` and `sigma` are floats or tensors that broadcast against the sample (see
`NoiseSchedule.coefficients`). Every conversion is exact algebra, so they round-trip.

- eps: the noise (Ho et al. 2020).
- v:   v = alpha eps - sigma x_0 (Salimans & Ho 2022, Sec. 4 and App. D).
- x0:  the clean sample.
"""

from __future__ import annotations

from typing import Union

from torch import Tensor

from ldmkit.errors import UserError

PREDICTIONS = ("eps", "v", "x0")

Coef = Union[Tensor, float]


def check_prediction(prediction: str) -> str:
    """Return `prediction` if it is a known parameterisation, else raise UserError."""
    if prediction not in PREDICTIONS:
        raise UserError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    return prediction


def v_target(x0: Tensor, eps: Tensor, alpha: Coef, sigma: Coef) -> Tensor:
    """v = alpha eps - sigma x_0 (Salimans & Ho 2022, App. D)."""
    return alpha * eps - sigma * x0


def training_target(prediction: str, x0: Tensor, eps: Tensor, alpha: Coef, sigma: Coef) -> Tensor:
    """The tensor a network of type `prediction` is trained to output for (x_0, eps)."""
    check_prediction(prediction)
    if prediction == "eps":
        return eps
    if prediction == "v":
        return v_target(x0, eps, alpha, sigma)
    return x0


def x0_from(pred: Tensor, x_t: Tensor, alpha: Coef, sigma: Coef, prediction: str = "eps") -> Tensor:
    """Clean-sample estimate from a raw prediction.

    eps: x_0 = (x_t - sigma eps) / alpha       (inverting Ho et al. 2020, eq. 4)
    v:   x_0 = alpha x_t - sigma v             (Salimans & Ho 2022, App. D; uses alpha^2+sigma^2=1)
    """
    check_prediction(prediction)
    if prediction == "eps":
        return (x_t - sigma * pred) / alpha
    if prediction == "v":
        return alpha * x_t - sigma * pred
    return pred


def eps_from(pred: Tensor, x_t: Tensor, alpha: Coef, sigma: Coef, prediction: str = "eps") -> Tensor:
    """Noise estimate from a raw prediction.

    v:  eps = sigma x_t + alpha v              (Salimans & Ho 2022, App. D)
    x0: eps = (x_t - alpha x_0) / sigma        (Ho et al. 2020, eq. 4)
    """
    check_prediction(prediction)
    if prediction == "eps":
        return pred
    if prediction == "v":
        return sigma * x_t + alpha * pred
    return (x_t - alpha * pred) / sigma


def v_from(pred: Tensor, x_t: Tensor, alpha: Coef, sigma: Coef, prediction: str = "eps") -> Tensor:
    """v estimate from a raw prediction (via x_0 and eps)."""
    check_prediction(prediction)
    if prediction == "v":
        return pred
    x0 = x0_from(pred, x_t, alpha, sigma, prediction)
    eps = eps_from(pred, x_t, alpha, sigma, prediction)
    return v_target(x0, eps, alpha, sigma)


def convert(pred: Tensor, x_t: Tensor, alpha: Coef, sigma: Coef, source: str, target: str) -> Tensor:
    """Re-express a `source`-type prediction as a `target`-type one."""
    check_prediction(target)
    if target == "eps":
        return eps_from(pred, x_t, alpha, sigma, source)
    if target == "v":
        return v_from(pred, x_t, alpha, sigma, source)
    return x0_from(pred, x_t, alpha, sigma, source)
