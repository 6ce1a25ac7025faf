"""A self-contained ``report.html``: images embedded (base64), no scripts, no external assets.

It opens from disk in any browser with no server.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

THUMBNAIL_MAX_PX = 220
THUMBNAIL_JPEG_QUALITY = 80

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #bbb;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f0f0f0}tr:nth-child(even) td{background:#fafafa}
.figure img{max-width:100%;border:1px solid #ddd}
.thumbs{display:flex;flex-wrap:wrap;gap:.6em}
.thumb{width:230px;font-size:.8em;text-align:center}
.thumb img{max-width:220px;border:1px solid #ccc}
.failed{color:#a00}.note{color:#555;font-size:.9em}
.flagged img{border:2px solid #d80}.flagged div{color:#a50}
"""


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail_uri(png_path: str | Path) -> str:
    """A small JPEG data URI of a QC image (Pillow), or '' when the file cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(png_path) as img:
            img = img.convert("RGB")
            img.thumbnail((THUMBNAIL_MAX_PX * 2, THUMBNAIL_MAX_PX))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=THUMBNAIL_JPEG_QUALITY)
    except (OSError, UnidentifiedImageError):
        return ""
    return data_uri(buf.getvalue(), "image/jpeg")


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_report_html(
    *,
    title: str,
    intro: str,
    sections: Sequence[tuple[str, str]],
) -> str:
    """Assemble the page from (heading, already-escaped HTML body) sections."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{html.escape(intro)}</p>',
    ]
    for heading, body in sections:
        anchor = "".join(c if c.isalnum() else "-" for c in heading.lower())
        parts.append(f'<h2 id="{anchor}">{html.escape(heading)}</h2>{body}')
    parts.append("</body></html>")
    return "\n".join(parts)


def figure_html(png_path: Path, caption: str) -> str:
    uri = data_uri(Path(png_path).read_bytes(), "image/png")
    return (
        f'<div class="figure"><img alt="{html.escape(caption)}" src="{uri}">'
        f"<p class='note'>{html.escape(caption)}</p></div>"
    )


def thumbnails_html(scans: Sequence[dict[str, Any]], out: Path) -> str:
    """A grid of per-scan QC thumbnails with subject, visit, proportions, QC flag codes (an
    orange frame) and status."""
    cells = []
    for s in scans:
        caption = f"{s['subject']} · {s['visit']} (day {s['day']})"
        codes = str(s.get("qc_flag_codes") or "").replace(";", ", ")
        if s["status"] == "ok":
            caption += (
                f" · lesion {float(s['lesion_proportion_pct']):.2f}%"
                f" · solid {float(s['solid_proportion_pct']):.2f}%"
            )
            if codes:
                caption += f" · QC: {codes}"
        uri = thumbnail_uri(out / s["qc_png"]) if s.get("qc_png") else ""
        img = (
            f'<img alt="QC {html.escape(caption)}" src="{uri}">' if uri else "<p>(no QC image)</p>"
        )
        cls = "thumb failed" if s["status"] != "ok" else "thumb flagged" if codes else "thumb"
        cells.append(f'<div class="{cls}">{img}<div>{html.escape(caption)}</div></div>')
    return f'<div class="thumbs">{"".join(cells)}</div>' if cells else "<p>No scans.</p>"
