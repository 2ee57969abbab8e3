"""The notebook runner behind ``reidkit report``: parameter checks, failures, the index."""

import json

import pytest

pytest.importorskip("papermill")
pytest.importorskip("jupytext")

from reidkit import report  # noqa: E402

GOOD = '''# %% [markdown]
# A tiny lesson.

# %% tags=["parameters"]
x = 1
metrics_path = ""

# %%
import json, pathlib
pathlib.Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
pathlib.Path(metrics_path).write_text(json.dumps({"key": {"double": 2 * x}, "detail": [1, 2]}))
'''

BAD = '''# %% tags=["parameters"]
x = 1

# %%
y = x + 1

# %%
# the next line fails on purpose
z = y / 0
'''


def _write(tmp_path, name, text):
    p = tmp_path / f"{name}.py"
    p.write_text(text)
    return p


def test_declared_parameters_reads_the_tagged_cell(tmp_path):
    nb = report.read_notebook(_write(tmp_path, "good", GOOD))
    assert report.declared_parameters(nb) == ["x", "metrics_path"]


def test_unknown_parameter_is_rejected_before_anything_runs(tmp_path):
    good = _write(tmp_path, "good", GOOD)
    out = tmp_path / "out"
    with pytest.raises(report.ReportError, match=r"good: unknown parameter\(s\) \['typo'\]"):
        report.run_notebooks([good], out, {"good": {"x": 2, "typo": 3}}, log=lambda s: None)
    assert not (out / "good.ipynb").exists()


def test_failing_notebook_names_notebook_and_cell_and_writes_partial_index(tmp_path):
    good, bad = _write(tmp_path, "a_good", GOOD), _write(tmp_path, "b_bad", BAD)
    never = _write(tmp_path, "c_never", GOOD)
    out = tmp_path / "out"
    params = {"a_good": {"x": 21, "metrics_path": str(out / "metrics" / "a_good.json")},
              "b_bad": {"x": 5}}
    with pytest.raises(report.NotebookExecutionError) as info:
        report.run_notebooks([good, bad, never], out, params, log=lambda s: None)
    err = info.value
    assert err.notebook == "b_bad"
    assert err.cell_index == 2                      # index in the .py notebook, not papermill's
    assert err.first_line == "# the next line fails on purpose"
    assert err.ename == "ZeroDivisionError"
    assert "b_bad" in str(err) and "cell 2" in str(err)

    run = json.loads((out / "run.json").read_text())
    assert [n["status"] for n in run["notebooks"]] == ["ok", "failed", "not run"]
    assert run["notebooks"][0]["metrics"]["key"] == {"double": 42}
    index = (out / "index.html").read_text()
    assert "b_bad" in index and "failed" in index and "double = 42" in index
    assert (out / "a_good.html").exists() and (out / "b_bad.ipynb").exists()


def test_index_written_for_a_successful_run(tmp_path):
    good = _write(tmp_path, "good", GOOD)
    out = tmp_path / "out"
    res = report.run_notebooks([good], out, {"good": {"x": 3, "metrics_path":
                                                      str(out / "metrics" / "good.json")}},
                               log=lambda s: None)
    assert res[0].status == "ok" and res[0].duration_s > 0
    index = (out / "index.html").read_text()
    assert 'href="good.html"' in index and "double = 6" in index
    assert res[0].thumbnail is None  # GOOD draws nothing: no headline figure
    page = (out / "good.html").read_text()  # equations render offline: MathJax comes with the report
    assert 'src="mathjax/MathJax.js?config=' in page and "cdnjs" not in page
    assert (out / "mathjax" / "MathJax.js").is_file() and (out / "mathjax" / "config" / "Safe.js").is_file()


def test_profiles_only_pass_parameters_the_notebooks_declare(tmp_path):
    for profile in sorted(p.stem for p in report.PROFILE_DIR.glob("*.yaml")):
        params = report.build_parameters(profile, tmp_path, dataset=str(tmp_path))
        for name in report.NOTEBOOKS:
            path = report.NOTEBOOK_DIR / f"{name}.py"
            if path.exists():
                report.check_parameters(name, report.read_notebook(path), params[name])


def test_cli_rejects_unknown_only(capsys, tmp_path):
    assert report.main(["--profile", "smoke", "--out", str(tmp_path), "--only", "99"]) == 2
    assert "99" in capsys.readouterr().err


def test_headline_figure_becomes_the_index_thumbnail(tmp_path):
    import base64
    import io

    import nbformat
    from PIL import Image

    def png(color, size):
        buf = io.BytesIO()
        Image.new("RGB", size, color).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    def cell(color, size, tags=()):
        c = nbformat.v4.new_code_cell("fig", metadata={"tags": list(tags)})
        c.outputs = [nbformat.v4.new_output("display_data", data={"image/png": png(color, size)})]
        return c

    nb = nbformat.v4.new_notebook(cells=[cell("red", (10, 10)), cell("blue", (1000, 500), ["headline"])])
    thumb = tmp_path / "t.png"
    report.write_thumbnail(report.headline_png(nb), thumb)
    image = Image.open(thumb)
    assert image.size == (report.THUMB_WIDTH, report.THUMB_WIDTH // 2) and image.getpixel((5, 5))[:3] == (0, 0, 255)
    nb.cells[1].metadata["tags"] = []  # no tag: the first figure
    assert Image.open(io.BytesIO(report.headline_png(nb))).getpixel((0, 0))[:3] == (255, 0, 0)
    assert report.headline_png(nbformat.v4.new_notebook()) is None


def test_thumbnails_of_wide_and_tall_figures_stay_legible(tmp_path):
    import io

    from PIL import Image

    def thumb(size):
        buf = io.BytesIO()
        Image.new("RGB", size, "white").save(buf, format="PNG")
        report.write_thumbnail(buf.getvalue(), tmp_path / "t.png")
        return Image.open(tmp_path / "t.png").size

    # a row of three loss panels: its left 2:1 part, shrunk to the box's width (scale 0.8, not 0.33)
    assert thumb((1080, 300)) == (report.THUMB_WIDTH, report.THUMB_WIDTH // 2)
    w, h = thumb((600, 1660))  # a tall stack of map rows: its top part
    assert h == report.THUMB_HEIGHT and w == h and w / 600 > 0.6
    assert thumb((200, 150)) == (200, 150)  # never enlarged


def test_static_pages_leave_out_idle_widget_cells(tmp_path):
    import nbformat

    def code(source, text=None):
        c = nbformat.v4.new_code_cell(source)
        if text is not None:
            c.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        return c

    idle = code("if interactive:\n    from reidkit.widgets import query_explorer\n    display(query_explorer())")
    printing = code("if interactive:\n    pass\nelse:\n    print('static figure')", "static figure\n")
    nb = nbformat.v4.new_notebook(cells=[code("x = 1\nprint('MARKER_KEPT')", "MARKER_KEPT\n"), idle, printing,
                                         code("# comment first\nif interactive:\n    explore_me()")])
    assert [report.is_idle_widget_cell(c) for c in nb.cells] == [False, True, False, True]
    report.export_html(nb, tmp_path / "page.html")
    page = (tmp_path / "page.html").read_text()
    assert "MARKER_KEPT" in page and "static figure" in page
    assert "query_explorer" not in page and "explore_me" not in page
    assert len(nb.cells) == 4  # the notebook itself keeps every cell


def test_index_shows_what_each_lesson_reproduces_and_its_verdicts(tmp_path):
    claims = {"reproduces": "Eq. 2: S against its parts F and M, on one model",
              "claims": [{"claim": "S beats F (Eq. 2)", "verdict": "holds", "interval": [1.25, 9.5], "diff": 5.9},
                         {"claim": "S beats M (Eq. 2)", "verdict": "inconclusive", "interval": [-2.0, 4.0],
                          "diff": 1.0},
                         {"claim": "<b>escaped</b>", "verdict": "reversed", "interval": [-9, -1], "diff": -4}],
              "key": {"rank1": 50.0}}
    results = [report.NotebookResult("06_x", status="ok", duration_s=1.0, metrics=claims),
               report.NotebookResult("01_y", status="ok", duration_s=1.0, metrics={"key": {"n": 3}})]
    page = report.write_index(tmp_path, results).read_text()
    assert "Eq. 2: S against its parts F and M, on one model" in page
    assert '<span class="verdict holds">holds</span> S beats F (Eq. 2)' in page
    assert "+5.9, 95 % interval [+1.25, +9.5]" in page
    assert '<span class="verdict inconclusive">inconclusive</span> S beats M (Eq. 2)' in page
    assert '<span class="verdict reversed">reversed</span> &lt;b&gt;escaped&lt;/b&gt;' in page
    assert "rank1 = 50" in page and "reproduces =" not in page  # not repeated among the key metrics
    row_01 = page[page.index("<td>01_y</td>"):].split("</tr>")[0]
    assert "<td></td><td>n = 3</td>" in row_01  # a lesson without claims: an empty cell, nothing else
    # no lesson with claims: no extra column at all
    plain = report.write_index(tmp_path, results[1:]).read_text()
    assert 'class="verdict' not in plain and "what it reproduces" not in plain


def test_main_records_the_report_before_any_notebook_runs(tmp_path, monkeypatch):
    """run.json (kind, profile, dataset) is written and the folder locked before the first notebook;
    --only continues a report of the same profile and dataset, --force replaces it."""
    seen = []

    def run_notebooks(paths, out, params, **kwargs):
        record = json.loads((out / "run.json").read_text())
        seen.append((record["kind"], record["profile"], record["dataset"]["path"], (out / ".reidkit.lock").exists()))
        (out / "work").mkdir(exist_ok=True)
        return []

    monkeypatch.setattr(report, "run_notebooks", run_notebooks)
    out = tmp_path / "rep"
    assert report.main(["--profile", "smoke", "--out", str(out)]) == 0
    assert report.main(["--profile", "smoke", "--out", str(out), "--only", "06"]) == 0
    assert report.main(["--profile", "smoke", "--out", str(out), "--force"]) == 0
    assert seen == [("reidkit report", "smoke", None, True)] * 3 and not (out / ".reidkit.lock").exists()
