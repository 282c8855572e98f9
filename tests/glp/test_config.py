import pytest

from glp.config import ConfigError, Settings, load_settings


def test_defaults_are_valid_and_name_the_builtin_source():
    s = load_settings()
    assert [x.key for x in s.sources] == ["builtin/L1"]
    assert s.trust_remote_code is False


def test_env_overrides_nest_with_double_underscore(monkeypatch):
    monkeypatch.setenv("GLP_TRAIN__LR", "0.01")
    monkeypatch.setenv("GLP_SOURCES", '[{"model": "/models/x", "layer": 3}]')
    s = load_settings()
    assert s.train.lr == 0.01 and s.sources[0].key == "x/L3"


@pytest.mark.parametrize(
    ("env", "field"),
    [("GLP_TRAIN__LR", "train.lr"), ("GLP_DENOISER__N_BLOCKS", "denoiser.n_blocks"), ("GLP_STORE__DTYPE", "store.dtype")],
)
def test_bad_values_fail_at_start_naming_the_field(monkeypatch, env, field):
    monkeypatch.setenv(env, "-1")
    with pytest.raises(ConfigError, match=rf"{field}: .*got '-1'"):
        load_settings()


def test_a_typo_is_rejected():
    with pytest.raises(ConfigError, match="train.learning_rate"):
        load_settings(train={"learning_rate": 1.0})


def test_duplicate_sources_are_rejected():
    with pytest.raises(ConfigError, match="duplicate source keys"):
        load_settings(sources=[{"layer": 1}, {"layer": 1}])


def test_toml_file_is_read_and_env_wins(tmp_path, monkeypatch):
    f = tmp_path / "glp.toml"
    f.write_text('[train]\nlr = 0.02\nbatch_size = 128\n')
    monkeypatch.setenv("GLP_CONFIG_FILE", str(f))
    monkeypatch.setenv("GLP_TRAIN__BATCH_SIZE", "64")
    s = Settings()
    assert s.train.lr == 0.02 and s.train.batch_size == 64
