"""Which text of a row gets embedded: chosen columns, a template, or every column as name: value."""

from __future__ import annotations

import string
from collections.abc import Sequence

from csvembed.errors import InputError


class TextSpec:
    """Turns a row's fields into the one string that is embedded, validated against the header."""

    def __init__(self, columns: Sequence[str], text_columns: Sequence[str] = (), template: str | None = None) -> None:
        if text_columns and template:
            raise InputError("use either --text-column or --template, not both")
        self.columns = list(columns)
        if template is not None:
            fields = _template_fields(template)
            _require_columns(self.columns, fields, "template field")
            self._render = lambda row: _format(template, row)
            self.description = f"template {template!r}"
        elif text_columns:
            _require_columns(self.columns, text_columns, "--text-column")
            chosen = list(text_columns)
            self._render = lambda row: "\n".join(row[name] for name in chosen)
            self.description = "columns " + ", ".join(chosen)
        else:
            self._render = lambda row: "\n".join(f"{name}: {value}" for name, value in row.items())
            self.description = "every column as name: value lines"

    def render(self, values: Sequence[str]) -> str:
        return self._render(dict(zip(self.columns, values)))


def _format(template: str, row: dict[str, str]) -> str:
    try:
        return template.format_map(row)
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise InputError(f"--template {template!r} cannot be applied to a row: {exc}") from None


def _template_fields(template: str) -> list[str]:
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise InputError(f"bad --template {template!r}: {exc}") from None
    if not fields or any(field == "" or field.isdigit() for field in fields):
        raise InputError(f"bad --template {template!r}: name columns in braces, like '{{title}}: {{body}}'")
    return fields


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
