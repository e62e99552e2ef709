"""The studies' job runner: jobs with dependencies, run a few at a time in single-thread worker
processes (their log lines go to one file per worker, not to the progress bar)."""
from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from rfengine.study import runs


class Pool:
    """Jobs with dependencies, run `workers` at a time in single-thread processes, fine-tunes first."""

    def __init__(self, workers: int, log_dir: Path):
        import multiprocessing
        log_dir.mkdir(parents=True, exist_ok=True)
        ctx = multiprocessing.get_context("spawn" if runs.on_gpu() else "fork")  # no CUDA state across a fork
        self.ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(str(log_dir),))
        self.workers = workers

    def run(self, jobs: dict, desc: str) -> dict:
        """jobs: name -> (priority, deps, fn, args); returns name -> result."""
        from tqdm import tqdm
        done, running = {}, {}
        with tqdm(total=len(jobs), desc=desc, dynamic_ncols=True) as bar:
            while len(done) < len(jobs):
                ready = sorted((j for j in jobs if j not in done and j not in running.values()
                                and all(d in done for d in jobs[j][1])), key=lambda j: jobs[j][0])
                while ready and len(running) < self.workers:
                    name = ready.pop(0)
                    _, _, fn, args = jobs[name]
                    running[self.ex.submit(fn, *args)] = name
                bar.set_postfix_str(", ".join(sorted(running.values())))
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for f in finished:
                    done[running.pop(f)] = f.result()  # a failed job stops the study with its error
                    bar.update(1)
        return done


def _worker_init(log_dir: str) -> None:
    runs.init_worker(1)
    fd = os.open(os.path.join(log_dir, f"worker_{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 2)  # the trainer's log lines and warnings go to the worker's file, not the progress bar
