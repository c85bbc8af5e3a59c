#!/usr/bin/env bash
# Checks the monitoring under deploy/: the Prometheus rules (promtool check rules), their
# unit tests (promtool test rules) and the Grafana dashboard (valid JSON, unique panel ids,
# and every query names only metrics the engine exports or the rules record).
#
#   scripts/check-deploy.sh
#
# Installs Debian's prometheus package (for promtool) through scripts/setup.sh if promtool
# is missing; starts no server.
set -euo pipefail
cd "$(dirname "$0")/.."

rules=deploy/prometheus/flashsale.rules.yml
tests=deploy/prometheus/flashsale.rules.test.yml
dashboard=deploy/grafana/flashsale.json

fail() {
  echo "check-deploy: $*" >&2
  exit 1
}

for file in "$rules" "$tests" "$dashboard" src/metrics.rs; do
  [[ -f "$file" ]] || fail "$file is missing"
done

if ! command -v promtool >/dev/null 2>&1; then
  # setup.sh's `test` need list is the one that holds prometheus (promtool).
  scripts/setup.sh test || fail "installing prometheus (promtool) failed"
  command -v promtool >/dev/null 2>&1 || fail "promtool is still missing after scripts/setup.sh test"
fi
if ! command -v python3 >/dev/null 2>&1; then
  fail "python3 is needed to check $dashboard"
fi

echo "== promtool check rules $rules"
promtool check rules "$rules" || fail "promtool check rules $rules failed"

echo "== promtool test rules $tests"
promtool test rules "$tests" || fail "promtool test rules $tests failed"

echo "== dashboard $dashboard"
# The dashboard's queries, as recording rules, for promtool to parse.
queries=$(mktemp --suffix=.yml)
trap 'rm -f "$queries"' EXIT
python3 - "$dashboard" "$rules" src/metrics.rs "$queries" <<'EOF' || fail "$dashboard failed its check (above)"
"""Checks the dashboard: JSON, unique panel ids and titles, the datasource and sku variables,
and that each query names only known metrics: flashsale_* ones the engine registers in
src/metrics.rs (histograms with _bucket/_sum/_count), flashsale:* ones the rules record,
and `up`. Writes the queries, Grafana's variables replaced, as a rules file for promtool."""
import json
import re
import sys

dashboard_path, rules_path, metrics_path, queries_path = sys.argv[1:5]
queries = []
errors = []

try:
    with open(dashboard_path, encoding="utf-8") as f:
        dashboard = json.load(f)
except (OSError, ValueError) as e:
    sys.exit(f"{dashboard_path}: not valid JSON: {e}")

with open(metrics_path, encoding="utf-8") as f:
    source = f.read()
exported = set(re.findall(r'"(flashsale_[a-z0-9_]+)"', source))
for name in re.findall(r'HistogramOpts::new\(\s*"(flashsale_[a-z0-9_]+)"', source):
    exported |= {name + "_bucket", name + "_sum", name + "_count"}
with open(rules_path, encoding="utf-8") as f:
    recorded = set(re.findall(r"^\s*-?\s*record:\s*(\S+)\s*$", f.read(), re.M))
known = exported | recorded | {"up"}

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}


def metric_names(expr):
    """The metric names a PromQL expression selects (a tokenizer, not a parser)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    e = re.sub(r"\$\{?\w+\}?", "1", e)  # Grafana variables ($sku, $__rate_interval)
    e = re.sub(r"\{[^{}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\[\]]*\]", " ", e)  # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", e)
    names = []
    for m in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS or re.fullmatch(r"\d\w*", word):
            continue
        names.append(word)
    return names


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


if not isinstance(dashboard.get("panels"), list) or not dashboard["panels"]:
    errors.append("no panels")
seen_ids = {}
expr_count = 0
for p in all_panels(dashboard.get("panels", [])):
    pid, title = p.get("id"), p.get("title")
    where = f"panel {pid} ({title!r})"
    if not isinstance(pid, int):
        errors.append(f"{where}: no integer id")
    elif pid in seen_ids:
        errors.append(f"{where}: id {pid} also used by {seen_ids[pid]!r}")
    else:
        seen_ids[pid] = title
    if not title:
        errors.append(f"{where}: no title")
    if p.get("type") != "row" and not p.get("targets"):
        errors.append(f"{where}: no targets")
    for t in p.get("targets", []):
        expr = t.get("expr")
        if not expr:
            errors.append(f"{where}: target {t.get('refId')} has no expr")
            continue
        expr_count += 1
        # $__rate_interval and the like are durations; $sku and the like sit in matchers.
        promql = re.sub(r"\$\{?__\w+\}?", "1m", expr)
        promql = re.sub(r"\$\{?\w+\}?", ".*", promql)
        queries.append({"record": f"dashboard:panel_{pid}_{t.get('refId')}", "expr": promql})
        names = metric_names(expr)
        if not names:
            errors.append(f"{where}: no metric found in {expr!r}")
        for name in names:
            if not (name.startswith(("flashsale_", "flashsale:")) or name == "up"):
                errors.append(f"{where}: {name!r} is not a flashsale_/flashsale: metric nor up: {expr!r}")
            elif name not in known:
                errors.append(
                    f"{where}: {name!r} is neither exported (src/metrics.rs) nor recorded "
                    f"({rules_path}): {expr!r}")

variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
ds = variables.get("datasource")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    errors.append("no template variable `datasource` of type datasource, query prometheus")
sku = variables.get("sku")
sku_query = sku and sku.get("query")
if isinstance(sku_query, dict):
    sku_query = sku_query.get("query")
if not sku or sku_query != "label_values(flashsale_sku_units, sku)":
    errors.append("no template variable `sku` from label_values(flashsale_sku_units, sku)")

if errors:
    for e in errors:
        print(f"{dashboard_path}: {e}", file=sys.stderr)
    sys.exit(1)
with open(queries_path, "w", encoding="utf-8") as f:
    json.dump({"groups": [{"name": "dashboard", "rules": queries}]}, f, indent=1)
print(f"  SUCCESS: {len(seen_ids)} panels, {expr_count} queries, every metric known")
EOF
echo "== the dashboard's queries parse (promtool check rules)"
promtool check rules "$queries" >/dev/null || fail "a query of $dashboard is not valid PromQL (above)"
echo "  SUCCESS"

echo "check-deploy: all checks passed"
