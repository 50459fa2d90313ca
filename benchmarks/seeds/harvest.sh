#!/usr/bin/env bash
# Keep what benchmarks/seeds/run.sh has finished: each finished run's result.json and per-epoch log
# (checkpoints/epochs.json, kept as epochs.json beside it), the experiment's plan and, once every run is done, its
# report go from runs/seeds/<data>-sid/ to docs/results/seeds/<data>-sid/, where a later machine's run.sh puts them
# back. Prints what it added; commit them.
set -euo pipefail
cd "$(dirname "$0")/../.."
for out in runs/seeds/*-sid; do
    [ -f "$out/experiment.json" ] || continue
    kept=docs/results/seeds/$(basename "$out")
    mkdir -p "$kept"
    cp "$out/experiment.json" "$kept/"
    for result in "$out"/runs/*/*/result.json; do
        [ -f "$result" ] || continue
        target=$kept/${result#"$out"/}
        if [ ! -f "$target" ]; then
            mkdir -p "$(dirname "$target")"
            cp "$result" "$target"
            echo "kept $target"
        fi
        log=$(dirname "$result")/checkpoints/epochs.json
        if [ -f "$log" ] && [ ! -f "$(dirname "$target")/epochs.json" ]; then
            cp "$log" "$(dirname "$target")/epochs.json"
        fi
    done
    # the experiment's own report only once every planned run has its result: a report written before (a
    # stopped compare writes one for the runs it finished) is older than benchmarks/seeds/report.py's
    planned=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["runs"]))' "$out/experiment.json")
    done_runs=$(find "$kept" -path "*/runs/*" -name result.json | wc -l)
    if [ "$done_runs" -eq "$planned" ]; then
        for report in results.md results.json; do
            if [ -f "$out/$report" ]; then cp "$out/$report" "$kept/"; fi
        done
    fi
done
