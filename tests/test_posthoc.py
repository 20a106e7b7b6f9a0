"""A post-hoc evaluator (a batched sweep's Ray actor) scores from prepared outputs alone: for a scorer that reads
outputs only — ViM too, whose last-layer weights are cached with the outputs — it neither loads the network nor
imports PyTorch, and scores as a trial does; a scorer that reads the network (ODIN: input gradients) gets it. Each case runs in a fresh interpreter, as an evaluator does."""
import json
import subprocess
import sys

import pytest

from orchestrator import data as benchmarks
from orchestrator.trial import TrialSettings, run_trial, shared_outputs

pytestmark = pytest.mark.integration

CONFIGS = {"knn": {"epochs": 1, "k": 5}, "vim": {"epochs": 1}, "odin": {"epochs": 1}}

EVALUATOR = """
import json, sys
from orchestrator import data as benchmarks
from orchestrator.posthoc import PosthocEvaluator
from orchestrator.settings import TrialSettings
method, root, shared, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
shared["outputs"] = {}  # every output is read from the model cache, as when they were too large to ship
evaluator = PosthocEvaluator(benchmarks.load("digits", smoke=True), TrialSettings(method, cache_dir=root), shared)
result = evaluator(config)
print(json.dumps({"torch": "torch" in sys.modules, "matrix": result["matrix_json"]}))
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The digits classifier's outputs and KNN's tables in a model cache (what a sweep's preparation leaves)."""
    root = str(tmp_path_factory.mktemp("posthoc-cache"))
    bench = benchmarks.load("digits", smoke=True)
    shared = shared_outputs(CONFIGS["knn"], bench, TrialSettings("knn", cache_dir=root, threads=1))
    return root, bench, {k: shared[k] for k in ("key", "work_name", "trained")}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def evaluated(request, prepared):
    """(method, what a fresh evaluator process reports, the matrix of the same configuration as a plain trial)."""
    method = request.param
    root, bench, names = prepared
    shared = {**names, "work": None, "work_name": names["work_name"] if method == "knn" else None}
    done = subprocess.run([sys.executable, "-c", EVALUATOR, method, root, json.dumps(shared),
                           json.dumps(CONFIGS[method])], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    trial = run_trial(CONFIGS[method], bench, TrialSettings(method, cache_dir=root, threads=1))
    return method, json.loads(done.stdout.splitlines()[-1]), trial["matrix_json"]


def test_pytorch_is_imported_only_for_a_scorer_that_reads_the_network(evaluated):
    method, report, _ = evaluated
    assert report["torch"] == (method == "odin")


def test_the_evaluator_scores_as_a_trial_does(evaluated):
    _, report, trial_matrix = evaluated
    assert report["matrix"] == trial_matrix


def test_no_method_that_reads_cached_outputs_imports_pytorch():
    # An outputs-only evaluator imports its scorer's module; it must not bring PyTorch with it. Two exceptions by
    # design: mahalanobis (cached features at ε = 0, input gradients for ε > 0) and dmr (trains its rejection head
    # with PyTorch).
    import methods

    names = [m["name"] for m in methods.catalog() if m["kind"] == "post-hoc" and m["reads"] != "network"
             and m["name"] not in ("mahalanobis", "dmr")]
    code = ("import sys, methods\nfor n in sys.argv[1:]:\n    methods.get(n)\n    if 'torch' in sys.modules:\n"
            "        print(n)\n        break\nelse:\n    print('none')")
    done = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "none", done.stdout + done.stderr[-2000:]
