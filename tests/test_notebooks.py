"""The lesson notebooks: every one runs end to end (smoke profile) and the .ipynb match the .py.

One module-scoped ``reidkit report --profile smoke`` run (about a minute on 2 CPU cores)
executes all six notebooks through papermill; the tests then look at what it left behind:
executed notebooks without errors, figures, the metrics JSON of each notebook, index.html.
"""

import json
import math
import re

import pytest

pytest.importorskip("papermill")
jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")

from reidkit import report  # noqa: E402

# fewest image/png outputs each notebook must produce
MIN_FIGURES = {"01_data_preparation": 4, "02_training": 2, "03_ablations": 1,
               "04_temporal_attention": 4, "05_srm_difference_maps": 3, "06_retrieval_report": 2}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert report.main(["--profile", "smoke", "--out", str(out)]) == 0
    return out


def _metrics(out, name):
    return json.loads((out / "metrics" / f"{name}.json").read_text())


def _in_percent(x):
    return x is not None and 0.0 <= x <= 100.0


@pytest.mark.slow
@pytest.mark.parametrize("name", report.NOTEBOOKS)
def test_notebook_executed_with_figures(smoke, name):
    nb = nbformat.read(str(smoke / f"{name}.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "a cell did not run"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in code)
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    assert figures >= MIN_FIGURES[name]
    assert (smoke / f"{name}.html").stat().st_size > 10_000


@pytest.mark.slow
def test_index_lists_every_notebook(smoke):
    run = json.loads((smoke / "run.json").read_text())
    assert [n["name"] for n in run["notebooks"]] == list(report.NOTEBOOKS)
    assert all(n["status"] == "ok" and n["duration_s"] > 0 for n in run["notebooks"])
    index = (smoke / "index.html").read_text()
    for name in report.NOTEBOOKS:
        assert f'href="{name}.html"' in index
        assert f'src="thumbs/{name}.png"' in index and (smoke / "thumbs" / f"{name}.png").is_file()
        page = (smoke / f"{name}.html").read_text()
        assert "mathjax/MathJax.js" in page and "cdnjs" not in page  # equations render offline
    repro = json.loads((smoke / "reproducibility.json").read_text())
    det = repro["determinism"]  # what decides whether a rerun is bit-identical
    assert det["torch_threads"] >= 1 and isinstance(det["deterministic_algorithms"], bool)
    assert "OMP_NUM_THREADS" in det["env"] and "cpu_native_bf16" in det


@pytest.mark.slow
def test_metrics_data_and_training(smoke):
    m = _metrics(smoke, "01_data_preparation")
    assert m["key"]["identities"] > 0 and m["key"]["frames"] >= m["key"]["tracklets"] > 0
    assert m["cache"]["frames"] == m["key"]["frames"]
    m = _metrics(smoke, "02_training")
    assert m["key"]["steps"] > 0 and math.isfinite(m["key"]["final_loss"])
    assert _in_percent(m["key"]["rank1"]) and _in_percent(m["key"]["mAP"])


@pytest.mark.slow
def test_metrics_ablation_has_six_variants_and_baselines(smoke):
    m = _metrics(smoke, "03_ablations")
    methods = [r["method"] for r in m["rows"]]
    assert {"CNN", "CNN+RNN", "CNN+TAM", "CNN+DIFF", "CNN+SRM", "ALL"} <= set(methods)
    assert any(x.startswith("untrained") for x in methods)
    assert all(_in_percent(r[k]) for r in m["rows"] for k in ("rank1", "rank5", "rank20", "mAP"))
    seeds = {r["seed"] for r in m["rows"] if r["trained"]}
    assert len(seeds) >= 2 and all(len(s["seeds"]) == len(seeds) for s in m["summary"] if s["trained"])
    for s in m["summary"]:  # the table's mean/min/max are those of its per-seed rows
        runs = [r["rank1"] for r in m["rows"] if r["method"] == s["method"]]
        assert s["rank1_min"] == min(runs) and s["rank1_max"] == max(runs)
    assert m["lesson2"]["rank1"] == _metrics(smoke, "02_training")["key"]["rank1"]  # read, not recomputed


@pytest.mark.slow
def test_one_model_one_number_across_lessons(smoke):
    """Lessons 2 and 6 study the same `all` checkpoint with the run's config.eval: the same metric."""
    trained = _metrics(smoke, "02_training")["key"]
    retrieval = _metrics(smoke, "06_retrieval_report")["evaluation"]["common"]
    assert trained["rank1"] == retrieval["rank1"] and trained["mAP"] == retrieval["mAP"]


@pytest.mark.slow
def test_metrics_attention_rows_are_distributions(smoke):
    m = _metrics(smoke, "04_temporal_attention")
    assert m["row_sum_max_error"] < 1e-4
    example = m["example"]["attention"]
    assert all(abs(sum(row) - 1) < 1e-4 and min(row) >= 0 for row in example)
    assert m["key"]["mean_spread"] >= 0 and 0 <= m["key"]["mean_entropy"] <= 1 + 1e-6
    for key in ("spearman_rho", "spearman_rho_degraded_clips"):
        r = m["key"][key]
        assert r is None or -1 <= r <= 1
    w = m["key"]["relative_weight_visibility_below_0.5"]
    assert w is None or 0 <= w <= m["T"]  # T·ω̄ of a frame lies in [0, T]
    probe = m["probe"]["blank"]
    for k, row in probe.items():  # the occluded and untouched frames share the T units of weight
        if row["occluded"] is not None:
            assert abs(int(k) * row["occluded"] + (m["T"] - int(k)) * row["clean"] - m["T"]) < 1e-3


@pytest.mark.slow
def test_metrics_srm_and_retrieval(smoke):
    m = _metrics(smoke, "05_srm_difference_maps")
    assert 0 <= m["key"]["M_positive"] <= 1 and 0 <= m["key"]["M_negative"] <= 1
    assert 0 <= m["key"]["pair_auc"] <= 1
    assert set(m["attributions"]) == {"integrated_gradients", "frame_occlusion", "layer_gradcam"}
    assert m["diff_model_shown"]  # lesson 3's cnn_diff run, read by lesson 5
    assert set(m["sweep_reach"]) == {"time_fwd", "time_bwd", "width_fwd", "width_bwd", "height_fwd", "height_bwd"}
    m = _metrics(smoke, "06_retrieval_report")
    for convention in ("common", "official"):
        ev = m["evaluation"][convention]
        assert _in_percent(ev["rank1"]) and _in_percent(ev["mAP"])
        cmc = m["cmc"][convention]
        assert all(a <= b + 1e-9 for a, b in zip(cmc, cmc[1:]))  # CMC never decreases
    rankings = {(e["ranking"], e["mode"]) for e in m["eq2"]}
    assert ("F only", "exact") in rankings and ("M only", "exact") in rankings
    assert {r for r, _ in rankings} >= {"S, λ = 0.25", "S, λ = 1", "S, λ = 4"}


_REPR = re.compile(r"^\s*(?:PosixPath|WindowsPath|Manifest|FrameCache)\(|<[\w.]+ object at 0x")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_data_preparation", "05_srm_difference_maps", "06_retrieval_report"])
def test_outputs_are_sentences_figures_and_tables_not_reprs(smoke, name):
    nb = nbformat.read(str(smoke / f"{name}.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    texts = [o.get("text") or o.get("data", {}).get("text/plain", "") for c in code for o in c.outputs
             if "image/png" not in o.get("data", {}) and "text/markdown" not in o.get("data", {})]
    assert not [t for t in texts if _REPR.search(t)], f"{name} shows a bare object repr"
    # the static page leaves out the cells that only build widgets (they print nothing)
    idle = sum(report.is_idle_widget_cell(c) for c in code)
    page = (smoke / f"{name}.html").read_text()
    assert page.count("jp-Cell jp-CodeCell") == len(code) - idle


@pytest.mark.slow
def test_lessons_state_what_they_reproduce_and_their_verdicts(smoke):
    for name in ("01_data_preparation", "05_srm_difference_maps", "06_retrieval_report"):
        assert _metrics(smoke, name)["reproduces"]
    m = _metrics(smoke, "06_retrieval_report")
    names = [c["comparison"] for c in m["comparisons"]]  # same-model comparisons: paired over queries
    assert any(n.startswith("S (") and "F only" in n for n in names) and any("M only" in n for n in names)
    assert any("convention" in n for n in names) and sum("S (λ = " in n and ") − S (λ = " in n for n in names) == 2
    for c in m["comparisons"] + _metrics(smoke, "05_srm_difference_maps")["claims"]:
        low, high = c["interval"]
        assert low <= high and c["verdict"] in ("holds", "reversed", "inconclusive")
    assert [c["claim"] for c in m["claims"]] == ["S beats F (Eq. 2)", "S beats M (Eq. 2)"]
    index = (smoke / "index.html").read_text()
    assert 'S beats F (Eq. 2)' in index and '<span class="verdict ' in index


@pytest.mark.parametrize("name", report.NOTEBOOKS)
def test_ipynb_in_sync_with_py(name):
    py = report.NOTEBOOK_DIR / f"{name}.py"
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"run `jupytext --sync {py}`"
    a, b = jupytext.read(str(py)), jupytext.read(str(ipynb))
    assert [(c.cell_type, c.source) for c in a.cells] == [(c.cell_type, c.source) for c in b.cells], \
        f"{ipynb.name} differs from {py.name}: run `jupytext --sync notebooks/*.py`"
    raw = nbformat.read(str(ipynb), as_version=4)
    assert not any(c.get("outputs") for c in raw.cells), f"{ipynb.name} has outputs: clear them"
    assert any("parameters" in c.metadata.get("tags", []) for c in raw.cells)


# A measured-looking number in a lesson's static prose (a decimal, "N points", "rank-1 N", "mAP N")
# must either come from a cell's output or cite its source on the same line (or, in a Markdown
# table, in the table's header row).
_MATH_OR_CODE = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`")
_RESULT_LIKE = re.compile(r"(?<![\w.§])\d+\.\d+(?![\w.])|\b\d+(?:\.\d+)?\s*points?\b|"
                          r"\b(?:rank-?\d+|mAP)\s+(?:of\s+)?\d+(?:\.\d+)?")
_CITED = re.compile(r"paper|Zhou et al|Hermans|for reference|MARS has|Table\s+\d|Sec\.\s*\d", re.I)


def _uncited_numbers(source: str) -> list[str]:
    found, header_cited = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):  # a table row inherits its header's citation
            if not set(stripped) <= set("|-: "):
                header_cited = header_cited or bool(_CITED.search(stripped))
        else:
            header_cited = False
        text = _MATH_OR_CODE.sub(" ", line)
        if _RESULT_LIKE.search(text) and not (_CITED.search(text) or (stripped.startswith("|") and header_cited)):
            found.append(stripped)
    return found


def test_the_guard_catches_an_uncited_result():
    assert _uncited_numbers("this lifted CNN+SRM from rank-1 12 to 51") == ["this lifted CNN+SRM from rank-1 12 to 51"]
    assert _uncited_numbers("the two conventions differ by about a point or 1.5 points")
    assert not _uncited_numbers("the paper reports rank-1 70.6 on MARS")
    assert not _uncited_numbers("| variant | paper rank-1 |\n|---|---|\n| ALL | 70.6 |")
    assert not _uncited_numbers("with $\\lambda = 0.25$ and `train.lr=1e-3` (Eq. 2)")


@pytest.mark.parametrize("name", report.NOTEBOOKS)
def test_static_prose_states_no_uncited_result(name):
    nb = jupytext.read(str(report.NOTEBOOK_DIR / f"{name}.py"))
    bad = [line for c in nb.cells if c.cell_type == "markdown" for line in _uncited_numbers(c.source)]
    assert not bad, f"{name}: numbers in Markdown that no cell computed and no source is cited for: {bad}"
