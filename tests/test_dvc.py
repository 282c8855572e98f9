"""Real DVC commands: the project's remote config pushes a stage's output and a clean clone pulls it back; the
dataset stages, their parameters and the git/DVC split of assets/datasets are consistent."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))


def _run(*cmd: str, cwd: Path, env: dict) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{cmd}: {r.stdout}\n{r.stderr}"
    return r.stdout


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_then_pull_on_a_clean_clone_restores_the_same_bytes(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path / "home"), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "PYTHONPATH": str(ROOT)}
    repo = tmp_path / "repo"
    repo.mkdir()
    _run("git", "init", "-q", cwd=repo, env=env)
    shutil.copytree(ROOT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    (repo / "params.yaml").write_text("corpus:\n  seed: 0\n")
    # a stage shaped like ours: a python step writes a corpus folder under assets/datasets
    (repo / "dvc.yaml").write_text(
        "stages:\n  corpus:\n"
        f"    cmd: {sys.executable} -c \"from pathlib import Path; from tests.conftest import write_tiny_corpus; "
        "write_tiny_corpus(Path('assets/datasets/corpus'))\"\n"
        "    params: [corpus]\n    outs: [assets/datasets/corpus]\n"
    )
    _run(DVC, "repro", "-q", cwd=repo, env=env)
    _run("git", "add", "-A", cwd=repo, env=env)
    _run("git", "commit", "-qm", "data", cwd=repo, env=env)
    _run(DVC, "push", "-q", cwd=repo, env=env)
    # the project's default remote is ~/.cache/glp/dvc-remote: it must land in (this test's) HOME
    assert any((tmp_path / "home/.cache/glp/dvc-remote").rglob("*")), "remote is empty after push"

    clone = tmp_path / "clone"
    _run("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path, env=env)
    assert not (clone / "assets/datasets/corpus").exists()
    _run(DVC, "pull", "-q", cwd=clone, env=env)
    assert _digest(clone / "assets/datasets/corpus") == _digest(repo / "assets/datasets/corpus")
    status = _run(DVC, "status", cwd=clone, env=env)
    assert "up to date" in status.lower() or status.strip() == ""


def test_dataset_stages_are_wired_corpus_and_labelled_into_probe_tasks():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) >= {"corpus", "labelled", "probe_tasks"}
    assert stages["labelled"]["outs"] == ["assets/datasets/labelled"]
    assert "python -m glp.data.corpus_build labelled" in stages["labelled"]["cmd"]
    probe = stages["probe_tasks"]
    assert {"assets/datasets/corpus", "assets/datasets/labelled", "src/glp/data/corpus.py"} <= set(probe["deps"])
    assert "--labelled assets/datasets/labelled" in probe["cmd"]


def test_dvc_params_match_the_config_defaults():
    from glp.config import CorpusConfig, ProbeTasksConfig

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    corpus, tasks = CorpusConfig(), ProbeTasksConfig()
    assert params["corpus"] == {"seed": corpus.seed, "heldout_fraction": corpus.heldout_fraction}
    assert params["probe_tasks"] == {"seed": tasks.seed, "max_examples": tasks.max_examples,
                                     "max_train": tasks.max_train, "min_examples": tasks.min_examples}
    assert set(params["labelled"]) == {"seed"}


def test_dataset_data_is_ignored_by_git_and_the_datasheets_are_not():
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode == 0

    for data in ("assets/datasets/corpus/train.jsonl", "assets/datasets/labelled/movie_snippets.jsonl",
                 "assets/datasets/labelled/manifest.json", "assets/datasets/probe_tasks/data/examples.jsonl"):
        assert ignored(data), data
    for sheet in ("assets/datasets/README.md", "assets/datasets/probe_tasks/README.md", "dvc.lock"):
        assert not ignored(sheet), sheet


@pytest.mark.slow
def test_the_real_dataset_stages_reproduce(tmp_path):
    """`dvc repro corpus labelled probe_tasks` of the project itself (downloads the pinned packages: slow)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    clone = tmp_path / "clone"
    _run("git", "clone", "-q", str(ROOT), str(clone), cwd=tmp_path, env=env)
    _run(DVC, "repro", "corpus", "labelled", "probe_tasks", cwd=clone, env=env)
    for out in ("corpus", "labelled", "probe_tasks/data"):
        assert (clone / "assets/datasets" / out / "manifest.json").is_file()


def test_dvc_lock_matches_the_code_and_params_so_make_run_leaves_a_clean_clone():
    """`dvc status` on the repository reports no changed command, code or parameter dependency for any stage: dvc.lock was
    updated with the code it records (otherwise `make run` would rebuild the datasets and rewrite dvc.lock on a
    fresh clone). Data outputs may be absent here (CI has not pulled them): those are not counted."""
    import json

    r = subprocess.run([DVC, "status", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    stale = {}
    for stage, changes in json.loads(r.stdout or "{}").items():
        for change in changes:
            if change == "changed command":  # dvc.yaml's cmd (a module path, a flag) differs from the lock's
                stale.setdefault(stage, {})["cmd"] = "changed"
            if not isinstance(change, dict):
                continue
            deps = {p: s for p, s in change.get("changed deps", {}).items() if not p.startswith("assets/")}
            if deps or change.get("changed params"):
                stale.setdefault(stage, {}).update({**deps, **change.get("changed params", {})})
    assert not stale, f"dvc.lock is stale for {stale}: run `dvc repro` and commit dvc.lock"
