"""`--help` that names each flag's default once, and only where there is one to name.

argparse's ArgumentDefaultsHelpFormatter appends "(default: X)" to every flag: on a switch that
reads "(default: False)", on a flag whose default comes from elsewhere (the preset, another flag)
"(default: None)", and where the help already says its default, the default twice
("(default: the preset's) (default: None)").
"""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Append "(default: X)" to a flag's help unless it already names its default, the flag is
    required or a switch, or X is None or an empty list (the help says where the value comes from)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.required:
            return text
        # identity, not equality: a default of 0 is a value to show, unlike False
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return text
        if action.nargs == 0 or action.default == []:
            return text
        return text + " (default: %(default)s)"
