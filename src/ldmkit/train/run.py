"""`run_training`: one `ldm train` run, from a config to a RUN folder.

    RUN/config.json          the resolved config (models included)
    RUN/log.jsonl            metrics and messages, one JSON object per line
    RUN/checkpoint.pt        full training state (the current stage), for exact resume
    RUN/vae.safetensors      the trained VAE with its latent stats (after the VAE stage)
    RUN/latents.safetensors  the encoded dataset (see latent_cache)
    RUN/model.safetensors    EMA UNet + VAE: the inference file
    RUN/samples/             sample grids and VAE reconstructions
    RUN/train.lock           while a run trains: one `ldm train` per folder (run_lock.py)

Order: processes -> the folder's lock -> (resume? or nothing left to do) -> the checks that need
no data (run folder, image size, precision, batch splits) -> data -> models resolved against the
data, a resume's classes and settings -> RUN/config.json (every refusal comes before it, so a
refused run leaves no half-made folder) -> VAE stage (or --vae PATH) -> latent cache -> diffusion
stage. A stop (signal, time limit) can end any of the last three; `run_training_outcome` says which stopped
it (run_outcome.py). The same command runs on one process or under torchrun; rank 0 writes every
file.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from ldmkit.atomic import atomic_write_text
from ldmkit.data import load_image_dataset
from ldmkit.errors import UserError
from ldmkit.json_text import read_json_file
from ldmkit.models import AutoencoderKL, AutoencoderKLConfig, UNet, UNetConfig
from ldmkit.run_files import CHECKPOINT_NAME, CONFIG_NAME, MODEL_FILE, VAE_FILE
from ldmkit.train.batches import VAE_BATCH_SETTING, per_rank_batch
from ldmkit.train.checkpoint import check_run_state, load_training_state, loading_run_state, save_training_state
from ldmkit.train.config import RunConfig, unet_model_dict, vae_model_dict, validate
from ldmkit.train.context import StageContext
from ldmkit.train.diffusion_stage import DiffusionTrainer
from ldmkit.train.distributed import DistInfo, barrier, cleanup, seed_everything, setup_distributed
from ldmkit.train.inference_file import load_inference_file, read_inference_metadata, save_inference_file
from ldmkit.train.latent_cache import load_or_build_latents
from ldmkit.train.previews import save_reconstructions
from ldmkit.train.resume_settings import check_same_classes, saved_config, settle_resumed_settings
from ldmkit.train.run_lock import hold_run_lock
from ldmkit.train.run_outcome import RunOutcome, agreed_stop
from ldmkit.train.run_paths import check_models_have_a_checkpoint, check_run_folder
from ldmkit.train.signals import StopSignal
from ldmkit.train.step_guard import Precision, slow_precision_note
from ldmkit.train.stop_check import TrainingStopped, check_stop
from ldmkit.train.vae_stage import train_vae

T = TypeVar("T")
# Fields that fix the architecture or the meaning of the latents: a resumed run must keep them.
_FROZEN_TOP = ("image_size", "channels")
_FROZEN_DIFFUSION = ("prediction", "schedule", "num_train_timesteps", "beta_start", "beta_end", "zero_terminal_snr")


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run wrote to RUN/config.json."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"{run_dir} has no {CONFIG_NAME}: not an ldmkit run folder")
    try:
        data = read_json_file(path)
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    return saved_config(data)


def _resolve_models(config: RunConfig, channels: int, num_classes: int) -> None:
    """Fill the model dicts from their presets and fit them to the data (in place)."""
    vae = dict(config.vae.model or vae_model_dict(config.vae.preset))
    vae.update(in_channels=channels, out_channels=channels)
    config.vae.model = AutoencoderKLConfig.from_dict(vae).to_dict()
    latent_channels = config.vae.model["latent_channels"]
    unet = dict(config.diffusion.model or unet_model_dict(config.diffusion.preset))
    unet.update(in_channels=latent_channels, out_channels=latent_channels, num_classes=num_classes or None)
    config.diffusion.model = UNetConfig.from_dict(unet).to_dict()


def _check_image_size(config: RunConfig) -> None:
    """UserError unless the image size divides through the VAE and the UNet. Checked before the
    data loads (which at a large size takes a while); the data changes no downsampling."""
    factor = AutoencoderKLConfig.from_dict(config.vae.model or vae_model_dict(config.vae.preset)).downsample_factor
    if config.image_size % factor:
        raise UserError(f"image size {config.image_size} is not divisible by the VAE's downsample factor {factor}")
    unet = config.diffusion.model or unet_model_dict(config.diffusion.preset)
    unet_factor = UNetConfig.from_dict(unet).downsample_factor
    if (config.image_size // factor) % unet_factor:
        raise UserError(f"latents of {config.image_size // factor} px do not divide by the UNet's "
                        f"downsample factor {unet_factor}; pick another image size or UNet")


def _check_resumable(saved: RunConfig, new: RunConfig, run_dir: Path) -> None:
    """A UserError naming every architectural difference between a run and its resume."""
    diffs = [f"{k}: {getattr(saved, k)} -> {getattr(new, k)}"
             for k in _FROZEN_TOP if getattr(saved, k) != getattr(new, k)]
    diffs += [f"diffusion.{k}: {getattr(saved.diffusion, k)} -> {getattr(new.diffusion, k)}"
              for k in _FROZEN_DIFFUSION if getattr(saved.diffusion, k) != getattr(new.diffusion, k)]
    for section in ("vae", "diffusion"):
        old, cur = getattr(saved, section).model, getattr(new, section).model
        diffs += [f"{section}.model.{k}: {old.get(k)} -> {cur.get(k)}"
                  for k in sorted(set(old) | set(cur)) if old.get(k) != cur.get(k)]
    if diffs:
        raise UserError(f"{run_dir} holds a run of a different architecture ({'; '.join(diffs[:6])}); "
                        "use a new output folder, or resume with the original settings")


def _load_val(config: RunConfig, channels: int, is_main: bool) -> Any | None:
    """The val split, or None with a warning (an unusable val folder is a mistake worth seeing;
    training goes on without a val loss)."""
    try:
        return load_image_dataset(config.data, "val", image_size=config.image_size, flip=False, channels=channels)
    except UserError as e:
        if is_main:
            warnings.warn(f"no validation split, so no val loss: {e}", stacklevel=2)
        return None


def _check_stages(config: RunConfig, dist: DistInfo, trains_vae: bool) -> None:
    """The refusals the stages would otherwise make after RUN/config.json exists (a half-made
    run folder confuses `ldm info` and later runs): precision on this device, batch splits; and the
    warning of a precision this CPU runs slowly."""
    Precision(config.precision, dist.device)
    if dist.is_main and (note := slow_precision_note(config.precision, dist.device)):
        warnings.warn(note, stacklevel=2)
    if trains_vae:
        per_rank_batch(config.vae.batch_size, dist.world_size, VAE_BATCH_SETTING)
    if config.stage != "vae":
        per_rank_batch(config.diffusion.batch_size, dist.world_size)


def _nothing_to_do(state: dict[str, Any], config: RunConfig, out_dir: Path) -> str | None:
    """The line for a rerun of a run that has done what is asked, which ends there (else it would
    load the data, rewrite its checkpoint and model and report a stage done at 0 img/s); None
    otherwise. A run whose model file is missing goes on, and writes it again."""
    vae_done = state["stage"] == "diffusion" or bool(state.get("complete"))
    if config.stage == "vae":
        if vae_done and (out_dir / VAE_FILE).is_file():
            return f"{out_dir} has finished its VAE stage: nothing to do; train the UNet with --stage diffusion"
        return None
    steps = config.diffusion.steps
    if state["stage"] == "diffusion" and state["step"] >= steps and _model_step(out_dir) == state["step"]:
        return (f"{out_dir} is already trained to step {state['step']} (--steps {steps}): nothing to do; "
                "raise --steps to train further")
    return None


def _model_step(out_dir: Path) -> int | None:
    """The step RUN's model file was exported at (None: no readable model). The checkpoint is
    written first: a run stopped (killed, disk full) during the last export has a checkpoint at
    its last step beside the model of the step before, which a rerun must export again."""
    try:
        return int(read_inference_metadata(out_dir / MODEL_FILE).get("step", -1))
    except (UserError, OSError, ValueError, TypeError):
        return None


def _state_to_resume(out_dir: Path, resume: bool | None) -> dict[str, Any] | None:
    """RUN's checkpoint as `resume` asks (None: if there is one; True: there must be; False: none)."""
    ckpt_path = out_dir / CHECKPOINT_NAME
    if resume is True and not ckpt_path.is_file():
        raise UserError(f"nothing to resume: {ckpt_path} does not exist")
    if resume is False or not ckpt_path.is_file():
        return None
    return check_run_state(load_training_state(ckpt_path), ckpt_path)


def _nothing_to_do_in(config: RunConfig, out_dir: Path, resume: bool | None) -> str | None:
    """`_nothing_to_do` for RUN's checkpoint, read without the lock: a finished run in a folder
    this user cannot write says so, as it would in a writable one (it writes nothing either way)."""
    state = _state_to_resume(out_dir, resume)
    return None if state is None else _nothing_to_do(state, config, out_dir)


def _past_the_end(state: dict[str, Any], config: RunConfig) -> str | None:
    """A line for a resume whose checkpoint is already beyond the asked-for steps (else the run
    would end at once and report "done" without saying why nothing was trained)."""
    flag, steps = ("--steps", config.diffusion.steps) if state["stage"] == "diffusion" else (
        "--vae-steps", config.vae.steps)
    if state.get("complete") or state["step"] <= steps:
        return None
    return (f"the checkpoint is already at {state['stage']} step {state['step']}, past {flag} {steps}: "
            f"nothing to train in that stage (pass {flag} above {state['step']} to train on)")


def run_training(config: RunConfig, out_dir: str | Path, *, resume: bool | None = None) -> Path:
    """Train per `config` into `out_dir` and return it (also when a stop signal or the time
    limit ended the run early, with its checkpoint saved: `run_training_outcome` says which).

    resume: None (default) continues from `out_dir/checkpoint.pt` if there is one; True
    requires one; False starts over (the old checkpoint is replaced at the first save).
    Raises UserError for bad data, configs, a resume into a run of another architecture or of
    other classes, a folder with a model but no checkpoint, or one another run is training in.
    """
    return run_training_outcome(config, out_dir, resume=resume).run_dir


def run_training_outcome(config: RunConfig, out_dir: str | Path, *, resume: bool | None = None) -> RunOutcome:
    """`run_training`, returning how the run ended (`RunOutcome.exit_status`: `ldm train`'s)."""
    started = time.monotonic()
    out_dir = Path(out_dir)
    validate(config)
    check_run_folder(config.data, out_dir)
    dist = setup_distributed(config.device)
    finished = False
    try:
        deadline = started + 60 * config.time_limit if config.time_limit else None
        if out_dir.is_dir() and not os.access(out_dir, os.W_OK):  # nor could it hold the lock
            done = _nothing_to_do_in(config, out_dir, resume)
            if done is None:
                raise UserError(f"{out_dir} is not writable, and ldm train writes its checkpoints, model and "
                                "log there: give another --out, or make it writable")
            if dist.is_main:
                print(done, flush=True)
            finished = True
            return RunOutcome(out_dir)
        with hold_run_lock(out_dir, dist):
            outcome = _run(config, out_dir, resume, dist, deadline)
        finished = True
        return outcome
    finally:
        cleanup(finished)


def _run(config: RunConfig, out_dir: Path, resume: bool | None, dist: DistInfo,
         deadline: float | None) -> RunOutcome:
    def say(text: str) -> None:
        if dist.is_main:
            print(text, flush=True)

    ckpt_path = out_dir / CHECKPOINT_NAME
    state = _state_to_resume(out_dir, resume)
    if state is not None and (done := _nothing_to_do(state, config, out_dir)):
        say(done)
        return RunOutcome(out_dir)
    if config.stage == "diffusion" and not config.vae_path and not (state and state["stage"] == "diffusion"):
        if not (out_dir / VAE_FILE).is_file():
            raise UserError("stage 'diffusion' needs a trained VAE: pass --vae PATH, or use a run folder "
                            "whose VAE stage has finished")
        config.vae_path = str(out_dir / VAE_FILE)  # this RUN's own VAE, from an earlier --stage vae
    seed_everything(config.seed, dist.rank)
    if dist.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~free speed, no visible cost here
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    vae_file = None
    if state is not None and state["stage"] == "diffusion":
        # The VAE comes from the checkpoint, so its architecture is the saved one (which
        # may have come from a --vae file).
        config.vae.model = RunConfig.from_dict(state["config"]).vae.model
    elif config.vae_path:
        _, vae_file, _ = load_inference_file(config.vae_path, "cpu", require_unet=False)
        config.vae.model = vae_file.config.to_dict()
    _check_image_size(config)
    trains_vae = vae_file is None and (state is None or (state["stage"] == "vae" and not state.get("complete")))
    if resume is not False:
        check_models_have_a_checkpoint(out_dir, trains_vae=trains_vae)
    _check_stages(config, dist, trains_vae)

    train_set = load_image_dataset(config.data, "train", image_size=config.image_size, flip=False,
                                   channels=config.channels)
    config.channels = train_set.channels
    val_set = _load_val(config, train_set.channels, dist.is_main)
    class_names = list(train_set.class_names)
    if state is not None:
        check_same_classes(state.get("class_names"), class_names, out_dir, config.data)
    if vae_file is not None and vae_file.config.in_channels != train_set.channels:
        raise UserError(f"the VAE in {config.vae_path} takes {vae_file.config.in_channels}-channel images, "
                        f"the data has {train_set.channels}")
    _resolve_models(config, train_set.channels, len(class_names))
    resumed = None
    if state is not None:
        saved = saved_config(state["config"])
        _check_resumable(saved, config, out_dir)
        resumed = settle_resumed_settings(saved, config, state)  # a finished stage keeps its settings
        say(f"resuming {out_dir} from the {state['stage']} stage at step {state['step']}")
        if resumed is not None:
            say(resumed[0])
        if past := _past_the_end(state, config):
            say(past)
    if trains_vae and config.vae.steps == 0 and dist.is_main:
        # Not refused: a 0-step VAE is a quick way to time or smoke-test the diffusion stage.
        warnings.warn("--vae-steps 0 without --vae: the VAE keeps its random weights, so the UNet learns "
                      "latents that decode to noise; give --vae-steps N or reuse a VAE with --vae PATH",
                      stacklevel=2)
    if config.stage != "vae" and config.diffusion.steps == 0 and state is None and dist.is_main:
        warnings.warn("--steps 0: model.safetensors will hold an untrained UNet, whose images are noise",
                      stacklevel=2)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")
    # the set is loaded without flips (the stages draw them), so its own line would never say so
    say(f"data: {train_set.describe()}" + (", random flip" if config.flip else ""))

    vae = vae_file
    if vae is None:
        vae = _built_from_run_seed(lambda: AutoencoderKL(AutoencoderKLConfig.from_dict(config.vae.model)), config.seed)
    owned: dict[str, Any] = {}

    def save_state(stage_state: dict[str, Any]) -> None:
        if dist.is_main:
            full = {**stage_state, "config": config.to_dict(), "class_names": class_names, **owned}
            save_training_state(ckpt_path, full)
        barrier(dist)

    with StopSignal(deadline, announce=dist.is_main) as stop:
        ctx = StageContext(run_dir=out_dir, config=config, dist=dist, stop=stop, save_state=save_state)
        if state is not None:
            # Every resume is marked, changed settings or not: a run that crashed after its last
            # checkpoint logged steps it now runs again, and readers need the point to cut at.
            log = ctx.logger(state["stage"], 0, 0, bar=False)
            log.record(resumed[1] if resumed is not None else {"event": "resume", "step": state["step"]})
            log.close()
        if state is not None and state["stage"] == "diffusion":
            with loading_run_state(ckpt_path):
                vae.load_state_dict(state["vae"])
            if dist.is_main and not (out_dir / VAE_FILE).is_file():  # deleted since: written again from the checkpoint
                save_inference_file(out_dir / VAE_FILE, unet=None, vae=vae, run_config=config.to_dict(),
                                    extra={"class_names": class_names, "step": config.vae.steps})
        elif vae_file is None:
            if not train_vae(vae, train_set, ctx, state if state is not None and state["stage"] == "vae" else None):
                return RunOutcome(out_dir, agreed_stop(stop.signal_name, dist))  # checkpoint written
            if dist.is_main:
                save_inference_file(out_dir / VAE_FILE, unet=None, vae=vae, run_config=config.to_dict(),
                                    extra={"class_names": class_names, "step": config.vae.steps})
                _save_vae_previews(out_dir, vae, val_set if val_set is not None else train_set)
            barrier(dist)
        vae.to(dist.device).eval().requires_grad_(False)
        if config.stage == "vae":
            say(f"VAE stage done: {out_dir / VAE_FILE}")
            return RunOutcome(out_dir)

        log = ctx.logger("latents", 0, 0, bar=False)
        try:
            train_latents, val_latents = load_or_build_latents(  # `stop` checked between encoding batches
                out_dir, vae, train_set, val_set, flip=config.flip, val_size=config.diffusion.val_size,
                batch_size=max(1, config.vae.batch_size // dist.world_size), dist=dist,
                num_workers=config.num_workers, log=log, stop=stop)
            check_stop(stop, dist)  # asked for after the last batch, or before a cache that was read from its file
        except TrainingStopped:
            reason = agreed_stop(stop.signal_name, dist)
            saved = "the VAE is saved" if vae_file is None else "nothing trained yet"  # --vae: no VAE stage
            log.message(f"stopped by {reason} before the diffusion stage; {saved}, run the same command again "
                        "to resume")
            return RunOutcome(out_dir, reason)
        finally:
            log.close()
        owned["vae"] = vae.state_dict()  # the diffusion checkpoints carry their VAE
        unet = _built_from_run_seed(lambda: UNet(UNetConfig.from_dict(config.diffusion.model)), config.seed)
        trainer = DiffusionTrainer(unet, vae, train_latents, val_latents, ctx, class_names)
        if state is not None and state["stage"] == "diffusion":
            with loading_run_state(ckpt_path):
                trainer.load_state_dict(state)
        trainer.train()
        # A stop agreed on during training, or a signal after its last step (the run is complete,
        # but `ldm train ... && ldm generate` must not go on after Ctrl-C); checkpoint and model
        # are written either way. Every rank takes part in agreeing.
        reason = agreed_stop(stop.signal_name if trainer.guard.stop_agreed or stop.signalled else None, dist)
    return RunOutcome(out_dir, reason)


def _built_from_run_seed(build: Callable[[], T], seed: int) -> T:
    """Build a model from the run's seed rather than the rank's, so every rank starts from
    the same weights (GradientMean broadcasts rank 0's anyway, but the EMA copy is taken first)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _save_vae_previews(out_dir: Path, vae: AutoencoderKL, dataset: Any) -> None:
    count = min(8, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(count)]).to(next(vae.parameters()).device)
    was_training = vae.training
    vae.eval()
    save_reconstructions(out_dir / "samples" / "vae_reconstructions.png", vae, images)
    vae.train(was_training)
