"""The Grafana dashboard and the Prometheus alert rules in monitoring/ name only metrics and labels
the service really exports: the project's from serving/metrics.py (built in a registry of their own)
and BentoML's from the installed package's own HTTP middleware. No server, no Prometheus."""
from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path

import prometheus_client
import pytest
import yaml

from tests.conftest import ROOT

DASHBOARD = ROOT / "monitoring" / "grafana" / "escalation.json"
ALERTS = ROOT / "monitoring" / "prometheus" / "alerts.yml"
ROUTING = ROOT / "config" / "routing.yaml"

METRIC = re.compile(r"\b((?:escalation|bentoml)_[A-Za-z0-9_]+)")
SELECTOR = re.compile(r"\b((?:escalation|bentoml)_[A-Za-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
RANGE_FN = re.compile(r"\b(rate|irate|increase)\s*\(\s*((?:escalation|bentoml)_[A-Za-z0-9_]+)")
QUANTILE = re.compile(r"histogram_quantile\s*\(\s*[0-9.]+\s*,(.*)", re.S)
LEGEND = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
ANNOTATION_LABEL = re.compile(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)")
DURATION = re.compile(r"^\d+[smhdw]$")
TARGET_LABELS = {"job", "instance"}  # added by Prometheus at scrape time


def exposed(name: str, kind: str, labels) -> dict[str, tuple[str, set[str]]]:
    """Series names a collector appears under on /metrics -> (kind, label names)."""
    labels = set(labels)
    if kind == "counter":
        return {name.removesuffix("_total") + "_total": ("counter", labels)}
    if kind == "histogram":
        return {name + "_bucket": ("bucket", labels | {"le"}), name + "_count": ("counter", labels), name + "_sum": ("counter", labels)}
    if kind == "summary":
        return {name + "_count": ("counter", labels), name + "_sum": ("counter", labels)}
    return {name: ("gauge", labels)}


@pytest.fixture(scope="module")
def project_metrics() -> dict[str, tuple[str, set[str]]]:
    """Builds serving.metrics.Metrics in a fresh registry (it registers in the default one otherwise)."""
    from serving.metrics import Metrics

    registry = prometheus_client.CollectorRegistry()
    with pytest.MonkeyPatch.context() as mp:
        for cls in ("Counter", "Gauge", "Histogram", "Summary"):
            mp.setattr(prometheus_client, cls, functools.partial(getattr(prometheus_client, cls), registry=registry))
        metrics = Metrics()
    collectors = [c for c in vars(metrics).values() if isinstance(c, prometheus_client.metrics.MetricWrapperBase)]
    assert len(list(registry.collect())) == len(collectors) > 0, "Metrics did not register in the registry given to it"
    names: dict[str, tuple[str, set[str]]] = {}
    for collector in collectors:
        (family,) = collector.describe()
        names.update(exposed(family.name, family.type, collector._labelnames))
    return names


@pytest.fixture(scope="module")
def bentoml_metrics() -> dict[str, tuple[str, set[str]]]:
    """What BentoML 1.4's HTTP middleware registers, under the namespace a 1.4 service uses by default."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    spec = importlib.util.find_spec("bentoml")
    defaults = yaml.safe_load((Path(spec.origin).parent / "_internal" / "configuration" / "v2" / "default_configuration.yaml").read_text())
    namespace = defaults["services"]["metrics"]["namespace"]
    made: list[tuple[str, str, list[str]]] = []

    class Child:
        def labels(self, *a, **kw):
            return self

    class Recorder:
        def __getattr__(self, kind):
            def make(*, namespace, name, labelnames, **_):
                made.append((kind.lower(), f"{namespace}_{name}", list(labelnames)))
                return Child()
            return make

    RunnerTrafficMetricsMiddleware(app=None, namespace=namespace)._setup(metrics_client=Recorder(), duration_buckets=(1.0,))
    names: dict[str, tuple[str, set[str]]] = {}
    for kind, name, labels in made:
        names.update(exposed(name, kind, labels))
    return names


@pytest.fixture(scope="module")
def known(project_metrics, bentoml_metrics) -> dict[str, tuple[str, set[str]]]:
    return {**bentoml_metrics, **project_metrics}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    assert isinstance(doc, dict) and doc.get("groups"), "alerts.yml needs a non-empty `groups` list"
    out = []
    for group in doc["groups"]:
        assert group.get("name") and group.get("rules"), group
        out.extend(group["rules"])
    return out


def panels(dashboard: dict) -> list[dict]:
    found = []
    for p in dashboard["panels"]:
        found.append(p)
        found.extend(p.get("panels", []))  # panels folded into a collapsed row
    return found


def dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", []) if t.get("expr")]
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            exprs.append(v["definition"])
    return exprs


def check_expr(expr: str, known: dict[str, tuple[str, set[str]]], where: str) -> set[str]:
    """Asserts what can be checked without a PromQL parser; returns the label names its metrics carry."""
    assert expr.strip(), f"{where}: empty expression"
    for open_, close in ("()", "{}", "[]"):
        assert expr.count(open_) == expr.count(close), f"{where}: unbalanced {open_}{close} in {expr}"
    assert expr.count('"') % 2 == 0, f"{where}: unbalanced quotes in {expr}"
    names = set(METRIC.findall(expr))
    unknown = sorted(names - set(known))
    assert not unknown, f"{where}: {unknown} are not exported (serving/metrics.py or BentoML); expr: {expr}"
    labels = set(TARGET_LABELS).union(*(known[n][1] for n in names))
    for name, matchers in SELECTOR.findall(expr):
        bad = set(MATCHER.findall(matchers)) - known[name][1] - TARGET_LABELS
        assert not bad, f"{where}: {name} has no label {sorted(bad)}"
    for group in GROUPING.findall(expr):
        bad = {g.strip() for g in group.split(",") if g.strip()} - labels
        assert not bad, f"{where}: grouping by {sorted(bad)}, which none of {sorted(names)} carries"
    for fn, name in RANGE_FN.findall(expr):
        assert known[name][0] in ("counter", "bucket"), f"{where}: {fn}() over {name}, which is a {known[name][0]}"
    for rest in QUANTILE.findall(expr):
        first = METRIC.search(rest)
        assert first and first.group(1).endswith("_bucket") and re.search(r"\ble\b", rest), \
            f"{where}: histogram_quantile needs a *_bucket rate summed by le: {expr}"
    return labels


# ----- what the files are checked against ------------------------------------------------------------
def test_the_metric_catalogue_is_built_from_the_code(project_metrics, bentoml_metrics):
    assert {"escalation_decisions_total", "escalation_escalation_rate", "escalation_classifier_latency_seconds_bucket"} <= set(project_metrics)
    assert "escalation_decisions_total_total" not in project_metrics
    assert project_metrics["escalation_provider_attempts_total"][1] == {"model", "status", "model_version", "config_version"}
    assert {"bentoml_service_request_total", "bentoml_service_request_duration_seconds_bucket"} <= set(bentoml_metrics)


def test_the_checker_rejects_what_it_should(known):
    for bad in ('rate(escalation_decision_total[5m])',                   # no such metric
                'escalation_classifier_latency_seconds',                 # a histogram is exported only as _bucket/_count/_sum
                'rate(escalation_circuit_open[5m])',                     # rate over a gauge
                'sum by (modell) (rate(escalation_spend_usd_total[5m]))',  # no such label
                'escalation_provider_attempts_total{state="ok"}',        # no such label on that metric
                'histogram_quantile(0.99, sum by (model) (rate(escalation_provider_latency_seconds_bucket[5m])))',
                'sum(rate(escalation_decisions_total[5m])'):
        with pytest.raises(AssertionError):
            check_expr(bad, known, "self-check")


# ----- dashboard ----------------------------------------------------------------------------------
def test_dashboard_shape(dashboard):
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["title"] and dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"model_version", "config_version"} <= set(variables)
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(dashboard):
        assert p.get("title"), f"panel {p.get('id')} has no title"
        if p["type"] == "row":
            continue
        assert p.get("targets"), f"panel {p['title']!r} has no target"
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        for t in p["targets"]:
            assert t.get("expr") and t.get("refId"), f"panel {p['title']!r} has a target without expr or refId"
            assert t.get("datasource", p["datasource"])["uid"] == "${DS_PROMETHEUS}", p["title"]


def test_dashboard_exprs_name_real_metrics_and_labels(dashboard, known):
    for p in panels(dashboard):
        for t in p.get("targets", []):
            labels = check_expr(t["expr"], known, f"panel {p['title']!r}")
            bad = set(LEGEND.findall(t.get("legendFormat", ""))) - labels
            assert not bad, f"panel {p['title']!r}: legend uses {sorted(bad)}, not a label of its series"
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            labels = check_expr(v["definition"], known, f"variable {v['name']}")
            m = re.fullmatch(r"label_values\((.+),\s*([A-Za-z_]\w*)\)", v["definition"])
            assert m and m.group(2) in labels and m.group(2) == v["name"], v["definition"]


def test_dashboard_covers_the_required_panels(dashboard):
    used = {n for e in dashboard_exprs(dashboard) for n in METRIC.findall(e)}
    required = {
        "escalation_decisions_total", "escalation_escalation_rate", "escalation_escalation_budget",
        "escalation_budget_controller_holds_total", "escalation_spend_usd_total", "escalation_provider_attempts_total",
        "escalation_fallbacks_total", "escalation_circuit_open", "escalation_classifier_latency_seconds_bucket",
        "escalation_provider_latency_seconds_bucket", "escalation_canary_rollbacks_total", "escalation_review_queued_total",
        "escalation_shadow_decisions_total", "bentoml_service_request_total", "bentoml_service_request_duration_seconds_bucket",
    }
    assert not required - used, sorted(required - used)
    rate_vs_budget = [p for p in panels(dashboard) if {"escalation_escalation_rate", "escalation_escalation_budget"}
                      <= {n for t in p.get("targets", []) for n in METRIC.findall(t["expr"])}]
    assert rate_vs_budget, "escalation rate and budget belong on one panel"
    quantiles = {q for e in dashboard_exprs(dashboard) if "escalation_classifier_latency_seconds_bucket" in e
                 for q in re.findall(r"histogram_quantile\(\s*([0-9.]+)", e)}
    assert {"0.5", "0.95", "0.99"} <= quantiles


# ----- alerts -------------------------------------------------------------------------------------
def test_every_rule_is_complete(rules, known):
    names = [r.get("alert") for r in rules]
    assert all(names) and len(names) == len(set(names)), names
    for r in rules:
        where = f"alert {r['alert']}"
        assert isinstance(r.get("expr"), str), f"{where}: no expr"
        labels = check_expr(r["expr"], known, where)
        if "for" in r:
            assert DURATION.match(str(r["for"])), f"{where}: bad `for` {r['for']!r}"
        assert r.get("labels", {}).get("severity") in ("critical", "warning", "info"), f"{where}: severity"
        annotations = r.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), f"{where}: summary and description"
        text = annotations["summary"] + annotations["description"]
        assert text.count("{{") == text.count("}}"), f"{where}: unbalanced template braces"
        bad = set(ANNOTATION_LABEL.findall(text)) - labels
        assert not bad, f"{where}: annotations use $labels.{sorted(bad)}, not labels of its series"
        assert re.search(r"`escalation [a-z ]+`", annotations["description"]), f"{where}: say which escalation command to run"


def test_each_failure_threshold_has_a_rule(rules):
    by_metric: dict[str, list[dict]] = {}
    for r in rules:
        for n in set(METRIC.findall(r["expr"])):
            by_metric.setdefault(n, []).append(r)
    for metric in ("escalation_escalation_budget", "escalation_provider_attempts_total", "escalation_fallbacks_total",
                   "escalation_circuit_open", "escalation_classifier_latency_seconds_bucket", "escalation_canary_rollbacks_total",
                   "escalation_spend_usd_total", "escalation_model_info"):
        assert metric in by_metric, f"no alert on {metric}"
    (over_budget,) = by_metric["escalation_escalation_budget"]
    assert over_budget["for"] == "15m" and re.search(r">\s*0\.01\b", over_budget["expr"])
    (circuit,) = by_metric["escalation_circuit_open"]
    assert circuit["for"] == "5m"
    assert any("absent(" in r["expr"] for r in by_metric["escalation_model_info"])
    assert any(re.search(r"increase\(escalation_canary_rollbacks_total[^)]*\)\s*\)?\s*>\s*0", r["expr"])
               for r in by_metric["escalation_canary_rollbacks_total"])


def test_spend_alert_matches_the_routing_config(rules):
    escalation = yaml.safe_load(ROUTING.read_text())["escalation"]
    cap, model = float(escalation["daily_spend_cap_usd"]), escalation["critical_model"]
    spend = [r for r in rules if "escalation_spend_usd_total" in r["expr"]]
    assert spend
    for r in spend:
        assert f'model="{model}"' in r["expr"], f"{r['alert']}: must watch escalation.critical_model ({model})"
        assert "[24h]" in r["expr"]
        threshold = float(re.search(r">=?\s*([0-9.]+)\s*$", r["expr"].strip()).group(1))
        assert 0 < threshold < cap, f"{r['alert']}: threshold {threshold} must warn before the cap {cap}"
        assert "daily_spend_cap_usd" in r["annotations"]["description"]
