"""diffusers scheduler configs <-> ldmkit `NoiseSchedule`, prediction type and sampler defaults.

A diffusers `scheduler_config.json` mixes three things ldmkit keeps apart: the training noise
schedule (betas), the network's parameterisation (`prediction_type`), and how a sampler spaces
its steps (`timestep_spacing`, `steps_offset`, `set_alpha_to_one`). The last group becomes
"sampler defaults", options passed to whichever ldmkit sampler accepts them, the way diffusers
carries a config over when one scheduler class is swapped for another (`from_config`).
`clip_sample` / thresholding are pixel-space options that latent models leave off; they are
not carried over. Nor is `DDPMScheduler`'s `variance_type` "fixed_large": ldmkit's ddpm sampler
takes the posterior variance ("fixed_small", Ho et al. 2020, sec. 3.2, the diffusers default); a
learned variance ("learned", "learned_range": the network's extra output channels) is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ldmkit.diffusion import NoiseSchedule
from ldmkit.errors import UserError
from ldmkit.train.inference_file import SAMPLER_DEFAULTS, sampler_defaults_problem

_PREDICTION_FROM = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_PREDICTION_TO = {v: k for k, v in _PREDICTION_FROM.items()}
_KIND_FROM = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
_KIND_TO = {v: k for k, v in _KIND_FROM.items()}
# ldmkit's own sampler defaults, kept verbatim beside diffusers' keys (diffusers ignores
# names starting with "_"), so ldmkit -> diffusers -> ldmkit gives back the same defaults.
_OWN_DEFAULTS = "_ldmkit_sampler_defaults"


def schedule_from_diffusers(config: Mapping[str, Any]) -> tuple[NoiseSchedule, str, dict[str, Any]]:
    """(noise schedule, prediction "eps" | "v" | "x0", sampler defaults) of a diffusers
    scheduler config."""
    cfg = dict(config)
    steps = int(cfg.get("num_train_timesteps", 1000))
    zero_snr = bool(cfg.get("rescale_betas_zero_snr", False))
    if cfg.get("trained_betas") is not None:
        betas = torch.tensor(cfg["trained_betas"], dtype=torch.float64)
        schedule = NoiseSchedule(betas)
        if zero_snr:
            raise UserError("scheduler config with both trained_betas and rescale_betas_zero_snr is not supported")
    else:
        name = cfg.get("beta_schedule", "linear")
        if name not in _KIND_FROM:
            raise UserError(f"diffusers beta_schedule {name!r} is not supported (supported: {', '.join(_KIND_FROM)})")
        kind = _KIND_FROM[name]
        betas_range = {} if kind == "cosine" else dict(
            beta_start=float(cfg.get("beta_start", 0.0001)), beta_end=float(cfg.get("beta_end", 0.02))
        )
        schedule = NoiseSchedule.create(kind, steps, zero_terminal_snr=zero_snr, **betas_range)
    if str(cfg.get("variance_type")).startswith("learned"):
        raise UserError(f"diffusers variance_type {cfg['variance_type']!r} (a network that predicts its own variance) "
                        "is not supported: ldmkit's samplers take the noise prediction alone")
    prediction_type = cfg.get("prediction_type", "epsilon")
    if prediction_type not in _PREDICTION_FROM:
        raise UserError(f"diffusers prediction_type {prediction_type!r} is not supported ({list(_PREDICTION_FROM)})")
    if isinstance(cfg.get(_OWN_DEFAULTS), dict):  # written by ldmkit: exactly what it had
        return schedule, _PREDICTION_FROM[prediction_type], _checked_own_defaults(cfg[_OWN_DEFAULTS])
    # Only what the config states: where it is silent, each ldmkit sampler keeps its own default,
    # which is the default of the matching diffusers scheduler class (leading for DDIM, ...).
    defaults: dict[str, Any] = {}
    if cfg.get("timestep_spacing") is not None:
        defaults["spacing"] = cfg["timestep_spacing"]
    if "steps_offset" in cfg:
        offset = cfg["steps_offset"]
        defaults["steps_offset"] = int(offset) if isinstance(offset, float) and offset.is_integer() else offset
    if "set_alpha_to_one" in cfg:
        defaults["set_alpha_to_one"] = bool(cfg["set_alpha_to_one"])
    if cfg.get("use_karras_sigmas"):  # Euler's, Heun's and DPM-Solver's option: ldmkit's three take it
        defaults["karras_sigmas"] = True
    _check_step_settings(defaults, steps)
    return schedule, _PREDICTION_FROM[prediction_type], defaults


def _check_step_settings(defaults: dict[str, Any], steps: int) -> None:
    """Refuse, when the config is read, step settings every generation would fail on later."""
    from ldmkit.diffusion.timesteps import SPACINGS

    spacing, offset = defaults.get("spacing"), defaults.get("steps_offset")
    if spacing is not None and spacing not in SPACINGS:
        raise UserError(f"the scheduler config's timestep_spacing is {spacing!r:.60}; "
                        f"ldmkit's samplers take {', '.join(SPACINGS)}")
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < steps):
        raise UserError(f"the scheduler config's steps_offset is {offset!r:.60}; it must be an integer "
                        f"from 0 to {steps - 1} (num_train_timesteps - 1)")


def schedule_to_diffusers(
    schedule: NoiseSchedule, prediction: str, sampler_defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A diffusers `DDIMScheduler` config with this schedule, prediction and step spacing."""
    from ldmkit import __version__

    spec = schedule.to_dict()
    defaults = dict(sampler_defaults or {})
    out: dict[str, Any] = {
        "_class_name": "DDIMScheduler",
        "_ldmkit_version": __version__,
        "num_train_timesteps": schedule.num_steps,
        "prediction_type": _PREDICTION_TO[prediction],
        "clip_sample": False,  # latents are not clipped
        "timestep_spacing": defaults.get("spacing", "leading"),
        "steps_offset": int(defaults.get("steps_offset", 0)),
        "set_alpha_to_one": bool(defaults.get("set_alpha_to_one", True)),
        "use_karras_sigmas": bool(defaults.get("karras_sigmas", False)),  # for an Euler / DPM scheduler from_config
        "rescale_betas_zero_snr": bool(spec.get("zero_terminal_snr", False)),
        _OWN_DEFAULTS: defaults,
    }
    if spec["kind"] == "custom":
        out.update(beta_schedule="linear", trained_betas=schedule.betas.tolist())
    else:
        out["beta_schedule"] = _KIND_TO[spec["kind"]]
        if spec["kind"] != "cosine":
            out.update(beta_start=spec["beta_start"], beta_end=spec["beta_end"])
    return out


def _checked_own_defaults(defaults: Mapping[str, Any]) -> dict[str, Any]:
    """ldmkit's own sampler defaults from a scheduler config, checked as a model file's are when read
    (a hand-edited entry converted fine, and the file written was then refused as damaged)."""
    wrong = sampler_defaults_problem(dict(defaults))
    if wrong is not None:
        raise UserError(f"the scheduler config's {_OWN_DEFAULTS} has {wrong}; it may hold "
                        f"{', '.join(f'{k} ({t.__name__})' for k, t in SAMPLER_DEFAULTS.items())}")
    return dict(defaults)
