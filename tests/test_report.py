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
    for profile in report.PROFILES:
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
