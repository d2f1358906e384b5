"""Distributed detection: the chunks of a job on Ray actors (``detect --workers N``).

The chunk (:mod:`flair_deploy.inference.chunks`) is the unit of work: :mod:`.chunks` maps one chunk into
its own files and assembles a raster from them; :mod:`.ray_runner` schedules chunks on Ray. Ray is an
optional extra (``pip install 'flair-deploy[distributed]'``); without it the single-process path is
unchanged.
"""

from __future__ import annotations

from flair_deploy.distributed.ray_runner import JobProgress, JobSummary, WorkerStats, run_distributed

__all__ = ["JobProgress", "JobSummary", "WorkerStats", "run_distributed"]
