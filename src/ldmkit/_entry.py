"""The `ldm` command's entry point, outside `ldmkit.cli`: importing the CLI imports torch (one to
three seconds), and a Ctrl-C in that time printed a 20-line traceback from inside `import torch`."""

from __future__ import annotations

import sys


def entry() -> None:
    try:
        from ldmkit.cli import entry as run
    except KeyboardInterrupt:
        print("ldm: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    run()
