"""The choices of the compile flags, in a module that imports nothing: `ldm --help` builds every
verb's parser, and reaching these through the modules that use them imported torch (~1.8 s)."""

COMPILE_CHOICES = ("auto", "on", "off")  # ldm generate / serve / eval --compile
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")  # ldm train --compile-mode
