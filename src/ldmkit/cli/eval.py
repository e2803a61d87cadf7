"""`ldm eval`: sample quality in one feature space, each number beside the real-vs-real baseline."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from ldmkit.atomic import atomic_write_text
from ldmkit.compile_choices import COMPILE_CHOICES
from ldmkit.errors import UserError
from ldmkit.pretrained import bundled_names

from .eval_destinations import check_classifier_destination, report_path
from .help_format import DefaultsHelpFormatter

if TYPE_CHECKING:
    import torch

GPU_BATCH, CPU_BATCH = 500, 64  # --batch-size's defaults


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="measure sample quality (FD, KID, precision/recall, class accuracy) against real data",
        description="Generate --n samples balanced over classes (or read --samples DIR) and compare them with the "
        "real test split in one feature space: Frechet distance, KID, precision and recall (k-NN, Kynkaanniemi et "
        "al. 2019) and the accuracy of a classifier on the requested class. Each number is printed beside the "
        "baseline of real training images against the same test images, at the same n (class accuracy's baseline "
        "is the classifier's accuracy on the test images themselves). Only the Inception-v3 "
        "distance is called FID; others are named after their extractor (FD_classifier, FD_efficientnet_lite0).",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--model", default=None,
                   help=f"run folder, inference file or bundled model ({', '.join(bundled_names())}) to sample "
                   "from (or to take the VAE from)")
    p.add_argument("--data", required=True, help="the real data: a folder, 'emoji' or 'fashion-mnist[:DIR]'")
    p.add_argument("--samples", default=None,
                   help="read generated images instead of sampling: a folder of PNGs named like "
                   "00012_seed12_class3.png, or an .npz with uint8 `images` [N,C,H,W] and int `labels`")
    p.add_argument("--n", type=int, default=10000, help="samples to generate (balanced over classes)")
    p.add_argument("--features", default="auto", choices=["auto", "inception", "efficientnet", "classifier"],
                   help="feature space; auto = the dataset classifier when one is given, else EfficientNet-Lite0")
    p.add_argument("--classifier", default=None,
                   help="a dataset classifier (.safetensors) for features and class accuracy")
    p.add_argument("--train-classifier", action="store_true",
                   help="train the dataset classifier first and save it to --classifier (default: OUT's folder)")
    p.add_argument("--classifier-epochs", type=int, default=30, help="epochs for --train-classifier")
    p.add_argument("--inception-weights", default=None,
                   help="local pt_inception / torch-fidelity weights file (never downloaded); with --features "
                   "auto it selects the Inception features")
    p.add_argument("--vae", action="store_true",
                   help="also report the VAE's reconstruction PSNR/SSIM on the val split and the distance of its "
                   "reconstructions (the floor a latent model can reach)")
    p.add_argument("--cfg", type=float, nargs="+", default=[2.0], help="guidance scales to evaluate (one report each)")
    p.add_argument("--sampler", default="dpmpp-2m", help="sampler for generation")
    p.add_argument("--steps", type=int, default=25, help="sampler steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the first sample")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"images per generation batch, and per feature batch on a CPU (default: {GPU_BATCH} on a "
                        f"GPU, {CPU_BATCH} on a CPU, where batches of {GPU_BATCH} held ~2.5 GB and ran no faster)")
    p.add_argument("--k", type=int, default=3, help="neighbours for precision/recall")
    p.add_argument("--kid-subsets", type=int, default=100,
                   help="KID: random subsets drawn from each set, their MMD averaged (default: 100)")
    p.add_argument("--kid-subset-size", type=int, default=1000,
                   help="KID: images per subset, at most the smaller set (default: 1000)")
    p.add_argument("--image-size", type=int, default=None,
                   help="size to read the real images at when no --model gives it (default: the --samples' size)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--compile", choices=COMPILE_CHOICES, default="auto",
                   help="torch.compile the UNet for generation (CUDA graphs on a GPU); auto: on CUDA for 256+ samples")
    p.add_argument("--out", default="report.json", help="write the JSON report here")
    p.add_argument("--quiet", action="store_true", help="no progress bars (reading real images, generating)")
    p.set_defaults(run=run)


def _real_datasets(args: argparse.Namespace, image_size: int, channels: int | None):
    """The train and val datasets, built but not decoded (a folder's files are only listed and checked)."""
    from ldmkit.data import load_image_dataset
    from ldmkit.data.folder_layout import ValClassesMissing

    train = load_image_dataset(args.data, "train", image_size=image_size, flip=False, channels=channels)
    with warnings.catch_warnings():  # eval says it in its own words, once the images are read
        warnings.simplefilter("ignore", ValClassesMissing)
        val = load_image_dataset(args.data, "val", image_size=image_size, flip=False, channels=channels)
    return train, val


def _memory_advice(args: argparse.Namespace) -> str:
    """What shrinks the real images `ldm eval` decodes, for the refusal when they do not fit."""
    ways = [] if args.model else ["a smaller --image-size"]
    if args.train_classifier:  # trains on every training image; a classifier given needs only n of them
        ways.append("a classifier trained before (--classifier, without --train-classifier)")
    else:
        ways.append("a smaller --n")
    return " or ".join(ways)


def _decode_real(args: argparse.Namespace, train, val, n: int):
    """(train images, labels), (test images, labels): every image of val, and of train those the
    report uses (n for the baseline; all when a classifier is trained on them), checked to fit first."""
    from ldmkit.eval.real_data import baseline_indices, check_real_images_fit, decode_real_images

    train_indices = None if args.train_classifier else baseline_indices(len(train), n)
    train_count = len(train) if train_indices is None else len(train_indices)
    check_real_images_fit([train, val], [train_count, len(val)], source=args.data, advice=_memory_advice(args))
    return (decode_real_images(train, train_indices, quiet=args.quiet),
            decode_real_images(val, quiet=args.quiet))


def _classifier_path(args: argparse.Namespace) -> Path | None:
    if args.classifier:
        return Path(args.classifier)
    if args.train_classifier:
        return Path(args.out).parent / "classifier.safetensors"
    return None


def _reconstruction_report(vae, real_test: torch.Tensor, extractor, device, batch: int = 256, *, k: int = 3,
                           kid_subsets: int = 100) -> dict:
    """PSNR / SSIM of the VAE on real test images, and the distance of the reconstructions of one
    half of them from the other half (the halves drawn at random: a folder's images come class by
    class, and halves in file order held different classes)."""
    import torch

    from ldmkit.eval import distribution_metrics, reconstruction_metrics

    recons = []
    with torch.no_grad():
        for start in range(0, real_test.shape[0], batch):
            x = real_test[start:start + batch].to(device).float() / 127.5 - 1
            dtype = next(vae.parameters()).dtype  # bf16 when the pipeline holds it so on CUDA
            y = vae.decode(vae.encode(x.to(dtype))).float().clamp(-1, 1)
            recons.append(((y + 1) * 127.5).round().to(torch.uint8).cpu())
    recon = torch.cat(recons)
    out = reconstruction_metrics(real_test, recon)
    half = real_test.shape[0] // 2  # reconstructions of one half against the other, untouched half
    order = torch.randperm(real_test.shape[0], generator=torch.Generator().manual_seed(0))
    first, second = order[:half], order[half:]
    settings = dict(extractor_name=extractor.name, k=k, kid_subsets=kid_subsets, kid_subset_size=min(1000, half),
                    device=extractor.device)
    dist = distribution_metrics(extractor(recon[first]), extractor(real_test[second]), **settings)
    real = distribution_metrics(extractor(real_test[first]), extractor(real_test[second]), **settings)
    out["reconstruction_vs_real"] = dist
    out["real_vs_real"] = real
    return out


def data_ids_of_model_classes(model_classes: list[str], data_classes: list[str]) -> list[int]:
    """Entry k: the data's id of the model's class k, matched by name (the class accuracy compares
    the model's labels with the classifier's, which learned the data's order). `UserError` when
    the two do not have the same classes: the model was trained on other data. Names are compared
    in NFC: a folder name macOS wrote decomposed ("café") is the same class composed."""
    from ldmkit.data.class_names import nfc

    model, data = [nfc(name) for name in model_classes], [nfc(name) for name in data_classes]
    if sorted(model) != sorted(data):
        shown = ", ".join(model_classes[:6]) + (", ..." if len(model_classes) > 6 else "")
        wanted = ", ".join(data_classes[:6]) + (", ..." if len(data_classes) > 6 else "")
        raise UserError(f"the model's classes ({shown}) are not the data's ({wanted}): evaluate a model against "
                        "the data it was trained on")
    return [data.index(name) for name in model]


def _is_npz(path: str) -> bool:
    return path.lower().endswith(".npz")


def _samples_image_size(path: str) -> int:
    """The height of the samples at `path` (the real images are read at it when no --model says)."""
    if _is_npz(path):
        from ldmkit.eval.npz_samples import npz_arrays

        return int(npz_arrays(path, 1)[0].shape[-2])
    from ldmkit.eval.samples_io import check_sample_folder, sample_paths

    folder = Path(path)
    check_sample_folder(folder, "--samples")
    first = next(iter(sample_paths(folder, 1)), None)
    if first is None:
        raise UserError(f"no .png files in {folder}")
    from ldmkit.pipeline import open_image

    return open_image(first, "sample").size[1]


def _read_samples(path: str, class_names: list[str], channels: int, limit: int, model_classes: list[str] | None):
    """Generated images from a PNG folder or an `.npz` file -> (uint8 [N,C,H,W], labels or None),
    labels checked to be the data's class ids. A folder's class ids are the ids of its
    `samples.json`'s names, else of `model_classes`'."""
    from ldmkit.eval import read_sample_folder
    from ldmkit.eval.samples_io import check_sample_folder

    if _is_npz(path):
        from ldmkit.eval.npz_samples import npz_arrays

        images, labels = npz_arrays(path, limit)
    else:
        check_sample_folder(Path(path), "--samples")
        samples = read_sample_folder(path, class_names=class_names, channels=channels, limit=limit,
                                     sample_class_names=model_classes)
        images, labels = samples.images, samples.labels
    if labels is not None and class_names and not bool(((labels >= 0) & (labels < len(class_names))).all()):
        wrong = sorted({int(v) for v in labels if not 0 <= v < len(class_names)})[:5]
        raise UserError(f"--samples {path}: class labels {wrong} are not ids of the data's {len(class_names)} "
                        f"classes (0 to {len(class_names) - 1})")
    return images, labels


def _sample_runs(args: argparse.Namespace, pipe, samples: tuple | None, data_ids: list[int] | None):
    """(info, uint8 images, labels in the data's ids or None) for --samples, or for each --cfg in
    turn, generated only when the one before has been judged and written."""
    import torch

    if samples is not None:  # read, and checked, before any work
        yield {"samples": args.samples}, *samples
        return
    for scale in args.cfg:
        seeds, labels = pipe.plan(args.n, None, args.seed)
        t0 = time.time()
        bar = tqdm(total=len(seeds), unit="img", disable=args.quiet, desc=f"generating (cfg {scale:g})")
        guided = pipe.guidance_scale(scale) is not None  # an unconditional model: --cfg's default means nothing
        images = pipe.generate_uint8(seeds, labels, sampler=args.sampler, steps=args.steps,
                                     cfg=scale if guided else None, batch_size=args.batch_size, progress=bar.update)
        bar.close()
        info = {"cfg": scale, "sampler": args.sampler, "steps": args.steps, "seconds": time.time() - t0}
        fake_labels = None
        if pipe.num_classes:
            fake_labels = torch.tensor([data_ids[c] for c in labels] if data_ids else labels)
        yield info, images, fake_labels


def _feature_name(args: argparse.Namespace) -> str:
    """--features, where --inception-weights asks for Inception (it was ignored without --features inception)."""
    if args.inception_weights is None or args.features == "inception":
        return args.features
    if args.features == "auto":
        return "inception"
    raise UserError(f"--inception-weights is for --features inception, not {args.features}: drop one of them")


def _check_arguments(args: argparse.Namespace) -> None:
    """The mistakes the flags alone show."""
    if args.model is None and args.samples is None:
        raise UserError("give --model (to generate samples) or --samples DIR (already generated)")
    if args.n < 1:
        raise UserError(f"--n must be at least 1 (got {args.n})")
    if args.kid_subsets < 1 or args.kid_subset_size < 2:  # checked by kid() too, but only after the work
        flag, value, least = (("--kid-subsets", args.kid_subsets, 1) if args.kid_subsets < 1
                              else ("--kid-subset-size", args.kid_subset_size, 2))
        raise UserError(f"{flag} must be at least {least} (got {value})")
    if args.vae and args.model is None:
        raise UserError("--vae needs --model (the VAE to test)")
    for flag, value in (("--batch-size", args.batch_size), ("--classifier-epochs", args.classifier_epochs)):
        if value is not None and value < 1:  # else found only after the real images are decoded
            raise UserError(f"{flag} must be at least 1 (got {value})")


def _pipeline(args: argparse.Namespace, device):
    """The --model's pipeline (None without one), its sampling settings checked."""
    if args.model is None:
        return None
    from ldmkit.pipeline import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(args.model, device=str(device), compile=args.compile)
    if not args.samples:
        for scale in args.cfg:
            pipe.check_sampling(args.sampler, args.steps, cfg=scale)
        if len(args.cfg) > 1 and pipe.guidance_scale(args.cfg[0]) is None:  # the same samples, judged again
            raise UserError(f"this model is unconditional, so guidance changes nothing: --cfg "
                            f"{' '.join(f'{c:g}' for c in args.cfg)} would judge the same samples {len(args.cfg)} "
                            "times; leave --cfg out")
    return pipe


def _given_classifier(args: argparse.Namespace, device):
    """The --classifier, loaded; None when none is given or --train-classifier is to make it."""
    from ldmkit.eval import load_classifier

    path = _classifier_path(args)
    if path is None or args.train_classifier:
        return None
    if not path.is_file():
        raise UserError(f"--classifier {path} does not exist (add --train-classifier to make it)")
    return load_classifier(path, device=device)


def _check_class_names(args: argparse.Namespace, pipe, classifier, class_names: list[str]) -> list[int] | None:
    """The data's ids of the model's classes (None when either has none); `UserError` when the
    model or the classifier knows other classes than the data."""
    from ldmkit.data.class_names import same_class_names

    data_ids = None
    if pipe is not None and pipe.num_classes and class_names:
        data_ids = data_ids_of_model_classes(list(pipe.class_names), list(class_names))
    known = classifier.config.class_names if classifier is not None else []
    if known and class_names and not same_class_names(known, class_names):
        raise UserError(f"the classifier {args.classifier} was trained on other classes ({', '.join(known[:6])}"
                        f"{', ...' if len(known) > 6 else ''}) than the data's; pass --train-classifier to train "
                        "one on this data")
    return data_ids


def _classifier_features(args: argparse.Namespace, feature_name: str, classifier) -> bool:
    """Whether the features are the dataset classifier's (as `resolve_features` reads "auto")."""
    return feature_name == "classifier" or (feature_name == "auto" and (classifier is not None
                                                                        or args.train_classifier))


def _check_k(args: argparse.Namespace, n: int, train_count: int, test_count: int, read: bool) -> None:
    if not 1 <= args.k < min(n, train_count, test_count):
        samples_made = f"{n} samples" if read else f"--n {n}"
        raise UserError(f"precision/recall with --k {args.k} needs more than k images in each set, and k >= 1: "
                        f"{samples_made}, {train_count} training and {test_count} test images here")
    if args.vae and not args.k < test_count // 2:  # --vae compares two halves of the test images
        raise UserError(f"--vae compares halves of the test images, and precision/recall with --k {args.k} needs "
                        f"more than k in each: {test_count} test images here")


def _check_shapes(args: argparse.Namespace, classifier, samples: tuple | None, real: tuple[int, int, int]) -> None:
    """A given classifier's and read samples' image shape against the real images', before those are
    decoded (and samples generated, a classifier trained): each was found only inside the metrics."""
    if classifier is not None and not args.train_classifier:
        trained = (classifier.config.in_channels, *classifier.config.image_size)
        if trained != real:
            raise UserError(f"the classifier was trained on images {trained} (C, H, W), and the real images here are "
                            f"{real}; train a classifier on this dataset (--train-classifier)")
    if samples is not None and tuple(samples[0].shape[1:]) != real:
        raise UserError(f"--samples {args.samples}: images of {tuple(samples[0].shape[1:])} (C, H, W), the real "
                        f"images {real}; give samples of the data's size and channels (or --image-size)")


def _trained_classifier(args: argparse.Namespace, real_train, real_test, class_names, device, report: dict):
    """--train-classifier: train on the real images, save, note it in the report; the saved one, loaded."""
    from ldmkit.eval import load_classifier, save_classifier, train_classifier

    path = _classifier_path(args)
    t0 = time.time()
    model, acc = train_classifier(real_train, real_test, epochs=args.classifier_epochs, device=device,
                                  class_names=class_names, log=print)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_classifier(model, path, val_accuracy=acc)
    print(f"classifier: test accuracy {acc:.4f} ({time.time() - t0:.0f} s), saved to {path}")
    report["classifier"] = {"path": str(path), "test_accuracy": acc}
    return load_classifier(path, device=device)


def run(args: argparse.Namespace) -> int:
    from ldmkit.device import resolve_device
    from ldmkit.eval import evaluate, format_report, resolve_features
    from ldmkit.eval.real_data import listed_class_names, warn_missing_test_classes

    _check_arguments(args)
    out = report_path(args.out)
    if args.train_classifier:
        check_classifier_destination(_classifier_path(args))
        if _classifier_path(args).resolve() == out.resolve():  # the report would overwrite the classifier
            raise UserError(f"--out and --classifier name the same file ({out}); give each its own")
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    args.batch_size = args.batch_size if args.batch_size is not None else (GPU_BATCH if on_gpu else CPU_BATCH)
    features_batch = None if on_gpu else args.batch_size  # None: each extractor's own default
    pipe = _pipeline(args, device)
    image_size = pipe.image_size if pipe else args.image_size
    if image_size is None and args.samples:
        image_size = _samples_image_size(args.samples)  # the real images are compared at the samples' size
    if image_size is None:
        raise UserError("--image-size is needed when no --model says the image size")
    channels = pipe.vae.config.in_channels if pipe else None

    # Everything that can be refused without the real images is, before they are decoded: Inception's
    # or EfficientNet's weights first, then a folder's class names from its listing alone.
    feature_name = _feature_name(args)
    classifier = _given_classifier(args, device)
    extractor = None
    if not _classifier_features(args, feature_name, classifier):
        extractor = resolve_features(feature_name, inception_weights=args.inception_weights, device=device,
                                     batch_size=features_batch)
    listed = listed_class_names(args.data)
    if listed is not None:
        _check_class_names(args, pipe, classifier, listed)
    train, val = _real_datasets(args, image_size, channels)
    data_ids = _check_class_names(args, pipe, classifier, train.class_names)
    samples, n = None, args.n
    if args.samples:
        samples = _read_samples(args.samples, list(train.class_names), val.channels, args.n,
                                list(pipe.class_names) if pipe is not None else None)
        n = samples[0].shape[0]
    _check_k(args, n, len(train), len(val), read=samples is not None)
    _check_shapes(args, classifier, samples, (val.channels, image_size, image_size))
    if len(train) < n:  # the baseline is "at the same n" (--help): say where it cannot be
        warnings.warn(f"the real baseline compares all {len(train)} training images, fewer than the {n} samples; "
                      f"Frechet distance and KID depend on the count, so its row is not on the samples' footing "
                      f"(--n {len(train)} puts them on one)", stacklevel=2)
    if extractor is None and not args.train_classifier:  # the classifier's features: refused here if none
        extractor = resolve_features(feature_name, classifier=classifier, device=device, batch_size=features_batch)
    (real_train, train_labels), (real_test, test_labels) = _decode_real(args, train, val, n)
    if train.class_names:
        warn_missing_test_classes(train.class_names, test_labels, f"the val split of {args.data}")

    report: dict = {"data": args.data, "model": args.model, "samples": args.samples, "n": n}
    if args.train_classifier:
        classifier = _trained_classifier(args, (real_train, train_labels), (real_test, test_labels),
                                         train.class_names, device, report)
    if extractor is None:  # the features of the classifier just trained
        extractor = resolve_features(feature_name, classifier=classifier, device=device, batch_size=features_batch)
    report["features"] = extractor.name

    if args.vae:
        report["vae"] = _reconstruction_report(pipe.vae, real_test, extractor, device, batch=min(256, args.batch_size),
                                               k=args.k, kid_subsets=args.kid_subsets)
        print(f"VAE: PSNR {report['vae']['psnr']:.2f} dB, SSIM {report['vae']['ssim']:.4f}; reconstructions vs real: "
              + ", ".join(f"{k} {v:.4f}" for k, v in report["vae"]["reconstruction_vs_real"].items()))

    report["results"] = []
    reuse: dict = {}  # the real side, judged once for every guidance scale
    try:
        for info, images, fake_labels in _sample_runs(args, pipe, samples, data_ids):
            result = evaluate(images, fake_labels, real_train, real_test, extractor, classifier, args.k,
                              real_test_labels=test_labels if len(train.class_names) else None,
                              kid_subsets=args.kid_subsets, kid_subset_size=min(args.kid_subset_size, images.shape[0]),
                              reuse=reuse)
            result.update(info)
            report["results"].append(result)
            print(("\n" + ", ".join(f"{k}={v}" for k, v in info.items() if k != "seconds")).strip())
            print(format_report(result))
            atomic_write_text(out, json.dumps(report, indent=2))  # after each scale: an interrupt keeps those done
    except KeyboardInterrupt:
        kept = f"{out} has the {len(report['results'])} judged before it" if report["results"] else "no report written"
        print(f"ldm eval: interrupted; {kept}", file=sys.stderr)
        return 130
    print(f"report written to {out}")
    return 0
