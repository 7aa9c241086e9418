#!/usr/bin/env python3
"""Checks a Grafana dashboard against what a Prometheus endpoint exports.

Usage: check-grafana.py DASHBOARD_JSON METRICS_URL_OR_FILE

  DASHBOARD_JSON       e.g. deploy/grafana/dashboards/analytics.json
  METRICS_URL_OR_FILE  http(s):// URL of a /metrics endpoint (for instance
                       http://localhost:9098/metrics), or a file holding the
                       Prometheus text exposition

Checks that every panel has a title, the datasource uid `prometheus` and at
least one target with a PromQL `expr`, then that every metric name used in
an expression is exported. A histogram's `_bucket`, `_sum` and `_count`
series are accepted when their base name is exported, and the other way
round. Metrics of the service are registered on first use and a labelled
family with no series yet is not exported at all, so check against a
service that has ingested events and answered API requests.

Exit status: 0 all present, 1 a structure error or a missing metric,
2 usage error or unreadable input. Standard library only.
"""

import json
import os
import re
import sys
import urllib.error
import urllib.request

DATASOURCE_UID = "prometheus"

# PromQL aggregation operators, functions and keywords: identifiers that are
# never metric names.
PROMQL_WORDS = frozenset(
    """
    sum min max avg group stddev stdvar count count_values bottomk topk quantile
    limitk limit_ratio
    by without on ignoring group_left group_right bool and or unless offset
    atan2 inf nan start end
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time
    ceil changes clamp clamp_max clamp_min cos cosh count_over_time day_of_month
    day_of_week day_of_year days_in_month deg delta deriv double_exponential_smoothing
    exp floor histogram_avg histogram_count histogram_fraction histogram_quantile
    histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta
    increase info irate label_join label_replace last_over_time ln log10 log2
    mad_over_time max_over_time min_over_time minute month pi predict_linear
    present_over_time quantile_over_time rad rate resets round scalar sgn sin
    sinh sort sort_by_label sort_by_label_desc sort_desc sqrt stddev_over_time
    stdvar_over_time sum_over_time tan tanh time timestamp vector year
    """.split()
)

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

STRING = re.compile(r'"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'" r"|`[^`]*`")
NAME_MATCHER = re.compile(r'__name__\s*=\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')')
GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
BRACES = re.compile(r"\{[^{}]*\}")
BRACKETS = re.compile(r"\[[^\[\]]*\]")
LABEL_LIST = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
# An identifier not preceded by a name character or a dot (so that the
# exponent of 1e3 or the unit of 5m are not taken), not followed by "(".
IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
LINE_COMMENT = re.compile(r"#[^\n]*")


def metric_names(expr):
    """The metric names used in a PromQL expression."""
    names = set()
    for m in NAME_MATCHER.finditer(expr):
        names.add(m.group(1)[1:-1])
    text = LINE_COMMENT.sub(" ", expr)
    text = STRING.sub('""', text)
    text = GRAFANA_VARIABLE.sub(" ", text)
    # Label matchers, range and subquery durations, and label lists of
    # by/without/on/ignoring/group_* hold label names, not metric names.
    # Keep the brackets so that a metric name still sits before "{" or "[".
    text = BRACES.sub("{}", text)
    text = BRACKETS.sub("[]", text)
    text = LABEL_LIST.sub(lambda m: m.group(1) + " ()", text)
    for m in IDENTIFIER.finditer(text):
        word = m.group(1)
        if word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def base_name(name):
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def read_metrics(source):
    """The text exposition at `source`, a URL or a file."""
    if re.match(r"^https?://", source):
        request = urllib.request.Request(
            source, headers={"Accept": "text/plain;version=0.0.4"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read().decode("utf-8", errors="replace")
    with open(source, encoding="utf-8") as f:
        return f.read()


SAMPLE_NAME = re.compile(r"^([A-Za-z_:][\w:]*)\s*(?:\{|\s)")
QUOTED_SAMPLE_NAME = re.compile(r'^\{\s*"((?:[^"\\]|\\.)*)"')


def exported_names(text):
    """Metric names present in a text exposition: TYPE lines and samples."""
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "TYPE":
                names.add(parts[2])
            continue
        m = SAMPLE_NAME.match(line) or QUOTED_SAMPLE_NAME.match(line)
        if m:
            names.add(m.group(1))
    return names


def is_present(name, exported):
    if name in exported or base_name(name) in exported:
        return True
    # A histogram queried by its base name while only its series are listed.
    return any(name + suffix in exported for suffix in HISTOGRAM_SUFFIXES)


def walk_panels(panels):
    """Every panel, rows' collapsed panels included; rows themselves skipped."""
    for p in panels:
        if not isinstance(p, dict):
            yield p
            continue
        if p.get("type") == "row":
            yield from walk_panels(p.get("panels") or [])
        else:
            yield p


def check_structure(dashboard):
    """Returns (errors, [(panel title, refId, expr)])."""
    errors, exprs = [], []
    if not isinstance(dashboard, dict):
        return ["the dashboard is not a JSON object"], exprs
    panels = dashboard.get("panels")
    if not isinstance(panels, list) or not panels:
        return ["the dashboard has no panels"], exprs
    for i, p in enumerate(walk_panels(panels)):
        if not isinstance(p, dict):
            errors.append(f"panel #{i}: not a JSON object")
            continue
        title = p.get("title")
        label = f"panel #{i} (id {p.get('id')})"
        if not isinstance(title, str) or not title.strip():
            errors.append(f"{label}: no title")
        else:
            label = f"panel {title!r}"
        ds = p.get("datasource")
        if not isinstance(ds, dict) or ds.get("uid") != DATASOURCE_UID:
            errors.append(f"{label}: datasource uid is not {DATASOURCE_UID!r}: {ds!r}")
        targets = p.get("targets")
        if not isinstance(targets, list) or not targets:
            errors.append(f"{label}: no targets")
            continue
        for j, t in enumerate(targets):
            ref = t.get("refId", f"#{j}") if isinstance(t, dict) else f"#{j}"
            if not isinstance(t, dict):
                errors.append(f"{label} target {ref}: not a JSON object")
                continue
            tds = t.get("datasource")
            if tds is not None and (not isinstance(tds, dict) or tds.get("uid") != DATASOURCE_UID):
                errors.append(
                    f"{label} target {ref}: datasource uid is not {DATASOURCE_UID!r}: {tds!r}"
                )
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                errors.append(f"{label} target {ref}: no expr")
                continue
            exprs.append((label, ref, expr))
    return errors, exprs


def main(argv):
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    dashboard_path, metrics_source = argv[1], argv[2]
    try:
        with open(dashboard_path, encoding="utf-8") as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        print(f"check-grafana: cannot read {dashboard_path}: {e}", file=sys.stderr)
        return 2
    if not re.match(r"^https?://", metrics_source) and not os.path.isfile(metrics_source):
        print(f"check-grafana: {metrics_source} is neither an http(s) URL nor a file",
              file=sys.stderr)
        return 2
    try:
        exported = exported_names(read_metrics(metrics_source))
    except (OSError, urllib.error.URLError, ValueError) as e:
        print(f"check-grafana: cannot read {metrics_source}: {e}", file=sys.stderr)
        return 2

    errors, exprs = check_structure(dashboard)
    used = set()
    missing_any = set()
    for label, ref, expr in exprs:
        names = metric_names(expr)
        used |= names
        if not names:
            errors.append(f"{label} target {ref}: no metric name found in: {expr}")
            continue
        missing = sorted(n for n in names if not is_present(n, exported))
        if missing:
            missing_any.update(missing)
            errors.append(
                f"{label} target {ref}: {expr}\n    missing: {', '.join(missing)}"
            )
    if errors:
        for e in errors:
            print(e, file=sys.stderr)
        print(
            f"check-grafana: {len(errors)} problem(s); {len(missing_any)} of "
            f"{len(used)} metric names missing from {metrics_source} "
            f"({len(exported)} names exported)",
            file=sys.stderr,
        )
        return 1
    print(f"{len(exprs)} expressions, {len(used)} metric names, all present")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
