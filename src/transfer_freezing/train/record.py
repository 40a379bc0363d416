"""Record finished grid cells in ``dvc.lock`` in one pass: ``python -m transfer_freezing.train.record S...``.

What ``dvc commit -f STAGE`` does for each stage (hash its deps, params and outputs, move the
outputs into DVC's cache, save the run cache entry), after ONE collection of the pipeline and with
ONE write of ``dvc.lock``. ``dvc commit -f s1 ... sN`` instead collects the pipeline and rewrites
the whole lock once per stage: time quadratic in the grid (``benchmarks/status_scaling.py``).

The executor runs it as a child process in its own session, so the terminal's Ctrl-C cannot cut
the lock write short (see ``executor._record``).
"""

from __future__ import annotations

import sys


def record(names: list[str], root: str = ".") -> int:
    """``dvc commit -f`` the stages called ``names`` (as ``dvc.yaml`` addresses them); return how many."""
    from dvc.repo import Repo

    with Repo(root) as repo, repo.lock:
        by_name = {stage.addressing: stage for stage in repo.index.stages}
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise SystemExit(f"no such stage in dvc.yaml: {', '.join(unknown)}")
        chosen = [by_name[name] for name in dict.fromkeys(names)]
        for stage in chosen:
            stage.save()
            stage.commit()
        by_file: dict[str, list] = {}
        for stage in chosen:
            by_file.setdefault(stage.dvcfile.path, []).append(stage)
        for stages in by_file.values():  # one write of each lock file
            stages[0].dvcfile.dump_stages(stages, update_pipeline=False)
    return len(chosen)


if __name__ == "__main__":
    record(sys.argv[1:])
