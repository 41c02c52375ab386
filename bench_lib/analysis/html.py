"""The HTML pages' shared parts: one self-contained file (styles inline, figures as data: URIs,
no script, no network), a table of contents, collapsible sections per model and styled tables
(right-aligned numbers in tabular figures, units in the headers, the best cell marked, "no
measurable difference" set apart). Used by the report and by `compare`."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from bench_lib.analysis.intervals import NO_DIFFERENCE, NOT_OVERLAPPING, OVERLAPPING

CSS = """
:root{--ink:#1b1b1b;--muted:#5a5a5a;--line:#d9dce1;--band:#f5f7fa;--accent:#0072B2;--best:#e3f0fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink)}
header{padding:14px 24px;border-bottom:1px solid var(--line);background:var(--band)}
header h1{margin:0;font-size:20px}
header p{margin:2px 0 0;color:var(--muted);font-size:13px}
.layout{display:grid;grid-template-columns:220px minmax(0,1fr);gap:0 24px}
nav{position:sticky;top:0;align-self:start;max-height:100vh;overflow-y:auto;padding:14px 0 14px 20px;font-size:13px}
nav ul{list-style:none;margin:0;padding:0}nav ul ul{padding-left:14px}
nav a{color:var(--accent);text-decoration:none;display:block;padding:1px 0}nav a:hover{text-decoration:underline}
main{padding:6px 24px 40px 0;min-width:0}
h2{font-size:18px;margin:26px 0 6px;padding-bottom:3px;border-bottom:2px solid var(--line)}
h3{font-size:15px;margin:14px 0 4px}
p.note{color:var(--muted);margin:4px 0 10px;max-width:70em}
.findings{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:0 22px}
.findings li{margin:2px 0}
.subject{border-left:3px solid var(--accent);padding:0 0 0 12px;margin:8px 0}
.subject h3{margin:4px 0 2px}.subject ul{margin:2px 0;padding-left:20px}
.subject details>summary{font-size:13px;font-weight:500;color:var(--accent)}
.nodiff{color:var(--muted)}
.apart .tag{color:#fff;background:var(--accent);border-color:var(--accent)}
.tag{display:inline-block;font-size:11px;padding:0 5px;margin-left:4px;border:1px solid var(--line);border-radius:8px;background:#fff;color:var(--muted);white-space:nowrap}
td.num .tag{display:block;width:fit-content;max-width:9em;margin:1px 0 0 auto;white-space:normal;text-align:right}
details{margin:6px 0}
details>summary{cursor:pointer;font-weight:600;padding:4px 0;font-size:15px}
details details>summary{font-size:13px;font-weight:500;color:var(--muted)}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:12.5px;margin:4px 0 10px;font-variant-numeric:tabular-nums}
th,td{padding:3px 8px;border-bottom:1px solid var(--line);vertical-align:top}
thead th{position:sticky;top:0;background:#eef1f5;text-align:right;font-weight:600;vertical-align:bottom}
thead th.idx{text-align:left}
tbody th{text-align:left;font-weight:500;white-space:nowrap}
tbody th.wrap{white-space:normal;min-width:12em}
tbody tr:nth-child(even){background:var(--band)}
td.num{text-align:right;white-space:nowrap}
table.wrap-ci td.est{white-space:normal}td.est .v,td.est .ci{white-space:nowrap}
td.txt{text-align:left}
td.best{font-weight:700;background:var(--best)}
figure{margin:6px 0 14px}figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:var(--muted)}
@media (max-width:1100px){.layout{grid-template-columns:1fr}nav{position:static;max-height:none;padding:10px 20px;border-bottom:1px solid var(--line)}
nav>ul{columns:2}main{padding:6px 20px 40px}}
"""

# remarks a cell may end with "(...)", shown as a tag: the interval rule's words
TAGS = {NO_DIFFERENCE: "nodiff", OVERLAPPING: "nodiff", NOT_OVERLAPPING: "apart"}
_NUMBER = re.compile(r"^(?:[<>]?-?\d|-$)")


def esc(text: object) -> str:
    return html.escape(str(text))


def anchor(*parts: str) -> str:
    """An id from words: "Fine-tuning", "mlp" -> "fine-tuning-mlp"."""
    return "-".join(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in parts if p)


def mark_no_difference(text: str) -> str:
    """Escaped text, with "no measurable difference" set apart (class nodiff)."""
    return esc(text).replace(NO_DIFFERENCE, f'<span class="nodiff">{NO_DIFFERENCE}</span>')


def _cell(value: object, best: bool) -> str:
    text = str(value)
    classes = ["num" if _NUMBER.match(text) else "txt"]
    if best:
        classes.append("best")
    tag = ""
    for remark, css in TAGS.items():
        suffix = f" ({remark})"
        if text.endswith(suffix):
            classes.append(css)
            text, tag = text.removesuffix(suffix), f'<span class="tag">{esc(remark)}</span>'
            break
    estimate = _ESTIMATE.match(text) if classes[0] == "num" else None
    if estimate:  # its interval may go under the figure (`table`'s wrap_intervals)
        classes.append("est")
        body = f'<span class="v">{esc(estimate[1])}</span> <span class="ci">{esc(estimate[2])}</span>'
    else:
        body = esc(text)
    return f'<td class="{" ".join(classes)}">{body}{tag}</td>'


_ESTIMATE = re.compile(r"^(\S+) ([\[±].*)$")  # "0.464 [0.462, 0.466]", "0.172 ±0.005"


def _row_header(part: object) -> str:
    """A row's header cell; a long case id ("finetune-transformer-cuda-b32-...") may wrap after
    its hyphens, so that a wide table (the GPU section's) fits a laptop screen."""
    text = str(part)
    if len(text) <= 24 or " " in text:
        return f"<th>{esc(text)}</th>"
    return f'<th class="wrap">{esc(text).replace("-", "-<wbr>")}</th>'


def table(
    view: pd.DataFrame, best: pd.DataFrame | None = None, index: bool = True, wrap_intervals: bool = False
) -> str:
    """A formatted view (strings) as a styled table: index levels as row headers, a value shown
    only where it changes (from the left), numbers right-aligned; `best` (booleans, same shape)
    marks cells. With `wrap_intervals`, a figure's interval may go under it where the table
    needs the room (a comparison's many columns); otherwise figures stay on one line, as the
    browser would otherwise wrap them first, room or not."""
    names = [str(n) for n in view.index.names] if index else []
    head = "".join(f'<th class="idx">{esc(n)}</th>' for n in names)
    head += "".join(f"<th>{esc(c)}</th>" for c in view.columns)
    rows = []
    previous: tuple[object, ...] = ()
    for i, (key, values) in enumerate(zip(view.index, view.itertuples(index=False), strict=True)):
        cells = ""
        if index:
            key = key if isinstance(key, tuple) else (key,)
            changed = False
            for level, part in enumerate(key):
                changed = changed or level >= len(previous) or previous[level] != part
                cells += _row_header(part) if changed else "<th></th>"
            previous = key
        marks = best.iloc[i].tolist() if best is not None else [False] * len(values)
        cells += "".join(_cell(v, bool(b)) for v, b in zip(values, marks, strict=True))
        rows.append(f"<tr>{cells}</tr>")
    opening = '<table class="wrap-ci">' if wrap_intervals else "<table>"
    return f'<div class="scroll">{opening}<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def split_constant_levels(view: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The view without the index levels that hold one value throughout (shown once instead, in
    the section's summary), and those values; at least one level stays."""
    names = list(view.index.names)
    constant = [n for n in names if view.index.get_level_values(n).nunique() == 1]
    if len(constant) == len(names):
        constant = constant[:-1]
    values = [str(view.index.get_level_values(n)[0]) for n in constant]
    return (view.droplevel(constant) if constant else view), values


def figure(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}"></figure>'


@dataclass
class Section:
    """A titled part of a page; `children` (id, label) are listed under it in the contents."""

    title: str
    body: str
    children: list[tuple[str, str]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return anchor(self.title)

    def html(self) -> str:
        return f'<section id="{self.id}"><h2>{esc(self.title)}</h2>{self.body}</section>'


def collapsible(id_: str, summary: str, body: str, open_: bool = True) -> str:
    return f'<details id="{id_}"{" open" if open_ else ""}><summary>{esc(summary)}</summary>{body}</details>'


def page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole page: header, contents (sections and their children), sections."""
    toc = []
    for s in sections:
        sub = "".join(f'<li><a href="#{i}">{esc(label)}</a></li>' for i, label in s.children)
        toc.append(f'<li><a href="#{s.id}">{esc(s.title)}</a>' + (f"<ul>{sub}</ul>" if sub else "") + "</li>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
        f'<div class="layout"><nav aria-label="contents"><ul>{"".join(toc)}</ul></nav>'
        f"<main>{''.join(s.html() for s in sections)}</main></div></body></html>"
    )
