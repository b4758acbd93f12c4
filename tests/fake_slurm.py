"""A stand-in for SLURM's sbatch, srun and sacct, enough for submitit to submit a job array
and collect its results on a machine without a cluster. `install(bin_dir, state_dir)` writes
the three commands; put bin_dir first on PATH.

sbatch keeps the batch script in state_dir (so that a test can read its #SBATCH lines),
answers with a job id, and runs the array's tasks one after the other in the background with
the SLURM_* variables a real node sets; srun runs its command with the output files expanded.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

JOB_ID = "4242"


def install(bin_dir: Path, state_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in ("sbatch", "srun", "sacct"):
        path = bin_dir / name
        path.write_text(
            f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            f"import fake_slurm\nfake_slurm.{name}({str(state_dir)!r}, sys.argv[1:])\n"
        )
        path.chmod(0o755)


def sbatch(state_dir: str, args: list[str]) -> None:
    script = Path(args[-1]).read_text()
    (Path(state_dir) / f"{JOB_ID}.sh").write_text(script)
    array = re.search(r"^#SBATCH --array=0-(\d+)", script, re.M)
    tasks = int(array.group(1)) + 1 if array else 1
    subprocess.Popen(
        [sys.executable, __file__, "run", state_dir, args[-1], str(tasks)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    print(f"Submitted batch job {JOB_ID}")


def run(state_dir: str, script: str, tasks: int) -> None:
    text = Path(script).read_text()
    output = re.search(r"^#SBATCH --output=(\S+)", text, re.M).group(1)
    for task in range(tasks):
        job = f"{JOB_ID}_{task}" if tasks > 1 else JOB_ID
        folder = Path(expand(output, task)).parent
        deadline = time.monotonic() + 60  # submitit moves the task's pickle in after sbatch
        while not (folder / f"{job}_submitted.pkl").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        (Path(state_dir) / job).write_text("RUNNING")
        env = dict(
            os.environ,
            SLURM_JOB_ID=job,
            SLURM_ARRAY_JOB_ID=JOB_ID,
            SLURM_ARRAY_TASK_ID=str(task),
            SLURM_NTASKS="1",
            SLURM_JOB_NUM_NODES="1",
            SLURM_NODEID="0",
            SLURM_PROCID="0",
            SLURM_LOCALID="0",
            SLURM_JOB_NODELIST="localhost",
            FAKE_SLURM_TASK=str(task),
        )
        if tasks == 1:
            del env["SLURM_ARRAY_JOB_ID"], env["SLURM_ARRAY_TASK_ID"]
        code = subprocess.call(["bash", script], env=env)
        (Path(state_dir) / job).write_text("COMPLETED" if code == 0 else "FAILED")


def expand(pattern: str, task: int) -> str:
    return pattern.replace("%A", JOB_ID).replace("%a", str(task)).replace("%t", "0")


def srun(state_dir: str, args: list[str]) -> None:
    files = {}
    while args[0].startswith("--"):
        flag = args.pop(0)
        if flag in ("--output", "--error"):
            files[flag] = expand(args.pop(0), int(os.environ.get("FAKE_SLURM_TASK", "0")))
    with open(files["--output"], "a") as out, open(files.get("--error", os.devnull), "a") as err:
        sys.exit(subprocess.call(args, stdout=out, stderr=err))


def sacct(state_dir: str, args: list[str]) -> None:
    print("JobID|State|NodeList")
    for path in sorted(Path(state_dir).glob(f"{JOB_ID}*")):
        if path.suffix != ".sh":
            print(f"{path.name}|{path.read_text()}|localhost")


if __name__ == "__main__":
    run(sys.argv[2], sys.argv[3], int(sys.argv[4]))
