"""Which parameters AdamW's weight decay pulls towards zero: weight matrices and kernels, not
biases or normalisation gains.

Decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2, line 12) shrinks every parameter
it is given: theta <- theta - lr * lambda * theta. For the weights of a convolution, a linear
layer or an embedding table that is the regulariser intended. For a GroupNorm / LayerNorm gain
it pulls the normalised activations towards zero, and a bias has no scale to regularise, so
the usual practice (GPT-2 and nanoGPT's `configure_optimizers`, timm's optimizer factory) decays
only tensors of two or more dimensions. The UNet's and the VAE's biases and norm gains are
1-D; their weights 2-D (linear, embedding) or 4-D (convolution).

The optimizer always holds both groups, even at weight decay 0, so that a checkpoint's layout
does not hang on a setting a resume may change. Each group carries `decay` (whether the
configured weight decay applies) and `module_order` (the positions of its parameters in
`module.parameters()`), which is what `regrouped` needs to read a checkpoint written before the
split: one group of every parameter in module order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW param groups of `module`'s parameters: tensors of 2+ dimensions, decayed by
    `weight_decay`, then the rest (biases, norm gains), not decayed. Each keeps module order."""
    params = list(module.parameters())
    decayed = [i for i, p in enumerate(params) if p.dim() >= 2]
    kept = [i for i, p in enumerate(params) if p.dim() < 2]
    return [
        {"params": [params[i] for i in decayed], "weight_decay": weight_decay, "decay": True,
         "module_order": decayed},
        {"params": [params[i] for i in kept], "weight_decay": 0.0, "decay": False, "module_order": kept},
    ]


def group_weight_decay(group: dict[str, Any], weight_decay: float) -> float:
    """The weight decay `group` takes when the run's setting is `weight_decay`: all of it for a
    group without a `decay` flag (one built by hand, the discriminator's), none where it is False."""
    return weight_decay if group.get("decay", True) else 0.0


def regrouped(state: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`state` (an optimizer state_dict) in the group layout of `optimizer`.

    A state with as many groups as the optimizer is returned as it is. A state of one group (a
    checkpoint from before `decay_groups`) is split the way the optimizer's groups were built,
    by their `module_order`: saved parameter k is the module's parameter k. The saved group's
    settings go to every group; the caller sets the run's settings afterwards.
    """
    saved = state["param_groups"]
    groups = optimizer.param_groups
    if len(saved) == len(groups):
        return state
    if len(saved) != 1 or not all("module_order" in g for g in groups):
        raise ValueError(f"the saved optimizer state has {len(saved)} param groups where this optimizer "
                         f"has {len(groups)}, and no rule says how they correspond")
    old_ids = saved[0]["params"]
    count = sum(len(g["params"]) for g in groups)
    if len(old_ids) != count:
        raise ValueError(f"the saved optimizer state holds {len(old_ids)} parameters; this model has {count}")
    settings = {k: v for k, v in saved[0].items() if k != "params"}
    new_state: dict[int, Any] = {}
    new_groups = []
    index = 0  # state_dict numbers parameters across groups, in group order
    for group in groups:
        ids = []
        for k in group["module_order"]:
            if old_ids[k] in state["state"]:
                new_state[index] = state["state"][old_ids[k]]
            ids.append(index)
            index += 1
        new_groups.append({**settings, "decay": group["decay"], "module_order": list(group["module_order"]),
                           "params": ids})
    return {"state": new_state, "param_groups": new_groups}
