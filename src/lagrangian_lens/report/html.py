"""A self-contained HTML report: figures embedded as base64 PNG, tables, conventions and provenance."""
from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from ..experiments.section import Section, TableBlock

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #1f5f8b;padding-bottom:.3em} h2{margin-top:2em;color:#1f5f8b}
table{border-collapse:collapse;margin:1em 0;font-size:13px} caption{text-align:left;font-weight:600;padding:.3em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top} th{background:#eef3f7}
tr:nth-child(even) td{background:#fafafa} figure{margin:1.5em 0} img{max-width:100%;border:1px solid #eee}
figcaption{font-size:13px;color:#555} .meta{color:#666;font-size:13px} code{background:#f3f3f3;padding:0 3px}
pre{white-space:pre-wrap;background:#f7f7f7;border:1px solid #e4e4e4;padding:.6em;font-size:12px;max-height:28em;overflow:auto}
"""


def _table(caption: str, rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(path: Path, caption: str) -> str:
    if not Path(path).is_file():
        return f"<p class=meta>(figure {html.escape(str(path))} missing)</p>"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _text(caption: str, text: str) -> str:
    # Model output is arbitrary text: escaped, it can never become markup or script in the report.
    return f"<div><p class=meta>{html.escape(caption)}</p><pre>{html.escape(text)}</pre></div>"


def render_section(section: Section) -> str:
    parts = [f"<h2>{html.escape(section.title)}</h2>"]
    parts += [f"<p>{html.escape(p)}</p>" for p in section.paragraphs]
    parts += [_table(t.caption, t.rows) for t in section.tables]
    parts += [_text(t.caption, t.text) for t in section.texts]
    parts += [_figure(f.path, f.caption) for f in section.figures]
    return "\n".join(parts)


def provenance_section(models: list[dict], environment: dict) -> Section:
    """Which weights, which code: model descriptions and the software environment."""
    rows = [["run", "source", "weights", "params", "dtype", "device", "sha256 / fingerprint", "notes"]]
    for m in models:
        d = m["model_description"]
        digest = "; ".join(f"{k}: {v[:16]}…" for k, v in d["weights_sha256"].items()) or (
            f"params {d['param_fingerprint'][:16]}… (init={d['init']}, seed={d['seed']})" if d.get("param_fingerprint") else "-")
        rows.append([m["run"], d["source"], d["weights"], f"{d['n_params']:,}", d["dtype"], d["device"], digest,
                     "; ".join(d["notes"]) or "-"])
    env = [["item", "value"], ["time (UTC)", environment.get("time_utc", "")],
           ["command", " ".join(environment.get("argv", []))], ["python", environment.get("python", "")],
           ["platform", environment.get("platform", "")], ["cuda", str(environment.get("cuda"))],
           ["git", f"{environment.get('git', {}).get('sha')} (dirty: {environment.get('git', {}).get('dirty')})"],
           *([k, str(v)] for k, v in environment.get("packages", {}).items())]
    return Section("Provenance", ["Every number above comes from these weights and this software."],
                   [TableBlock("Models", rows), TableBlock("Environment", env)])


def write_report(path: Path, title: str, sections: list[Section], subtitle: str = "") -> Path:
    toc = "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections))
    body = "\n".join(f'<section id="s{i}">{render_section(s)}</section>' for i, s in enumerate(sections))
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{CSS}</style>"
            f"</head><body><h1>{html.escape(title)}</h1><p class=meta>{html.escape(subtitle)} · generated "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p><ol>{toc}</ol>{body}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
