"""Classifier-free guidance: one batched forward, exact conditional at scale 1, rescale."""

import pytest
import torch

from ldmkit.diffusion import classifier_free_guidance, rescale_guidance
from ldmkit.errors import UserError


class CountingModel:
    """model(x, t, class_labels, context) = x * (1 + label) + t + context.sum(); counts calls."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, *, class_labels=None, context=None):
        self.batches.append(x.shape[0])
        out = x * (1 + class_labels.view(-1, 1).to(x.dtype)) + t.view(-1, 1)
        if context is not None:
            out = out + context.sum(dim=1, keepdim=True)
        return out


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([10.0, 500.0, 999.0], dtype=torch.float64)
    context = torch.randn(3, 4, generator=g, dtype=torch.float64)
    cond = {"class_labels": torch.tensor([1, 2, 3]), "context": context}
    uncond = {"class_labels": torch.tensor([9, 9, 9]), "context": torch.zeros(3, 4, dtype=torch.float64)}
    return x, t, cond, uncond


def test_scale_one_is_exactly_the_conditional_prediction_in_one_pass():
    x, t, cond, uncond = _inputs()
    model = CountingModel()
    out = classifier_free_guidance(model, 1.0, cond=cond, uncond=uncond)(x, t)
    assert model.batches == [3]  # no unconditional pass at all
    assert torch.equal(out, CountingModel()(x, t, **cond))


def test_guided_prediction_uses_one_batched_forward():
    x, t, cond, uncond = _inputs()
    model = CountingModel()
    out = classifier_free_guidance(model, 7.5, cond=cond, uncond=uncond)(x, t)
    assert model.batches == [6]  # cond and uncond concatenated on the batch dimension
    ref = CountingModel()
    c, u = ref(x, t, **cond), ref(x, t, **uncond)
    # Ho & Salimans 2022: uncond + s (cond - uncond).
    assert torch.allclose(out, u + 7.5 * (c - u), atol=1e-12)
    zero = classifier_free_guidance(CountingModel(), 0.0, cond=cond, uncond=uncond)(x, t)
    assert torch.equal(zero, u)


def test_rescale_matches_conditional_std():
    x, t, cond, uncond = _inputs()
    model = CountingModel()
    plain = classifier_free_guidance(model, 5.0, cond=cond, uncond=uncond)(x, t)
    full = classifier_free_guidance(model, 5.0, cond=cond, uncond=uncond, rescale=1.0)(x, t)
    half = classifier_free_guidance(model, 5.0, cond=cond, uncond=uncond, rescale=0.5)(x, t)
    c = model(x, t, **cond)
    # Lin et al. 2024, eq. 15: with phi = 1 each sample has the conditional prediction's std.
    assert torch.allclose(full.std(dim=1), c.std(dim=1), rtol=1e-12)
    assert not torch.allclose(plain.std(dim=1), c.std(dim=1), rtol=1e-3)
    assert torch.allclose(half, 0.5 * full + 0.5 * plain, atol=1e-12)  # eq. 16
    assert torch.equal(rescale_guidance(plain, c, 0.0), plain)


def test_guidance_input_errors():
    x, t, cond, uncond = _inputs()
    with pytest.raises(UserError, match="same keywords"):
        only_labels = {"class_labels": uncond["class_labels"]}
        classifier_free_guidance(CountingModel(), 3.0, cond=cond, uncond=only_labels)
    with pytest.raises(UserError, match="rescale"):
        classifier_free_guidance(CountingModel(), 3.0, cond=cond, uncond=uncond, rescale=2.0)
