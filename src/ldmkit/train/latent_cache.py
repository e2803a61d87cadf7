"""Encode the dataset through the VAE once, keep the latents in RUN/latents.safetensors.

What is stored, per image: the posterior mean and std (normalised: `(raw - shift) * scale`),
for the image AND for its horizontal mirror. The diffusion stage then draws
`z = mean + std * eps` each time it sees the image (the same posterior sampling as encoding
on the fly, so caching changes nothing), and picks the mirrored pair with probability 1/2
when flips are on (flip augmentation survives caching; a VAE is not flip-equivariant, so
flipping the latent itself would not match). This costs 4x the mean alone, which for the
small latents this cache is meant for (say 60k x 4x8x8 float32 = 61 MB per tensor) is
nothing, and lets the whole set live on the device as tensors indexed by batch.

The file is keyed by a fingerprint of the VAE weights (latent stats included), the data
(file names, sizes and mtimes for folders; the pixels themselves for built-in sets), the
image size and the cache options. A valid file is reused; any mismatch rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from safetensors import safe_open
from safetensors.torch import load_file, save

from ldmkit.atomic import atomic_write
from ldmkit.data.dataset import seeded_subset
from ldmkit.models import AutoencoderKL
from ldmkit.run_files import CACHE_NAME
from ldmkit.train.distributed import DistInfo, barrier, broadcast_object
from ldmkit.train.image_batches import ordered_batches
from ldmkit.train.signals import StopSignal
from ldmkit.train.stop_check import check_stop

FORMAT = "ldmkit-latents"
REPORT_EVERY_S = 30.0  # how often encoding says how far it is


@dataclass
class LatentSet:
    """Cached latents of one split: `[N, c, h, w]` tensors and `[N]` int64 labels (-1: none)."""

    mean: torch.Tensor
    labels: torch.Tensor
    std: torch.Tensor | None = None  # None for a point-mass VAE (double_z=False)
    mean_flip: torch.Tensor | None = None  # of the mirrored image; None when flips are off
    std_flip: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.mean.shape[0]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.mean.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> "LatentSet":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return LatentSet(**{k: v.to(device) if v is not None else None for k, v in moved.items()})

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}{f.name}": getattr(self, f.name).contiguous().cpu()
                for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> "LatentSet | None":
        picked = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        return cls(**picked) if picked else None


def _hash_tensor(h: "hashlib._Hash", tensor: torch.Tensor) -> None:
    # The array itself, not `.tobytes()`: hashlib reads the buffer in place, where a bytes copy
    # of an in-memory dataset (GBs at a large image size) would double its memory for a moment.
    h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def vae_fingerprint(vae: AutoencoderKL) -> str:
    """sha256 of every tensor of the VAE's state dict (weights and latent stats)."""
    h = hashlib.sha256()
    for key, value in sorted(vae.state_dict().items()):
        h.update(key.encode())
        _hash_tensor(h, value)
    return h.hexdigest()


def dataset_fingerprint(dataset: Any) -> str:
    """A cheap identity of a dataset: its files' names, sizes and mtimes, or its pixels."""
    h = hashlib.sha256()
    h.update(json.dumps([dataset.source, dataset.split, dataset.image_size, dataset.channels,
                         list(dataset.class_names), len(dataset)]).encode())
    files = getattr(dataset, "files", None)
    if files is not None:
        for path, label in zip(files, dataset.as_label_tensor().tolist()):
            st = os.stat(path)
            # fsencode: a file name that is not UTF-8 holds surrogates, which str.encode() refuses
            # (after the whole VAE stage has trained); other names hash to the same bytes as before.
            h.update(os.fsencode(path) + f"\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
    else:
        _hash_tensor(h, dataset.as_uint8_tensor())
        _hash_tensor(h, dataset.as_label_tensor())
    return h.hexdigest()


def _gather_rows(local: torch.Tensor, total: int, dist: DistInfo) -> torch.Tensor:
    """Concatenate every rank's equal-sized shard (padded) and cut back to `total` rows."""
    if not dist.distributed:
        return local[:total]
    parts = [torch.empty_like(local) for _ in range(dist.world_size)]
    torch_dist.all_gather(parts, local.contiguous())
    return torch.cat(parts)[:total]


@torch.no_grad()
def encode_dataset(
    vae: AutoencoderKL, dataset: Any, *, limit: int | None, flip: bool, batch_size: int,
    dist: DistInfo, num_workers: int = 0, stop: StopSignal | None = None,
    report: Callable[[str], None] | None = None, pick: Sequence[int] | None = None,
) -> LatentSet:
    """Posterior mean/std of the first `limit` images (and their mirrors), on every rank; of the
    images `pick` names (dataset indices, in that order) when given, else of all in file order.

    Each rank encodes one contiguous shard; the shards are all-gathered, so this scales with
    the number of processes and every rank ends with the whole set. `stop` (Ctrl-C, SIGTERM, the
    time limit) is checked before each batch and raises `TrainingStopped` (train/stop_check.py).
    `report` (rank 0's log) hears how far it is every `REPORT_EVERY_S` seconds: 95,000 images took
    minutes on a CPU, which looked like a hang.
    """
    order = list(range(len(dataset))) if pick is None else [int(i) for i in pick]
    total = len(order) if limit is None else min(limit, len(order))
    per_rank = -(-total // dist.world_size)
    start = dist.rank * per_rank
    indices = order[start:min(start + per_rank, total)]
    outputs: dict[str, list[torch.Tensor]] = {}
    # the labels the batches carry: a damaged file's substitute comes with its own (data/folder.py)
    batch_labels: list[torch.Tensor] = []
    was_training = vae.training
    vae.eval()
    batches = ordered_batches(dataset, indices, batch_size=batch_size, device=dist.device, num_workers=num_workers)
    started = last_report = time.monotonic()
    try:
        # As many checks on every rank (under torchrun each one is a collective), also on a rank
        # whose shard is shorter: the rounds of the longest shard.
        for round_ in range(-(-per_rank // batch_size)):
            check_stop(stop, dist)
            if report is not None and dist.is_main and time.monotonic() - last_report >= REPORT_EVERY_S:
                done = min(total, round_ * batch_size * dist.world_size)
                rate = done / (time.monotonic() - started)
                report(f"encoded {done:,} of {total:,} images ({rate:,.0f} img/s)")
                last_report = time.monotonic()
            item = next(batches, None)
            if item is None:
                continue
            images = item[0]
            batch_labels.append(item[1].to(torch.int64))
            for suffix, batch in (("", images),) + ((("_flip", images.flip(-1)),) if flip else ()):
                post = vae.posterior(batch)
                shift, scale = vae.latent_shift.view(1, -1, 1, 1), vae.latent_scale.view(1, -1, 1, 1)
                outputs.setdefault("mean" + suffix, []).append(((post.mean - shift) * scale).float())
                if post.logvar is not None:
                    outputs.setdefault("std" + suffix, []).append((post.std * scale).float())
    finally:
        batches.close()  # a stop leaves it unfinished: end its DataLoader workers now
        vae.train(was_training)
    if report is not None and dist.is_main and last_report > started:  # it said how far: say it ended
        report(f"encoded {total:,} images in {time.monotonic() - started:,.0f} s")
    c = vae.config.latent_channels
    side = dataset.image_size // vae.config.downsample_factor
    names = ["mean"] + (["std"] if vae.config.double_z else [])
    names += [n + "_flip" for n in names] if flip else []
    result: dict[str, torch.Tensor] = {}
    for name in names:
        local = torch.cat(outputs[name]) if outputs.get(name) else torch.empty(0, c, side, side, device=dist.device)
        padded = torch.zeros(per_rank, c, side, side, device=dist.device)
        padded[: local.shape[0]] = local
        result[name] = _gather_rows(padded, total, dist)
    local_labels = torch.cat(batch_labels) if batch_labels else torch.empty(0, dtype=torch.int64, device=dist.device)
    padded_labels = torch.zeros(per_rank, dtype=torch.int64, device=dist.device)
    padded_labels[: local_labels.shape[0]] = local_labels
    return LatentSet(labels=_gather_rows(padded_labels, total, dist), **result)


VAL_SUBSET_SEED = 20240611


def val_subset(count: int, size: int) -> list[int]:
    """The `size` val images validation uses: the first `size` in file order were the first classes
    only, so the validation loss left whole classes out (the emoji preset's 64 of 96: Flags, Symbols)."""
    return seeded_subset(count, size, VAL_SUBSET_SEED)


def load_or_build_latents(
    run_dir: Path, vae: AutoencoderKL, train_set: Any, val_set: Any | None, *, flip: bool, val_size: int,
    batch_size: int, dist: DistInfo, num_workers: int, log: Any, stop: StopSignal | None = None,
) -> tuple[LatentSet, LatentSet | None]:
    """The cached (train, val) latents on the device, rebuilt if the cache does not match."""
    path = run_dir / CACHE_NAME
    key = {
        "vae": vae_fingerprint(vae), "train": dataset_fingerprint(train_set),
        "val": dataset_fingerprint(val_set) if val_set is not None else None,
        "flip": flip, "val_size": val_size, "format": 2,  # 2: val is a seeded subset, not the first val_size
    }
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    # Rank 0 decides for everyone, so no rank can take the other branch of a collective.
    valid = broadcast_object(dist.is_main and _cache_matches(path, fingerprint), dist)
    if valid:
        tensors = load_file(str(path), device=str(dist.device))
        log.message(f"using cached latents {path}")
        return LatentSet.from_tensors(tensors, "train."), LatentSet.from_tensors(tensors, "val.")  # type: ignore[return-value]
    log.message(f"encoding {len(train_set)} training images into latents (cached in {path})")
    train = encode_dataset(vae, train_set, limit=None, flip=flip, batch_size=batch_size, dist=dist,
                           num_workers=num_workers, stop=stop, report=log.message)
    val = None
    if val_set is not None and len(val_set) > 0 and val_size > 0:
        val = encode_dataset(vae, val_set, limit=None, flip=False, batch_size=batch_size, dist=dist,
                             num_workers=num_workers, stop=stop, pick=val_subset(len(val_set), val_size))
    if dist.is_main:
        tensors = train.tensors("train.") | (val.tensors("val.") if val is not None else {})
        blob = save(tensors, metadata={"format": FORMAT, "fingerprint": fingerprint})
        atomic_write(path, lambda f: f.write(blob))
    barrier(dist)
    return train, val


def _cache_matches(path: Path, fingerprint: str) -> bool:
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # a damaged cache is simply rebuilt
        return False
    return meta.get("format") == FORMAT and meta.get("fingerprint") == fingerprint
