"""Web, charts: horizontal bar charts as SVG made on the server (no chart library, no
script); every label is escaped."""

from __future__ import annotations

from markupsafe import Markup, escape

ROW, LABEL, WIDTH, TOP = 22, 170, 560, 28


def bars(title: str, counts: dict[str, int], sort: bool = True, limit: int = 20) -> Markup:
    """One chart: a bar per key, its length proportional to its count."""
    items = sorted(counts.items(), key=lambda kv: -kv[1]) if sort else list(counts.items())
    items = items[:limit]
    top = max((v for _, v in items), default=0) or 1
    height = TOP + ROW * max(1, len(items)) + 8
    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" '
             f'viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg">',
             f'<text x="0" y="18" class="title">{escape(title)}</text>']
    if not items:
        parts.append(f'<text x="0" y="{TOP + 14}" class="label">nothing yet</text>')
    for k, (name, value) in enumerate(items):
        y = TOP + k * ROW
        length = max(1.0, (WIDTH - LABEL - 70) * value / top)
        parts += [f'<text x="{LABEL - 8}" y="{y + 14}" class="label" text-anchor="end">'
                  f'{escape(str(name)[:28])}</text>',
                  f'<rect x="{LABEL}" y="{y + 3}" width="{length:.1f}" height="{ROW - 6}" '
                  f'class="bar"/>',
                  f'<text x="{LABEL + length + 6:.1f}" y="{y + 14}" class="value">'
                  f'{value:,}</text>']
    parts.append("</svg>")
    return Markup("".join(parts))
