"""Where runs execute: in this process or in a local pool of worker processes.

Kept free of heavy imports: a worker process unpickles :func:`worker.worker_main` from here
before anything else, and it must be able to watch its parent from its first instant.
"""
