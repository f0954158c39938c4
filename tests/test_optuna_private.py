"""The private Optuna API mlp_exp relies on (mlp_exp/study/_optuna_private.py) is still there.

Fails loudly, rather than letting the storage silently stop retrying a call or
stop failing silent trials, when an Optuna release renames or removes it.
"""
import optuna

from mlp_exp.study import _optuna_private
from mlp_exp.study.storage import PatientRDBStorage, session_methods


def test_every_private_name_exists_in_this_optuna():
    assert _optuna_private.missing() == [], f"Optuna {optuna.__version__} changed private API mlp_exp uses"


def test_every_session_method_is_wrapped_to_wait_out_outages():
    names = session_methods()
    assert set(_optuna_private.SESSION_METHODS) <= set(names)
    assert {"create_new_trial", "get_all_trials", "set_trial_state_values", "set_trial_intermediate_value"} \
        <= set(names)
    for name in names:
        assert getattr(PatientRDBStorage, name) is not getattr(optuna.storages.RDBStorage, name), name
        assert getattr(PatientRDBStorage, name).__wrapped__ is getattr(optuna.storages.RDBStorage, name)


def test_the_silent_trial_query_finds_a_trial_that_never_sent_a_heartbeat(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db", heartbeat_interval=60)
    study = optuna.create_study(storage=storage)
    silent = study.ask()
    beating = study.ask()
    storage.record_heartbeat(beating._trial_id)
    study.tell(study.ask(), 1.0)                        # finished: never silent
    assert _optuna_private.running_trials_without_heartbeat(storage, study._study_id) == [silent._trial_id]
    assert _optuna_private.stale_trial_ids(storage, study._study_id) == []     # none stale yet
