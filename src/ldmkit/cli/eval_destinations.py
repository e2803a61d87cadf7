"""Where `ldm eval` writes: its report (--out) and a classifier it trains (--train-classifier),
each checked before any work. Only a file of the same kind is replaced: an earlier report, an
earlier classifier. A run's model or checkpoint, a user's image or any other file is refused (it
was replaced by JSON, and the run could no longer generate)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ldmkit.errors import UserError
from ldmkit.json_text import read_json_file
from ldmkit.run_files import run_owned_file


def _refuse_foreign(path: Path, flag: str, kind: str, is_same_kind) -> None:
    if run_owned_file(path):
        raise UserError(f"{flag} {path} is a file of the run in {path.parent}, which only `ldm train` writes; "
                        f"give the {kind} another name")
    # a FIFO or a device is no earlier output, and reading it to see would wait for ever
    if path.exists() and not path.is_dir() and not (path.is_file() and is_same_kind(path)):
        raise UserError(f"{flag} {path} exists and is not an earlier {kind}: it is left as it is; give another name")


def _writable_folder(path: Path, flag: str, kind: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot make the folder of {flag} {path}: {err.strerror or err}") from None
    try:  # written beside its name and moved over it (atomic saves): try that folder now
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as err:
        raise UserError(f"cannot write the {kind} into {path.parent} ({err.strerror or err}): give another {flag}") \
            from None


def is_eval_report(path: Path) -> bool:
    """Whether `path` holds a report `ldm eval` wrote (JSON with its "results")."""
    try:
        report = read_json_file(path)
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "results" in report


def is_eval_classifier(path: Path) -> bool:
    """Whether `path` holds a classifier `ldm eval --train-classifier` wrote."""
    from safetensors import safe_open

    from ldmkit.eval.classifier import _FORMAT

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == _FORMAT
    except Exception:  # not a safetensors file at all
        return False


def report_path(path: str) -> Path:
    """--out, checked and its folder made before any work (not after an hour of it)."""
    out = Path(path)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the report's file name (e.g. {out / 'report.json'})")
    _refuse_foreign(out, "--out", "report", is_eval_report)
    _writable_folder(out, "--out", "report")
    return out


def check_classifier_destination(path: Path) -> None:
    """Where --train-classifier saves (checked before the classifier's epochs, not after them)."""
    if path.is_dir():
        raise UserError(f"--classifier {path} is a folder; give the classifier's file name "
                        f"(e.g. {path / 'classifier.safetensors'})")
    _refuse_foreign(path, "--classifier", "classifier", is_eval_classifier)
    _writable_folder(path, "--classifier", "classifier")
