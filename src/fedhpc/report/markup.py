"""The report's HTML building blocks: number formats, tables, legends and figures every section shares.

Table cells are HTML already (a section may put a pill or bold text in one),
so the section that builds a cell escapes what it quotes; legend labels and
figure captions are plain text and are escaped here.
"""

from __future__ import annotations

from html import escape


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "—"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def table_html(header: list[str], rows: list[list[str]], *, numeric_from: int = 1) -> str:
    """Cells are HTML already; columns from `numeric_from` on are right-aligned."""
    head = "".join(f'<th{" class=num" if i >= numeric_from else ""}>{h}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i >= numeric_from else ""}>{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def legend_html(items: list[tuple[str, str]], *, hatched: str | None = None) -> str:
    chips = "".join(
        f'<span><i style="background:{color}"></i>{escape(label)}</span>' for label, color in items
    )
    if hatched:
        chips += f'<span><i class="hatched"></i>{escape(hatched)}</span>'
    return f'<div class="legend">{chips}</div>'


def figure_html(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>"
