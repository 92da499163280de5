"""Where runs execute: this process, a local pool of worker processes, or a Dask cluster
(an existing one, a LocalCluster, or Slurm jobs). :mod:`.base` holds the interface
:class:`~bayesbench.execution.base.Executor` and :func:`~bayesbench.execution.base.open_executor`.

Kept free of heavy imports: a worker process unpickles :func:`worker.worker_main` from here
before anything else, and it must be able to watch its parent from its first instant.
"""
