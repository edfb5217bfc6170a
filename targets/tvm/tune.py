"""MetaSchedule tuning worker for the TVM target, run as its own process (torch-free):

    python -m layerwise.targets.tvm.tune MOD.json TARGET.json WORK_DIR TRIALS

MOD.json is a fused Relax module (tvm.ir.save_json); the tuning records go to WORK_DIR's
JSON database (database_workload.json, database_tuning_record.json), which MetaSchedule
extends when they already exist. A crash inside TVM kills this process, not the compile.

Two costs shape it: the stock LocalBuilder starts fresh worker processes for every batch,
and each imports `tvm.s_tir.tensor_intrin` (slow: mostly parsing CUDA intrinsics a CPU never
uses), which can outlast its 30 s build timeout so that every candidate times out; here
candidates are built in this process, and only the CPU intrinsic tables are loaded.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

DB_FILES = ("database_workload.json", "database_tuning_record.json")


def light_intrinsics(arch: str = "x86") -> None:
    """Load only the CPU tensor intrinsics MetaSchedule needs for `arch` (x86, arm_cpu);
    skips the package's __init__, which parses every GPU intrinsic too."""
    import tvm.s_tir

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(os.path.dirname(tvm.s_tir.__file__), "tensor_intrin")]
        pkg.__package__ = name
        sys.modules[name] = pkg
    __import__(f"{name}.{arch}")


def tune(mod_json: Path, target_json: Path, work_dir: Path, trials: int) -> int:
    """Tune every task of the fused module for `trials` measured candidates in total;
    returns the number of records in the database afterwards."""
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    light_intrinsics()

    @derived_object
    class InProcessBuilder(PyBuilder):
        """Builds each candidate here: no worker start-up, no per-build import."""

        def build(self, build_inputs):
            out = []
            for bi in build_inputs:
                try:
                    out.append(BuilderResult(default_export(default_build(bi.mod, bi.target,
                                                                          None)), None))
                except Exception as e:  # noqa: BLE001 - a failed candidate, not a failed run
                    out.append(BuilderResult(None, f"build failed: {e}"))
            return out

    mod = tvm.ir.load_json(mod_json.read_text())
    target = tvm.target.Target(json.loads(target_json.read_text()))
    tasks = ms.relax_integration.extract_tasks(mod, target)
    if not tasks:
        return 0
    per_iter = max(2, min(64, trials // len(tasks)))
    runner = ms.runner.LocalRunner(
        timeout_sec=120,
        evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20,
                                                   enable_cpu_cache_flush=False))
    # a smaller population than the default 512 when each round measures few candidates: the
    # evolutionary search's own time per round grows with the population
    population = max(64, min(512, 8 * per_iter))
    strategy = ms.search_strategy.EvolutionarySearch(
        population_size=population, init_min_unmeasured=min(50, population // 2))
    db = ms.relax_integration.tune_relax(
        mod, {}, target, str(work_dir), max_trials_global=trials, num_trials_per_iter=per_iter,
        builder=InProcessBuilder(), runner=runner, strategy=strategy, seed=0)
    return len(db)


def main(argv: list[str]) -> int:
    mod_json, target_json, work_dir, trials = argv
    n = tune(Path(mod_json), Path(target_json), Path(work_dir), int(trials))
    print(f"tuning records: {n}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
