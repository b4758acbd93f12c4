# Sourced by scripts/gpu_check.sh and scripts/gpu_recipes.sh: puts hydra-core, omegaconf and
# antlr4 (and PyYAML where the machine lacks it) on PYTHONPATH from the wheels in wheels/,
# installed into .gpu_deps/, never into the machine's own Python. How to fill wheels/: the
# header of scripts/gpu_check.sh. Returns 2 when they are missing and cannot be installed.
export PYTHONPATH="$PWD/.gpu_deps:$PWD${PYTHONPATH:+:$PYTHONPATH}"
gpu_deps() {
    python -c "import hydra, omegaconf" 2>/dev/null && return 0
    local wheels=(wheels/hydra_core-*.whl wheels/omegaconf-*.whl wheels/antlr4_python3_runtime-*.whl)
    python -c "import yaml" 2>/dev/null || wheels+=(wheels/[Pp]y[Yy][Aa][Mm][Ll]-*.whl)
    if ! ls "${wheels[@]}" >/dev/null 2>&1; then
        echo "hydra-core and omegaconf are missing and wheels/ lacks them: see scripts/gpu_check.sh"
        return 2
    fi
    python -m pip install -q --no-index --no-deps --target .gpu_deps "${wheels[@]}" || return 2
}
