"""Multivariate TPE with and without group=True, on tests/test_study_integrity.py's synthetic objective.

Trial 0 (the spec baseline) samples nothing, so without grouping the joint search space TPE models
is empty and every parameter is sampled on its own. Best value of 40 trials (trial 0 included),
20 seeds each, paired by seed; seconds to run, no training:

    python benchmarks/tpe_grouping.py
"""
import statistics
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
import optuna  # noqa: E402
warnings.simplefilter("ignore")
optuna.logging.set_verbosity(optuna.logging.WARNING)
from mlp_exp.study import attrs                          # noqa: E402
from mlp_exp.study.settings import StudySettings        # noqa: E402
from mlp_exp.study.space import config_for_trial        # noqa: E402
from mlp_exp.study.strategy import TPE_OPTIONS          # noqa: E402
from test_study_integrity import synthetic_value         # noqa: E402  (the objective its tests use)

TPE_WITHOUT_GROUPING = {k: v for k, v in TPE_OPTIONS.items() if k != "group"}

settings = StudySettings(seed=0, pruner="none")
results = {}
for name, extra in (("group=False", {}), ("group=True", {"group": True})):
    bests = []
    for seed in range(20):
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, **TPE_WITHOUT_GROUPING, **extra))
        study.enqueue_trial({}, user_attrs={attrs.BASELINE: "spec"})
        study.optimize(lambda t: synthetic_value(config_for_trial(t, settings)), n_trials=40)
        bests.append(study.best_value)
    results[name] = bests
    print(f"{name}: mean best {statistics.mean(bests):.4f}, median {statistics.median(bests):.4f}", flush=True)
diff = [b - a for a, b in zip(*results.values())]
print(f"paired difference (group=True - group=False): mean {statistics.mean(diff):+.4f}, sd {statistics.stdev(diff):.4f}, "
      f"wins {sum(d > 0 for d in diff)}/20")
