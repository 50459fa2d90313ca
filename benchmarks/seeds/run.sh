#!/usr/bin/env bash
# Issue 32's runs, resumable across machines: CE, MSL, BEAR (official) and APAO on office's and Beauty's semantic
# IDs, with SASRec and BERT4Rec, several seeds each (docs/results.md, "Settled over seeds").
#
#   benchmarks/seeds/run.sh office|beauty [JOBS]      # from the repository root; `harvest` below after each run
#
# The runs take hours on a 2-core CPU and outlive a session's machine, so each finished run's `result.json` is
# kept in the repository (docs/results/seeds/<data>/, `benchmarks/seeds/harvest.sh`) and put back into a fresh
# experiment folder before `bearrec compare` starts: compare skips every run whose result.json exists and
# trains the rest. A run interrupted mid-training resumes from its checkpoint on the same machine only.
# Every run of a data set is made by the same code, its commit in docs/results/seeds/CODE (a line
# `<data> <commit>`), checked out under runs/seeds/ (PYTHONPATH puts it before the installed bearrec, and
# `python3 -P` keeps the current folder, this checkout, off the path: without it `-m` would import this
# checkout's bearrec), so later changes to main cannot change a run.
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:?office or beauty}
jobs=${2:-2}
kept=docs/results/seeds/$data-sid
out=runs/seeds/$data-sid
code=$(awk -v data="$data" '$1 == data { print $2 }' docs/results/seeds/CODE)
if [ -z "$code" ]; then
    echo "run.sh: docs/results/seeds/CODE pins no commit for '$data' (office or beauty)" >&2
    exit 2
fi
tree=runs/seeds/code-$code
if [ ! -d "$tree" ]; then
    mkdir -p runs/seeds
    git worktree add --detach "$tree" "$code" >/dev/null
fi
export PYTHONPATH="$PWD/$tree${PYTHONPATH:+:$PYTHONPATH}"
imported=$(python3 -P -c 'import bearrec; print(bearrec.__file__)')
if [ "$imported" != "$PWD/$tree/bearrec/__init__.py" ]; then
    echo "run.sh: python imports bearrec from $imported, not from the pinned $tree" >&2
    exit 1
fi
src=../shared/data/$data
if [ ! -d "runs/data/$data-sid" ]; then  # prepare writes its folder whole or not at all
    python3 -P -m bearrec.cli prepare interactions "$src/interactions.csv" "$src/items.csv" --split leave-one-out --max-history 20 \
        --semantic-ids "$src/semantic_ids.csv" --out "runs/data/$data-sid"
fi
mkdir -p "$out"
if [ -d "$kept" ]; then  # finished runs of earlier machines; never over a result this machine already has
    cp -rn "$kept/." "$out/"
fi
case $data in
    office) objectives=sft,msl,bear,apao-pointwise,apao-pairwise:num_negatives=20; seeds=5; more=() ;;
    beauty) objectives=sft,msl,bear,apao-pointwise; seeds=${SEEDS:-3}; more=(--baseline-seeds 5) ;;
    *) echo "run.sh: unknown data set '$data' (office or beauty)" >&2; exit 2 ;;
esac
exec python3 -P -m bearrec.cli compare "$tree/configs/$data-semantic-ids.yaml" --data "runs/data/$data-sid" \
    --objectives "$objectives" --baselines sasrec,bert4rec --seeds "$seeds" --beam-width 20 --pruning-users 300 \
    --jobs "$jobs" --out "$out" "${more[@]}"
