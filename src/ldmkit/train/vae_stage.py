"""The VAE stage: train the KL autoencoder, then measure its latents' shift and scale.

Loss (Rombach et al. 2022, sec. 3.1 and appendix G; Esser et al. 2021):

    L = |x - D(z)|_1 (or squared) + w_p LPIPS(x, D(z)) + w_kl KL(q(z|x) || N(0, I))
        + [after disc_start] lambda * disc_weight * (-mean D_patch(D(z)))

with z ~ q(z|x), lambda the adaptive weight of Esser et al. eq. 7, and the patch
discriminator trained with the hinge loss. Reconstruction terms are means over elements;
the KL is summed over latent elements and divided by the image's element count, so
`kl_weight = 1e-6` strikes Stable Diffusion's balance. After training, the latents of a few
thousand training images give the per-channel mean and std, stored in the VAE as
`set_latent_stats(shift=mean, scale=1/std)`, so the diffusion stage sees unit-variance latents.

Per step: the host draws the flips and the posterior noise and sets the LR; `_autoencoder_step`
does the device work (forward, losses, backward, clipping, the skip decision, AdamW, then the
discriminator's step when the GAN is on). Without the GAN, with CUDA graphs (under torchrun too,
the gradients' all-reduce inside), that work is captured once and replayed as one graph
(step_graph.py).
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ldmkit.models import AutoencoderKL
from ldmkit.run_files import CHECKPOINT_NAME
from ldmkit.train.batches import VAE_BATCH_SETTING, IndexStream, per_rank_batch
from ldmkit.train.checkpoint import loading_run_state
from ldmkit.train.context import StageContext, global_draw, rank_rng_states, restore_rank_rng
from ldmkit.train.decay_groups import decay_groups
from ldmkit.train.discriminator import PatchDiscriminator, adaptive_gan_weight, generator_loss, hinge_d_loss
from ldmkit.train.distributed import all_reduce_mean, all_reduce_sum
from ldmkit.train.ema import EMA
from ldmkit.train.grad_sync import GradientMean
from ldmkit.train.image_batches import ordered_batches, training_batches
from ldmkit.train.lr import lr_at
from ldmkit.train.optimizer_resume import load_optimizer_state
from ldmkit.train.perceptual import load_perceptual_loss
from ldmkit.train.rng import generator_state, make_generator
from ldmkit.train.step_compile import compile_for_training, weights_for_training
from ldmkit.train.step_graph import DeviceLR, StepGraph, release_training_memory, step_graph_wanted
from ldmkit.train.step_guard import Precision, StepGuard, apply_update, fused_adamw_supported, logged_loss

# What a captured step hands back (the rest of `_autoencoder_step`'s results are the GAN's)
CAPTURED_RESULTS = ("loss", "rec", "kl", "row")


class _Reconstruct(nn.Module):
    """VAE forward with the posterior noise passed in: (images, eps) -> (recon, kl per sample).

    torch.compile wraps `forward`, and the eps must come from the global-batch generator (see
    `global_draw`), so the sample is taken here rather than inside AutoencoderKL.forward.
    With `last_conv=False` it stops before the decoder's final convolution and returns what that
    convolution reads: the GAN's adaptive weight differentiates the losses with respect to that
    layer alone, and a backward that starts inside a compiled graph runs all of the graph's
    backward (AOTAutograd cannot prune it), so the layer is applied outside, eagerly.
    """

    def __init__(self, vae: AutoencoderKL, *, last_conv: bool = True) -> None:
        super().__init__()
        self.vae, self.last_conv = vae, last_conv

    def forward(self, images: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.posterior(images)  # q(z|x): mean, logvar [B, c, h, w]
        z = self.vae.post_quant_conv(posterior.mean + posterior.std * eps)
        decoder = self.vae.decoder
        out = decoder(z) if self.last_conv else decoder.features(z)  # [B, C, H, W] or [B, C_first, H, W]
        return out, posterior.kl()  # ..., [B]


@torch.no_grad()
def _init_posterior_width(vae: AutoencoderKL, logvar: float) -> None:
    """Start q(z|x) narrow: set the bias of the log-variance half of `quant_conv` to `logvar`.

    A fresh encoder outputs logvar ~ 0, i.e. posterior noise as large as the latents
    themselves, and with a KL weight of 1e-6 it takes thousands of steps for the
    reconstruction loss alone to shrink it. Starting at std = exp(logvar / 2) ~ 0.05 lets a
    short run reconstruct from the first steps; the KL term still pulls logvar up if weighted.
    """
    if vae.config.double_z:
        vae.quant_conv.bias[vae.config.latent_channels :] = logvar


def _latent_shape(vae: AutoencoderKL, image_size: int) -> tuple[int, int, int]:
    side = image_size // vae.config.downsample_factor
    return vae.config.latent_channels, side, side


class VAETrainer:
    """Owns the VAE's optimizer, the optional discriminator and the data position."""

    def __init__(self, vae: AutoencoderKL, dataset: Any, ctx: StageContext) -> None:
        self.ctx, self.cfg, self.run, self.dist = ctx, ctx.config.vae, ctx.config, ctx.dist
        device = self.device = self.dist.device
        per_rank_batch(self.cfg.batch_size, self.dist.world_size, VAE_BATCH_SETTING)
        self.vae, self.dataset = weights_for_training(vae.to(device).train(), self.run, self.dist), dataset
        self.params = list(vae.parameters())  # listed once: walking the module tree costs host time every step
        self.precision = Precision(self.run.precision, device)
        fused = fused_adamw_supported(device)
        self.use_gan = self.cfg.disc_start >= 0
        self.betas = (0.5, 0.9) if self.use_gan else (0.9, 0.999)  # GAN training wants a short Adam memory
        # weight decay on the weights, not on biases and norm gains (decay_groups.py)
        self.opt = torch.optim.AdamW(decay_groups(vae, self.cfg.weight_decay), lr=self.cfg.lr, betas=self.betas,
                                     fused=fused)
        self.disc = self.disc_opt = None
        if self.use_gan:
            self.disc = PatchDiscriminator(vae.config.out_channels, self.cfg.disc_channels,
                                           self.cfg.disc_layers).to(device)
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=self.cfg.disc_lr, betas=(0.5, 0.9),
                                              weight_decay=0.0, fused=fused)
        self.model: nn.Module | None = None  # the (compiled) forward, built in train()
        self.graphs = False  # whether self.model replays CUDA graphs (set in _wrap)
        # under torchrun, the gradients' means over the ranks (grad_sync.py), built in _wrap
        self.grad_mean: GradientMean | None = None
        self.disc_grad_mean: GradientMean | None = None
        self.generator = make_generator(self.run.seed + 1, device)
        self.guard = StepGuard(self.dist, ctx.stop)
        self.step = self.offset = 0
        self.last_saved: int | None = None
        self.latent_shape = _latent_shape(vae, self.run.image_size)
        # `vae.ema_decay` > 0: the VAE handed on is the weights' moving average, updated inside the step
        self.ema = EMA(self.vae, self.cfg.ema_decay, warmup=True) if self.cfg.ema_decay > 0 else None
        self.last_layer = self.vae.decoder.conv_out  # G_L of Esser et al. eq. 7, applied outside the compiled forward
        self.pixels = vae.config.in_channels * self.run.image_size**2
        self.perceptual, self.perceptual_note = (
            load_perceptual_loss(device) if self.cfg.perceptual_weight > 0 else (None, "perceptual loss off"))
        self.device_lr = DeviceLR(self.opt)  # the LR a captured step reads
        # One CUDA graph for the whole step (step_graph.py) where there is no GAN: its adaptive
        # weight differentiates the decoder twice, and its discriminator is a second optimizer.
        whole_step = not self.use_gan and step_graph_wanted(self.run, self.dist)
        self.step_graph = StepGraph(self._captured_step) if whole_step else None

    def _wrap(self) -> None:
        if self.dist.distributed:
            # rank 0's weights on every rank: after any initialisation or loading, so there is one truth
            self.grad_mean = GradientMean(self.params, self.dist)
            self.grad_mean.broadcast_parameters()
            if self.disc is not None:
                self.disc_grad_mean = GradientMean(list(self.disc.parameters()), self.dist)
                self.disc_grad_mean.broadcast_parameters()

        # CUDA graphs only for the plain loss: the GAN's adaptive weight differentiates the
        # decoder twice per step. A whole-step graph holds the model's, so none inside it.
        reconstruct = _Reconstruct(self.vae, last_conv=not self.use_gan)  # with the GAN, conv_out is applied eagerly
        forward, self.graphs = compile_for_training(reconstruct, self.run, self.dist,
                                                    graphs_allowed=not self.use_gan and self.step_graph is None)
        self.model = forward

    def fresh_start(self) -> None:
        if self.cfg.logvar_init is not None:
            _init_posterior_width(self.vae, self.cfg.logvar_init)
        if self.ema is not None:  # the average starts from the initialised weights
            self.ema.module.load_state_dict(self.vae.state_dict())

    def final_vae(self) -> AutoencoderKL:
        """The VAE this stage hands on: the moving average when `vae.ema_decay` > 0, else the weights."""
        return self.ema.module if self.ema is not None else self.vae

    # -- state -------------------------------------------------------------------------------

    def state_dict(self, complete: bool = False) -> dict[str, Any]:
        """The stage's state; once `complete`, "vae" is the finished VAE (the average, if kept) and
        nothing trains on from it, so the average is not kept beside it."""
        scaler = self.precision.scaler
        keep_ema = self.ema is not None and not complete
        return {
            "stage": "vae", "step": self.step, "offset": self.offset, "complete": complete,
            "vae": (self.final_vae() if complete else self.vae).state_dict(),
            "vae_ema": self.ema.state_dict() if keep_ema else None,
            "optimizer": self.device_lr.optimizer_state(),
            "disc": self.disc.state_dict() if self.disc is not None else None,
            "disc_optimizer": self.disc_opt.state_dict() if self.disc_opt is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "generator": generator_state(self.generator), "rng": rank_rng_states(self.dist),
            "skipped_steps": self.guard.skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.offset = int(state["step"]), int(state["offset"])
        self.vae.load_state_dict(state["vae"])
        if self.ema is not None:
            if state.get("vae_ema") is not None:
                self.ema.load_state_dict(state["vae_ema"])
                self.ema.decay, self.ema.warmup = float(self.cfg.ema_decay), True  # this run's setting
            else:  # a run that kept no average until now: it starts from the resumed weights
                self.ema = EMA(self.vae, self.cfg.ema_decay, warmup=True)
        # the moments from the checkpoint, the settings from this run's config (a resume may change them)
        load_optimizer_state(self.opt, state["optimizer"], betas=self.betas, weight_decay=self.cfg.weight_decay)
        if self.disc is not None and state.get("disc") is not None:
            self.disc.load_state_dict(state["disc"])
            load_optimizer_state(self.disc_opt, state["disc_optimizer"], lr=self.cfg.disc_lr)
        if self.precision.scaler is not None and state.get("scaler"):
            self.precision.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self.guard.skipped = int(state.get("skipped_steps", 0))
        restore_rank_rng(state["rng"], self.dist)
        self.last_saved = self.step
        if self.step_graph is not None:  # a capture holds the replaced tensors: capture again
            self.step_graph.reset()

    # -- one step ----------------------------------------------------------------------------

    def train_step(self, images: torch.Tensor) -> dict[str, torch.Tensor | float]:
        """One step of the autoencoder (and of the discriminator once it has started), skipped
        on the device if the loss or gradient is not finite; no host sync (see StepGuard).
        Returns the step's loss terms (tensors) and LR."""
        cfg, B, gen, dev = self.cfg, self.cfg.batch_size, self.generator, self.device
        if self.run.flip:
            flip = global_draw(lambda: torch.rand(B, generator=gen, device=dev) < 0.5, self.dist)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        eps = global_draw(lambda: torch.randn((B, *self.latent_shape), generator=gen, device=dev), self.dist)
        lr = lr_at(self.step, base_lr=cfg.lr, warmup=cfg.warmup, total_steps=cfg.steps, schedule=cfg.lr_schedule)
        if self.step_graph is not None:
            self.device_lr.set(lr)  # a kernel, no sync: the captured AdamW reads it
            captured = self.step_graph(images, eps)
            out = {k: v.clone() for k, v in zip(CAPTURED_RESULTS, captured)}  # the next replay overwrites them
        else:
            for group in self.opt.param_groups:
                group["lr"] = lr
            if self.graphs:
                torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs may be reused
            out = self._autoencoder_step(images, eps, gan_on=self.use_gan and self.step >= cfg.disc_start)
        self.guard.record(out.pop("row"))
        self.step += 1
        self.offset += B
        return {"lr": lr, **out}

    def _mean_over_ranks(self, out: dict[str, torch.Tensor | float]) -> dict[str, float]:
        """The step's loss terms over the whole global batch, as the loss is: each rank's are
        of its own share (every rank logs at the same step, so the one collective is safe)."""
        names = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        metrics = {k: v for k, v in out.items() if k not in names}
        if names:
            terms = torch.stack([out[k].detach().float().reshape(()) for k in names])
            metrics.update(zip(names, all_reduce_mean(terms, self.dist).tolist()))
        return metrics

    def _captured_step(self, images: torch.Tensor, eps: torch.Tensor) -> list[torch.Tensor]:
        out = self._autoencoder_step(images, eps, gan_on=False)
        return [out[k] for k in CAPTURED_RESULTS]

    def _autoencoder_step(self, images: torch.Tensor, eps: torch.Tensor, *, gan_on: bool) -> dict[str, torch.Tensor]:
        """The step's device work, from the batch to the updates; its loss terms and the guard's
        row. No host reads: without the GAN it can be captured (`_captured_step`)."""
        cfg, scaler = self.cfg, self.precision.scaler
        self.opt.zero_grad(set_to_none=True)  # a captured backward then writes fresh gradients
        with self.precision.autocast():
            recon, kl = self.model(images, eps)  # [B, C, H, W] ([B, C_first, H, W] with the GAN), [B]
            if self.use_gan:
                recon = self.last_layer(recon)  # [B, C, H, W]
            diff = recon.float() - images
            rec = diff.abs().mean() if cfg.recon_loss == "l1" else diff.pow(2).mean()
            nll = rec
            if self.perceptual is not None:
                rgb = (lambda x: x.expand(-1, 3, -1, -1)) if images.shape[1] == 1 else (lambda x: x)
                nll = nll + cfg.perceptual_weight * self.perceptual(rgb(recon.float()), rgb(images)).mean()
            kl_loss = kl.mean() / self.pixels
            loss = nll + cfg.kl_weight * kl_loss
            if gan_on:
                self.disc.requires_grad_(False)  # the generator's GAN term must not train D
                g_loss = generator_loss(self.disc(recon))
                self.disc.requires_grad_(True)
                weight = adaptive_gan_weight(nll, g_loss, self.last_layer.weight) * cfg.disc_weight
                loss = loss + weight * g_loss
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if self.grad_mean is not None:
            self.grad_mean.mean()
        if scaler is not None:
            scaler.unscale_(self.opt)
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        applied, row = self.guard.judge(loss, grad_norm, scaled=scaler is not None)
        apply_update(self.opt, applied, scaler)
        if self.ema is not None:
            self.ema.update(self.vae, gate=applied)  # a skipped step leaves the average alone
        # detached: a kept term would keep this step's autograd graph alive into the next step
        out = {"loss": loss.detach(), "rec": rec.detach(), "kl": kl_loss.detach(), "row": row}
        if gan_on:
            self.disc_opt.zero_grad(set_to_none=True)
            with self.precision.autocast():
                logits = self.disc(torch.cat([images, recon.detach().to(images.dtype)]))
                d_loss = hinge_d_loss(*logits.chunk(2))  # (real, fake) halves
            (scaler.scale(d_loss) if scaler is not None else d_loss).backward()
            if self.disc_grad_mean is not None:
                self.disc_grad_mean.mean()
            apply_update(self.disc_opt, applied, scaler)
            out.update(g=g_loss.detach(), gan_weight=weight, d=d_loss.detach())
        if scaler is not None:
            scaler.update()
        return out

    def checkpoint(self, complete: bool = False) -> None:
        self.ctx.save_state(self.state_dict(complete))
        self.last_saved = self.step

    # -- the loop ----------------------------------------------------------------------------

    def train(self) -> bool:
        """Train to `cfg.steps` and measure the latent stats: True; or stop on a signal: False."""
        cfg, run = self.cfg, self.run
        self._wrap()
        log = self.ctx.logger("vae", cfg.steps, self.step)
        try:
            log.message(self.perceptual_note)
            stream = IndexStream(len(self.dataset), run.seed)
            batches = training_batches(self.dataset, stream=stream, offset=self.offset, batch_size=cfg.batch_size,
                                       dist=self.dist, num_workers=run.num_workers)
            losses: list[float] = []
            timer = time.perf_counter()
            while self.step < cfg.steps and not self.guard.stop_agreed:
                images, _ = next(batches)
                out = self.train_step(images)
                log.advance()
                if self.step_graph is not None and (told := self.step_graph.announce(self.step)):
                    log.message(told)
                periodic = self.step % run.log_every == 0 or self.step % run.checkpoint_every == 0
                if not self.guard.settle_due(self.step, total_steps=cfg.steps, periodic=periodic):
                    continue
                losses += self.guard.settle(self.step, self.last_saved)
                if self.step % run.log_every == 0 or self.step == cfg.steps:
                    rate = len(losses) * cfg.batch_size / max(time.perf_counter() - timer, 1e-9)
                    metrics = self._mean_over_ranks(out)
                    metrics.update(loss=logged_loss(losses), img_per_s=rate)  # a skipped step's NaN left out
                    if self.guard.skipped:
                        metrics["skipped"] = self.guard.skipped
                    log.metrics(self.step, metrics)
                    losses, timer = [], time.perf_counter()
                if self.step % run.checkpoint_every == 0 and self.step < cfg.steps and self.guard.bad_streak == 0:
                    self.checkpoint()
            if self.guard.stop_agreed:
                self.checkpoint()
                log.message(f"stopped by {self.ctx.stop.signal_name} at VAE step {self.step}; checkpoint saved, "
                            "run the same command again to resume")
                return False
            final = self.final_vae().eval()
            shift, scale = measure_latent_stats(final, self.dataset, self.ctx)
            final.set_latent_stats(shift=shift, scale=scale)
            log.message(f"latent stats: shift {[round(v, 4) for v in shift.tolist()]}, "
                        f"scale {[round(v, 4) for v in scale.tolist()]}"
                        + (f" (of the weights' moving average, decay {self.cfg.ema_decay})" if self.ema else ""))
            self.checkpoint(complete=True)
            if final is not self.vae:  # the caller's VAE becomes the average (`train_vae` works in place)
                self.vae.load_state_dict(final.state_dict())
            self.vae.eval()
            return True
        finally:
            release_training_memory(self.opt, self.step_graph)
            log.close()


def train_vae(vae: AutoencoderKL, dataset: Any, ctx: StageContext, state: dict[str, Any] | None) -> bool:
    """Run the VAE stage on `vae` in place, from scratch or from a "vae" checkpoint `state`.

    Returns True when the VAE is finished, False when a stop signal ended the stage early
    (with a checkpoint written). A `state` marked complete only restores the finished VAE.
    """
    if state is not None and state.get("complete"):  # trained and measured: nothing left to do
        with loading_run_state(ctx.run_dir / CHECKPOINT_NAME):
            vae.load_state_dict(state["vae"])
        return True
    trainer = VAETrainer(vae, dataset, ctx)
    if state is not None:
        with loading_run_state(ctx.run_dir / CHECKPOINT_NAME):
            trainer.load_state_dict(state)
    else:
        trainer.fresh_start()
    return trainer.train()


@torch.no_grad()
def measure_latent_stats(vae: AutoencoderKL, dataset: Any, ctx: StageContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and 1/std of z ~ q(z|x) over up to `latent_stats_images` images.

    Exact moments of the posterior mixture rather than of samples (E[z] = E[mean],
    E[z^2] = E[mean^2] + E[std^2]), so the result depends on no generator and is the same on
    1 or N processes. The images are the first ones of the run's seeded order (a random
    subset); ranks encode disjoint shares and the float64 sums are all-reduced. With `flip` on,
    each image counts mirrored too, half each: the diffusion stage trains on the mirrored latent
    half of the time, and on data with a left and a right the two halves' moments differ.
    """
    run, dist = ctx.config, ctx.dist
    count = min(len(dataset), run.vae.latent_stats_images)
    indices = IndexStream(len(dataset), run.seed).take(0, count).tolist()[dist.rank :: dist.world_size]
    sums = torch.zeros(3, vae.config.latent_channels, dtype=torch.float64, device=dist.device)  # n, sum, sum sq
    for images, _ in ordered_batches(dataset, indices, batch_size=max(1, run.vae.batch_size // dist.world_size),
                                     device=dist.device, num_workers=run.num_workers):
        for view in (images, images.flip(-1)) if run.flip else (images,):
            posterior = vae.posterior(view)
            mean, std = posterior.mean.double(), posterior.std.double()  # [B, c, h, w]
            sums[0] += mean.shape[0] * mean.shape[2] * mean.shape[3]
            sums[1] += mean.sum(dim=(0, 2, 3))
            sums[2] += (mean.pow(2) + std.pow(2)).sum(dim=(0, 2, 3))
    sums = all_reduce_sum(sums, dist)
    mean = sums[1] / sums[0]
    std = (sums[2] / sums[0] - mean.pow(2)).clamp(min=1e-12).sqrt()
    return mean.float().cpu(), (1.0 / std).float().cpu()
