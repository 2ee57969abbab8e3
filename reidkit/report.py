"""``reidkit report``: execute the lesson notebooks with papermill and write a browsable report.

The six notebooks in ``notebooks/`` (jupytext percent-format ``.py`` files) are the report.
They run in order, each with parameters injected by papermill after its cell tagged
``parameters``. What one notebook produces and a later one needs (the dataset, the trained
``all`` checkpoint, the ablation table) lives under ``<out>/work/`` and is passed on as paths.
Each notebook writes its numbers to ``<out>/metrics/<notebook>.json`` (plain JSON instead of
scrapbook, which is no longer maintained); ``index.html`` links the executed notebooks, their
HTML renderings and those numbers, and shows beside each headline figure what the lesson
reproduces from the paper and the verdict on each of its claims, where its metrics carry
``"reproduces"`` and ``"claims"`` (:func:`claims_html`).

Choices worth knowing:

* Notebooks are executed from the ``.py`` source (``jupytext.read`` → notebook object →
  ``papermill.execute_notebook``), so the paired ``.ipynb`` can never be stale in a report.
* ``kernel_name="python3"`` and ``cwd`` = the repository root are always passed: a virtual
  environment without a registered kernel fails otherwise (papermill #251), and a wrong cwd
  can "succeed" with empty figures. Notebooks resolve relative paths from the repository root.
* papermill only *warns* about a parameter the notebook does not declare; here it is an error,
  checked for every notebook before anything runs.
* On failure the run stops, the partial ``index.html`` is written, and the error names the
  notebook and the failing cell (its index in the ``.py`` notebook and its first line).
* ``run.json`` records what made the report (profile, dataset) before any notebook runs, and
  ``index.html`` lists every lesson present in the folder: ``--only 04`` adds to the lessons
  an earlier call ran, never hides them. ``--only`` continues only a report of the same
  profile and dataset; ``--force`` replaces only a report, never another command's folder.

papermill, jupytext and nbconvert are imported inside functions: importing ``reidkit.report``
(e.g. from ``reidkit.cli``) costs nothing on a machine without the notebook extras.
"""

from __future__ import annotations

import argparse
import ast
import base64
import copy
import html
import io
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Sequence

from reidkit.files import DiskFullError, FolderBusyError, folder_entries, hold_folder, write_text
from reidkit.lessons import REPO_ROOT, key_metrics
from reidkit.significance import VERDICTS

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = (
    "01_data_preparation",
    "02_training",
    "03_ablations",
    "04_temporal_attention",
    "05_srm_difference_maps",
    "06_retrieval_report",
)

PROFILE_DIR = REPO_ROOT / "configs" / "profiles"


def load_profile(name: str, directory: Path = PROFILE_DIR) -> dict[str, dict]:
    """A report profile: ``configs/profiles/<name>.yaml``, ``{"*": {...}, notebook: {...}}``.
    ``"*"`` goes to every notebook, a notebook's own entry on top; ``extends: other`` starts from
    another profile, each notebook entry here replacing single keys of the one there."""
    import yaml  # noqa: PLC0415

    path = Path(directory) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(directory).glob("*.yaml"))
        raise ReportError(f"unknown profile {name!r}: no {path}; choose from {known}")
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    base = spec.pop("extends", None)
    unknown = sorted(set(spec) - {"*", *NOTEBOOKS})
    if unknown:
        raise ReportError(f"{path}: unknown notebook(s) {unknown}; expected '*' or one of {', '.join(NOTEBOOKS)}")
    if base is None:
        return spec
    merged = load_profile(base, directory)
    for key, entry in spec.items():
        merged[key] = {**merged.get(key, {}), **(entry or {})}
    return merged


class ReportError(RuntimeError):
    """A notebook could not be run (bad parameters, or a cell raised)."""


class NotebookExecutionError(ReportError):
    """A cell raised while a notebook ran; names the notebook and the cell."""

    def __init__(self, notebook: str, cell_index: int | None, first_line: str,
                 ename: str, evalue: str, executed_path: Path | None = None):
        self.notebook, self.cell_index, self.first_line = notebook, cell_index, first_line
        self.ename, self.evalue, self.executed_path = ename, evalue, executed_path
        where = ("the injected parameters cell" if cell_index is None
                 else "the kernel (no cell raised)" if cell_index < 0
                 else f"cell {cell_index} (first line: {first_line!r})")
        msg = f"notebook {notebook} failed in {where}: {ename}: {evalue}"
        if executed_path is not None:
            msg += f"\n  executed notebook with the traceback: {executed_path}"
        super().__init__(msg)


@dataclass
class NotebookResult:
    name: str
    status: str = "not run"          # "ok" | "failed" | "not run"
    duration_s: float | None = None
    ipynb: str | None = None         # paths relative to the report folder
    html: str | None = None
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    thumbnail: str | None = None     # the lesson's headline figure, small, for the index


HEADLINE_TAG = "headline"  # a lesson tags the cell whose figure stands for it in the index
THUMB_WIDTH, THUMB_HEIGHT = 480, 400  # the box a thumbnail fits in (pixels)
THUMB_ASPECT = (1.0, 2.0)  # width / height a thumbnail is cropped to before it is shrunk


def headline_png(nb) -> bytes | None:
    """The PNG of the executed notebook's headline figure: the first image output of the first
    cell tagged ``headline``, else the notebook's first image output; None without figures."""
    cells = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in cells if HEADLINE_TAG in c.get("metadata", {}).get("tags", [])]
    for cell in tagged + cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {}).get("image/png")
            if data:
                return base64.b64decode(data)
    return None


def write_thumbnail(png: bytes, path: Path, width: int = THUMB_WIDTH, height: int = THUMB_HEIGHT,
                    aspect: tuple[float, float] = THUMB_ASPECT) -> None:
    """A copy of a PNG that fits in ``width`` × ``height`` pixels (never enlarged).

    A figure wider or taller than the ``aspect`` range (width / height) allows is first cropped
    from its top-left corner to the nearest allowed aspect: shrunk whole, a wide row of panels or
    a tall stack of map rows would fit the box only at a scale where no text can be read. The
    crop keeps the first panel(s) or row(s) legible; the full figure is one click away.
    """
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    w, h = image.size
    lo, hi = aspect
    if w > hi * h:  # too wide: keep the left part
        image = image.crop((0, 0, max(1, round(hi * h)), h))
    elif w < lo * h:  # too tall: keep the top part
        image = image.crop((0, 0, w, max(1, round(w / lo))))
    scale = min(1.0, width / image.width, height / image.height)
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)


# --------------------------------------------------------------------------- notebooks


def read_notebook(path: str | Path):
    """A notebook object from a jupytext ``.py`` file or an ``.ipynb`` file."""
    import jupytext

    return jupytext.read(str(path))


def parameters_cell_index(nb) -> int:
    for i, cell in enumerate(nb.cells):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return i
    return -1


def declared_parameters(nb) -> list[str]:
    """Names assigned at top level in the cell tagged ``parameters`` (in order)."""
    i = parameters_cell_index(nb)
    if i < 0:
        return []
    names: list[str] = []
    for node in ast.parse(nb.cells[i].source).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        for t in targets:
            if isinstance(t, ast.Name) and t.id not in names:
                names.append(t.id)
    return names


def check_parameters(name: str, nb, parameters: Mapping) -> None:
    """Raise ReportError for a parameter the notebook does not declare (papermill only warns)."""
    declared = declared_parameters(nb)
    if parameters and parameters_cell_index(nb) < 0:
        raise ReportError(f"notebook {name} has no cell tagged 'parameters' "
                          f"but was given {sorted(parameters)}")
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ReportError(f"notebook {name}: unknown parameter(s) {unknown}; "
                          f"its parameters cell declares {declared}")


def _source_cell(nb_source, executed, cell_index: int) -> tuple[int | None, str]:
    """Map papermill's cell index (in the parameterised notebook) back to the source notebook.

    Returns ``(None, "")`` when the injected parameters cell itself failed.
    """
    injected = next((i for i, c in enumerate(executed.cells)
                     if "injected-parameters" in c.get("metadata", {}).get("tags", [])), -1)
    if injected == cell_index:
        return None, ""
    idx = cell_index - 1 if 0 <= injected < cell_index else cell_index
    lines = [ln for ln in nb_source.cells[idx].source.splitlines() if ln.strip()]
    return idx, (lines[0] if lines else "")


MATHJAX_DIR = "mathjax"  # the report's own copy of MathJax: equations render without the internet


def install_mathjax(out_dir: Path) -> str | None:
    """Copy MathJax 2 (shipped by the ``jupyter-server-mathjax`` package) into ``out_dir`` once and
    return the URL, relative to the report's HTML files, that loads it; None when the package is
    missing (nbconvert then falls back to its CDN default)."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        return None
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    dst = Path(out_dir) / MATHJAX_DIR
    if not (dst / "MathJax.js").is_file():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    return f"{MATHJAX_DIR}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"


# nbconvert's lab template without require.js and mermaid from a CDN (the lessons hold no widget
# state, JavaScript output or diagrams that would need them): a report page loads nothing remote.
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def is_idle_widget_cell(cell) -> bool:
    """A code cell that only builds the interactive explorers (its code starts with
    ``if interactive:``) and printed nothing: in a static report it is an empty box."""
    if cell.get("cell_type") != "code" or cell.get("outputs"):
        return False
    lines = [ln for ln in cell.get("source", "").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return bool(lines) and lines[0].replace(" ", "") == "ifinteractive:"


def export_html(nb, path: Path, mathjax_url: str | None = None) -> None:
    """The executed notebook as one HTML page; ``mathjax_url`` (see :func:`install_mathjax`)
    points MathJax at the report's own copy. Cells that would show as empty boxes (see
    :func:`is_idle_widget_cell`) are left out of the page; the executed ``.ipynb`` keeps them."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if not is_idle_widget_cell(c)]
    options = {"mathjax_url": mathjax_url} if mathjax_url else {}
    exporter = HTMLExporter(extra_loaders=[DictLoader({"reidkit.html.j2": _TEMPLATE})],
                            template_file="reidkit.html.j2", **options)
    body, _ = exporter.from_notebook_node(nb)
    path.write_text(body, encoding="utf-8")


def _kernel_manager_class():
    """A KernelManager talking to the kernel over local IPC sockets instead of TCP: nothing
    listens on a network port, and ipykernel does not warn about unencrypted TCP."""
    from jupyter_client.manager import KernelManager
    from traitlets import default

    class IPCKernelManager(KernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc"

    return IPCKernelManager


def run_notebooks(paths: Sequence[str | Path], out_dir: str | Path,
                  parameters: Mapping[str, Mapping] | Callable[[str], Mapping] | None = None,
                  *, cwd: str | Path = REPO_ROOT, kernel_name: str = "python3",
                  html: bool = True, title: str = "reidkit report", profile: str | None = None,
                  log: Callable[[str], None] = print) -> list[NotebookResult]:
    """Execute notebooks in order and write ``<out_dir>/index.html``.

    ``paths``: ``.py`` (jupytext) or ``.ipynb`` notebooks. ``parameters``: a mapping from the
    notebook's stem to its parameters, or a function ``stem -> parameters``. Every parameter
    is checked against the notebook's ``parameters`` cell before anything runs. Executed
    notebooks go to ``<out_dir>/<stem>.ipynb`` (+ ``.html``); metrics are read back from
    ``<out_dir>/metrics/<stem>.json`` when the notebook wrote one. On the first failure the
    partial index is written and :class:`NotebookExecutionError` is raised.
    """
    import nbformat
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in paths]
    get = parameters if callable(parameters) else (lambda stem: (parameters or {}).get(stem, {}))

    # Read and check everything first: a typo should not cost the minutes of the notebooks before it.
    sources, params = [], []
    for p in paths:
        nb = read_notebook(p)
        nb.metadata.setdefault("kernelspec", {"name": kernel_name, "display_name": "Python 3",
                                              "language": "python"})
        prm = dict(get(p.stem) or {})
        check_parameters(p.stem, nb, prm)
        sources.append(nb)
        params.append(prm)

    results = [NotebookResult(p.stem) for p in paths]
    started = datetime.now(timezone.utc)
    mathjax_url = install_mathjax(out_dir) if html else None
    kernel_manager = _kernel_manager_class()
    for p, nb, prm, res in zip(paths, sources, params, results):
        out_nb = out_dir / f"{p.stem}.ipynb"
        metrics_file = out_dir / "metrics" / f"{p.stem}.json"
        metrics_file.unlink(missing_ok=True)  # never show an earlier run's numbers as this run's
        log(f"[report] {p.stem} ...")
        t0 = time.perf_counter()
        failure: NotebookExecutionError | None = None
        try:
            pm.execute_notebook(nb, str(out_nb), parameters=prm, kernel_name=kernel_name, cwd=str(cwd),
                                log_output=False, kernel_manager_class=kernel_manager,
                                progress_bar={"desc": f"[report] {p.stem}", "mininterval": 5.0, "leave": False,
                                              "bar_format": "{desc}: cell {n_fmt}/{total_fmt}, {elapsed} elapsed"})
            res.status = "ok"
        except PapermillExecutionError as e:
            executed = nbformat.read(str(out_nb), as_version=4)
            # papermill inserts two marker cells into the saved copy; its index predates them
            idx, first = _source_cell(nb, _without_error_markers(executed), e.cell_index)
            failure = NotebookExecutionError(p.stem, idx, first, e.ename, e.evalue, out_nb)
            res.status, res.error = "failed", str(failure).splitlines()[0]
        except Exception as e:  # kernel died, timeout, ...
            failure = NotebookExecutionError(p.stem, -1, "", type(e).__name__, str(e), out_nb)
            res.status, res.error = "failed", f"{type(e).__name__}: {e}"
        res.duration_s = round(time.perf_counter() - t0, 2)
        if out_nb.exists():
            res.ipynb = out_nb.name
            png = headline_png(nbformat.read(str(out_nb), as_version=4))
            if png is not None:
                thumb = out_dir / "thumbs" / f"{p.stem}.png"
                write_thumbnail(png, thumb)
                res.thumbnail = thumb.relative_to(out_dir).as_posix()
            if html:
                try:
                    export_html(nbformat.read(str(out_nb), as_version=4), out_nb.with_suffix(".html"), mathjax_url)
                    res.html = out_nb.with_suffix(".html").name
                except Exception as e:  # the HTML is a convenience; never hide the real result
                    log(f"[report] {p.stem}: HTML export failed: {e}")
        res.metrics = _read_metrics(metrics_file)
        log(f"[report] {p.stem} {res.status} in {res.duration_s:.1f}s")
        write_index(out_dir, results, title=title, started=started, profile=profile)
        if failure is not None:
            raise failure
    return results


def _without_error_markers(nb):
    nb.cells = [c for c in nb.cells
                if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    return nb


def _read_metrics(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------- index.html


REPORT_KIND = "reidkit report"  # run.json's "kind": ten-split and ablation folders have one too


def _read_record(out_dir: Path) -> dict | None:
    """``out_dir/run.json`` as a dict; None when there is none, {} when it is unreadable."""
    path = Path(out_dir) / "run.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _is_report(record: dict) -> bool:
    # reports written before run.json had a kind: a title, a profile and the notebooks
    return record.get("kind") == REPORT_KIND or ("kind" not in record and "notebooks" in record)


def _present(out_dir: Path, results: Sequence[NotebookResult]) -> list[NotebookResult]:
    """Every lesson present in the report: ``results`` (this call's), and the lessons an earlier call
    ran whose executed notebook is still in ``out_dir`` and that this call did not run; by name."""
    by_name = {r.name: r for r in results}
    record = _read_record(out_dir) or {}
    fields = set(NotebookResult.__dataclass_fields__)
    for entry in record.get("notebooks") or []:
        if not isinstance(entry, dict) or "name" not in entry:
            continue
        current = by_name.get(entry["name"])
        if (current is None or current.status == "not run") and entry.get("ipynb") \
                and (Path(out_dir) / entry["ipynb"]).is_file():
            by_name[entry["name"]] = NotebookResult(**{k: v for k, v in entry.items() if k in fields})
    return [by_name[name] for name in sorted(by_name)]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _signed(v) -> str:
    return f"{v:+.3g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "?"


def claims_html(metrics: Mapping) -> str:
    """What a lesson reproduces from the paper and the verdict on each of its claims, from its
    metrics JSON: ``"reproduces"`` (one line) and ``"claims"`` (a list of ``{"claim", "verdict",
    "interval": [lo, hi], "diff"}``, verdict one of ``VERDICTS``). Empty when it has neither."""
    parts = []
    reproduces = metrics.get("reproduces")
    if isinstance(reproduces, str) and reproduces.strip():
        parts.append(f'<div class="reproduces">{html.escape(reproduces.strip())}</div>')
    items = []
    for c in metrics.get("claims") or []:
        if not isinstance(c, Mapping) or not c.get("claim"):
            continue
        v = str(c.get("verdict", ""))
        detail = []
        if "diff" in c:
            detail.append(_signed(c["diff"]))
        interval = c.get("interval")
        if isinstance(interval, (list, tuple)) and len(interval) == 2:
            level = c.get("level", 0.95)
            detail.append(f"{level:.0%} interval [{_signed(interval[0])}, {_signed(interval[1])}]".replace("%", " %"))
        items.append(f'<li><span class="verdict {v if v in VERDICTS else "unknown"}">{html.escape(v or "?")}</span> '
                     f'{html.escape(str(c["claim"]))}' + (f' <span class="detail">({", ".join(detail)})</span>'
                                                          if detail else "") + "</li>")
    if items:
        parts.append('<ul class="claims">' + "".join(items) + "</ul>")
    return "".join(parts)


def write_index(out_dir: Path, results: Sequence[NotebookResult], *, title: str = "reidkit report",
                started: datetime | None = None, profile: str | None = None) -> Path:
    """``index.html`` (a table of the notebooks) and ``run.json`` (the same, machine-readable), of
    ``results`` and every lesson an earlier call left in ``out_dir`` (see :func:`_present`).

    Beside each headline figure: what the lesson reproduces and its verdict per claim
    (:func:`claims_html`), in a column that appears when any lesson's metrics have them."""
    out_dir = Path(out_dir)
    previous = _read_record(out_dir) or {}
    results = _present(out_dir, results)
    rows = []
    claims = [claims_html(r.metrics) for r in results]
    with_claims = any(claims)
    for r, claim_cell in zip(results, claims):
        links = " ".join(f'<a href="{html.escape(x)}">{x.rsplit(".", 1)[1]}</a>'
                         for x in (r.html, r.ipynb) if x)
        km = {k: v for k, v in key_metrics(r.metrics).items() if k not in ("reproduces", "claims")}
        metrics = "<br>".join(f"{html.escape(k)} = {html.escape(_fmt(v))}" for k, v in km.items())
        if r.error:
            metrics = f'<span class="err">{html.escape(r.error)}</span>' + (
                "<br>" + metrics if metrics else "")
        dur = "" if r.duration_s is None else f"{r.duration_s:.1f} s"
        target = html.escape(r.html or r.ipynb or "")
        figure = (f'<a href="{target}"><img src="{html.escape(r.thumbnail)}" alt="headline figure of {html.escape(r.name)}"></a>'
                  if r.thumbnail else "")
        claim_td = f"<td>{claim_cell}</td>" if with_claims else ""
        rows.append(f'<tr class="{r.status.replace(" ", "-")}"><td>{html.escape(r.name)}</td>'
                    f"<td>{r.status}</td><td>{dur}</td><td>{links}</td><td>{figure}</td>{claim_td}<td>{metrics}</td></tr>")
    total = sum(r.duration_s or 0 for r in results)
    files = " · ".join(f'<a href="{n}">{n}</a>' for n in ("run.json", "reproducibility.json", "metrics/")
                       if n == "run.json" or (out_dir / n).exists())
    when = (started or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    claims_th = "<th>what it reproduces: verdict per claim</th>" if with_claims else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border: 1px solid #ccc; padding: .4em .6em; text-align: left; vertical-align: top; }}
tr.ok td:nth-child(2) {{ color: #1a7f37; }} tr.failed td:nth-child(2), .err {{ color: #cf222e; }}
tr.not-run {{ color: #888; }}
td img {{ max-width: {THUMB_WIDTH}px; max-height: {THUMB_HEIGHT}px; height: auto; border: 1px solid #eee; }}
.claims {{ margin: .4em 0 0 0; padding-left: 1.1em; }}
.verdict {{ font-weight: 600; }} .verdict.holds {{ color: #1a7f37; }} .verdict.reversed {{ color: #cf222e; }}
.verdict.inconclusive {{ color: #9a6700; }} .detail {{ color: #555; font-size: .9em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Started {when}; {sum(r.status == "ok" for r in results)}/{len(results)} notebooks ran,
{total:.1f} s in total. Zhou et al., CVPR 2017, "See the Forest for the Trees".</p>
<table><tr><th>notebook</th><th>status</th><th>duration</th><th>open</th><th>headline figure</th>{claims_th}<th>key metrics</th></tr>
{chr(10).join(rows)}
</table>
<p>Also here: {files}.</p>
</body></html>
"""
    write_text(out_dir / "index.html", page)
    record = {**(previous if _is_report(previous) else {}), "kind": REPORT_KIND, "title": title,
              "profile": profile or previous.get("profile"), "started": when,
              "notebooks": [asdict(r) for r in results]}
    write_text(out_dir / "run.json", json.dumps(record, indent=2))
    return out_dir / "index.html"


# --------------------------------------------------------------------------- profiles, CLI


def build_parameters(profile: str, out_dir: Path, *, dataset: str | None = None,
                     device: str = "auto") -> dict[str, dict]:
    """Per-notebook parameters for a profile; shared state goes under ``<out_dir>/work``."""
    spec = load_profile(profile)
    if profile == "paper" and not dataset:
        raise ReportError("--profile paper needs --dataset DIR (a manifest written by data_prep)")
    out_dir = Path(out_dir).resolve()
    work = out_dir / "work"
    dataset_dir = str(Path(dataset).resolve()) if dataset else str(work / "dataset")
    first_seed = spec.get("03_ablations", {}).get("seeds", [0])[0]
    run_dir = str(work / "ablation" / "all" / f"seed_{first_seed}")  # lesson 2's run is lesson 3's ALL row
    pretrained = work / "pretrain"
    common = {**spec.get("*", {}), "device": device, "dataset_dir": dataset_dir}
    extra = {
        "02_training": {"work_dir": str(work), "run_dir": run_dir, "pretrain_dir": str(pretrained)},
        "03_ablations": {"ablation_dir": str(work / "ablation"), "pretrained": str(pretrained / "cnn.pt"),
                         "training_metrics": str(out_dir / "metrics" / "02_training.json")},
        "04_temporal_attention": {"run_dir": run_dir, "work_dir": str(work)},
        "05_srm_difference_maps": {"run_dir": run_dir, "diff_run_dir": str(
            work / "ablation" / "cnn_diff" / f"seed_{first_seed}")},
        "06_retrieval_report": {"work_dir": str(work), "run_dir": run_dir, "report_dir": str(out_dir)},
    }
    params = {nb: {**common, **spec.get(nb, {}), **extra.get(nb, {}),
                   "metrics_path": str(out_dir / "metrics" / f"{nb}.json")}
              for nb in NOTEBOOKS}
    if dataset:  # the user's folder: read it, never generate into it
        params["01_data_preparation"]["synthetic_preset"] = ""
    return params


def _dataset_record(dataset: str | None) -> dict:
    if not dataset:
        return {"path": None, "fingerprint": None}  # the synthetic benchmark, generated under work/
    from reidkit.data.manifest import ManifestError, manifest_fingerprint  # noqa: PLC0415 (torch: only when needed)

    try:
        return {"path": str(Path(dataset).resolve()), "fingerprint": manifest_fingerprint(dataset)}
    except ManifestError as e:
        raise ReportError(f"--dataset {dataset}: {e}") from None


def claim_out_dir(out: Path, profile: str, only: bool, force: bool, dataset: str | None = None) -> None:
    """Refuse to overwrite an existing report: ``--only`` continues one of the same profile and
    dataset, ``--force`` replaces it (the whole report folder, work/ included). A folder that holds
    anything else (another command's ``run.json``, other files) is refused, ``--force`` or not.
    Then ``run.json`` records the profile and dataset, before any notebook runs."""
    out = Path(out)
    previous = _read_record(out)
    data = _dataset_record(dataset)
    if previous is not None and not _is_report(previous):
        kind = previous.get("kind")
        raise ReportError(f"{out} holds {f'a {kind} run' if kind else 'an unreadable or foreign run.json'}, not a "
                          f"report: choose another --out (--force replaces reports only)")
    if previous is None and folder_entries(out):
        raise ReportError(f"{out} is not empty and holds no report (run.json): choose another --out "
                          f"(--force replaces reports only)")
    if previous is not None and force:
        for entry in folder_entries(out):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        previous = None
    elif previous is not None:
        old = previous.get("profile")
        if not only:
            raise ReportError(f"{out} already holds a report ({old or 'unknown'} profile): --only NN re-runs "
                              f"notebooks of it, --force replaces it, or choose another --out")
        if old != profile:
            raise ReportError(f"{out} holds a {old or 'unknown'}-profile report; --only cannot continue it with "
                              f"--profile {profile} (its work/ was made for the other profile)")
        before = previous.get("dataset")
        if isinstance(before, dict):
            where = lambda d: d.get("path") or "the synthetic benchmark it generated"  # noqa: E731
            if before.get("path") != data["path"]:
                raise ReportError(f"{out} holds a report on {where(before)}; --only cannot continue it on "
                                  f"{where(data)} (its lessons would mix two datasets): choose another --out")
            if before.get("fingerprint") and data["fingerprint"] and before["fingerprint"] != data["fingerprint"]:
                raise ReportError(f"{out} holds a report on {data['path']}, whose manifest has changed since "
                                  f"(regenerated?): --only cannot continue it; --force replaces it")
    record = {**(previous or {}), "kind": REPORT_KIND, "profile": profile, "dataset": data}
    record.setdefault("notebooks", [])
    write_text(out / "run.json", json.dumps(record, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="reidkit report",
        description="Execute the lesson notebooks (papermill) and write an HTML report.")
    ap.add_argument("--profile", choices=sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")), default="default",
                    help="smoke: ~1 min check; default: ≤15 min on 2 CPU cores (synthetic); full: default "
                         "+ the attention dose-response study; paper: 227×227 CaffeNet on --dataset (long)")
    ap.add_argument("--dataset", help="dataset folder with a manifest (default: generate the "
                                      "synthetic benchmark under <out>/work/dataset)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--out", help="report folder (default: reports/<timestamp>)")
    ap.add_argument("--only", help="comma-separated notebook numbers or names, e.g. 01,02 "
                                   "(later notebooks need the work/ of earlier ones in --out)")
    ap.add_argument("--force", action="store_true", help="replace the report already in --out")
    args = ap.parse_args(argv)

    out = Path(args.out) if args.out else (
        REPO_ROOT / "reports" / datetime.now().strftime("%Y%m%d-%H%M%S"))
    names = list(NOTEBOOKS)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        names = [n for n in NOTEBOOKS if any(n == w or n.split("_", 1)[0] == w.zfill(2) for w in wanted)]
        if len(names) != len(wanted):
            print(f"reidkit report: --only {args.only!r} does not name notebooks among {list(NOTEBOOKS)}",
                  file=sys.stderr)
            return 2
    try:
        if args.dataset and not (Path(args.dataset) / "tracklets.csv").is_file():
            raise ReportError(f"--dataset {args.dataset}: no manifest there (tracklets.csv); write one with "
                              f"`python -m data_prep ...`, or leave --dataset out to generate the synthetic benchmark")
        params = build_parameters(args.profile, out, dataset=args.dataset, device=args.device)
        with hold_folder(out, "reidkit report"):  # one command per report folder
            claim_out_dir(out, args.profile, bool(args.only), args.force, dataset=args.dataset)
            t0 = time.perf_counter()
            run_notebooks([NOTEBOOK_DIR / f"{n}.py" for n in names], out, params,
                          title=f"reidkit report ({args.profile} profile)", profile=args.profile)
    except (ReportError, FolderBusyError, DiskFullError) as e:
        partial = f"\n  partial report: {out / 'index.html'}" if (out / "index.html").is_file() else ""
        print(f"reidkit report: {e}{partial}", file=sys.stderr)
        return 1
    print(f"[report] done in {time.perf_counter() - t0:.1f}s: {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
