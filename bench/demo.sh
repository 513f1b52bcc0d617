#!/usr/bin/env bash
# The full `primer demo` (target: ≤ 20 minutes on 2 CPU cores), timed from a fresh run folder:
# wall time and peak RSS (of the largest process: the demo or one of its stage subprocesses)
# from GNU time, per-stage seconds from the run's stage-times.json.
#
#   bench/demo.sh                 # full demo into a temporary storage root
#   bench/demo.sh --quick         # the test suite's --quick demo (target: ≤ 5 minutes)
#   ROOT=/data/primer bench/demo.sh --ablation
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
primer="${PRIMER:-$here/.venv/bin/primer}"
root="${ROOT:-$(mktemp -d /tmp/primer-bench-demo.XXXXXX)}"
run="bench-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$root"
log="$root/time.log"
echo "storage root $root, run $run, args: $*"
/usr/bin/time -v -o "$log" "$primer" demo --run "$run" --workers 2 --storage.root="$root" "$@"
wall=$(awk -F': ' '/Elapsed \(wall clock\)/{print $2}' "$log")
rss_kb=$(awk -F': ' '/Maximum resident set size/{print $2}' "$log")
echo "wall time: $wall   peak RSS: $((rss_kb / 1024)) MiB (largest single process)"
python3 - "$root/runs/$run/stage-times.json" <<'PY'
import json, sys
times = json.load(open(sys.argv[1]))
for name, t in times.items():
    print(f"  {name:<14}{t['seconds']:>8.1f} s")
PY
echo "report: $root/runs/$run/report/report.html"
