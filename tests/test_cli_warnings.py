"""ldmkit's warnings on the command line: one `ldm VERB: warning: ...` line each, while other
libraries' warnings keep Python's own format."""

from __future__ import annotations

import sys
import warnings

from ldmkit.cli.warning_lines import warning_lines
from ldmkit.data import folder


def test_ldmkit_warnings_print_as_one_line_and_others_as_before(capsys, monkeypatch):
    monkeypatch.setattr(warnings, "filters", list(warnings.filters))
    warnings.simplefilter("always")
    passed_on = []  # the handler in place before the block (Python's own, in `ldm`)
    monkeypatch.setattr(warnings, "showwarning", lambda message, *rest: passed_on.append(str(message)))
    before = warnings.showwarning
    with warning_lines("ldm train"):
        # raised from inside ldmkit (a module of the package), as a skipped image file is
        warnings.warn_explicit("3 of the 9 files are not readable images", UserWarning, folder.__file__, 1)
        warnings.warn_explicit("a library's own warning", UserWarning, sys.executable, 7)
    assert warnings.showwarning is before  # restored after the block
    assert capsys.readouterr().err == "ldm train: warning: 3 of the 9 files are not readable images\n"
    assert passed_on == ["a library's own warning"]


def test_ldm_verbs_run_inside_warning_lines(capsys, monkeypatch):
    from ldmkit.cli import info, main

    def run_that_warns(args):
        warnings.warn_explicit("a skipped file", UserWarning, folder.__file__, 1)
        return 0

    monkeypatch.setattr(warnings, "filters", list(warnings.filters))
    warnings.simplefilter("always")
    monkeypatch.setattr(info, "run", run_that_warns)
    assert main(["info", "anything"]) == 0
    assert capsys.readouterr().err == "ldm info: warning: a skipped file\n"
