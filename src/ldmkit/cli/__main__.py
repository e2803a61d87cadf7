"""`python -m ldmkit.cli ...` (what torchrun runs): the same as the `ldm` command."""

from ldmkit.cli import entry

entry()
