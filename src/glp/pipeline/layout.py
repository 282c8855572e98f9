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

from glp.artifacts import content_hash, sha256_file
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


def model_fingerprint(path: Path) -> str:
    """Identity of a saved model: its config.json content plus the names and sizes of its weight files."""
    path = Path(path)
    files = sorted((p.name, p.stat().st_size) for p in path.glob("*.safetensors")) + sorted(
        (p.name, p.stat().st_size) for p in path.glob("*.bin")
    )
    return content_hash(short_sha256(path / "config.json") if (path / "config.json").is_file() else "", files)


def activations_version(settings: Settings, source: SourceConfig) -> str:
    """What the stored activations depend on: model identity, layer, corpus, extraction config."""
    from glp.data.corpus import corpus_hash

    return content_hash(model_fingerprint(model_dir(settings, source)), source.layer, corpus_hash(settings.corpus.path, settings.corpus),
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
_REDO = {"activations": "re-materialize `activations` (and what follows) for this source",
         "model": "the source model changed since extraction: re-materialize `activations` and everything downstream",
         "norm_stats": "re-materialize `norm_stats`", "glp_prior": "re-materialize `glp_prior` for this source",
         "sae": "re-materialize `sae` for this source"}


class SourceArtifacts:
    """The artifacts of one source, each loaded once on first use and its width checked once against those already
    loaded (the activation stores first), with one message naming the artifact to redo: the more downstream one.

        art = SourceArtifacts(settings, source)
        prior, store = art.prior(device), art.store("heldout")   # raises if their widths differ
    """

    def __init__(self, settings: Settings, source: SourceConfig, step: str = "this step") -> None:
        self.settings, self.source, self.step = settings, source, step
        self.paths = source_paths(settings, source)
        self._loaded: dict[Any, Any] = {}
        self._widths: dict[str, int] = {}

    def _check(self, name: str, width: int, split: str | None = None) -> None:
        if "activations" not in self._widths:
            for ref in ("train", "heldout"):  # the reference width: the first store there is (cheap: its metadata)
                if ref == split:
                    break
                if self.paths.store(ref).exists():
                    self.store(ref)
                    break
        for other, w in self._widths.items():
            if w != width:
                late = max(name, other, key=_ORDER.index)
                raise ValueError(f"{name} width {width} != {other} width {w} ({self.step}): {_REDO[late]}")
        self._widths[name] = width

    def _once(self, key: Any, load: Any) -> Any:
        if key not in self._loaded:
            self._loaded[key] = load()
        return self._loaded[key]

    def store(self, split: str) -> Any:
        """The activation store of a split (glp.data.store.ActivationStore)."""
        from glp.data.store import ActivationStore

        def load() -> Any:
            store = ActivationStore(self.paths.store(split))
            self._check("activations", store.d_model, split)
            return store

        return self._once(("store", split), load)

    def lm(self, dtype: str = "float32", device: str | None = None) -> Any:
        """The source LLM (glp.data.lm.SourceLM) on the settings' device unless `device` is given."""
        from glp.data.lm import load_source_lm

        def load() -> Any:
            lm = load_source_lm(model_dir(self.settings, self.source), device or self.settings.device, dtype,
                                self.settings.trust_remote_code)
            self._check("model", lm.d_model)
            return lm

        return self._once(("lm", dtype, device), load)

    def norm_stats(self) -> Any:
        """The normalization statistics (glp.data.stats.NormStats)."""
        from glp.data.stats import NormStats

        def load() -> Any:
            stats = NormStats.load(self.paths.norm_stats)
            self._check("norm_stats", len(stats.mean))
            return stats

        return self._once("norm_stats", load)

    def prior(self, device: Any = "cpu") -> Any:
        """The exported prior (glp.prior.Prior) on `device`."""
        from glp.prior import load_prior

        def load() -> Any:
            prior = load_prior(self.paths.prior, device)
            self._check("glp_prior", prior.d_model)
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
            return out

        return self._once(("sae", str(device)), load)
