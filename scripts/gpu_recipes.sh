#!/usr/bin/env bash
# Textbook recipes on a GPU, in float32, for the README's recipe table: a machine that has only
# the repository's files (the data and wheels carried as for scripts/gpu_check.sh).
#
#     bash scripts/gpu_recipes.sh DATA_DIR OUT_DIR d2l/nin d2l/nin_v1 fashion/nin --seeds 0 1 2
#
# Each (recipe, seed) trains with tools/run_recipes.py --device cuda; their metrics.csv,
# results.json and confusion matrices land in OUT_DIR/results/<recipe>/seed<N>/ and in
# OUT_DIR/results.tgz (one file to bring back), to be copied under docs/results/ where the
# table wants them (a cell trained on a GPU says cuda).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ] || [ ! -d "$1/fashion-mnist" ]; then
    echo "usage: bash scripts/gpu_recipes.sh DATA_DIR OUT_DIR RECIPE ... [--seeds N ...]" >&2
    exit 2
fi
data=$(cd "$1" && pwd)
mkdir -p "$2/results" && out=$(cd "$2" && pwd)
shift 2
source scripts/gpu_deps.sh
gpu_deps || exit 2
python tools/run_recipes.py "$@" --device cuda --root "$data" --runs "$out/runs" \
    --results "$out/results" -- trainer.precision=32 dataset.cache_dir="$out/cache"
code=$?
tar czf "$out/results.tgz" -C "$out" results
exit $code
