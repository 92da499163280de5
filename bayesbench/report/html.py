"""report.html: the leaderboard as one self-contained HTML page.

The Markdown of leaderboard.md is rendered with markdown-it-py (CommonMark plus GFM tables;
it ships with rich), and every image the Markdown links to (a PNG in the report folder) is
embedded as a ``data:image/png;base64`` URI, so the file opens anywhere with no network and
no neighbouring files. An image that cannot be read is replaced by its alt text.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_IMG_SRC = re.compile(r'<img src="([^"]+)"')

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1f2328; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.85rem; display: block;
        overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.5rem; white-space: nowrap; }
thead th { background: #f6f8fa; position: sticky; top: 0; }
tbody tr:nth-child(even) { background: #fafbfc; }
img { max-width: 100%; height: auto; }
code { background: #f6f8fa; padding: 0.1rem 0.3rem; border-radius: 4px; }
details { margin: 0.5rem 0 1rem; } summary { cursor: pointer; font-weight: 600; }
"""


def _renderer():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable("table")


def _embed(match: re.Match[str], folder: Path) -> str:
    src = html.unescape(match.group(1))
    if src.startswith("data:"):
        return match.group(0)
    path = folder / src
    try:
        data = path.read_bytes()
    except OSError:
        return '<img src="data:," data-missing="' + html.escape(src) + '"'
    mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "application/octet-stream"
    return f'<img src="data:{mime};base64,{base64.b64encode(data).decode("ascii")}"'


def report_html(markdown: str, folder: str | Path, title: str = "bayesbench leaderboard"
                ) -> str:
    """The HTML page of ``markdown`` with the images it links (relative to ``folder``)
    embedded as data URIs."""
    body = _renderer().render(markdown)
    body = _IMG_SRC.sub(lambda m: _embed(m, Path(folder)), body)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
            f"<body>\n{body}</body>\n</html>\n")
