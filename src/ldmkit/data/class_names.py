"""Matching a class name someone typed, or a file tag wrote, to a dataset's class names.

Class names are folder names: any script, any case, and on macOS in decomposed Unicode (NFD:
"café" as "cafe" + a combining accent), which prints the same as the composed form another
system writes. Names are therefore compared in NFC, and a match is looked for in three tiers,
each used only when the one before finds nothing:

1. the exact name (NFC);
2. the name ignoring case ("flags" for "Flags");
3. letters and digits only, ignoring case ("T-shirt_top", a file-name tag, for "T-shirt/top").

A tier that matches two classes ("a" among "A" and "a" in tier 2) is an error naming them,
never a silent pick of the first.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence

from ldmkit.errors import UserError


def nfc(name: str) -> str:
    """`name` in Unicode's composed form (how class names are stored and compared)."""
    return unicodedata.normalize("NFC", name)


def _letters_and_digits(name: str) -> str:
    return "".join(c for c in nfc(name).casefold() if c.isalnum())


_TIERS: tuple[Callable[[str], str], ...] = (nfc, lambda name: nfc(name).casefold(), _letters_and_digits)


def match_class_name(name: str, class_names: Sequence[str], *, loose: bool = True) -> int | None:
    """The index of `name` among `class_names` by the tiers above, None when no tier matches;
    `UserError` when the first tier that matches matches more than one class. `loose=False`
    leaves out tier 3 (a typed number: "15" is an id, not the class "1.5")."""
    for key in _TIERS if loose else _TIERS[:2]:
        wanted = key(name)
        if not wanted:
            continue
        found = [i for i, candidate in enumerate(class_names) if key(candidate) == wanted]
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(f"{i}={class_names[i]}" for i in found)
            raise UserError(f"the class {name!r} could be any of {names}; give it exactly as written")
    return None


def same_class_names(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether two class lists are the same names in the same order, up to Unicode composition."""
    return [nfc(n) for n in a] == [nfc(n) for n in b]
