"""Which text of a row gets embedded: chosen columns, a template, or every column as name: value."""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from operator import itemgetter

from csvembed.errors import InputError


class TextSpec:
    """Turns a row's fields into the one string that is embedded, validated against the header."""

    def __init__(self, columns: Sequence[str], text_columns: Sequence[str] = (), template: str | None = None) -> None:
        if text_columns and template:
            raise InputError("use either --text-column or --template, not both")
        self.columns = list(columns)
        self.render: Callable[[Sequence[str]], str]
        # Rows arrive as lists in header order: render by position, not through a dict per row.
        if template is not None:
            parts = _template_parts(template)
            _require_columns(self.columns, [field for _, field in parts if field is not None], "template field")
            pieces = [(text, None if field is None else self.columns.index(field)) for text, field in parts]
            self.render = lambda row: "".join([text + (row[index] if index is not None else "")
                                               for text, index in pieces])
            self.description = f"template {template!r}"
        elif text_columns:
            _require_columns(self.columns, text_columns, "--text-column")
            chosen = list(text_columns)
            pick = itemgetter(*(self.columns.index(name) for name in chosen))
            self.render = pick if len(chosen) == 1 else lambda row: "\n".join(pick(row))
            self.description = "columns " + ", ".join(chosen)
        else:
            labels = [f"{name}: " for name in self.columns]
            self.render = lambda row: "\n".join([label + value for label, value in zip(labels, row)])
            self.description = "every column as name: value lines"


def _template_parts(template: str) -> list[tuple[str, str | None]]:
    """The template as (literal text, column or None) pairs, with plain {column} fields only.

    str.format would also obey format specs, conversions, attributes and indexes: '{title:>999999999}'
    builds a gigabyte string per row. So rows are filled by concatenation, never by str.format.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InputError(f"bad --template {template!r}: {exc}") from None
    fields = [(field, spec, conversion) for _, field, spec, conversion in parsed if field is not None]
    if any(spec or conversion or "." in field or "[" in field for field, spec, conversion in fields):
        raise InputError(
            f"bad --template {template!r}: only plain {{column}} fields are allowed, without :format, !conversion,"
            " .attribute or [index] (embed a column whose name has . [ : or ! with --text-column)"
        )
    if not fields or any(field == "" or field.isdigit() for field, _, _ in fields):
        raise InputError(f"bad --template {template!r}: name columns in braces, like '{{title}}: {{body}}'")
    return [(text, field) for text, field, _, _ in parsed]


def _require_columns(columns: list[str], wanted: Sequence[str], what: str) -> None:
    for name in wanted:
        if name not in columns:
            raise InputError(f"unknown {what} {name!r}; the columns are: {', '.join(columns)}")


def id_column_index(columns: list[str], id_column: str | None) -> int | None:
    """Position of the --id-column, validated; None means rows are keyed by row number."""
    if id_column is None:
        return None
    _require_columns(columns, [id_column], "--id-column")
    return columns.index(id_column)
