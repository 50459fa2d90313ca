#!/usr/bin/env bash
# Keep what benchmarks/seeds/run.sh has finished: each finished run's result.json (and the experiment's plan and,
# once every run is done, its report) go from runs/seeds/<data>-sid/ to docs/results/seeds/<data>-sid/, where
# a later machine's run.sh puts them back. Prints what it added; commit them.
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
    done
    for report in results.md results.json; do
        if [ -f "$out/$report" ]; then cp "$out/$report" "$kept/"; fi
    done
done
