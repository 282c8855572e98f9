import pytest

from glp.config import ConfigError, Settings, load_settings


def test_defaults_are_valid_and_name_the_packaged_smollm2_middle_layer():
    s = load_settings()
    assert [x.key for x in s.sources] == ["smollm2-135m/L15"]
    assert s.trust_remote_code is False and s.profile == "cpu"


def test_builtin_and_local_folders_name_their_partitions():
    s = load_settings(sources=[{"model": "builtin", "layer": 1}, {"model": "/models/pythia-160m", "layer": 6}])
    assert [x.key for x in s.sources] == ["builtin/L1", "pythia-160m/L6"]


def test_gpu_profile_raises_sizes_but_explicit_values_win(monkeypatch):
    cpu = load_settings()
    monkeypatch.setenv("GLP_PROFILE", "gpu")
    monkeypatch.setenv("GLP_TRAIN__LR", "0.003")
    gpu = load_settings()
    assert gpu.store.max_tokens > 10 * cpu.store.max_tokens and gpu.denoiser.n_blocks > cpu.denoiser.n_blocks
    assert gpu.train.lr == 0.003 and gpu.train.batch_size > cpu.train.batch_size
    assert load_settings(profile="gpu", store={"max_tokens": 7}).store.max_tokens == 7


def test_an_unknown_profile_is_rejected(monkeypatch):
    monkeypatch.setenv("GLP_PROFILE", "tpu")
    with pytest.raises(ConfigError, match="profile"):
        load_settings()


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


def test_options_added_at_their_defaults_leave_the_denoiser_hash_as_priors_were_built_with():
    """Priors trained before bias / init / preset existed keep their checkpoint key and Dagster code version."""
    from glp.config import DenoiserConfig, config_hash

    assert config_hash(DenoiserConfig()) == "615fa257d84a"
    assert config_hash(DenoiserConfig(preset="official")) != config_hash(DenoiserConfig())
    assert config_hash(DenoiserConfig(init="torch")) != config_hash(DenoiserConfig())
