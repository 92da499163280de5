"""The executor seam without a cluster: choosing an executor, the grid over a custom one,
stored tracebacks, the ``executor:`` config section (never in a run key), GPU bookkeeping and
the Slurm job script."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from bayesbench.config import ExecutorConfig, SlurmConfig, expand, load_config, parse_config
from bayesbench.errors import ConfigError
from bayesbench.execution.base import (
    Executor,
    ExecutorError,
    Finished,
    device_for_slot,
    gpu_share,
    open_executor,
    runs_fitting,
    with_overrides,
    worker_slot,
)
from bayesbench.execution.local_pool import LocalPool
from bayesbench.execution.serial import SerialExecutor
from bayesbench.runner import describe_failure, run_grid, run_one
from bayesbench.store import ResultStore

TINY = {
    "seeds": [0, 1],
    "model": {"d_model": 16, "heads": 2, "depth": 1},
    "training": {"epochs": 1},
    "quick": {"epochs": 1, "max_train": 64, "max_eval": 32, "mc_samples": 2, "seeds": 2},
    "datasets": ["digits"],
    "methods": ["map"],
}
COMMON = dict(device="cpu", threads=1, versions={}, commit=None, on_event=lambda e: None)


# --------------------------------------------------------------------------- choosing


def test_open_executor_picks_serial_pool_or_dask_from_the_config():
    serial = open_executor(ExecutorConfig(), runs=5, **COMMON)
    assert isinstance(serial, SerialExecutor)
    serial.close()
    one_run = open_executor(ExecutorConfig(workers=4), runs=1, **COMMON)
    assert isinstance(one_run, SerialExecutor)  # no process worth starting for one run
    one_run.close()
    pool = open_executor(ExecutorConfig(workers=3), runs=2, **COMMON)
    assert isinstance(pool, LocalPool) and pool.free == 2  # never more workers than runs
    pool.close()


def test_flags_override_the_executor_section():
    cfg = ExecutorConfig(kind="slurm", workers=2, slurm=SlurmConfig(jobs=3))
    assert with_overrides(cfg).slurm.jobs == 3
    assert with_overrides(cfg, jobs=8).slurm.jobs == 8
    dask = with_overrides(cfg, scheduler="tcp://10.0.0.5:8786")
    assert (dask.kind, dask.scheduler) == ("dask", "tcp://10.0.0.5:8786")
    local = with_overrides(ExecutorConfig(kind="dask", scheduler="tcp://h:1"), kind="local",
                           workers=4)
    assert (local.kind, local.scheduler, local.workers) == ("local", None, 4)
    with pytest.raises(ConfigError, match="--scheduler tcp://h:1: .*--executor slurm"):
        with_overrides(cfg, kind="slurm", scheduler="tcp://h:1")
    with pytest.raises(ConfigError, match="--jobs 2: Slurm jobs are for --executor slurm"):
        with_overrides(ExecutorConfig(), jobs=2)
    with pytest.raises(ConfigError, match="--executor ray: choose one of local, dask, slurm"):
        with_overrides(cfg, kind="ray")


def test_dask_and_slurm_say_what_is_missing(monkeypatch):
    from bayesbench.execution import slurm

    monkeypatch.setattr(slurm.shutil, "which", lambda name: None)
    with pytest.raises(ExecutorError, match="no `sbatch` on PATH"):
        slurm.start_slurm_cluster(ExecutorConfig(kind="slurm"), device="cpu")
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    with pytest.raises(ExecutorError, match=r"pip install 'bayesbench\[dask\]'"):
        open_executor(ExecutorConfig(kind="dask"), runs=2, **COMMON)


# --------------------------------------------------------------------------- the seam


class _ScriptedExecutor(Executor):
    """Runs specs in this process two at a time and ends them in reverse order; the run of
    label ``dies`` comes back as a dead worker."""

    def __init__(self) -> None:
        self.slots, self.submitted, self.closed = 2, [], False
        self._running: list = []

    @property
    def free(self) -> int:
        return self.slots - len(self._running)

    @property
    def running(self) -> list:
        return list(self._running)

    def submit(self, spec) -> None:
        self.submitted.append(spec.key)
        self._running.append(spec)

    def poll(self, timeout: float) -> list[Finished]:
        spec = self._running.pop()  # the last submitted ends first
        if spec.label == "dies":
            return [Finished(spec, died="killed by SIGKILL")]
        return [Finished(spec, result=run_one(spec, torch.device("cpu")))]

    def close(self) -> None:
        self.closed = True


def test_run_grid_drives_any_executor_and_writes_what_comes_back(tmp_path):
    cfg = parse_config({**TINY, "methods": ["map", {"name": "map", "label": "dies"}]})
    specs = expand(cfg, quick=True)
    store = ResultStore(tmp_path / "r.sqlite")
    executor = _ScriptedExecutor()
    outcome = run_grid(specs, store, device=torch.device("cpu"), executor=executor)
    assert sorted(executor.submitted) == sorted(s.key for s in specs)  # each handed over once
    assert executor.closed and not outcome.interrupted
    stored = {(r.label, r.seed): r for r in store.results()}
    assert len(stored) == 4 and len(outcome.results) == 4
    assert all(stored[("map", s)].status == "complete" for s in (0, 1))
    for seed in (0, 1):
        dead = stored[("dies", seed)]
        assert dead.status == "failed" and "killed by SIGKILL" in dead.error
    assert store.claims() == []
    again = run_grid(specs, store, device=torch.device("cpu"), executor=_ScriptedExecutor())
    assert len(again.skipped) == 2 and len(again.results) == 2  # resume: failed ones rerun


BROKEN = textwrap.dedent('''
    from bayesbench.methods.map import MAP

    def _deep_helper():
        raise RuntimeError("boom in a helper")

    class Exploding(MAP):
        name = "exploding"
        description = "raises during fit"
        def fit(self, task, ctx):
            _deep_helper()
''')


def test_a_failed_run_keeps_its_full_traceback_in_the_store(tmp_path, monkeypatch):
    (tmp_path / "exploding_methods.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = parse_config({**TINY, "seeds": [0], "methods": ["exploding_methods:Exploding"]})
    store = ResultStore(tmp_path / "r.sqlite")
    try:
        run_grid(expand(cfg, quick=True), store, device=torch.device("cpu"))
    finally:
        sys.modules.pop("exploding_methods", None)
    error = store.results()[0].error
    lines = error.splitlines()
    assert lines[0] == "RuntimeError: boom in a helper (at exploding_methods.py:5)"
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: boom in a helper"  # report's one-line form reads this
    assert "in _deep_helper" in error and "in fit" in error and "runner.py" in error


def test_describe_failure_bounds_huge_tracebacks():
    try:
        raise ValueError("x" * 50_000)
    except ValueError as exc:
        text = describe_failure(exc)
    summary = text.splitlines()[0]
    assert summary.startswith("ValueError: xxx") and len(summary) <= 530
    assert len(text) < 21_000 and "characters left out" in text


# --------------------------------------------------------------------------- config


def test_the_executor_section_never_enters_a_run_key(encoder_at_version_1):
    """Stored results keep their keys: the default suite's keys are those before the executor
    section existed, whatever that section says (the built-in encoder pinned at version 1,
    the version those keys were computed at)."""
    from pathlib import Path

    import yaml

    suite = Path(__file__).resolve().parent.parent / "benchmarks.yaml"
    cfg = load_config(suite)
    raw = yaml.safe_load(suite.read_text())
    other = parse_config({**raw, "executor": {
        "kind": "slurm", "workers": 7, "scheduler": "tcp://10.0.0.5:8786", "max_tries": 9,
        "runs_per_gpu": 4, "slurm": {"queue": "gpu", "cores": 8, "gpus": 2, "jobs": 3}}},
        str(suite))
    for quick in (False, True):
        keys = [(s.key, s.config_hash) for s in expand(cfg, quick=quick)]
        assert keys == [(s.key, s.config_hash) for s in expand(other, quick=quick)]
    # keys computed before this section existed (map and mc_dropout on digits)
    full = {(s.label, s.seed): s.key for s in expand(cfg, datasets=["digits"],
                                                      methods=["map", "mc_dropout"])}
    assert full == {("map", 0): "f4d2ee31af93e50c", ("mc_dropout", 0): "d7ff3dccdca74970",
                    ("map", 1): "4f3a209f4cd8affb", ("mc_dropout", 1): "ac235ba9070f5508",
                    ("map", 2): "a214ea4a7d557580", ("mc_dropout", 2): "b713db1ec4740865"}
    quick = {(s.label, s.seed): s.key for s in expand(cfg, quick=True, datasets=["digits"],
                                                       methods=["map", "mc_dropout"])}
    # (the quick keys as computed since the quick budget became 2 epochs and 2 severities)
    assert quick == {("map", 0): "0b2bee9a359ef8be", ("mc_dropout", 0): "87ed21e142bccade"}


@pytest.mark.parametrize("section, where, message", [
    ({"kind": "dsak"}, "executor.kind", "did you mean 'dask'?"),
    ({"workers": 0}, "executor.workers", "an integer from 1 to 4096"),
    ({"max_tries": 0}, "executor.max_tries", "an integer from 1 to 100"),
    ({"connect_timeout": 0}, "executor.connect_timeout", "a number in (0, 3600]"),
    ({"scheduler": " "}, "executor.scheduler", "give an address like tcp://"),
    ({"slurmm": {}}, "executor.slurmm", "did you mean 'slurm'?"),
    ({"slurm": {"walltime": "4h"}}, "executor.slurm.walltime", "[D-]HH:MM:SS"),
    ({"slurm": {"memory": "lots"}}, "executor.slurm.memory", "like 16GB"),
    ({"slurm": {"gpus": -1}}, "executor.slurm.gpus", "an integer from 0 to 64"),
    ({"slurm": {"job_extra": "--qos=x"}}, "executor.slurm.job_extra", "expected list"),
])
def test_executor_section_errors_name_the_key(section, where, message):
    with pytest.raises(ConfigError) as err:
        parse_config({**TINY, "executor": section}, "b.yaml")
    assert f"b.yaml: {where}: " in str(err.value) and message in str(err.value)


def test_executor_section_reads_yaml_as_written():
    import yaml

    cfg = parse_config({**TINY, **yaml.safe_load(textwrap.dedent("""
        executor:
          kind: slurm
          slurm: {queue: gpu, walltime: 04:00:00, job_extra: [--qos=high], gpus: 1}
    """))})
    slurm = cfg.executor.slurm
    assert cfg.executor.kind == "slurm"
    assert slurm.walltime == "04:00:00"  # YAML's 14400 (sexagesimal) back to Slurm's form
    assert slurm.job_extra == ("--qos=high",) and slurm.gpus == 1
    assert parse_config(TINY).executor == ExecutorConfig()


# --------------------------------------------------------------------------- GPUs


@pytest.mark.parametrize("runs_per_gpu", [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 64])
def test_a_gpu_takes_exactly_runs_per_gpu_runs(runs_per_gpu):
    share = gpu_share(runs_per_gpu)
    assert runs_fitting(1.0, share) == runs_per_gpu  # one GPU, counted as Dask's worker does
    assert runs_fitting(2.0, share) == 2 * runs_per_gpu
    # a worker process of bayesbench's own declares 1/runs_per_gpu: one run at a time
    assert runs_fitting(1 / runs_per_gpu, share) == 1
    assert runs_fitting(3.0, share) == 3 * runs_per_gpu
    assert runs_fitting(0.0, share) == 0  # a CPU-only worker gets no GPU run


def test_local_workers_share_the_gpus_round_robin():
    assert [device_for_slot("cuda", i, 2) for i in range(4)] == [
        "cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert device_for_slot("cuda", 3, 1) == "cuda"
    assert device_for_slot("cpu", 3, 2) == "cpu"
    pool = LocalPool(4, threads=1, device="cuda", versions={}, commit=None,
                     on_event=lambda e: None, gpu_count=2)  # starts nothing until submit
    assert [pool.device_of(i) for i in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert pool.free == 4 and "sharing 2 GPU(s)" in pool.description
    pool.close()


def test_dask_worker_slots_come_from_their_names():
    assert worker_slot("SLURMCluster-3-2") == 2
    assert worker_slot("SLURMCluster-3") == 3  # one process per job: its job's number
    assert worker_slot("bayesbench") == 0


def test_a_local_dask_cluster_on_cuda_declares_gpu_shares():
    pytest.importorskip("distributed")
    from bayesbench.execution.dask_cluster import GPU_RESOURCE, local_cluster_kwargs

    cpu = local_cluster_kwargs(2, device="cpu", threads=1, max_tries=3, runs_per_gpu=1)
    assert "resources" not in cpu and cpu["threads_per_worker"] == 1
    assert cpu["host"] == "127.0.0.1" and cpu["scheduler_kwargs"]["allowed_failures"] == 2
    cuda = local_cluster_kwargs(4, device="cuda", threads=1, max_tries=3, runs_per_gpu=4)
    assert cuda["resources"] == {GPU_RESOURCE: 0.25} and cuda["n_workers"] == 4
    assert runs_fitting(cuda["resources"][GPU_RESOURCE], gpu_share(4)) == 1


# --------------------------------------------------------------------------- Slurm


def _slurm(**slurm) -> ExecutorConfig:
    return parse_config({**TINY, "executor": {"kind": "slurm", "runs_per_gpu": 2,
                                              "slurm": slurm}}).executor


def test_the_slurm_job_script_asks_for_what_the_config_says():
    pytest.importorskip("dask_jobqueue")
    from bayesbench.execution.slurm import slurm_job_script

    cfg = _slurm(queue="gpu", account="lab", cores=8, memory="16GB", walltime="04:00:00",
                 gpus=2, jobs=3, job_extra=["--qos=high"], prologue=["module load cuda"],
                 python="/opt/env/bin/python", log_directory="/scratch/logs")
    script = slurm_job_script(cfg, device="cuda", scheduler="tcp://10.0.0.5:8786")
    lines = script.splitlines()
    for directive in ["#SBATCH -p gpu", "#SBATCH -A lab", "#SBATCH --cpus-per-task=8",
                      "#SBATCH -t 04:00:00", "#SBATCH --qos=high", "#SBATCH --gres=gpu:2",
                      "#SBATCH --mem=15G", "#SBATCH -J bayesbench"]:
        assert directive in lines, script
    assert any(line.startswith("#SBATCH -o /scratch/logs/") for line in lines)
    assert "module load cuda" in lines
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert worker.startswith("/opt/env/bin/python -m distributed.cli.dask_worker "
                             "tcp://10.0.0.5:8786")
    # 2 GPUs x 2 runs each = 4 one-thread processes, each holding half a GPU
    for part in ["--nthreads 1", "--nworkers 4", "--resources GPU=0.5", "--nanny"]:
        assert part in worker, worker


def test_slurm_on_cpu_runs_one_process_per_core_and_threads():
    pytest.importorskip("dask_jobqueue")
    from bayesbench.execution.slurm import slurm_job_kwargs, slurm_job_script

    cfg = _slurm(cores=8, walltime="1-00:00:00")
    assert slurm_job_kwargs(cfg, device="cpu", threads=2)["processes"] == 4
    script = slurm_job_script(cfg, device="cpu", threads=1)
    assert "--nworkers 8" in script and "--resources" not in script
    assert "#SBATCH -t 1-00:00:00" in script and "--gres" not in script


def test_slurm_settings_that_cannot_work_are_refused():
    pytest.importorskip("dask_jobqueue")
    from bayesbench.execution.slurm import slurm_job_kwargs

    with pytest.raises(ConfigError, match="set executor.slurm.gpus"):
        slurm_job_kwargs(_slurm(cores=4), device="cuda")
    with pytest.raises(ConfigError, match="need 8 cores, more than cores: 4"):
        slurm_job_kwargs(_slurm(cores=4, processes=4), device="cpu", threads=2)
    with pytest.raises(ConfigError, match="more than runs_per_gpu: 2 per GPU"):
        slurm_job_kwargs(_slurm(cores=8, gpus=1, processes=3), device="cuda")


# --------------------------------------------------------------------------- the CLI


def test_run_flags_that_contradict_each_other_exit_2(tmp_path, run_cli):
    (tmp_path / "c.yaml").write_text(textwrap.dedent("""
        datasets: [digits]
        methods: [map]
    """))
    bad = run_cli("run", "-c", "c.yaml", "--executor", "slurm", "--scheduler", "tcp://h:1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--scheduler tcp://h:1: an existing Dask scheduler is used by --executor dask, " \
           "not --executor slurm" in " ".join(bad.stderr.split())


def test_serial_executor_restores_torch_threads():
    before = torch.get_num_threads()
    executor = SerialExecutor(**{**COMMON, "threads": 2})
    assert torch.get_num_threads() == 2
    executor.close()
    assert torch.get_num_threads() == before


class _StubClient:
    """What DaskExecutor asks of a distributed.Client, answered from a fixed worker list."""

    class scheduler:  # noqa: N801 - mimics the attribute
        address = "tcp://stub:8786"

    def __init__(self, workers: dict) -> None:
        self.workers, self.submitted = workers, []
        self.status = "running"

    def subscribe_topic(self, topic, handler) -> None:
        self.topic = topic

    def scheduler_info(self, n_workers: int = -1) -> dict:
        return {"workers": self.workers}

    def submit(self, fn, *args, key, pure, resources):
        self.submitted.append((key, resources))
        return object()


def test_dask_capacity_counts_worker_processes_and_gpu_shares():
    from bayesbench.execution.dask_cluster import GPU_RESOURCE, DaskExecutor

    workers = {  # two processes holding half a GPU each, a whole-GPU one, a CPU-only one
        "a": {"nthreads": 1, "resources": {GPU_RESOURCE: 0.5}},
        "b": {"nthreads": 1, "resources": {GPU_RESOURCE: 0.5}},
        "c": {"nthreads": 4, "resources": {GPU_RESOURCE: 1.0}},
        "d": {"nthreads": 2, "resources": {}},
    }
    common = dict(threads=1, versions={}, commit=None, on_event=lambda e: None,
                  runs_per_gpu=2)
    cuda = DaskExecutor(_StubClient(workers), device="cuda", **common)
    assert cuda.slots == 3  # one run per process that has a GPU share; none on "d"
    assert cuda.free == 3
    cpu = DaskExecutor(_StubClient(workers), device="cpu", **common)
    assert cpu.slots == 4  # one run per worker process, whatever its threads
    empty = DaskExecutor(_StubClient({}), device="cpu", expected_slots=6, **common)
    assert empty.slots == 6  # Slurm jobs still queued: hand over what they will take
    spec = expand(parse_config(TINY), quick=True)[0]
    cuda.submit(spec)
    cpu.submit(spec)
    (_, needs), = cuda.client.submitted
    assert needs == {GPU_RESOURCE: gpu_share(2)}
    assert cpu.client.submitted[0][1] is None  # CPU runs need no resource


MALLOC_PROBE = textwrap.dedent("""
    import resource, sys
    import torch
    from bayesbench.execution.dask_cluster import undo_nanny_malloc_trim

    def faults_of_steps():
        # a training step's worth of 4 MiB blocks, each allocated, written and freed
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(50):
            torch.empty(2**20).fill_(1.0)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults_of_steps()  # warm up torch
    trimmed = faults_of_steps()
    undone = undo_nanny_malloc_trim()
    faults_of_steps()  # the heap grows once
    print(trimmed, int(undone), faults_of_steps(), int(undo_nanny_malloc_trim()))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("value", ["65536", "1048576"])
def test_a_dask_workers_malloc_trim_setting_is_undone_for_torch(value):
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which switches off
    glibc's dynamic mmap threshold: every block over 128 KiB is mmapped afresh, and its pages
    fault in at every allocation. The Dask task undoes that (once), and only Dask's value."""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": value, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MALLOC_PROBE], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout.split()
    trimmed, undone, after, again = map(int, out)
    if value == "65536":
        assert trimmed >= 50 * 512  # at least half of each block's 1024 pages fault in
        assert (undone, again) == (1, 0)  # undone once per process
        assert after < trimmed / 20
    else:  # a value someone chose is theirs
        assert (undone, again) == (0, 0)
        assert after >= 50 * 512
