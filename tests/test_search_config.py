"""Trial -> TrainConfig mapping and --fixed parsing (no training, no MLflow)."""
import optuna
import pytest

from mlp_exp.config import TrainConfig
from mlp_exp.errors import UserError
from mlp_exp.study import StudySettings, attrs
from mlp_exp.study.space import SEARCH_SPACE, SPEC_BASELINE, config_for_trial, parse_fixed


def ask(study, **user_attrs):
    trial = study.ask()
    for key, value in user_attrs.items():
        trial.set_user_attr(key, value)
    return trial


def test_searched_trial_draws_every_space_parameter_within_range():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    settings = StudySettings(max_epochs=12, train_size=900, val_size=100, seed=5)
    trial = ask(study)
    config = config_for_trial(trial, settings)
    assert isinstance(config, TrainConfig)
    assert set(trial.params) == set(SEARCH_SPACE)
    for name, (kind, low, high) in SEARCH_SPACE.items():
        assert low <= getattr(config, name) <= high
    assert (config.num_epochs, config.train_size, config.val_size, config.seed) == (12, 900, 100, 5)


def test_fixed_values_leave_the_space_and_win():
    study = optuna.create_study(direction="maximize")
    settings = StudySettings(fixed={"hidden_size": 64, "flip": False})
    trial = ask(study)
    config = config_for_trial(trial, settings)
    assert "hidden_size" not in trial.params
    assert config.hidden_size == 64 and config.flip is False


def test_baseline_trial_replays_spec_grid_best():
    study = optuna.create_study(direction="maximize")
    trial = ask(study, **{attrs.BASELINE: "spec"})
    config = config_for_trial(trial, StudySettings(max_epochs=3))
    assert trial.params == {}
    assert config.hidden_size == SPEC_BASELINE["hidden_size"] == 500
    assert (config.learning_rate, config.reg, config.preprocessing) == (1e-5, 1.0, "mean_image")
    assert config.num_epochs == 3            # --max-epochs caps even the baseline


def test_parse_fixed_types_values():
    assert parse_fixed(["hidden_size=500", "flip=false", "reg=1e-3", "update=sgd"]) == {
        "hidden_size": 500, "flip": False, "reg": 1e-3, "update": "sgd"}


@pytest.mark.parametrize("pair, message", [
    ("hidden=5", "unknown key 'hidden'"),
    ("hidden_size=big", "hidden_size takes a value of type int"),
    ("hidden_size=0", "hidden_size must be an integer >= 1"),
    ("momentum=1.5", "momentum must be in [0, 1)"),
    ("update=adam", "update must be one of"),
    ("novalue", "--fixed takes KEY=VALUE"),
    ("seed=3", "set by --seed"),
])
def test_parse_fixed_rejects_bad_pairs(pair, message):
    with pytest.raises(UserError) as info:
        parse_fixed([pair])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_start_up_trials_and_their_retries_train_in_full_and_later_trials_are_pruned():
    """Each trial's curve is worse than the one before, so Hyperband alone would cut nearly every
    trial at its bracket's first rung, start-up trials too. The default study's pruner lets TPE's
    random start-up trials, and a retry of one, train all their epochs and prunes the trials after."""
    from mlp_exp.study import make_study
    from mlp_exp.study.recovery import retry
    from mlp_exp.study.strategy import SAMPLER_STARTUP_TRIALS, prunable_epoch

    settings = StudySettings(study_name="startup", max_epochs=30)
    study, _ = make_study(settings, tracker=None, storage=optuna.storages.InMemoryStorage())

    def objective(trial):
        for epoch in range(1, 31):
            trial.report(0.5 - 0.01 * trial.number + 0.001 * epoch, epoch)
            if prunable_epoch(epoch, 30) and trial.should_prune():
                raise optuna.TrialPruned()
        return 0.53 - 0.01 * trial.number

    study.optimize(objective, n_trials=20)
    retry(study, study.trials[3], "test")
    study.optimize(objective, n_trials=1)
    states = [t.state.name for t in study.trials]
    assert states[:SAMPLER_STARTUP_TRIALS] == ["COMPLETE"] * SAMPLER_STARTUP_TRIALS
    assert states[SAMPLER_STARTUP_TRIALS:20].count("PRUNED") >= 5
    assert study.trials[20].system_attrs[attrs.FAILED_TRIAL] == 3 and states[20] == "COMPLETE"


def test_tpe_models_the_searched_parameters_jointly_despite_the_baseline():
    """Multivariate TPE sees the searched parameters as one joint space, with the spec baseline
    (trial 0) queued the way it is; a baseline queued by an older version with no params (as
    here) emptied the joint space without group=True: every parameter was sampled alone."""
    from mlp_exp.study import make_study
    from mlp_exp.study.strategy import SAMPLER_STARTUP_TRIALS

    settings = StudySettings(study_name="joint", pruner="none")
    for old in (False, True):
        storage = optuna.storages.InMemoryStorage()
        if old:
            old_study = optuna.create_study(study_name="joint", storage=storage, direction="maximize")
            old_study.enqueue_trial({}, user_attrs={attrs.BASELINE: "spec notebook's best grid configuration"})
        study, _ = make_study(settings, tracker=None, storage=storage)
        study.optimize(lambda trial: config_for_trial(trial, settings).momentum,
                       n_trials=SAMPLER_STARTUP_TRIALS + 2)
        assert study.get_trials()[0].user_attrs.get(attrs.BASELINE)
        assert (study.get_trials()[0].params == {}) == old
        trial = study.ask()
        assert set(study.sampler.infer_relative_search_space(study, trial)) == set(SEARCH_SPACE)


def test_the_spec_baseline_is_stored_with_its_searched_values_as_params():
    """Trial 0 carries real params under the space's distributions (the study's search space, its
    plots and optuna-dashboard include it), and they are the spec's values, outside the ranges as
    they are, not draws from the space; TPE goes on proposing inside the ranges."""
    from mlp_exp.study import make_study
    from mlp_exp.study.space import baseline_params

    settings = StudySettings(study_name="baseline-params", pruner="none")
    study, _ = make_study(settings, tracker=None, storage=optuna.storages.InMemoryStorage())
    study.optimize(lambda trial: float(config_for_trial(trial, settings).reg < 0.5), n_trials=12)
    baseline, *searched = study.get_trials()
    assert baseline.params == baseline_params() == {name: SPEC_BASELINE[name] for name in SEARCH_SPACE}
    assert baseline.user_attrs[attrs.BASELINE]
    assert optuna.search_space.intersection_search_space(study.get_trials()).keys() == SEARCH_SPACE.keys()
    for t in searched:
        assert SEARCH_SPACE["learning_rate"][1] <= t.params["learning_rate"] <= SEARCH_SPACE["learning_rate"][2]


@pytest.mark.parametrize("fails_after_suggesting", [False, True])
def test_a_failed_spec_baseline_is_retried_with_its_params(fails_after_suggesting):
    """Optuna refuses out-of-range values as a new trial's params, so the baseline's retry queues them:
    it must be created, train the spec's configuration and carry the spec's values as params again."""
    from mlp_exp.study import make_study
    from mlp_exp.study.recovery import retry
    from mlp_exp.study.space import baseline_params

    settings = StudySettings(study_name="baseline-retry", pruner="none")
    study, _ = make_study(settings, tracker=None, storage=optuna.storages.InMemoryStorage())
    first = study.ask()
    if fails_after_suggesting:
        config_for_trial(first, settings)
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    retry(study, study.get_trials()[0], "it failed")
    again = study.ask()
    config = config_for_trial(again, settings)
    study.tell(again, 0.1)
    stored = study.get_trials()[1]
    assert stored.user_attrs[attrs.BASELINE] and stored.user_attrs[attrs.RETRY_OF] == 0
    assert stored.params == baseline_params() and stored.state.name == "COMPLETE"
    assert (config.learning_rate, config.reg, config.num_epochs) == (1e-5, 1.0, SPEC_BASELINE["num_epochs"])


def test_a_baseline_queued_without_params_by_an_older_version_still_replays_the_spec():
    """Studies made before trial 0 had params queued it as {}: retried or resumed, it must train the
    spec's configuration, not draw one."""
    settings = StudySettings(study_name="old-baseline", pruner="none")
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({}, user_attrs={attrs.BASELINE: "spec notebook's best grid configuration"})
    config = config_for_trial(study.ask(), settings)
    assert (config.learning_rate, config.reg, config.hidden_size) == (1e-5, 1.0, 500)
