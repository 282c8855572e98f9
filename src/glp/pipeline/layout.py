"""Where every artifact lives (one place), what identifies a source's model and activations, and the artifacts of
a source loaded once with their widths checked (`SourceArtifacts`).

    <store.root>/source_lm/<hash>/                       builtin source LM (save_pretrained)
    <store.root>/source_model/<gguf sha256[:16]>/        packaged source LLM converted from its GGUF (save_pretrained)
    <store.root>/<model>/L<layer>/activations/train.zarr  activation store (and heldout.zarr), or with
                                                         store.activations_url: <url>/<model>/L<layer>/train.zarr
    <store.root>/<model>/L<layer>/activations/shards/    train-<k>-of-<n>.zarr shard stores (store.shards > 1, until
                                                         merged; beside the stores when they live at a URL) + plans
    <store.root>/<model>/L<layer>/norm_stats.safetensors
    <store.root>/<model>/L<layer>/prior/                  exported prior (prior.ckpt/ = DeepSpeed checkpoints)
    <store.root>/<model>/L<layer>/prior_eval.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glp.artifacts import content_hash, sha256_cached, sha256_file
from glp.config import BUILTIN_MODEL, Settings, SourceConfig, config_hash

if TYPE_CHECKING:
    from glp.data.store import Location

def short_sha256(path: Path, length: int = 16) -> str:
    """Short content hash of a file, used as a Dagster data version."""
    return sha256_file(path)[:length]


@dataclass(frozen=True)
class SourcePaths:
    root: Path  # <store.root>/<model>/L<layer>
    activations_url: str | None = None  # <store.activations_url>/<model>/L<layer>, when the stores live elsewhere

    @property
    def activations_dir(self) -> Path:
        """The local activations folder: the stores (unless `activations_url`) and their write lock."""
        return self.root / "activations"

    def _located(self, name: str) -> Location:
        """`name` under the activations: a local Path, or a UPath at `store.activations_url`."""
        from glp.data.store import as_location

        return as_location(f"{self.activations_url}/{name}") if self.activations_url else self.activations_dir / name

    def store(self, split: str) -> Location:
        """The activation store of a split: a local Path, or a UPath at `store.activations_url`."""
        return self._located(f"{split}.zarr")

    def shard_store(self, split: str, k: int, n: int) -> Location:
        """Shard k of n of a split's store (glp.data.shards), beside the stores."""
        return self._located(f"shards/{split}-{k}-of-{n}.zarr")

    def shard_plan_path(self, version: str, n: int) -> Path:
        """The cached shard plan of an activations version (local: it is small)."""
        return self.activations_dir / "shards" / f"plan-{version}-{n}.json"

    @property
    def norm_stats(self) -> Path:
        return self.root / "norm_stats.safetensors"

    @property
    def prior(self) -> Path:
        return self.root / "prior"

    @property
    def checkpoints(self) -> Path:
        return self.root / "prior.ckpt"

    @property
    def prior_eval(self) -> Path:
        return self.root / "prior_eval.json"


def source_paths(settings: Settings, source: SourceConfig) -> SourcePaths:
    rel = f"{source.model_name}/L{source.layer}"
    url = settings.store.activations_url
    return SourcePaths(settings.store.root / rel, f"{url.rstrip('/')}/{rel}" if url else None)


def builtin_lm_dir(settings: Settings) -> Path:
    from glp.data.corpus import corpus_hash
    from glp.data.source_lm import source_lm_dir

    return source_lm_dir(settings.store.root, settings.source_lm, corpus_hash(settings.corpus.path, settings.corpus))


def uses_builtin(settings: Settings) -> bool:
    return any(s.model == BUILTIN_MODEL for s in settings.sources)


def uses_packaged(settings: Settings) -> list[str]:
    """The packaged source models (glp.data.source_model.PACKAGED) the configured sources name."""
    from glp.data.source_model import is_packaged

    return sorted({s.model for s in settings.sources if is_packaged(s.model)})


def model_dir(settings: Settings, source: SourceConfig) -> Path:
    """The local folder `from_pretrained` loads for a source: the builtin LM's, a packaged model's conversion, or
    the user's own folder."""
    from glp.data.source_model import converted_dir, is_packaged

    if source.model == BUILTIN_MODEL:
        return builtin_lm_dir(settings)
    if is_packaged(source.model):
        return converted_dir(settings.store.root, source.model)
    return Path(source.model)


TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json")


def model_files(path: Path) -> list[Path]:
    """The files that decide a saved model's activations: config.json, the weights (*.safetensors, *.bin) and the
    tokenizer's files (tokenizer*, vocab, merges, special tokens). Reports and caches beside them are not."""
    path = Path(path)
    return sorted(p for p in path.iterdir() if p.is_file() and (
        p.name == "config.json" or p.suffix in (".safetensors", ".bin") or p.name.startswith("tokenizer")
        or p.name in TOKENIZER_FILES))


def model_fingerprint(path: Path, cache: Path | None = None) -> str:
    """Identity of a saved model by content: the sha256 of each of its `model_files`, with their names.

    Each file is hashed once and remembered by (path, size, mtime) in `cache` (glp.artifacts.sha256_cached), so the
    default 540 MB model costs one read, then a stat per file. Weights retrained or fine-tuned in place (same size,
    new values) change it."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no model folder at {path}: materialize the source model first (or fix the "
                                "source's `model` path)")
    return content_hash([(p.name, sha256_cached(p, cache)) for p in model_files(path)])


def hash_cache(settings: Settings) -> Path:
    """Where the store remembers file hashes by (path, size, mtime): `<store.root>/.cache/sha256.json`."""
    return settings.store.root / ".cache" / "sha256.json"


def activations_version(settings: Settings, source: SourceConfig) -> str:
    """What the stored activations depend on: model identity, layer, corpus, extraction config."""
    from glp.data.corpus import corpus_hash

    return content_hash(model_fingerprint(model_dir(settings, source), hash_cache(settings)), source.layer, corpus_hash(settings.corpus.path, settings.corpus),
                 config_hash(settings.store))


def prior_meta(settings: Settings, source: SourceConfig) -> dict[str, Any]:
    return {"source": source.key, "denoiser_config": config_hash(settings.denoiser), "train_config": config_hash(settings.train)}


def sae_dir(source_root: Path) -> Path:
    """`<store.root>/<model>/L<layer>/sae/` (source_root = `glp.pipeline.source_paths(...).root`)."""
    return Path(source_root) / "sae"


def probes_dir(source_root: Path) -> Path:
    """`<store.root>/<model>/L<layer>/probes/` (source_root = `glp.pipeline.source_paths(...).root`)."""
    return Path(source_root) / "probes"


def scaling_dir(source_root: Path) -> Path:
    return Path(source_root) / "scaling"


# The artifacts of a source from upstream to downstream: a width mismatch is the more downstream one's to redo.
_ORDER = ("activations", "model", "norm_stats", "glp_prior", "sae")


def redo_command(asset: str, source_key: str) -> str:
    """The command that re-materializes `asset` and everything downstream of it for one source."""
    return (f"dagster asset materialize -m glp_dagster.definitions --select 'key:{asset}+' "
            f"--partition '{source_key}'")


class LineageMismatch(ValueError):
    """An artifact was made from something other than what this step pairs it with (another source, another
    activations version, other norm stats, another model)."""


class SourceArtifacts:
    """The artifacts of one source, each loaded once on first use and checked once against the activation stores:
    its width, and its lineage (what it records it was made from: the source, the activations version, the norm
    stats' hash, the model's content fingerprint). A mismatch raises one message naming both sides and the
    command that redoes the artifact at fault (the more downstream one).

        art = SourceArtifacts(settings, source)
        prior, store = art.prior(device), art.store("heldout")   # raises if they do not belong together
    """

    def __init__(self, settings: Settings, source: SourceConfig, step: str = "this step") -> None:
        self.settings, self.source, self.step = settings, source, step
        self.paths = source_paths(settings, source)
        self._loaded: dict[Any, Any] = {}
        self._widths: dict[str, int] = {}

    def _redo(self, name: str) -> str:
        if name == "model":
            return ("the source model changed since extraction: re-materialize `activations` and everything "
                    f"downstream ({redo_command('activations', self.source.key)})")
        return f"re-materialize `{name}` and what follows ({redo_command(name, self.source.key)})"

    def _reference(self, split: str | None = None) -> Any:
        """The first activation store there is (train, then held-out), loaded; None when there is none (or when
        the one being loaded is `split` itself)."""
        for ref in ("train", "heldout"):
            if ref == split:
                return None
            if self.paths.store(ref).exists():
                return self.store(ref)
        return None

    def _check(self, name: str, width: int, split: str | None = None) -> None:
        if "activations" not in self._widths:
            self._reference(split)  # the reference width: the first store there is (cheap: its metadata)
        # Every artifact is made from the stores: against them, a mismatch is the artifact's own (a prior of the
        # wrong width is the prior's to redo, even when the SAE loaded before it agrees with the stores).
        against = ({"activations": self._widths["activations"]} if name != "activations" and
                   "activations" in self._widths else self._widths)
        for other, w in against.items():
            if w != width:
                late = max(name, other, key=_ORDER.index)
                raise ValueError(f"{name} width {width} != {other} width {w} ({self.step}): {self._redo(late)}")
        self._widths[name] = width

    def _lineage(self, name: str, where: Any, what: str, recorded: Any, expected: Any, of: str) -> None:
        """Refuse `name` when the `what` it records (`recorded`) is not the `expected` one of `of`. Nothing is
        compared when `of` records nothing (a store written by hand, e.g. in a test): there is nothing to expect."""
        if expected is None or recorded == expected:
            return
        found = "records none (written by an older glp)" if recorded is None else f"records {recorded!r}"
        redo = self._redo(name)
        raise LineageMismatch(f"{name} at {where} was made from another {what} than {of} ({self.step}): it "
                              f"{found}, {of} has {expected!r}. {redo[0].upper()}{redo[1:]}")

    def _once(self, key: Any, load: Any) -> Any:
        if key not in self._loaded:
            self._loaded[key] = load()
        return self._loaded[key]

    def expected_version(self) -> str:
        """The activations version the settings give now (model content, layer, corpus, extraction config)."""
        return self._once("expected_version", lambda: activations_version(self.settings, self.source))

    def store(self, split: str) -> Any:
        """The activation store of a split (glp.data.store.ActivationStore), of the same version as the other
        split's store and as the settings give now."""
        from glp.data.store import ActivationStore

        def load() -> Any:
            store = ActivationStore(self.paths.store(split))
            self._check("activations", store.d_model, split)
            version = store.attrs.get("version")
            other = "heldout" if split == "train" else "train"
            if version is not None and self.paths.store(other).exists():  # the pair is one version (its metadata)
                theirs = ActivationStore(self.paths.store(other), verify=False).attrs.get("version")
                if theirs != version:
                    raise LineageMismatch(
                        f"the activation stores are of two versions ({self.step}): {other}.zarr is {theirs!r}, "
                        f"{split}.zarr is {version!r} (an extraction stopped between the two splits?). "
                        f"Re-materialize `activations` ({redo_command('activations', self.source.key)})")
            if version is not None and version != (now := self.expected_version()):
                raise LineageMismatch(
                    f"{store.path} was extracted as activations version {version!r}, but the model, layer, corpus "
                    f"and store settings now give {now!r} ({self.step}): {self._redo('activations')}")
            return store

        return self._once(("store", split), load)

    def lm(self, dtype: str = "float32", device: str | None = None) -> Any:
        """The source LLM (glp.data.lm.SourceLM) on the settings' device unless `device` is given."""
        from glp.data.lm import load_source_lm

        def load() -> Any:
            mdir = model_dir(self.settings, self.source)
            lm = load_source_lm(mdir, device or self.settings.device, dtype, self.settings.trust_remote_code)
            self._check("model", lm.d_model)
            if (ref := self._reference()) is not None and (recorded := ref.attrs.get("model_fingerprint")):
                self._lineage("activations", ref.path, "model", recorded,
                              model_fingerprint(mdir, hash_cache(self.settings)), f"the model at {mdir}")
            return lm

        return self._once(("lm", dtype, device), load)

    def norm_stats_version(self) -> str | None:
        """The norm stats file's short content hash (what priors and SAEs record), None when there is none."""
        return short_sha256(self.paths.norm_stats) if self.paths.norm_stats.is_file() else None

    def norm_stats(self) -> Any:
        """The normalization statistics (glp.data.stats.NormStats), computed from this train store."""
        from glp.data.stats import NormStats

        def load() -> Any:
            stats = NormStats.load(self.paths.norm_stats)
            self._check("norm_stats", len(stats.mean))
            if self.paths.store("train").exists():
                train = self.store("train")
                self._lineage("norm_stats", self.paths.norm_stats, "activations version",
                              stats.made_from.get("activations_version"), train.attrs.get("version"), "train.zarr")
            return stats

        return self._once("norm_stats", load)

    def _made_for_this_source(self, name: str, where: Path, config: dict[str, Any]) -> None:
        """A prior's or SAE's recorded source, activations version and norm stats against this source's."""
        self._lineage(name, where, "source", config.get("source"), self.source.key, f"source {self.source.key!r}")
        if (ref := self._reference()) is not None:
            self._lineage(name, where, "activations version", config.get("activations_version"),
                          ref.attrs.get("version"), f"{Path(str(ref.path)).name}")
        if "norm_stats_version" in config and (now := self.norm_stats_version()) is not None:
            self._lineage(name, where, "norm stats", config["norm_stats_version"], now, self.paths.norm_stats.name)

    def prior(self, device: Any = "cpu") -> Any:
        """The exported prior (glp.prior.Prior) on `device`, trained on this source's activations."""
        from glp.prior import load_prior

        def load() -> Any:
            prior = load_prior(self.paths.prior, device)
            self._check("glp_prior", prior.d_model)
            self._made_for_this_source("glp_prior", self.paths.prior, prior.config)
            return prior

        return self._once(("prior", str(device)), load)

    def sae(self, device: Any = "cpu") -> tuple[Any, Any, dict[str, Any]]:
        """The SAE baseline (sae, its normalizer, its config) on `device`; a clear error when it is not there."""
        from glp.uses.sae import load_sae

        def load() -> Any:
            folder = sae_dir(self.paths.root)
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"no SAE at {folder}: {self.step} compares with the SAE baseline; materialize "
                                        "`sae` for this source first")
            out = load_sae(folder, device)
            self._check("sae", out[0].d_model)
            self._made_for_this_source("sae", folder, out[2])
            return out

        return self._once(("sae", str(device)), load)
