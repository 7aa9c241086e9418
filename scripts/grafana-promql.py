#!/usr/bin/env python3
"""Evaluates a Grafana dashboard's PromQL on a Prometheus server, through its
HTTP API. The helper of scripts/eval-grafana-promql.sh, which starts that
server; usable on its own against any Prometheus.

Usage:
  grafana-promql.py scrapes PROM_URL JOB
      Prints how many scrapes of JOB succeeded in the last 5 minutes
      (sum_over_time(up[5m])), or 0 while its latest `up` is not 1 or the
      server does not answer yet. Exit status 0 (a probe, for a wait loop).
  grafana-promql.py targets PROM_URL
      Prints each scrape target's health and last error (for diagnostics).
  grafana-promql.py eval PROM_URL DASHBOARD_JSON [--var NAME=VALUE]...
      Evaluates every panel target's `expr` (rows' collapsed panels
      included) as an instant query (/api/v1/query) after replacing Grafana
      variables: the built-in ones below, the dashboard's template variables
      by their current value (a multi-value one as a regex alternation,
      "All" as .*), and --var NAME=VALUE, which overrides both. An
      expression using any other variable is an error ($1, ${1}: capture
      groups of label_replace, are left alone).

Built-in variables substituted ($x, ${x}, ${x:format} and [[x]] forms):
  $__rate_interval, $__interval, $__range  1m    ($__range_s 60, *_ms 60000)
  $__interval_ms, $__rate_interval_ms      60000
  $__from, $__to                           now - 1h, now (epoch ms; with
                                           the :date:seconds format, seconds)

One line per expression:  PANEL TITLE [refId]: ok N series | empty | ERROR msg
Prometheus's warnings and info annotations follow, indented. Last line:
  promql: expressions=N evaluated=N empty=E errors=X
evaluated counts the expressions Prometheus answered with status success.
Exit status: 0 no errors (empty results are not errors), 1 an expression
failed to parse or evaluate (or used an unknown variable), 2 usage error or
unreadable input. Standard library only.
"""

import importlib.util
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

RANGE = "1m"
BUILTINS = {
    "__rate_interval": RANGE,
    "__interval": RANGE,
    "__range": RANGE,
    "__range_s": "60",
    "__range_ms": "60000",
    "__interval_ms": "60000",
    "__rate_interval_ms": "60000",
}
# $name, ${name} or ${name:format}, [[name]] or [[name:format]]
VARIABLE = re.compile(r"\$\{(\w+)(?::([^}]*))?\}|\$(\w+)|\[\[(\w+)(?::([^\]]*))?\]\]")


def load_check_grafana():
    """scripts/check-grafana.py as a module (its name has a dash)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "check-grafana.py")
    spec = importlib.util.spec_from_file_location("check_grafana", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def api(prom_url, path, params, timeout=10):
    """POSTs a form to the Prometheus HTTP API; returns the decoded JSON body
    (error responses, e.g. 400 for a parse error, carry one too)."""
    data = urllib.parse.urlencode(params).encode()
    request = urllib.request.Request(prom_url.rstrip("/") + path, data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return json.loads(body)
        except ValueError:
            return {"status": "error", "errorType": f"http {e.code}",
                    "error": body.decode("utf-8", "replace")[:500]}


def query(prom_url, expr):
    return api(prom_url, "/api/v1/query", {"query": expr})


def template_values(dashboard):
    """{name: value} for the dashboard's template variables."""
    values = {}
    templating = dashboard.get("templating") if isinstance(dashboard, dict) else None
    for var in (templating or {}).get("list") or []:
        if not isinstance(var, dict) or not isinstance(var.get("name"), str):
            continue
        current = var.get("current") or {}
        value = current.get("value")
        if value is None:
            value = var.get("query")
        if isinstance(value, list):
            value = ".*" if "$__all" in value else "(" + "|".join(map(str, value)) + ")"
        elif value == "$__all":
            value = ".*"
        if isinstance(value, (str, int, float)):
            values[var["name"]] = str(value)
    return values


def substitute(expr, values, now):
    """(expr with variables replaced, sorted names used, unknown names)."""
    used, unknown = set(), set()

    def replace(m):
        name = m.group(1) or m.group(3) or m.group(4)
        fmt = m.group(2) or m.group(5) or ""
        if name in ("__from", "__to"):
            ms = int(now * 1000) - (3600 * 1000 if name == "__from" else 0)
            used.add(name)
            return str(ms // 1000) if fmt == "date:seconds" else str(ms)
        if name in values:
            used.add(name)
            return values[name]
        if name.isdigit():
            return m.group(0)  # $1: a label_replace capture group, as in Grafana
        unknown.add(name)
        return m.group(0)

    return VARIABLE.sub(replace, expr), sorted(used), sorted(unknown)


def series_count(data):
    kind, result = data.get("resultType"), data.get("result")
    if kind in ("vector", "matrix"):
        return len(result or [])
    return 1  # scalar or string: always one value


def cmd_scrapes(prom_url, job):
    selector = 'up{job="%s"}' % job.replace("\\", "\\\\").replace('"', '\\"')
    try:
        up = query(prom_url, selector)
        total = query(prom_url, f"sum_over_time({selector}[5m])")
    except (OSError, ValueError):
        print(0)
        return 0
    ok = (up.get("status") == "success"
          and any(float(r["value"][1]) == 1 for r in up["data"]["result"]))
    count = 0
    if ok and total.get("status") == "success" and total["data"]["result"]:
        count = int(float(total["data"]["result"][0]["value"][1]))
    print(count)
    return 0


def cmd_targets(prom_url):
    try:
        with urllib.request.urlopen(prom_url.rstrip("/") + "/api/v1/targets", timeout=10) as r:
            body = json.load(r)
    except (OSError, ValueError) as e:
        print(f"grafana-promql: cannot read targets: {e}", file=sys.stderr)
        return 2
    for t in body.get("data", {}).get("activeTargets", []):
        print(f"target {t.get('scrapeUrl')} job={t.get('labels', {}).get('job')}: "
              f"health={t.get('health')} lastError={t.get('lastError')!r}")
    return 0


def cmd_eval(prom_url, dashboard_path, overrides):
    try:
        with open(dashboard_path, encoding="utf-8") as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        print(f"grafana-promql: cannot read {dashboard_path}: {e}", file=sys.stderr)
        return 2
    check = load_check_grafana()
    _, exprs = check.check_structure(dashboard)
    templates = template_values(dashboard)
    values = {**BUILTINS, **templates, **overrides}
    now = time.time()

    evaluated = empty = errors = 0
    substituted = {}
    for label, ref, expr in exprs:
        title = label[len("panel "):] if label.startswith("panel ") else label
        head = f"{title} [{ref}]"
        text, used, unknown = substitute(expr, values, now)
        for name in used:
            substituted[name] = "$__from/$__to" if name in ("__from", "__to") else values[name]
        if unknown:
            errors += 1
            print(f"{head}: ERROR unknown variable(s) {', '.join('$' + u for u in unknown)}"
                  f" in: {expr}")
            continue
        try:
            body = query(prom_url, text)
        except (OSError, ValueError) as e:
            errors += 1
            print(f"{head}: ERROR no answer from {prom_url}: {e}")
            continue
        if body.get("status") != "success":
            errors += 1
            print(f"{head}: ERROR {body.get('errorType')}: {body.get('error')}\n    query: {text}")
            continue
        evaluated += 1
        n = series_count(body.get("data") or {})
        if n:
            print(f"{head}: ok {n} series")
        else:
            empty += 1
            print(f"{head}: empty")
        for kind in ("warnings", "infos"):
            for note in body.get(kind) or []:
                print(f"    {kind[:-1]}: {note}")

    if substituted:
        names = ", ".join(f"${k}={v}" for k, v in sorted(substituted.items()))
        print(f"substituted: {names}")
    print(f"promql: expressions={len(exprs)} evaluated={evaluated} empty={empty} errors={errors}")
    return 1 if errors else 0


def main(argv):
    args = argv[1:]
    if len(args) == 3 and args[0] == "scrapes":
        return cmd_scrapes(args[1], args[2])
    if len(args) == 2 and args[0] == "targets":
        return cmd_targets(args[1])
    if len(args) >= 3 and args[0] == "eval":
        overrides, rest = {}, args[3:]
        while rest:
            if rest[0] != "--var" or len(rest) < 2 or "=" not in rest[1]:
                break
            name, _, value = rest[1].partition("=")
            overrides[name] = value
            rest = rest[2:]
        if not rest:
            return cmd_eval(args[1], args[2], overrides)
    print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
