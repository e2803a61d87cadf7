"""Loading a checkpoint's optimizer state under the settings the run has now.

`Optimizer.load_state_dict` restores the saved param groups whole: their betas, weight decay and
learning rate come back with the moments. A resume promises the opposite for every training
setting it allows to change ("used from here on", resume_settings.py), so after loading, the
groups are given the configured values again. Only the moments and step counts carry over.
A checkpoint written before the optimizer split its parameters into decayed and not-decayed
groups (decay_groups.py) is regrouped first.
"""
from __future__ import annotations

from typing import Any

import torch

from ldmkit.train.decay_groups import group_weight_decay, regrouped
from ldmkit.train.step_compile import optimizer_state_like_params


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any], **settings: Any) -> None:
    """Load `state` into `optimizer`, then set `settings` (e.g. betas=..., weight_decay=...) on every
    param group (`weight_decay` only on the groups that decay: decay_groups.py). Setting the values
    a group already holds changes nothing, so an unchanged resume stays bit-exact."""
    optimizer.load_state_dict(regrouped(state, optimizer))
    optimizer_state_like_params(optimizer)
    for group in optimizer.param_groups:
        group.update(settings)
        if "weight_decay" in settings:
            group["weight_decay"] = group_weight_decay(group, settings["weight_decay"])
