"""The committed benchmark grids build: an arm edited into an invalid state would otherwise be
found only hours into a benchmark session, when the harness reaches it."""

import importlib.util
from pathlib import Path

import pytest

from hf_multitask.compare import Grid

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _grid(name: str) -> Grid:
    import sys

    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return Grid.from_dict(module.GRID)


@pytest.mark.parametrize(("name", "primaries"), [("compare_trio", ["sts"]), ("compare_tweeteval", ["irony", "emotion", "stance"])])
def test_the_benchmark_grids_build_and_their_primary_arms_serve_one_task(name, primaries):
    grid = _grid(name)
    served = {tuple(a.primary) for a in grid.arms if a.primary}
    assert served == {(p,) for p in primaries}
    for task in primaries:
        arm = grid.arm(f"primary_{task}")
        assert arm.primary == [task] and grid.tuning_split is not None
        # the same methods for every primary; only multitask-then-fine-tune names the task it specialises on
        assert set(arm.candidates) == {"sum", "gradsim", "gradsim_weighted", "pcgrad_primary", "metabalance", "stilts", "mt_then_ft"}
        assert arm.candidates["mt_then_ft"][-2:] == ["--specialise_tasks", task]
