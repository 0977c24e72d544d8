"""Tables that read well in a log: rich boxes on a terminal, plain text in a pipe or a file.

Outside a terminal rich draws for 80 columns, so a table of captions becomes hundreds of lines of wrapped
fragments in a CI log. There, ``print_table`` writes the same cells as a Markdown pipe table (one line per row,
never wrapped; a cell's lines joined with " / "), and a panel of key/value rows as ``key: value`` lines. Both
CLIs print their tables through here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from rich.panel import Panel
from rich.text import Text

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


def print_table(console: Console, renderable: Table | Panel) -> None:
    """Print a rich Table (or a Panel around one) as boxes on a terminal, as plain lines otherwise."""
    if console.is_terminal:
        console.print(renderable)
        return
    console.print(plain_text(renderable), markup=False, highlight=False, soft_wrap=True)


def plain_text(renderable: Table | Panel) -> str:
    """The plain form of a Table or of a Panel holding a Table (the title first)."""
    title = None
    if isinstance(renderable, Panel):
        title, renderable = renderable.title, renderable.renderable
    table = renderable
    title = title if title is not None else table.title
    columns = [[_cell(c) for c in col.cells] for col in table.columns]
    rows = list(zip(*columns)) if columns else []
    lines = [str(title)] if title else []
    if not table.show_header:  # a key/value grid
        lines += ["  " + ": ".join(x for x in row if x) for row in rows]
        return "\n".join(lines)
    lines.append("| " + " | ".join(_cell(col.header) for col in table.columns) + " |")
    lines.append("|" + "---|" * len(table.columns))
    lines += ["| " + " | ".join(x.replace("|", "\\|") for x in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    text = value.plain if isinstance(value, Text) else str(value)
    return " / ".join(line.strip() for line in text.splitlines() if line.strip())
