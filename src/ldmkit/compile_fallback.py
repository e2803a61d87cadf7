"""torch.compile where this machine can build kernels, the plain module where it cannot.

ldmkit compiles by default on CUDA (`ldm train`, and `ldm generate` / `ldm eval` for large jobs).
torch.compile needs more than PyTorch for that: Triton (which CUDA PyTorch does not ship on
every platform, Windows among them), a GPU of compute capability 7.0 or newer (Triton's
floor), and a C compiler (Triton builds its launcher with one). Without them the first compiled
call fails deep inside inductor, with a traceback that names none of ldmkit's flags.

So two guards, both ending in the same place: the job runs uncompiled, slower but with the same
results (the compiled path is tested to compute the plain path's function), after one warning that
says why and which flag skips the attempt.
- `compile_blocker(device)` / `compile_allowed`: what is known without trying (Triton missing,
  the GPU too old).
- `EagerFallback` / `call_or_fallback`: a compile that fails anyway (no C compiler, a backend
  error) on the first call falls back to the module for good. The failed call is repeated
  eagerly with the same inputs, so nothing is lost: no optimizer step has been taken yet.

Only the compiler's own failures fall back (dynamo's `ShortenTraceback` family: `BackendCompilerFailed`,
`InductorError`, `TritonMissing`, `GPUTooOldForTriton`); an error in the model itself is raised
as it would be uncompiled.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import nn

from ldmkit.nn.switches import TRITON_IMPORTABLE

TRITON_MIN_CAPABILITY = (7, 0)


_FAILED: dict[str, str] = {}  # device type -> why the compiler failed there in this process
_WARNED: set[tuple[str, str]] = set()  # (what, reason) already said


def compile_blocker(device: torch.device) -> str | None:
    """Why torch.compile cannot build kernels for `device` here, known without trying (or from a
    failure earlier in this process); None if nothing is known against it. Only CUDA has checks
    before trying (the CPU's compiler shows on trying)."""
    if device.type in _FAILED:
        return _FAILED[device.type]
    if device.type != "cuda":
        return None
    if not TRITON_IMPORTABLE:
        return "Triton is not installed, and torch.compile needs it on a GPU"
    capability = torch.cuda.get_device_capability(device)
    if tuple(capability) < TRITON_MIN_CAPABILITY:
        return (f"this GPU has compute capability {capability[0]}.{capability[1]}; Triton, which "
                f"torch.compile needs, supports {TRITON_MIN_CAPABILITY[0]}.{TRITON_MIN_CAPABILITY[1]} and newer")
    return None


def compile_allowed(device: torch.device, what: str, flag: str) -> bool:
    """Whether `what` (training, generation) should compile on `device`: no `compile_blocker`,
    else False after one warning naming the reason and `flag`, the switch that skips the attempt."""
    blocker = compile_blocker(device)
    if blocker is not None:
        warn_uncompiled(what, blocker, flag)
    return blocker is None


def warn_uncompiled(what: str, reason: str, flag: str) -> None:
    """The one warning a job gets when it runs uncompiled against its setting (once per process
    for each reason: a run's second stage, or a second batch size, says nothing new)."""
    if (what, reason) in _WARNED:
        return
    _WARNED.add((what, reason))
    warnings.warn(f"{what} runs without torch.compile (slower, same results): {reason}. "
                  f"Pass {flag} to skip the attempt.", RuntimeWarning, stacklevel=3)


def _reason(err: BaseException) -> str:
    """The first line of the compiler's message: what went wrong, without inductor's traceback.
    `BackendCompilerFailed` wraps the backend's own error (its first line names only the backend)."""
    err = getattr(err, "inner_exception", None) or err
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"torch.compile failed ({lines[0] if lines else type(err).__name__})"


def call_or_fallback(state: dict[str, Any], compiled: Callable[..., Any], plain: Callable[..., Any],
                     args: tuple, kwargs: dict[str, Any], *, what: str, flag: str) -> Any:
    """`compiled(*args, **kwargs)` until the compiler fails once, `plain(...)` from then on.

    `state` is the caller's record (`state["failed"]`), kept by the object that owns both callables.
    The failure is also remembered for the device type (`compile_blocker`), so that later
    compiles in this process (the next training stage) are not attempted.
    """
    if not state.get("failed"):
        try:
            return compiled(*args, **kwargs)
        except Exception as err:
            if not isinstance(err, _compiler_failure()):
                raise
            state["failed"] = _reason(err)
            _FAILED[_device_type(args, kwargs)] = state["failed"]
            warn_uncompiled(what, state["failed"], flag)
    return plain(*args, **kwargs)


def _compiler_failure() -> type[Exception]:
    """The base class of the compiler's own failures. Imported here, not with this module: a
    compiled call has imported torch._dynamo already, and `import ldmkit` should not (~1 s)."""
    try:
        from torch._dynamo.exc import ShortenTraceback  # torch >= 2.6
        return ShortenTraceback
    except ImportError:  # pragma: no cover - older torch
        from torch._dynamo.exc import BackendCompilerFailed
        return BackendCompilerFailed


def _device_type(args: tuple, kwargs: dict[str, Any]) -> str:
    """The device type of a call's first tensor argument ("cpu" if none)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device.type
    return "cpu"


class EagerFallback(nn.Module):
    """A module's compiled form that turns into the module itself if compiling fails.

    Holds `module` as its only child (so `.parameters()`, `.train()` and the optimizer see the
    module); the compiled form is kept outside the module tree.
    """

    def __init__(self, compiled: Callable[..., Any], module: nn.Module, *, what: str, flag: str) -> None:
        super().__init__()
        self.module = module
        self.__dict__["_compiled"] = compiled  # not a child: its parameters are module's
        self.__dict__["_state"] = {}
        self._what, self._flag = what, flag

    @property
    def fell_back(self) -> bool:
        return bool(self._state.get("failed"))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return call_or_fallback(self._state, self._compiled, self.module, args, kwargs,
                                what=self._what, flag=self._flag)
