"""AdamW's weight decay reaches weights only, and checkpoints written before the split still resume.

The decoupled decay of AdamW (Loshchilov & Hutter 2019, Algorithm 2) is theta <- theta * (1 - lr *
lambda) on top of Adam's step; with a zero gradient Adam's step is zero, so one step leaves a
decayed parameter at exactly (1 - lr * lambda) times its value and a kept one where it was.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ldmkit.models import UNet, UNetConfig
from ldmkit.train import load_training_state, run_training, save_training_state
from ldmkit.train.decay_groups import decay_groups, regrouped
from ldmkit.train.optimizer_resume import load_optimizer_state
from test_resume import _losses, _stop_after, assert_same_training_state
from test_train_e2e import micro_config, one_thread, write_color_dataset  # noqa: F401 (autouse fixture)


def _block() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Linear(4, 4), nn.LayerNorm(4),
                         nn.Embedding(5, 4))


def test_groups_split_weights_from_biases_and_norm_gains():
    unet = UNet(UNetConfig(in_channels=4, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                           attention_levels=(1,), head_dim=16, norm_groups=8, num_classes=3))
    groups = decay_groups(unet, 0.1)
    names = {id(p): n for n, p in unet.named_parameters()}
    decayed = [names[id(p)] for p in groups[0]["params"]]
    kept = [names[id(p)] for p in groups[1]["params"]]
    assert sorted(decayed + kept) == sorted(names.values())  # every parameter, once
    assert all(n.endswith("weight") for n in decayed)
    assert any(".norm" in n and n.endswith("weight") for n in kept)  # GroupNorm gains are not decayed
    assert all(n.endswith("bias") or "norm" in n for n in kept)
    assert any("class_emb" in n or "emb" in n for n in decayed)  # embedding tables are weights
    assert (groups[0]["weight_decay"], groups[1]["weight_decay"]) == (0.1, 0.0)
    order = [names[id(p)] for p in unet.parameters()]
    for group in groups:
        assert [order[i] for i in group["module_order"]] == [names[id(p)] for p in group["params"]]


def test_one_step_decays_weights_by_the_closed_form_and_leaves_the_rest():
    torch.manual_seed(0)
    block = _block()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_()
    before = {n: p.detach().clone() for n, p in block.named_parameters()}
    lr, wd = 0.1, 0.5
    opt = torch.optim.AdamW(decay_groups(block, wd), lr=lr)
    for p in block.parameters():
        p.grad = torch.zeros_like(p)  # Adam's own step is zero: only the decay moves a parameter
    opt.step()
    for name, p in block.named_parameters():
        factor = (1 - lr * wd) if p.dim() >= 2 else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=0, atol=1e-7, msg=name)
    moved = {n for n, p in block.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved == {"0.weight", "2.weight", "4.weight"}


def _stepped(module: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in module.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


def test_a_one_group_state_is_regrouped_by_module_order():
    torch.manual_seed(0)
    old_model, new_model = _block(), _block()
    new_model.load_state_dict(old_model.state_dict())
    old_opt = torch.optim.AdamW(old_model.parameters(), lr=1e-2, weight_decay=0.0)  # a checkpoint's layout before
    _stepped(old_model, old_opt, 3)
    new_opt = torch.optim.AdamW(decay_groups(new_model, 0.0), lr=1e-2)
    new_model.load_state_dict(old_model.state_dict())
    # a copy, as a checkpoint read from disk is: a state_dict shares the live moments
    load_optimizer_state(new_opt, copy.deepcopy(old_opt.state_dict()), weight_decay=0.25)
    for p_old, p_new in zip(old_model.parameters(), new_model.parameters()):
        for key, value in old_opt.state[p_old].items():
            assert torch.equal(new_opt.state[p_new][key], value), key
    assert [g["weight_decay"] for g in new_opt.param_groups] == [0.25, 0.0]  # the run's setting, on weights only
    for group in new_opt.param_groups:
        group["weight_decay"] = 0.0
    _stepped(old_model, old_opt, 2)
    _stepped(new_model, new_opt, 2)  # the same updates as the optimizer the state came from
    for p_old, p_new in zip(old_model.parameters(), new_model.parameters()):
        assert torch.equal(p_old, p_new)


def test_a_state_of_another_shape_is_refused():
    block = _block()
    opt = torch.optim.AdamW(decay_groups(block, 0.0))
    small = torch.optim.AdamW(nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match="holds 2 parameters"):
        regrouped(small.state_dict(), opt)
    three = {"state": {}, "param_groups": [{"params": []}] * 3}
    with pytest.raises(ValueError, match="3 param groups"):
        regrouped(three, opt)


def _as_one_group(optimizer_state: dict) -> dict:
    """A two-group optimizer state in the layout written before the split: one group, module order."""
    groups = optimizer_state["param_groups"]
    by_module_index = {}
    for group in groups:
        for k, slot in zip(group["module_order"], group["params"]):
            by_module_index[k] = slot
    count = sum(len(group["params"]) for group in groups)
    state = {k: optimizer_state["state"][by_module_index[k]] for k in range(count)
             if by_module_index[k] in optimizer_state["state"]}
    settings = {k: v for k, v in groups[0].items() if k not in ("params", "decay", "module_order")}
    return {"state": state, "param_groups": [{**settings, "params": list(range(count))}]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_color_dataset(tmp_path_factory.mktemp("data"), per_class=6, size=8)


def test_a_checkpoint_from_before_the_split_resumes_exactly(tmp_path, data, monkeypatch):
    whole = tmp_path / "whole"
    run_training(micro_config(data, vae_steps=2, steps=5), whole)

    parts = tmp_path / "parts"
    _stop_after(monkeypatch, 2 + 3)  # the VAE, then 3 diffusion steps
    run_training(micro_config(data, vae_steps=2, steps=5), parts)
    state = load_training_state(parts / "checkpoint.pt")
    assert (state["stage"], state["step"]) == ("diffusion", 3)
    state["optimizer"] = _as_one_group(state["optimizer"])
    assert len(state["optimizer"]["param_groups"]) == 1
    save_training_state(parts / "checkpoint.pt", state)
    monkeypatch.undo()
    run_training(micro_config(data, vae_steps=2, steps=5), parts)

    assert _losses(parts) == _losses(whole)  # every loss, bitwise
    assert_same_training_state(load_training_state(whole / "checkpoint.pt"),
                               load_training_state(parts / "checkpoint.pt"))
