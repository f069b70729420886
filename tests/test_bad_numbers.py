"""Seeds, non-finite hyper-parameters and empty lists are refused before any work: one line, exit 2.

(The hardening issue's items 3, 5 and 9.) Each case runs the real command; the output folder must not
exist afterwards.
"""

import pytest

from bayessparse.cli import main
from bayessparse.config import FLOAT_FIELDS, resolve
from bayessparse.errors import ConfigError

TRAIN = ["train", "--data", "digits", "--model", "mlp", "--epochs", "1", "--no-progress"]


@pytest.mark.parametrize("flags,field", [
    (["--seed", "-1"], "seed"),
    (["--seed", str(2**32)], "seed"),
    (["--lr", "inf"], "lr"),
    (["--lr", "1e39"], "lr"),  # beyond float32: the weights would turn inf at the first step
    (["--lr", "nan"], "lr"),
    (["--set", "weight_decay=inf"], "weight_decay"),
    (["--set", "step_gamma=-0.1"], "step_gamma"),  # would scale the learning rate to gradient ascent
    (["--set", "step_gamma=nan"], "step_gamma"),
    (["--set", "explore_c=inf"], "explore_c"),
])
def test_train_refuses_bad_numbers(tmp_path, capsys, flags, field):
    out = tmp_path / "run"
    assert main([*TRAIN, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and field in err
    assert not out.exists()


@pytest.mark.parametrize("argv,needle", [
    (["compare", "--seeds", "0,-1", "--methods", "dense"], "--seeds must lie in [0, 2^32)"),
    (["compare", "--seeds", ",,,", "--methods", "dense"], "--seeds names no seed"),
    (["compare", "--methods", ","], "--methods names no method"),
    (["ensemble", "--kind", "dst", "--members", "3", "--seed", str(2**32 - 2)], "leaves [0, 2^32)"),
])
def test_workflows_refuse_bad_seed_and_name_lists(tmp_path, capsys, argv, needle):
    out = tmp_path / "out"
    assert main([*argv, "--data", "digits", "--model", "mlp", "--epochs", "1", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
    assert not out.exists()


def test_evaluate_refuses_a_bad_seed_before_loading(tmp_path, capsys):
    # the folder does not even exist: the seed is checked first
    assert main(["evaluate", str(tmp_path / "nowhere"), "--seed", "-1", "--no-progress"]) == 2
    assert "--seed must be an integer in [0, 2^32)" in capsys.readouterr().err


def test_every_real_valued_field_is_checked_for_finiteness():
    assert {"lr", "momentum", "weight_decay", "step_gamma", "explore_c", "drop_rate", "width"} <= set(FLOAT_FIELDS)
    for name in FLOAT_FIELDS:
        with pytest.raises(ConfigError, match=name):
            resolve({name: float("inf")})


def test_a_non_utf8_config_file_is_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"lr: 0.1\n# \xff\xfe latin-1 bytes\n")
    assert main([*TRAIN, "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not UTF-8 text" in err
    assert not (tmp_path / "run").exists()


def test_an_empty_out_and_a_resume_of_nothing_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty --out would have meant this folder
    with pytest.raises(SystemExit) as exc:
        main([*TRAIN, "--out", ""])
    assert exc.value.code == 2 and "must name a folder" in capsys.readouterr().err
    assert main([*TRAIN, "--out", "missing", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to resume" in err
    assert list(tmp_path.iterdir()) == []
