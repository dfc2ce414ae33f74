#!/usr/bin/env python3
"""Writes dashboards/rollouts.json and dashboards/signals.json (Grafana, schemaVersion 39).

The dashboards fit any config: rollouts, gates and segments come from template variables over
stagegate's own series (gates repeat per `$gate`), every limit is read from
stagegate_gate_limit, verdicts and states carry value mappings (fail is red), stages show by
name (stagegate_rollout_stage), and `job`/`instance` pick the stagegate servers.
Run it after changing a panel: `python3 dashboards/generate.py`; tests/observability.rs checks
the output's shape and that every query uses only exported metrics.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'


def var(name, query, multi=False, include_all=False, label=None):
    return {
        "name": name,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": include_all,
        "multi": multi,
        "label": label or name,
    }


def common_vars():
    return [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
        var("job", "label_values(stagegate_rollout_info, job)", multi=True, include_all=True),
        var("instance", f'label_values(stagegate_rollout_info{{job=~"$job"}}, instance)', multi=True, include_all=True),
        var("rollout", f"label_values(stagegate_rollout_info{{{SEL}}}, rollout)"),
    ]


def target(ref, expr, legend):
    return {"refId": ref, "datasource": DS, "expr": expr, "legendFormat": legend}


VERDICT_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "-1": {"text": "fail", "color": "red", "index": 0},
            "0": {"text": "inconclusive", "color": "yellow", "index": 1},
            "1": {"text": "pass", "color": "green", "index": 2},
        },
    }
]

VERDICT_FIELD = {
    "mappings": VERDICT_MAPPINGS,
    "color": {"mode": "thresholds"},
    "thresholds": {"mode": "absolute", "steps": [
        {"color": "red", "value": None}, {"color": "yellow", "value": 0},
        {"color": "green", "value": 1}]},
}

class Layout:
    def __init__(self):
        self.next_id = 1
        self.y = 0
        self.panels = []

    def add(self, kind, title, targets, w, h, x=0, field=None, options=None, **extra):
        panel = {
            "id": self.next_id,
            "type": kind,
            "title": title,
            "datasource": DS,
            "gridPos": {"x": x, "y": self.y, "w": w, "h": h},
            "targets": targets,
            "fieldConfig": {"defaults": field or {}, "overrides": []},
            "options": options or {},
        }
        panel.update(extra)
        self.next_id += 1
        self.panels.append(panel)
        return panel

    def row_done(self, h):
        self.y += h


def dashboard(uid, title, variables, panels):
    return {
        "uid": uid,
        "title": title,
        "tags": ["stagegate"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": variables},
        "annotations": {"list": []},
        "panels": panels,
    }


def rollouts():
    r = f'{SEL}, rollout=~"$rollout"'
    L = Layout()
    L.add(
        "stat", "Current state",
        [target("A", f"stagegate_rollout_state{{{r}}} == 1", "{{state}}")],
        8, 4,
        field={"mappings": [], "color": {"mode": "fixed", "fixedColor": "text"}},
        options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                 "textMode": "name", "colorMode": "background", "graphMode": "none"},
    )
    L.add(
        "stat", "Current stage",
        [target("A", f"stagegate_rollout_stage{{{r}}} == 1", "{{stage}}")],
        8, 4, x=8,
        options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                 "textMode": "name", "colorMode": "none", "graphMode": "none"},
    )
    L.add(
        "stat", "Stage age",
        [target("A", f"stagegate_rollout_stage_age_seconds{{{r}}}", "{{rollout}}")],
        8, 4, x=16, field={"unit": "s"},
    )
    L.row_done(4)
    L.add(
        "table", "Rollouts",
        [target("A", f"stagegate_rollout_info{{{r}}}", "{{rollout}}")],
        24, 5,
        options={"showHeader": True},
        transformations=[{"id": "labelsToFields", "options": {}}],
    )
    L.row_done(5)
    L.add(
        "timeseries", "Candidate weight per segment",
        [target("A", f"stagegate_rollout_weight_percent{{{r}}}", "{{rollout}} {{segment}}")],
        12, 8, field={"unit": "percent", "min": 0, "max": 100},
    )
    L.add(
        "state-timeline", "State over time",
        [target("A", f"stagegate_rollout_state{{{r}}} == 1", "{{state}}")],
        12, 8, x=12,
        field={"mappings": [{"type": "value", "options": {"1": {"text": "current", "index": 0}}}],
               "color": {"mode": "fixed", "fixedColor": "green"}},
        options={"showValue": "never"},
    )
    L.row_done(8)
    L.add(
        "state-timeline", "Stage over time",
        [target("A", f"stagegate_rollout_stage{{{r}}} == 1", "{{stage}}")],
        12, 6,
        field={"color": {"mode": "palette-classic"}},
        options={"showValue": "never"},
    )
    L.add(
        "state-timeline", "Gate verdicts",
        [target("A", f"stagegate_gate_verdict{{{r}}}", "{{gate}} {{segment}}")],
        12, 6, x=12,
        field=VERDICT_FIELD,
    )
    L.row_done(6)
    L.add(
        "timeseries", "Decisions",
        [target("A", f"sum by (rollout, action, actor) (increase(stagegate_decisions_total{{{r}}}[$__rate_interval]))", "{{rollout}} {{action}} ({{actor}})")],
        12, 8,
    )
    L.add(
        "timeseries", "Automatic containments open (action, failing gate)",
        [target("A", f"stagegate_rollout_contained{{{r}}}", "{{rollout}} {{action}} on {{gate}}")],
        12, 8, x=12,
    )
    L.row_done(8)
    L.add(
        "timeseries", "Events by outcome",
        [target("A", f"sum by (workflow, outcome) (rate(stagegate_events_total{{{SEL}}}[$__rate_interval]))", "{{workflow}} {{outcome}}")],
        8, 8, field={"unit": "reqps"},
    )
    L.add(
        "timeseries", "Assignments by version and mode",
        [target("A", f"sum by (workflow, version, mode) (rate(stagegate_assignments_total{{{SEL}}}[$__rate_interval]))", "{{workflow}} {{version}} {{mode}}")],
        8, 8, x=8, field={"unit": "reqps"},
    )
    L.add(
        "timeseries", "Notifications and source errors",
        [
            target("A", f"sum by (notifier, outcome) (increase(stagegate_notifications_total{{{SEL}}}[$__rate_interval]))", "{{notifier}} {{outcome}}"),
            target("B", f"sum by (source, reason) (increase(stagegate_source_errors_total{{{SEL}}}[$__rate_interval]))", "source {{source}} {{reason}}"),
        ],
        8, 8, x=16,
    )
    variables = common_vars()
    variables[-1].update({"multi": True, "includeAll": True})
    return dashboard("stagegate-rollouts", "stagegate / rollouts", variables, L.panels)


def signals():
    r = f'{SEL}, rollout="$rollout"'
    seg = 'segment=~"$segment"'
    L = Layout()
    # One row per gate of the chosen rollout, repeated over `$gate`: any config's gates.
    L.panels.append({
        "id": L.next_id, "type": "row", "title": "gate $gate", "repeat": "gate",
        "collapsed": False, "gridPos": {"x": 0, "y": 0, "w": 24, "h": 1}, "panels": [],
    })
    L.next_id += 1
    L.row_done(1)
    value = f'stagegate_signal_value{{{r}, signal="$gate", {seg}'
    limit = f'stagegate_gate_limit{{{r}, gate="$gate"'
    L.add(
        "timeseries", "$gate: candidate vs baseline, with the gate's limits",
        [
            target("A", f'{value}, version="$candidate"}}', "candidate {{segment}}"),
            target("B", f'{value}, version="$baseline"}}', "baseline {{segment}}"),
            target("C", f'{limit}, check=~"max|min"}}', "absolute limit ({{check}})"),
            target("D", f'{value}, version="$baseline"}} * on(rollout) group_left() {limit}, check="max_ratio"}}', "relative limit (max_ratio) {{segment}}"),
            target("E", f'{value}, version="$baseline"}} + on(rollout) group_left() {limit}, check="max_increase"}}', "relative limit (max_increase) {{segment}}"),
            target("F", f'{value}, version="$baseline"}} - on(rollout) group_left() {limit}, check="max_drop"}}', "relative limit (max_drop) {{segment}}"),
        ],
        16, 8,
        field={"custom": {}},
    )
    L.add(
        "timeseries", "$gate: samples this stage",
        [target("A", f'stagegate_signal_samples{{{r}, signal="$gate", {seg}}}', "{{version}} {{segment}}")],
        8, 8, x=16,
    )
    L.row_done(8)
    L.add(
        "state-timeline", "$gate: verdict",
        [target("A", f'stagegate_gate_verdict{{{r}, gate="$gate", {seg}}}', "{{segment}}")],
        24, 4,
        field=VERDICT_FIELD,
    )
    variables = common_vars() + [
        var("baseline", f'label_values(stagegate_rollout_info{{{r}}}, baseline)'),
        var("candidate", f'label_values(stagegate_rollout_info{{{r}}}, candidate)'),
        var("gate", f'label_values(stagegate_gate_limit{{{r}}}, gate)', multi=True, include_all=True),
        var("segment", f'label_values(stagegate_rollout_weight_percent{{{r}}}, segment)', multi=True, include_all=True),
    ]
    return dashboard("stagegate-signals", "stagegate / signals", variables, L.panels)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    for name, board in [("rollouts.json", rollouts()), ("signals.json", signals())]:
        with open(os.path.join(here, name), "w") as f:
            json.dump(board, f, indent=2)
            f.write("\n")
