"""cores.py: how many threads a run takes; startup.py: the phases before the first step."""

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from cnnbench import cli, cores
from cnnbench.startup import Phases, process_start


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setattr(cores, "REGISTRY", tmp_path / "runs")
    for var in ("LOCAL_WORLD_SIZE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cores, "usable_cores", lambda: 8)
    idle = SimpleNamespace(user=0.0, system=0.0)  # the test process's own load: none
    monkeypatch.setattr(os, "times", lambda: idle)
    return tmp_path / "runs"


def test_alone_a_run_takes_every_core(registry):
    assert cores.plan(None) == (8, "8 cores")


def test_trainer_threads_wins(registry, monkeypatch):
    assert cores.plan(3, jobs=4) == (3, "trainer.threads")


def test_launcher_jobs_share_the_cores(registry, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what joblib and torchrun set themselves
    assert cores.plan(None, jobs=2)[0] == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert cores.plan(None)[0] == 2


def test_omp_num_threads_is_kept(registry, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cores.plan(None) == (2, "OMP_NUM_THREADS")


def test_live_runs_share_the_cores_and_dead_ones_are_forgotten(registry):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        cores.register()
        (registry / str(child.pid)).write_text("")
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        ).stdout.strip()
        (registry / dead).write_text("")
        assert cores.others_running() == 1  # the child; not this process, not the dead one
        assert not (registry / dead).exists()
        assert cores.plan(None) == (4, "8 cores shared by 2 cnnbench runs")
    finally:
        child.kill()
        child.wait()
    assert cores.others_running() == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_paused_run_holds_no_core(registry):
    import signal

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        cores.register()
        (registry / str(child.pid)).write_text("")
        assert cores.others_running() == 1
        child.send_signal(signal.SIGSTOP)
        for _ in range(100):  # the stop is asynchronous
            if cores._stopped(child.pid):
                break
            time.sleep(0.01)
        assert cores.others_running() == 0
        assert cores.others_running(paused=True) == 1  # for the wait policy: it may resume
        assert (registry / str(child.pid)).exists()  # it counts again once it resumes
        child.send_signal(signal.SIGCONT)
        for _ in range(100):
            if not cores._stopped(child.pid):
                break
            time.sleep(0.01)
        assert cores.others_running() == 1
    finally:
        child.kill()
        child.wait()


def test_busy_machine_note(registry, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (9.5, 1.0, 1.0))
    note = cores.busy_note(8)
    assert "load average is 9.5 on 8 cores" in note and "trainer.threads=1" in note
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 1.0, 1.0))
    assert cores.busy_note(8) is None


def test_a_process_does_not_count_its_own_load(registry, monkeypatch):
    # a sweep's later job in the same process: the load is the earlier jobs' 8 threads
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 1.0, 1.0))
    monkeypatch.setattr(cores, "process_start", lambda: time.time() - 100)
    spent = SimpleNamespace(user=800.0, system=0.0)  # 8 cores busy for its 100 s
    monkeypatch.setattr(os, "times", lambda: spent)
    assert cores.others_load() == pytest.approx(1.0)
    assert cores.busy_note(8) is None
    monkeypatch.setattr(os, "getloadavg", lambda: (17.5, 1.0, 1.0))
    assert "load average is 9.5 on 8 cores" in cores.busy_note(8)
    # a process young or idle for the most part: its CPU is spread over at least a minute
    monkeypatch.setattr(cores, "process_start", lambda: time.time() - 5)
    assert cores.others_load() == pytest.approx(17.5 - 800 / 60)


@pytest.mark.parametrize(
    "others,jobs,load,policy",
    [
        (0, "1", 0.0, None),  # alone: OpenMP's default
        (1, "1", 0.0, "PASSIVE"),  # another cnnbench run is live
        (0, "2", 0.0, "PASSIVE"),  # torchrun's two processes on this machine
        (0, "1", 9.0, "PASSIVE"),  # a busy machine
    ],
)
def test_threads_sleep_when_the_cores_are_shared(monkeypatch, others, jobs, load, policy):
    monkeypatch.setattr(cores, "others_running", lambda paused=False: others)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", jobs)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(cores, "usable_cores", lambda: 8)
    idle = SimpleNamespace(user=0.0, system=0.0)
    monkeypatch.setattr(os, "times", lambda: idle)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cores.quiet_openmp()
    assert os.environ.get("OMP_WAIT_POLICY") == policy


def test_wait_policy_keeps_what_the_user_set(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cores.quiet_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_joblib_jobs(monkeypatch):
    monkeypatch.setattr(cores, "usable_cores", lambda: 8)
    assert [cli.joblib_jobs(n) for n in (2, -1, -2, None)] == [2, 8, 7, 1]


def test_phases_add_up():
    assert process_start() <= time.time()
    phases = Phases()
    phases.restart()
    phases.mark("a")
    phases.mark("b")
    phases.mark("a")
    summary = phases.summary()
    assert set(summary) == {"a_s", "b_s", "total_s"}
    assert summary["total_s"] == pytest.approx(summary["a_s"] + summary["b_s"], abs=2e-3)
    phases.restart()
    assert phases.seconds == {}
    assert Phases(since=time.time()).last > process_start()  # train() called from Python
