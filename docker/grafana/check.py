"""Checks docker/grafana/dashboards/*.json against the source: every pgbridge_* metric a panel
queries is one that src/ records (counter!, gauge!, histogram!). Run from the repository root:
    python3 docker/grafana/check.py
Exit 0 when every name exists."""
import glob, json, os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
recorded = set()
for path in glob.glob(os.path.join(ROOT, "src", "**", "*.rs"), recursive=True):
    text = open(path, encoding="utf-8").read()
    for m in re.finditer(r'(?:counter|gauge|histogram)!\(\s*"(pgbridge_[a-z0-9_]+)"', text):
        recorded.add(m.group(1))
# A histogram is rendered as NAME_bucket, NAME_sum and NAME_count (a summary as NAME_sum, ...).
def known(name):
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return name in recorded or base in recorded

def exprs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                yield v
            else:
                yield from exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from exprs(v)

ok = True
for path in sorted(glob.glob(os.path.join(ROOT, "docker", "grafana", "dashboards", "*.json"))):
    dashboard = json.load(open(path, encoding="utf-8"))
    used = set()
    for expr in exprs(dashboard):
        used.update(re.findall(r"\bpgbridge_[a-z0-9_]+\b", expr))
    used.discard("pgbridge_instance")  # the global label (src/admin/metrics.rs), not a metric
    for name in sorted(used):
        if not known(name):
            ok = False
            print(f"{os.path.relpath(path, ROOT)}: {name} is not recorded anywhere in src/")
    print(f"{os.path.relpath(path, ROOT)}: {len(used)} metric names, {len(recorded)} recorded in src/")
sys.exit(0 if ok else 1)
