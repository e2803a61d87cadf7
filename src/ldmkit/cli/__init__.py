"""The `ldm` command: one sub-command per job (train, generate, info, eval, ...).

Each verb lives in its own module with two functions: `add_parser(subparsers)` declares its
flags (every flag has help text) and `run(args)` does the work. A `UserError` anywhere becomes
one line on stderr and exit status 2; Ctrl-C exits with 130 (training saves first).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ldmkit import __version__
from ldmkit.errors import UserError

from . import convert, generate, info, serve, train
from . import eval as eval_verb
from .closed_pipe import outputs_survive_a_closed_pipe
from .warning_lines import warning_lines
from .whole_line import print_line

VERBS = [train, generate, serve, info, eval_verb, convert]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldm",
        description="ldmkit: train latent diffusion models on a folder of images and generate from them.",
        epilog="Run `ldm VERB --help` for the flags of each verb.",
    )
    parser.add_argument("--version", action="version", version=f"ldmkit {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        verb.add_parser(subparsers)
    return parser


def _verb_parser(parser: argparse.ArgumentParser, verb: str) -> argparse.ArgumentParser:
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[verb]


def _which_process() -> str:
    """The error line's process tag: ' (rank R of N)' under torchrun, where every process reports
    its own error (usually the same one; a rank's own, such as a GPU it lacks); empty in one process."""
    world = os.environ.get("WORLD_SIZE", "1")
    return f" (rank {os.environ.get('RANK', '0')} of {world})" if world.isdigit() and int(world) > 1 else ""


RANK_ERROR_DELAY_S = 3.0


def _let_rank_zero_say_it_first() -> None:
    """Under torchrun, a rank other than 0 waits before printing its error. A mistake in the
    command fails on every rank alike, and torchrun ends the others as soon as one exits: the
    same line came from ranks 1..N-1, and rank 0's, the one that owns the log, was cut off. Rank
    0 now says it and exits while the others wait and are ended unheard; an error of one rank's
    own (a GPU it lacks) is still said by that rank, seconds later."""
    world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
    if "TORCHELASTIC_RUN_ID" in os.environ and world.isdigit() and int(world) > 1 and rank not in ("", "0"):
        time.sleep(RANK_ERROR_DELAY_S)


# Flags that take a file or folder. The shell expands "~" only at a word's start, so
# `--out=~/runs` arrived as "~/runs" and made a folder named "~" here (that --data expanded it
# and --out did not made it worse); every one of them is expanded the same way.
PATH_FLAGS = ("data", "out", "model", "vae", "init_image", "mask", "tokenizer", "grid", "samples", "classifier",
              "inception_weights", "src")


def expand_home(args: argparse.Namespace) -> None:
    """Expand a leading "~" in the path flags of `args`, in place."""
    for name in PATH_FLAGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, name, os.path.expanduser(value))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.verb is None:
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        parser.print_help(sys.stderr)  # a verb is needed: the help, and the status of a usage error
        return 2
    if unknown:  # the verb's usage, not the top level's ("usage: ldm [-h] [--version] VERB ...")
        _verb_parser(parser, args.verb).error(f"unrecognized arguments: {' '.join(unknown)}")
    expand_home(args)
    try:
        with outputs_survive_a_closed_pipe(), warning_lines(f"ldm {args.verb}{_which_process()}"):
            result = args.run(args)
    except UserError as err:
        _let_rank_zero_say_it_first()
        print_line(f"ldm {args.verb}{_which_process()}: error: {err}")
        return 2
    except BrokenPipeError:  # a pipe other than stdout / stderr (those drop their writes: closed_pipe.py)
        return 0
    except OSError as err:  # the file system said no: a missing or read-only place, a full disk
        where = f": {err.filename}" if err.filename else ""
        print_line(f"ldm {args.verb}{_which_process()}: error: {err.strerror or err}{where}")
        return 1
    except KeyboardInterrupt:
        print_line(f"ldm {args.verb}{_which_process()}: interrupted")
        return 130
    return int(result or 0)


def entry() -> None:
    """The `ldm` command and `python -m ldmkit.cli`: `main`, then the process's end
    (`process_exit.finish`: seconds sooner after a job that used a GPU)."""
    from .process_exit import finish

    finish(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
