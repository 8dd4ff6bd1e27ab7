"""The notebooks in notebooks/ run end to end on small data and show what they claim to show.

Each notebook is executed by nbclient in a fresh kernel running this interpreter, from notebooks/ (the
notebooks find the repository root by walking up to pyproject.toml), with the environment of the test
process: the session's isolated MLflow store (fixture `trained`) and the notebooks' input variables.
"""
from __future__ import annotations

import collections
import html
import json
import os
import random
import re
import shutil

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from escalation import settings
from escalation.config import load_config
from escalation.schema import ROLES
from tests.conftest import ROOT
from training.evaluate import metrics, read_labeled

NOTEBOOKS = ROOT / "notebooks"
EXPLORE = NOTEBOOKS / "01_explore_corpus.ipynb"
EVALUATE = NOTEBOOKS / "02_evaluate_champion.ipynb"
KERNEL = "escalation-tests"
SAMPLE_ROWS = 400


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A private kernelspec that runs this very interpreter, whatever kernels the machine has installed."""
    import ipykernel.kernelspec

    prefix = tmp_path_factory.mktemp("kernel")
    ipykernel.kernelspec.install(kernel_name=KERNEL, prefix=str(prefix))
    return prefix / "share" / "jupyter"


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """400 corpus rows stratified by split and label, one bad line, and the sample's test rows as an eval file."""
    rows = [json.loads(line) for line in open(ROOT / "data" / "tasks.jsonl", encoding="utf-8") if line.strip()]
    groups = collections.defaultdict(list)
    for r in rows:
        groups[(r["split"], r["label"])].append(r)
    rng = random.Random(7)
    sample = []
    for key in sorted(groups):
        members = groups[key]
        sample += rng.sample(members, max(5, round(SAMPLE_ROWS * len(members) / len(rows))))
    rng.shuffle(sample)
    folder = tmp_path_factory.mktemp("notebook-data")
    corpus = folder / "corpus_sample.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for r in sample:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.write(json.dumps({"id": "t-broken", "text": "a row without label, role or split"}) + "\n")
    evaluation = folder / "eval_sample.jsonl"
    test_rows = [{"text": r["text"], "label": r["label"], "role": r["role"]} for r in sample if r["split"] == "test"]
    assert 0 < sum(r["label"] for r in test_rows) < len(test_rows)
    evaluation.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in test_rows), encoding="utf-8")
    return type("SmallData", (), {"rows": sample, "corpus": corpus, "bad_line": len(sample) + 1, "eval": evaluation})


def run(path, monkeypatch, kernel_dir, **env):
    """Executes a notebook as saved (outputs cleared) and returns the executed copy."""
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env=dict(os.environ))  # raises CellExecutionError naming the failing cell
    return nb


def outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type in kind.split("|")]


def stdout(nb) -> str:
    return "".join(o.text for o in outputs(nb, "stream") if o.name == "stdout")


def everything_shown(nb) -> str:
    """Every text a reader sees: streams, plain and HTML renderings of displayed values."""
    parts = [o.text for o in outputs(nb, "stream")]
    for o in outputs(nb, "display_data|execute_result"):
        parts += [o.data.get("text/plain", ""), html.unescape(o.data.get("text/html", ""))]
    return "\n".join(parts)


def number_after(label: str, text: str) -> float:
    match = re.search(re.escape(label) + r"\s*([0-9.]+|nan)", text)
    assert match, f"{label!r} not printed in:\n{text[:3000]}"
    return float(match.group(1))


def test_committed_notebooks_hold_no_outputs():
    for path in (EXPLORE, EVALUATE):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs before committing"


def test_explore_notebook_describes_the_file_it_was_given(small_data, monkeypatch, kernel_dir):
    nb = run(EXPLORE, monkeypatch, kernel_dir, ESCALATION_NOTEBOOK_CORPUS=small_data.corpus)
    out = stdout(nb)
    rows = small_data.rows
    assert f"corpus: {small_data.corpus}" in out
    assert f"{len(rows)} valid rows, 1 unreadable line(s)" in out
    assert f"{small_data.corpus}:{small_data.bad_line}:" in out  # the bad line is named, the rest explored

    rate = sum(r["label"] for r in rows) / len(rows)
    assert abs(number_after("positive rate:", out) - rate) < 1e-6
    for role in ROLES:
        rr = [r for r in rows if r["role"] == role]
        assert abs(number_after(f"positive rate {role}", out) - sum(r["label"] for r in rr) / len(rr)) < 1e-4
    assert "[MISSED] rows:" in out  # a 400-row sample misses the card's size target and says so
    assert 0 <= number_after("lexical near-duplicate share:", out) <= 1
    images = [o for o in outputs(nb, "display_data|execute_result") if "image/png" in o.data]
    assert len(images) >= 3  # positive rate by role, length histogram, domains


def test_evaluate_notebook_scores_the_champion_on_the_given_file(trained, model, small_data, monkeypatch, kernel_dir, tmp_path):
    nb = run(EVALUATE, monkeypatch, kernel_dir, ESCALATION_NOTEBOOK_EVAL=small_data.eval, ESCALATION_NOTEBOOK_PLOTS=tmp_path)
    out = stdout(nb)

    rows = read_labeled(small_data.eval)
    y = np.array([r["label"] for r in rows])
    roles = [r["role"] for r in rows]
    scored = model.score([r["text"] for r in rows], roles)
    prior = load_config(settings.config_path())[0].budget.prior
    m = metrics(y, scored.score, scored.probability, model.threshold, model.budget, prior, roles=roles)

    assert f"champion: version {model.version}" in out
    assert abs(number_after("threshold:", out) - model.threshold) < 1e-8
    assert f"{len(rows)} rows, {int(y.sum())} positives" in out
    assert 0 < number_after("ROC AUC:", out) < 1
    assert abs(number_after("ROC AUC:", out) - m["roc_auc"]) < 1e-6
    for role in ROLES:
        if f"recall_at_threshold_{role}" in m:
            assert abs(number_after(f"recall at threshold {role}", out) - m[f"recall_at_threshold_{role}"]) < 1e-4

    images = [o for o in outputs(nb, "display_data|execute_result") if "image/png" in o.data]
    assert len(images) == 5  # ROC, PR, recall against budget, score histogram, reliability
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(
        ["roc.png", "pr.png", "recall_vs_budget.png", "score_histogram.png", "reliability.png"])

    shown = everything_shown(nb)
    nearest = np.argsort(np.abs(scored.score - model.threshold), kind="stable")[:3]
    for i in nearest:
        assert rows[i]["text"][:40] in shown, f"borderline item {i} not shown"


def test_evaluate_notebook_never_shows_texts_of_validation_only_files(trained, small_data, monkeypatch, kernel_dir, tmp_path):
    """Files under an `eval-dev` folder (like ../shared/eval-dev) are scored, but their texts stay hidden."""
    hidden = tmp_path / "eval-dev" / "dev_sample.jsonl"
    hidden.parent.mkdir()
    shutil.copy(small_data.eval, hidden)
    nb = run(EVALUATE, monkeypatch, kernel_dir, ESCALATION_NOTEBOOK_EVAL=hidden, ESCALATION_NOTEBOOK_PLOTS=tmp_path / "plots")
    shown = everything_shown(nb)
    assert "texts hidden" in shown
    assert 0 < number_after("ROC AUC:", shown) < 1
    leaked = [r["text"] for r in read_labeled(hidden) if r["text"][:30] in shown]
    assert not leaked, leaked[:3]
