"""The device-side skip of non-finite steps (StepGuard.gate / settle, apply_update, gated EMA):
the same decisions the per-step host check made, with the host reading them in batches."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ldmkit.train.distributed import DistInfo
from ldmkit.train.ema import EMA
from ldmkit.train.signals import StopSignal
from ldmkit.train.step_guard import NonFiniteLossError, StepGuard, apply_update

NAN, INF = float("nan"), float("inf")


def _guard(stop: StopSignal | None = None, max_bad_steps: int = 3) -> StepGuard:
    dist = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    return StepGuard(dist, stop or StopSignal(), max_bad_steps=max_bad_steps)


def _gate(guard: StepGuard, loss: torch.Tensor, norm: torch.Tensor, *, scaled: bool = False) -> torch.Tensor:
    """One step's decision, queued for settle, as a training step makes it."""
    applied, row = guard.judge(loss, norm, scaled=scaled)
    guard.record(row)
    return applied


def test_judge_flags_non_finite_loss_or_norm_and_settle_reads_them_in_order():
    guard = _guard()
    cases = [(1.0, 0.5, 1.0), (NAN, 0.5, 0.0), (2.0, INF, 0.0), (3.0, 0.1, 1.0)]
    for loss, norm, expected in cases:
        applied = _gate(guard, torch.tensor(loss), torch.tensor(norm))
        assert isinstance(applied, torch.Tensor) and applied.item() == expected
    assert guard.skipped == 0  # nothing is counted before the host settles
    losses = guard.settle(step=4, last_saved=None)
    assert losses[0] == 1.0 and losses[3] == 3.0 and losses[1] != losses[1]  # NaN kept in its place
    assert guard.skipped == 2 and guard.bad_streak == 0 and not guard.stop_agreed
    assert guard.settle(step=4, last_saved=None) == []  # nothing pending


def test_with_a_grad_scaler_inf_gradients_are_skipped_but_not_counted_as_bad():
    guard = _guard(max_bad_steps=2)
    for _ in range(4):
        assert _gate(guard, torch.tensor(1.0), torch.tensor(INF), scaled=True).item() == 0.0
    guard.settle(step=4, last_saved=None)
    assert guard.skipped == 0


def test_a_streak_of_bad_steps_raises_with_the_step_where_it_reached_the_limit():
    guard = _guard(max_bad_steps=3)
    for loss in [1.0, NAN, 1.0, NAN, NAN, NAN, NAN]:  # steps 11..17; the streak reaches 3 at step 16
        _gate(guard, torch.tensor(loss), torch.tensor(1.0))
    with pytest.raises(NonFiniteLossError, match=r"3 steps in a row \(at step 16\).*checkpoint \(step 10\) is intact"):
        guard.settle(step=17, last_saved=10)


def test_a_stop_is_seen_at_once_in_one_process_and_agreed_at_settle():
    stop = StopSignal()
    guard = _guard(stop)
    _gate(guard, torch.tensor(1.0), torch.tensor(1.0))
    assert not guard.stop_requested_here()
    stop.request("test")
    assert guard.stop_requested_here() and not guard.stop_agreed
    guard.settle(step=1, last_saved=None)
    assert guard.stop_agreed


def _adam_pair():
    torch.manual_seed(0)
    a = nn.Linear(4, 3)
    b = nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    make = lambda m: torch.optim.AdamW(m.parameters(), lr=0.1, fused=True)  # noqa: E731
    return a, b, make(a), make(b)


def test_apply_update_skips_on_the_device_and_otherwise_equals_a_plain_step():
    a, b, opt_a, opt_b = _adam_pair()
    for gate in [1.0, 0.0, 1.0]:
        for m in (a, b):
            m.weight.grad = torch.ones_like(m.weight)
            m.bias.grad = torch.full_like(m.bias, 2.0)
        before = a.weight.detach().clone()
        apply_update(opt_a, torch.tensor(gate))
        if gate:
            opt_b.step()
            assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
        else:
            assert torch.equal(a.weight, before)
    assert {int(s["step"]) for s in opt_a.state.values()} == {2}  # the skipped step is not counted


def test_apply_update_reads_the_flag_on_the_host_for_an_optimizer_that_cannot_skip():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model.weight.grad = torch.ones_like(model.weight)
    before = model.weight.detach().clone()
    apply_update(opt, torch.tensor(0.0))
    assert torch.equal(model.weight, before)
    apply_update(opt, torch.tensor(1.0))
    assert torch.allclose(model.weight, before - 1.0)


def test_gated_ema_equals_the_plain_update_and_ignores_skipped_steps():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    plain, gated = EMA(model, 0.99, warmup=True), EMA(model, 0.99, warmup=True)
    for gate in [1.0, 1.0, 0.0, 1.0]:
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        if gate:
            plain.update(model)
        gated.update(model, gate=torch.tensor(gate))
        assert torch.allclose(plain.module.weight, gated.module.weight, atol=1e-6)
    assert plain.num_updates == gated.num_updates == 3
    restored = EMA(nn.Linear(3, 2), 0.5)
    restored.load_state_dict(gated.state_dict())
    assert restored.num_updates == 3 and restored.current_decay() == pytest.approx(4 / 13)


def test_ema_lists_a_model_once_and_relists_for_another():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    start = model.weight.detach().clone()
    ema = EMA(model, 0.5)
    ema.update(model)
    with torch.no_grad():
        model.weight.fill_(1.0)  # in place, as optimizers and load_state_dict change weights
    ema.update(model)  # the cached lists see the new values
    assert torch.allclose(ema.module.weight, 0.5 * start + 0.5)
    other = nn.Linear(3, 2)
    with torch.no_grad():
        other.weight.fill_(3.0)
    before = ema.module.weight.clone()
    ema.update(other)  # another model object: its tensors, not the cached ones
    assert torch.allclose(ema.module.weight, 0.5 * before + 1.5)
    with pytest.raises(ValueError, match="different architecture"):
        ema.update(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)))


def test_settle_is_due_every_few_steps_before_periodic_work_at_the_end_and_on_a_stop():
    from ldmkit.train.step_guard import SETTLE_EVERY

    stop = StopSignal()
    guard = _guard(stop)
    due = lambda step, periodic=False: guard.settle_due(step, total_steps=101, periodic=periodic)  # noqa: E731
    assert due(SETTLE_EVERY) and due(2 * SETTLE_EVERY) and due(101) and due(7, periodic=True)
    assert not due(7) and not due(SETTLE_EVERY + 1)
    stop.request("test")
    assert due(7)
