#!/usr/bin/env bash
# Issue 32's pruning statistics over every test user, not only the first 300 of each run that `compare`
# ranked exactly (--pruning-users 300): on Beauty those hold 3 to 21 top-10 positives per run, too few to count.
#
#   benchmarks/seeds/pruning.sh office|beauty      # from the repository root, after run.sh; then report.py --pruning
#
# For each finished LM run of runs/seeds/<data>-sid/runs/ (its model/ is kept on the machine that trained it), a
# copy of what `bearrec evaluate` reads (run.json, config.yaml, model/) goes to
# runs/seeds/<data>-sid/pruning/<label>/seed<N>/ and is evaluated there with the run's own decoding (B = 20) and
# PR@K from the exact ranks of all test users, so the run's own eval files are never written over. Its
# eval_test.json (without the per-user ranks) is kept in docs/results/seeds/<data>-sid/pruning/; commit it. A run
# already kept is skipped, so the script resumes after an interruption and picks up runs that finish later.
# `python3 benchmarks/seeds/report.py <data> --pruning` reports them.
# It runs beside run.sh's two training jobs on one torch thread (OMP_NUM_THREADS, default 1): with torch's default
# of one thread per core, its small per-user forwards ran 15x slower among the jobs (11 users a second against 160).
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cd "$(dirname "$0")/../.."
data=${1:?office or beauty}
out=runs/seeds/$data-sid
kept=docs/results/seeds/$data-sid/pruning
if [ ! -d "$out/runs" ]; then
    echo "pruning.sh: no $out/runs; run benchmarks/seeds/run.sh $data first" >&2
    exit 2
fi
for run in "$out"/runs/*/seed*; do
    [ -f "$run/result.json" ] && [ -f "$run/run.json" ] && [ -d "$run/model" ] || continue  # LM runs that finished
    name=${run#"$out"/runs/}
    [ -f "$kept/$name/eval_test.json" ] && continue
    copy=$out/pruning/$name
    mkdir -p "$copy"
    cp -r "$run/run.json" "$run/config.yaml" "$run/model" "$copy/"
    echo "== $name: every test user ranked exactly ($(date -u +%H:%M:%S))"
    python3 -m bearrec.cli evaluate "$copy" --split test --beam-width 20 > "$copy/evaluate.log" 2>&1 \
        || { echo "pruning.sh: bearrec evaluate failed on $copy, see $copy/evaluate.log" >&2; exit 1; }
    mkdir -p "$kept/$name"
    # without the per-user ranks (the run's own result.json keeps them), written whole or not at all (bearrec's
    # atomic write_json): a kept file means a finished evaluation
    python3 -c 'import json, sys; from bearrec.io import write_json
result = json.load(open(sys.argv[1])); result.pop("retrieved_rank", None); write_json(sys.argv[2], result)' \
        "$copy/eval_test.json" "$kept/$name/eval_test.json"
    echo "kept $kept/$name/eval_test.json"
done
