#!/usr/bin/env bash
# The GPU check: one command for a machine with one NVIDIA GPU, about 6 minutes.
#
#     bash scripts/gpu_check.sh DATA_DIR [WORK_DIR]
#
# DATA_DIR holds mnist/ and fashion-mnist/ (IDX files), as ../shared/data does. A GPU machine
# gets only the repository's files, so copy the data into the ignored .gpu_data/ (41 MB) and
# carry it along with wheels/ (device tool: carry [".gpu_data", "wheels"]):
#
#     mkdir -p .gpu_data && cp -r ../shared/data/mnist ../shared/data/fashion-mnist .gpu_data/
#
# The GPU machines have torch, torchvision, tensorboard, tqdm, matplotlib and pytest, but not
# hydra-core, omegaconf and antlr4, and reach no package registry. Those come from wheels/
# (ignored by git), filled beforehand on a machine that reaches PyPI:
#
#     pip download --no-deps --only-binary=:all: -d wheels hydra-core==1.3.8 omegaconf==2.3.1
#     pip wheel --no-deps -w wheels antlr4-python3-runtime==4.9.3   # no wheel on PyPI
#     pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --platform manylinux2014_x86_64 -d wheels PyYAML   # if the machine lacks it
#
# scripts/gpu_deps.sh installs them into .gpu_deps/, never into the machine's own Python.
# The check runs the device tests, `cnnbench.bench --quick`, the bench's LeNet-5 and ResNet-18
# rows (engine, plain step, bare loop, bf16), LeNet-5 with the captured step against the plain
# one, fast_mnist over 5 seeds, two epochs of fashion/resnet in float32 and bf16, and N
# models' step one after another against the same N packed (tools/packed_step.py) and the
# same sweeps with the basic and the packed launcher (tools/packed_sweep.py), then
# prints one table (tools/gpu_summary.py; WORK_DIR/summary.json). Without CUDA it runs the
# CPU cases of the device tests, says so, and exits 0; it exits 1 when a step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ ! -d "$1/mnist" ] || [ ! -d "$1/fashion-mnist" ]; then
    echo "usage: bash scripts/gpu_check.sh DATA_DIR [WORK_DIR]: DATA_DIR must hold mnist/ and" \
        "fashion-mnist/ (e.g. ../shared/data, or a copy in .gpu_data/)" >&2
    exit 2
fi
data=$(cd "$1" && pwd)
work=${2:-outputs/gpu_check}
mkdir -p "$work" && work=$(cd "$work" && pwd)
rm -f "$work/steps.txt"
source scripts/gpu_deps.sh
failed=0
step() {  # step NAME COMMAND...: run it; its outcome and time go into the table
    local name=$1 start=$SECONDS code
    shift
    echo "== $name: $*"
    "$@"
    code=$?
    [ $code = 0 ] || failed=1
    printf '%s\t%s (%d s)\n' "$name" "$([ $code = 0 ] && echo ok || echo "FAILED, exit $code")" \
        $((SECONDS - start)) >>"$work/steps.txt"
    return $code
}

step "hydra-core, omegaconf, antlr4 from wheels/" gpu_deps || exit 2
python -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" \
    >"$work/device.txt"
cuda=$(python -c "import torch; print(int(torch.cuda.is_available()))")
step "the device tests" python -m pytest -q -n 4 -p no:cacheprovider -rs --junitxml="$work/tests.xml" \
    tests/test_devices.py tests/test_step.py \
    tests/test_distributed.py::test_one_process_under_torchrun_joins_a_group_of_one

if [ "$cuda" = 1 ]; then
    on=(dataset.root="$data" dataset.cache_dir="$work/cache" trainer.device=cuda)
    step "bench --quick" python -m cnnbench.bench --quick --device cuda \
        --json "$work/bench-quick.json" "${on[@]}"
    step "bench lenet5, resnet@96" python -m cnnbench.bench --models lenet5,resnet@96 \
        --no-process --device cuda --json "$work/bench.json" "${on[@]}"
    step "LeNet-5, captured and plain" python -m cnnbench -m experiment=tutorial/lenet5_mnist \
        trainer.epochs=3 trainer.cuda_graph=auto,false "${on[@]}" hydra.sweep.dir="$work/lenet5"
    step "fast_mnist, 5 seeds" python -m cnnbench -m experiment=fast_mnist \
        trainer.seed=0,1,2,3,4 "${on[@]}" hydra.sweep.dir="$work/fast_mnist"
    step "fashion/resnet, 2 epochs" python -m cnnbench -m experiment=fashion/resnet \
        trainer.epochs=2 trainer.precision=32,bf16 trainer.channels_last=true "${on[@]}" \
        hydra.sweep.dir="$work/fashion_resnet"
    # issue 30: N models' step one after another against the same N packed (packed.py)
    step "packed step" bash -c "python tools/packed_step.py --device cuda | tee '$work/packed_step.txt'"
    step "packed sweep" python tools/packed_sweep.py --data "$data" --device cuda \
        --json "$work/packed_sweep.json"
else
    printf 'CUDA\tnot available here: the CUDA cases were skipped\n' >>"$work/steps.txt"
fi
python tools/gpu_summary.py "$work"
exit $failed
