"""What a resume may change, what it may not, and what it says about it.

Refused: other class names, or a conditional run resumed on unconditional data (or back). The
UNet's labels are indices: label 0 has learned the first class, and resuming on data whose
first class is another one would silently give what it learned another name. (The architecture
is checked in run.py; this comes first because it names the real difference.)

Allowed, with one note line: any other training setting (--batch-size, --lr, --steps, --data of
the same classes, ...). RUN/config.json describes the run from now on, and the change is
recorded in RUN/log.jsonl (an "event": "resume" line with the step), which keeps the history:
config.json never claims a setting for steps that ran with another. A stage that has finished
keeps the settings it ran with: a VAE trained 40 steps stays `vae.steps` 40 in config.json and
in vae.safetensors, whatever --vae-steps the resume gives (the note says so).

A run saved before a setting existed is read as what the code did then (`saved_config`): a run
from before `vae.ema_decay` trained its VAE without an average, so its resume says "vae.ema_decay
0.0 -> 0.99" rather than claim the average for steps that ran without it.

Not compared: the settings of how this process runs rather than what the run learns (the
device, compilation, logging, the time limit, --stage), which may differ at every invocation.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ldmkit.data.class_names import same_class_names
from ldmkit.errors import UserError
from ldmkit.train.config import RunConfig

_PER_INVOCATION = ("stage", "vae_path", "device", "num_workers", "compile", "compile_mode", "step_graph", "quiet",
                   "time_limit", "log_every", "checkpoint_every")
_SHOWN_CLASSES = 8  # a longer list (ImageNet's 1000) is cut to its first names and a count


def _classes(names: list[str]) -> str:
    if not names:
        return "no classes (unconditional)"
    shown = ", ".join(names[:_SHOWN_CLASSES])
    more = f", ... ({len(names)} in all)" if len(names) > _SHOWN_CLASSES else ""
    return f"classes [{shown}{more}]"


def check_same_classes(saved: list[str] | None, names: list[str], run_dir: Path, data: str) -> None:
    """UserError unless the data's class names are the checkpoint's (`saved`; None: not recorded)."""
    if saved is None or same_class_names(saved, names):  # a run from before names were stored in NFC
        return
    raise UserError(f"{run_dir} was trained on {_classes(list(saved))}, but --data {data} has {_classes(names)}: "
                    "resuming would give what each label learned another name; resume with the original "
                    "--data, or train into a new --out")


# (section, field) -> the value that gives the behaviour from before the field was added, for
# fields whose default today is another behaviour. (Fields whose default is the old behaviour,
# like vae.lr_schedule "constant", need no entry.)
_BEFORE_THE_FIELD: dict[tuple[str, str], Any] = {("vae", "ema_decay"): 0.0}


def saved_config(data: dict[str, Any]) -> RunConfig:
    """A run's own saved config (RUN/config.json or a checkpoint's), with the fields it predates
    set to the behaviour it ran with."""
    data = copy.deepcopy(dict(data))
    for (section, name), before in _BEFORE_THE_FIELD.items():
        part = data.get(section)
        if isinstance(part, dict) and name not in part:
            part[name] = before
    return RunConfig.from_dict(data)


def _settings(config: RunConfig) -> dict[str, Any]:
    """The compared settings, flat ("diffusion.lr"); the models are run.py's architecture check's."""
    flat: dict[str, Any] = {}
    for key, value in config.to_dict().items():
        if key in ("vae", "diffusion"):
            flat.update({f"{key}.{k}": v for k, v in value.items() if k != "model"})
        elif key not in _PER_INVOCATION:
            flat[key] = value
    return flat


def settle_resumed_settings(saved: RunConfig, config: RunConfig, state: dict[str, Any]) -> tuple[str, dict] | None:
    """Give `config` back the settings of a finished stage (in place) and describe what else
    changed: (the note line, the log record), or None when nothing did."""
    vae_done = state["stage"] == "diffusion" or bool(state.get("complete"))
    old, asked = _settings(saved), _settings(config)
    if vae_done:
        config.vae = copy.deepcopy(saved.vae)
        if state["stage"] == "diffusion" and config.vae_path is None:
            config.vae_path = saved.vae_path  # where the checkpoint's VAE came from, if from --vae
    new = _settings(config)
    changed = {k: [old[k], new[k]] for k in old if old[k] != new[k]}
    kept = {k: [old[k], asked[k]] for k in old if old[k] == new[k] != asked[k]}
    if not changed and not kept:
        return None
    parts = []
    if changed:
        parts.append("used from here on: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    if kept:
        kept_text = ", ".join(f"{k} {a} (not {b})" for k, (a, b) in kept.items())
        parts.append(f"the VAE stage has finished and keeps {kept_text}")
    line = f"note: settings differ from the checkpoint's ({state['stage']} step {state['step']}); " + "; ".join(parts)
    record = {"event": "resume", "step": state["step"], "changed": changed, "kept": kept}
    return line, record
