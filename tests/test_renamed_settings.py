"""Settings renamed for one name per concept keep working for one release, with a warning:
fit's held_out_samples (now held_out_num_samples), a run's iwae_samples (now num_samples),
as keyword arguments, config keys, flags and in checkpoints written before the rename."""

import warnings

import pytest
from test_held_out_iwae import HELD_OUT, OPTIONS, TRAIN, new_vae

import pvae
from pvae.config import Config, renamed_settings
from pvae.runs import resume_settings


def test_fit_takes_the_old_keyword_with_a_warning_and_the_same_run():
    vae = new_vae()
    with pytest.warns(DeprecationWarning, match="held_out_samples is now called held_out_num"):
        old = pvae.fit(vae.model, vae.guide, TRAIN, held_out=HELD_OUT, held_out_samples=3,
                       **OPTIONS)  # fmt: skip
    vae = new_vae()
    new = pvae.fit(vae.model, vae.guide, TRAIN, held_out=HELD_OUT, held_out_num_samples=3,
                   **OPTIONS)  # fmt: skip
    assert old.held_out_bound_name == new.held_out_bound_name == "IWAE_3"
    assert [s.held_out_iwae for s in old.history] == [s.held_out_iwae for s in new.history]


def test_fit_refuses_the_two_names_disagreeing():
    vae = new_vae()
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="disagree"):
        pvae.fit(vae.model, vae.guide, TRAIN, held_out=HELD_OUT, held_out_samples=3,
                 held_out_num_samples=2, **OPTIONS)  # fmt: skip


@pytest.mark.parametrize(
    "old, new", [("iwae_samples", "num_samples"), ("held_out_samples", "held_out_num_samples")]
)
def test_a_config_file_with_an_old_key_reads_as_the_new_one(old, new):
    with pytest.warns(DeprecationWarning, match=f"{old} is now called {new}"):
        config = Config.from_dict({old: 7, "objective": "iwae"})
    assert getattr(config, new) == 7
    with pytest.raises(ValueError, match=f"config keys '{old}' and '{new}' are one setting"):
        Config.from_dict({old: 7, new: 7})


def test_the_old_flags_are_aliases():
    import argparse

    from pvae.flags import add_setting_flags, given_settings

    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    add_setting_flags(parser)
    given = given_settings(parser.parse_args(["--iwae-samples", "9", "--held-out-samples", "4"]))
    assert given == {"num_samples": 9, "held_out_num_samples": 4}


def test_a_checkpoint_written_before_the_rename_resumes_without_a_warning():
    saved = Config().to_dict()
    saved["iwae_samples"] = saved.pop("num_samples")
    saved["held_out_samples"] = saved.pop("held_out_num_samples")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = resume_settings({"config": saved}, "runs/a/checkpoint.pt", {"num_epochs": 3})
    assert values["num_samples"] == Config().num_samples and "iwae_samples" not in values
    assert renamed_settings({"z_dim": 2}, warn=True) == {"z_dim": 2}
