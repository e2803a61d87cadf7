"""The diffusion stage: train the UNet on cached latents (Rombach et al. 2022, sec. 3.3).

Each step takes the next global batch of the seeded index stream, draws z ~ q(z|x) from the
cached mean/std (the mirrored pair half the time), a timestep and noise per example, and
replaces the class label by the null class with probability `cond_drop` (classifier-free
guidance, Ho & Salimans 2022). All of those draws are made for the whole global batch by a
generator that is identical on every rank, and each rank keeps its slice: the run is the
same on 1 or N processes, and resuming needs only the generator state and the stream offset.

Per step: fused AdamW at the warm-up/cosine LR, gradient clipping, a skip if the loss or
gradient is not finite and the EMA update, all queued with no host sync (StepGuard.judge); the
host reads the losses every SETTLE_EVERY steps. With CUDA graphs the trainer (by default)
captures that device work once and replays it as one graph (step_graph.py). Under torchrun the
gradients are averaged over the ranks after the backward by one all-reduce (grad_sync.py; inside
the graph where there is one). Periodically:
validation loss on fixed t and noise, a sample grid from the EMA model, a checkpoint plus the
inference file.
"""
from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from torch import nn

from ldmkit.diffusion import diffusion_loss
from ldmkit.models import AutoencoderKL, UNet
from ldmkit.run_files import MODEL_FILE
from ldmkit.train.batches import IndexStream, per_rank_batch, rank_slice
from ldmkit.train.config import make_schedule
from ldmkit.train.context import StageContext, global_draw, rank_rng_states, restore_rank_rng
from ldmkit.train.decay_groups import decay_groups
from ldmkit.train.ema import EMA
from ldmkit.train.grad_sync import GradientMean
from ldmkit.train.inference_file import save_inference_file
from ldmkit.train.latent_cache import LatentSet
from ldmkit.train.lr import lr_at
from ldmkit.train.optimizer_resume import load_optimizer_state
from ldmkit.train.previews import save_sample_grid
from ldmkit.train.rng import generator_state, make_generator
from ldmkit.train.step_compile import compile_for_training, weights_for_training
from ldmkit.train.step_graph import DeviceLR, StepGraph, release_training_memory, step_graph_wanted
from ldmkit.train.step_guard import Precision, StepGuard, apply_update, fused_adamw_supported, logged_loss

VAL_SEED = 20240607  # fixed: validation t and noise are the same at every evaluation and run


class DiffusionTrainer:
    """Owns the UNet, its EMA, optimizer and data position for one run of the stage."""

    def __init__(self, unet: UNet, vae: AutoencoderKL, train: LatentSet, val: LatentSet | None,
                 ctx: StageContext, class_names: list[str]) -> None:
        self.ctx, self.cfg, self.run, self.dist = ctx, ctx.config.diffusion, ctx.config, ctx.dist
        device = self.device = self.dist.device
        per_rank_batch(self.cfg.batch_size, self.dist.world_size)
        self.train_set, self.val_set, self.class_names = train, val, class_names
        self.vae = vae.to(device).eval()
        self.schedule = make_schedule(self.cfg)
        self.num_classes = unet.config.num_classes
        if self.num_classes and self.cfg.cond_drop == 0 and self.dist.is_main:  # the null class stays as initialised
            warnings.warn("--cond-drop 0: the unconditional side of classifier-free guidance is never trained, so "
                          "guided samples are not meaningful; generate with --cfg 1 (the preview grids do)",
                          stacklevel=2)
        self.unet = weights_for_training(unet.to(device).train(), self.run, self.dist)
        self.params = list(self.unet.parameters())  # listed once: walking the module tree costs host time every step
        self.ema = EMA(self.unet, self.cfg.ema_decay, warmup=self.cfg.ema_warmup)
        whole_step = step_graph_wanted(self.run, self.dist)  # one graph for the step, not graphs for the UNet
        model, self.graphs = compile_for_training(self.unet, self.run, self.dist, graphs_allowed=not whole_step)
        self.model = model
        # Under torchrun: the gradients' mean over the ranks, one all-reduce after the backward
        # (grad_sync.py says why not DDP)
        self.grad_mean = GradientMean(self.params, self.dist) if self.dist.distributed else None
        if self.grad_mean is not None:
            self.grad_mean.broadcast_parameters()
        # weight decay on the weights, not on biases and norm gains (decay_groups.py)
        self.opt = torch.optim.AdamW(decay_groups(self.unet, self.cfg.weight_decay), lr=self.cfg.lr,
                                     betas=(0.9, 0.999), fused=fused_adamw_supported(device))
        self.precision = Precision(self.run.precision, device)
        self.generator = make_generator(self.run.seed + 3, device)
        self.stream = IndexStream(len(train), self.run.seed, device)
        self.guard = StepGuard(self.dist, ctx.stop)
        self.step = self.offset = 0
        self.last_saved: int | None = None
        self.lr_now = self.cfg.lr  # the last step's LR, for the log (the optimizer may hold a tensor)
        self.device_lr = DeviceLR(self.opt)  # the LR a captured step reads
        self.step_graph = StepGraph(self._device_step) if whole_step else None

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        scaler = self.precision.scaler
        return {
            "stage": "diffusion", "step": self.step, "offset": self.offset,
            "unet": self.unet.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.device_lr.optimizer_state(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "generator": generator_state(self.generator), "rng": rank_rng_states(self.dist),
            "skipped_steps": self.guard.skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.offset = int(state["step"]), int(state["offset"])
        self.unet.load_state_dict(state["unet"])
        self.ema.load_state_dict(state["ema"])
        # the average and the moments from the checkpoint, the settings from this run's config
        self.ema.decay, self.ema.warmup = float(self.cfg.ema_decay), bool(self.cfg.ema_warmup)
        load_optimizer_state(self.opt, state["optimizer"], weight_decay=self.cfg.weight_decay)
        if self.precision.scaler is not None and state.get("scaler"):
            self.precision.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self.guard.skipped = int(state.get("skipped_steps", 0))
        restore_rank_rng(state["rng"], self.dist)
        self.last_saved = self.step
        if self.step_graph is not None:  # a capture holds the replaced tensors: capture again
            self.step_graph.reset()

    # -- one step ----------------------------------------------------------------------------

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(x0, class labels or None, t, noise) for this rank; every draw is global (see module doc)."""
        B, gen, dev, data = self.cfg.batch_size, self.generator, self.device, self.train_set
        shape = data.latent_shape
        idx = rank_slice(self.stream.take(self.offset, B), self.dist.rank, self.dist.world_size)
        x0, std = data.mean[idx], data.std[idx] if data.std is not None else None
        if self.run.flip and data.mean_flip is not None:
            flip = global_draw(lambda: torch.rand(B, generator=gen, device=dev) < 0.5, self.dist)[:, None, None, None]
            x0 = torch.where(flip, data.mean_flip[idx], x0)
            std = torch.where(flip, data.std_flip[idx], std) if std is not None else None
        if self.cfg.latent_sample and std is not None:
            x0 = x0 + std * global_draw(lambda: torch.randn((B, *shape), generator=gen, device=dev), self.dist)
        t = global_draw(lambda: torch.randint(0, self.schedule.num_steps, (B,), generator=gen, device=dev), self.dist)
        noise = global_draw(lambda: torch.randn((B, *shape), generator=gen, device=dev), self.dist)
        labels = None
        if self.num_classes:
            drop = global_draw(lambda: torch.rand(B, generator=gen, device=dev) < self.cfg.cond_drop, self.dist)
            labels = torch.where(drop, torch.full_like(data.labels[idx], self.num_classes), data.labels[idx])
        return x0, labels, t, noise

    def train_step(self) -> torch.Tensor:
        """One optimizer step, skipped on the device if the loss or gradient is not finite.

        Returns the gradient norm. No host sync: the step's loss reaches the host at the next
        `guard.settle` (see step_guard's module doc).
        """
        x0, labels, t, noise = self._batch()
        lr = self.lr_now = lr_at(self.step, base_lr=self.cfg.lr, warmup=self.cfg.warmup,
                                 total_steps=self.cfg.steps, schedule=self.cfg.lr_schedule)
        if self.step_graph is not None:
            self.device_lr.set(lr)  # a kernel, no sync: the captured AdamW reads it
            grad_norm, row = self.step_graph(x0, labels, t, noise)
            grad_norm, row = grad_norm.clone(), row.clone()  # the next replay overwrites both
        else:
            for group in self.opt.param_groups:
                group["lr"] = lr
            if self.graphs:
                torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs may be reused
            grad_norm, row = self._device_step(x0, labels, t, noise)
        self.guard.record(row)
        self.step += 1
        self.offset += self.cfg.batch_size
        return grad_norm

    def _device_step(self, x0: torch.Tensor, labels: torch.Tensor | None, t: torch.Tensor,
                     noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's device work, from the batch to the EMA: (gradient norm, the guard's row).
        No host reads and no host state that changes between steps, so it can be captured."""
        scaler = self.precision.scaler
        self.opt.zero_grad(set_to_none=True)  # a captured backward then writes fresh gradients
        with self.precision.autocast():
            loss = diffusion_loss(lambda x, tt: self.model(x, tt, class_labels=labels), x0, self.schedule,
                                  prediction=self.cfg.prediction, min_snr_gamma=self.cfg.min_snr_gamma,
                                  t=t, noise=noise)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if self.grad_mean is not None:
            self.grad_mean.mean()
        if scaler is not None:
            scaler.unscale_(self.opt)
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        applied, row = self.guard.judge(loss, grad_norm, scaled=scaler is not None)
        apply_update(self.opt, applied, scaler)
        self.ema.update(self.unet, gate=applied)
        if scaler is not None:
            scaler.update()
        return grad_norm, row

    # -- periodic work (rank 0 unless noted) -------------------------------------------------

    @torch.no_grad()
    def validation_loss(self, module: nn.Module) -> float:
        """Mean loss on the val latents with fixed t and noise (comparable across steps)."""
        val = self.val_set
        gen = torch.Generator().manual_seed(VAL_SEED)
        t = torch.randint(0, self.schedule.num_steps, (len(val),), generator=gen).to(self.device)
        noise = torch.randn((len(val), *val.latent_shape), generator=gen).to(self.device)
        was_training = module.training
        module.eval()
        total = 0.0
        for start in range(0, len(val), self.cfg.batch_size):
            sl = slice(start, start + self.cfg.batch_size)
            labels = val.labels[sl] if self.num_classes else None
            with self.precision.autocast():
                loss = diffusion_loss(lambda x, tt: module(x, tt, class_labels=labels), val.mean[sl], self.schedule,
                                      prediction=self.cfg.prediction, min_snr_gamma=self.cfg.min_snr_gamma,
                                      t=t[sl], noise=noise[sl])
            total += loss.item() * val.mean[sl].shape[0]
        module.train(was_training)
        return total / len(val)

    def save_samples(self) -> bool:
        """The sample grid of this step; False when a signal came before or during it (nothing written)."""
        if self.ctx.stop.signalled:
            return False
        path = self.ctx.run_dir / "samples" / f"step_{self.step:06d}.png"
        return save_sample_grid(path, self.ema.module, self.vae, self.schedule,
                                latent_shape=self.train_set.latent_shape,
                                num_classes=self.num_classes or 0, per_row=self.cfg.sample_per_class,
                                guidance=self.cfg.sample_cfg if self.cfg.cond_drop > 0 else 1.0,
                                prediction=self.cfg.prediction, steps=self.cfg.sample_steps,
                                autocast=self.precision.autocast(),
                                stopped=lambda: self.ctx.stop.signalled) is not None

    def write_inference_file(self) -> None:
        extra = {"schedule": self.schedule.to_dict(), "class_names": self.class_names, "step": self.step}
        save_inference_file(self.ctx.run_dir / MODEL_FILE, unet=self.ema.module, vae=self.vae,
                            run_config=self.run.to_dict(), extra=extra)

    def checkpoint(self) -> None:
        """Full state (every rank takes part), then the inference file; rank 0 writes both."""
        self.ctx.save_state(self.state_dict())
        if self.dist.is_main:
            self.write_inference_file()
        self.last_saved = self.step
        self.ctx.barrier()

    # -- the loop ----------------------------------------------------------------------------

    def _periodic(self, step: int) -> bool:
        """Whether `step` has periodic work (a log line, val loss, grid, checkpoint)."""
        cfg, run = self.cfg, self.run
        return (step % run.log_every == 0 or step % run.checkpoint_every == 0
                or (cfg.val_every > 0 and step % cfg.val_every == 0)
                or (cfg.sample_every > 0 and step % cfg.sample_every == 0))

    def train(self) -> None:
        """Train to `cfg.steps` (or until a stop signal), then checkpoint."""
        cfg, run, main = self.cfg, self.run, self.dist.is_main
        log = self.ctx.logger("diffusion", cfg.steps, self.step)
        try:
            losses: list[float] = []
            train_seconds = interval_seconds = 0.0  # time in training steps only, for img/s
            interval_steps = 0
            first_step = self.step
            mark = time.perf_counter()
            while self.step < cfg.steps and not self.guard.stop_agreed:
                grad_norm = self.train_step()
                if self.step_graph is not None and (told := self.step_graph.announce(self.step)):
                    log.message(told)
                interval_steps += 1
                log.advance()
                step = self.step
                # The host reads the queued steps (a sync) every SETTLE_EVERY steps, before
                # periodic work, at the end, and at once when a stop is asked for here.
                if not self.guard.settle_due(step, total_steps=cfg.steps, periodic=self._periodic(step)):
                    continue
                losses += self.guard.settle(step, self.last_saved)
                interval_seconds += time.perf_counter() - mark  # settled: the GPU has caught up
                # The last step of the run: the step count reached, or a stop (signal, time
                # limit) agreed on; either way it gets its log line, val loss and sample grid.
                last = step == cfg.steps or self.guard.stop_agreed
                if step % run.log_every == 0 or last:
                    metrics = {"loss": logged_loss(losses),
                               "grad_norm": grad_norm.item(), "lr": self.lr_now,
                               "img_per_s": interval_steps * cfg.batch_size / max(interval_seconds, 1e-9)}
                    if self.guard.skipped:
                        metrics["skipped"] = self.guard.skipped
                    log.metrics(step, metrics)
                    train_seconds += interval_seconds
                    losses, interval_seconds, interval_steps = [], 0.0, 0
                if main and self.val_set is not None and cfg.val_every > 0 and (step % cfg.val_every == 0 or last):
                    log.metrics(step, {"val_loss": self.validation_loss(self.unet),
                                       "val_loss_ema": self.validation_loss(self.ema.module)})
                if main and cfg.sample_every > 0 and (step % cfg.sample_every == 0 or last):
                    if not self.save_samples():
                        log.message(f"step {step}'s sample grid skipped after {self.ctx.stop.signal_name}")
                # No periodic checkpoint inside a run of skipped steps: the last one saved
                # stays the one from before the trouble started.
                if step % run.checkpoint_every == 0 and not last and self.guard.bad_streak == 0:
                    self.checkpoint()
                mark = time.perf_counter()
            self.checkpoint()
            train_seconds += interval_seconds
            rate = (self.step - first_step) * cfg.batch_size / max(train_seconds, 1e-9)
            if self.guard.stop_agreed:
                log.message(f"stopped by {self.ctx.stop.signal_name} at step {self.step}; checkpoint saved, "
                            "run the same command again to resume")
            elif self.ctx.stop.signalled:  # after the last step had run: the stage is complete all the same
                log.message(f"{self.ctx.stop.signal_name} after the last step ({self.step}): the diffusion stage is "
                            "complete, its checkpoint and model saved")
            else:
                skipped = f", {self.guard.skipped} non-finite steps skipped" if self.guard.skipped else ""
                log.message(f"diffusion stage done: {self.step} steps, {rate:.1f} img/s while training{skipped}")
            log.record({"event": "end", "step": self.step, "img_per_s": rate, "stopped": self.guard.stop_agreed})
        finally:
            release_training_memory(self.opt, self.step_graph)
            log.close()
