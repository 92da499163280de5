"""How much of the configured grid a report holds: "15 of 228 runs of the configured full grid".

The configured grid of one kind (quick or full) is what ``bayesbench run [--quick]`` with no
filter flags would train from the config: its run keys, less the runs whose method cannot
work on their backbone (they are never trained). Resolving it means importing every method
and dataset (torch: seconds), so it is taken, in this order, from

1. the plan ``bayesbench run`` remembered in the store for exactly that grid
   (:mod:`bayesbench.run_plan`: same config bytes, same code, same packages);
2. the report folder's own record of the last grid it resolved (:data:`GRID_RECORD`, under
   the same fingerprint);
3. resolving the config (:func:`bayesbench.config.expand`), recorded for next time.

A grid whose fingerprint cannot be known without torch (a GPU machine with ``--device auto``)
is resolved every time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from bayesbench.report.files import atomic_write
from bayesbench.report_plan import GRID_RECORD, recorded_grid_keys


@dataclass(frozen=True)
class GridCoverage:
    """``present`` of the ``configured`` runs of the grid in ``config`` are in the report;
    ``extra`` runs of the report are not in that grid."""

    config: str
    quick: bool
    configured: int
    present: int
    extra: int = 0

    @property
    def partial(self) -> bool:
        return self.present < self.configured

    def line(self) -> str:
        kind = "quick" if self.quick else "full"
        extra = (f" {self.extra} more run{'s' * (self.extra != 1)} of this report "
                 f"{'are' if self.extra != 1 else 'is'} not in that grid.") if self.extra else ""
        if not self.partial:
            return (f"All {self.configured} runs of the {kind} grid configured in "
                    f"`{self.config}` are in this report.{extra}")
        missing = self.configured - self.present
        return (f"**Partial grid: {self.present} of {self.configured} runs** of the {kind} grid "
                f"configured in `{self.config}` are in this report ({missing} not run, failed "
                f"or run under other settings): rankings and tests cover only these."
                f"{extra}")


def _resolve_keys(config_path: Path, quick: bool) -> list[str]:
    """Run keys of the grid ``bayesbench run [--quick]`` would train from ``config_path``."""
    from bayesbench.backbones import unsupported_runs
    from bayesbench.config import expand, load_config

    specs = expand(load_config(config_path), quick=quick)
    unsupported = {spec.key for spec, _ in unsupported_runs(specs)}
    return [spec.key for spec in specs if spec.key not in unsupported]


def configured_keys(config_path: str | os.PathLike[str], quick: bool,
                    store_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]
                    ) -> list[str]:
    """The run keys of the configured grid of one kind (module docstring). Raises
    :class:`~bayesbench.errors.ConfigError` when the config is invalid."""
    from bayesbench import run_plan

    config_path, out_dir = Path(config_path), Path(out_dir)
    fingerprint = run_plan.fingerprint(
        config_path, run_plan.GridFlags(None, None, None, quick, None, "auto"))
    if fingerprint is not None:
        keys = run_plan.plan_keys(Path(store_path), fingerprint)
        if keys is None:
            keys = recorded_grid_keys(out_dir, fingerprint)
        if keys is not None:
            return [str(k) for k in keys]
    keys = _resolve_keys(config_path, quick)
    if fingerprint is not None:
        atomic_write(out_dir / GRID_RECORD,
                     json.dumps({"fingerprint": fingerprint, "keys": keys}) + "\n")
    return keys


def grid_coverage(config_path: str | os.PathLike[str], quick: bool,
                  store_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                  report_keys: set[str]) -> GridCoverage:
    """How many of the configured grid's runs are among ``report_keys`` (the report's
    selected runs)."""
    keys = set(configured_keys(config_path, quick, store_path, out_dir))
    return GridCoverage(str(config_path), quick, len(keys), len(keys & report_keys),
                        len(report_keys - keys))
