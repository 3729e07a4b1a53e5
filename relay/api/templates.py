"""Placeholders for batch sending: ``{{ name }}`` filled from each recipient.

This is substitution, not a template language: a placeholder is ``{{``, optional
spaces, a name (letters, digits, ``_``, ``.``, ``-``; not starting with a digit
or punctuation), optional spaces, ``}}``.  Nothing is evaluated, so a value can
never run code or pull in other values.  Every ``{{`` must open a well-formed
placeholder, and every placeholder must have a value: a misspelt or missing one
is an error, never silently blank (the price: a batch cannot carry a literal
``{{`` -- put such text in a substitution value).  Values are inserted once (a value that
itself contains ``{{ x }}`` stays as written).  In HTML, values are escaped
(``<`` becomes ``&lt;``, quotes too) so a recipient's name cannot inject markup.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]{0,63})\s*\}\}")
_OPEN = "{{"


class TemplateError(ValueError):
    """A template or its values do not fit: `detail` says how."""

    def __init__(self, detail: str, name: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.name = name


@dataclass(frozen=True, slots=True)
class Template:
    """A text split into literal pieces and placeholder names (parsed once)."""

    pieces: tuple[str, ...]  # literal text; len(names) + 1 pieces
    names: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        """Split `text`; TemplateError at a ``{{`` that is not a placeholder."""
        pieces: list[str] = []
        names: list[str] = []
        position = 0
        while True:
            start = text.find(_OPEN, position)
            if start < 0:
                pieces.append(text[position:])
                return cls(tuple(pieces), tuple(names))
            m = _PLACEHOLDER.match(text, start)
            if m is None:
                snippet = text[start : start + 24]
                raise TemplateError(f"malformed placeholder at {snippet!r}")
            pieces.append(text[position:start])
            names.append(m.group(1))
            position = m.end()

    @property
    def is_static(self) -> bool:
        return not self.names

    def render(self, values: Mapping[str, str], *, escape_html: bool = False) -> str:
        """The text with every placeholder filled; TemplateError naming a missing one."""
        if not self.names:
            return self.pieces[0]
        out = [self.pieces[0]]
        for name, piece in zip(self.names, self.pieces[1:], strict=True):
            value = values.get(name)
            if value is None:
                raise TemplateError(f"no value for placeholder {name!r}", name)
            out.append(html.escape(value, quote=True) if escape_html else value)
            out.append(piece)
        return "".join(out)
