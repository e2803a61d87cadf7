"""`python -m ldmkit.cli ...` (what torchrun runs): the same as the `ldm` command."""

import sys

from ldmkit.cli import main

sys.exit(main())
