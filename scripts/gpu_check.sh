#!/usr/bin/env bash
# The GPU check: one command for a machine with one NVIDIA GPU, within about 8 minutes.
#
#     bash scripts/gpu_check.sh [folder for the bench's JSON and the runs]
#
# It runs tests/test_devices.py and a 1-process torchrun (NCCL on the GPU), `cnnbench.bench
# --quick` on CUDA, and one epoch each of experiment=fashion/resnet and fashion/alexnet, then
# prints a summary. On a machine without CUDA it says so, runs the CPU cases, and exits 0.
#
# The GPU machines lent to this project have torch, torchvision, tensorboard, tqdm, matplotlib
# and pytest, but not hydra-core, omegaconf and antlr4, and they reach no package registry.
# Those come from wheels/ (ignored by git), filled beforehand on a machine that reaches PyPI,
# for the GPU machine's Python (3.11 here; pass --python-version otherwise):
#
#     pip download --no-deps --only-binary=:all: -d wheels hydra-core==1.3.8 omegaconf==2.3.1 PyYAML
#     pip download --no-deps -d wheels antlr4-python3-runtime==4.9.3   # a source archive
#
# and carried along (the device tool's carry=["wheels"]). They are installed into .gpu_deps/,
# never into the machine's own Python. The data is ../shared/data, as on the CPU machines.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-outputs/gpu_check}}
mkdir -p "$out"
export PYTHONPATH="$PWD/.gpu_deps:$PWD${PYTHONPATH:+:$PYTHONPATH}"
summary=()
step() {  # step NAME COMMAND...: run it, keep its exit code and time for the summary
    local name=$1 start=$SECONDS code
    shift
    echo "== $name: $*"
    "$@"
    code=$?
    summary+=("$(printf '%-34s %s (%ds)' "$name" "$([ $code = 0 ] && echo ok || echo "FAILED ($code)")" $((SECONDS - start)))")
    return $code
}

if ! python -c "import hydra, omegaconf" 2>/dev/null; then
    if ! ls wheels/*.whl >/dev/null 2>&1; then
        echo "hydra-core and omegaconf are missing and wheels/ is empty: see this script's header"
        exit 2
    fi
    # antlr4's source archive builds with the machine's own setuptools: no index to ask
    step "install hydra-core, omegaconf" python -m pip install -q --no-index --no-deps \
        --no-build-isolation --target .gpu_deps wheels/* || exit 2
fi
cuda=$(python -c "import torch; print(int(torch.cuda.is_available()))")
step "the device tests" python -m pytest -q -p no:cacheprovider -rs tests/test_devices.py \
    tests/test_distributed.py::test_one_process_under_torchrun_joins_a_group_of_one
if [ "$cuda" = 1 ]; then
    data=(dataset.root=../shared/data dataset.cache_dir="$out/cache" trainer.device=cuda)
    step "bench --quick on CUDA" python -m cnnbench.bench --quick --device cuda \
        --json "$out/bench.json" dataset.root=../shared/data dataset.cache_dir="$out/cache"
    for recipe in fashion/resnet fashion/alexnet; do
        step "one epoch of $recipe" python -m cnnbench "experiment=$recipe" trainer.epochs=1 \
            "${data[@]}" "hydra.run.dir=$out/${recipe//\//_}"
    done
else
    summary+=("CUDA                               not available here: the CUDA cases were skipped")
fi
echo
echo "== summary ($(python -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"))"
printf '%s\n' "${summary[@]}"
for recipe in fashion_resnet fashion_alexnet; do
    [ -f "$out/$recipe/results.json" ] && python -c "
import json, sys; r = json.load(open(sys.argv[1]))
print(f'{sys.argv[2]:<34} test acc {r[\"test_acc\"]:.4f}, epoch {r[\"train_s\"]:.1f} s, {r[\"train_images_per_s\"] or 0:,.0f} img/s')" \
        "$out/$recipe/results.json" "$recipe"
done
! printf '%s\n' "${summary[@]}" | grep -q FAILED
