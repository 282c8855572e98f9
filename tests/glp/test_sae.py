"""The TopK SAE: k-sparse codes, unit-norm decoder, learns, is deterministic, round-trips through safetensors."""

import numpy as np
import torch

from glp.config import SAEConfig
from glp.uses.sae import TopKSAE, load_sae, save_sae, train_sae
from glp.data.stats import Normalizer
from glp.data.store import ActivationStore, StoreWriter


def _sparse_store(path, n=2048, d=16, n_atoms=48, seed=0) -> ActivationStore:
    """Rows that are sums of 3 of `n_atoms` random directions: an SAE can explain them."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(n_atoms, d))
    codes = np.zeros((n, n_atoms))
    for i in range(n):
        codes[i, rng.choice(n_atoms, 3, replace=False)] = rng.uniform(0.5, 2.0, 3)
    acts = (codes @ atoms).astype(np.float32)
    w = StoreWriter(path, d, 256, {"model": "synthetic"})
    w.append(acts, np.arange(n), np.ones(n, np.int32), np.zeros(n, np.int32))
    w.commit(n)
    w.close()
    return ActivationStore(path)


def test_codes_have_at_most_k_nonzeros_and_decoder_rows_unit_norm():
    sae = TopKSAE(16, 64, 4)
    z = sae.encode(torch.randn(32, 16))
    assert z.shape == (32, 64) and int((z != 0).sum(1).max()) <= 4 and bool((z >= 0).all())
    np.testing.assert_allclose(sae.W_dec.norm(dim=1).detach().numpy(), 1.0, rtol=1e-5)


def test_training_lowers_the_unexplained_variance_deterministically(tmp_path):
    store = _sparse_store(tmp_path / "s.zarr")
    norm = Normalizer(torch.from_numpy(store.acts[:].mean(0)), torch.from_numpy(store.acts[:].std(0)))
    cfg = SAEConfig(expansion=4, k=4, batch_size=64, lr=3e-3, dead_steps=10)
    sae, res = train_sae(store, norm, cfg, epochs=2, device=torch.device("cpu"))
    assert res.steps == 2 * (2048 // 64) and res.rows_seen == res.steps * 64
    assert res.fvu_last < 0.75 * np.mean(res.losses[:3])
    sae2, res2 = train_sae(store, norm, cfg, epochs=2, device=torch.device("cpu"))
    assert res.losses == res2.losses
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), sae2.state_dict().values()))

    save_sae(tmp_path / "sae", sae, norm, {"fvu_last": res.fvu_last})
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == ["config.json", "sae.safetensors"]
    loaded, lnorm, cfg_json = load_sae(tmp_path / "sae")
    x = torch.randn(8, 16)
    assert torch.equal(loaded.encode(lnorm.normalize(x)), sae.encode(norm.normalize(x)))
    assert cfg_json["k"] == 4 and cfg_json["n_latents"] == 64


def test_a_corrupt_or_truncated_sae_export_is_refused_naming_the_fix(tmp_path):
    import pytest
    import torch

    from glp.uses.sae import TopKSAE, load_sae, save_sae
    from glp.data.stats import ArtifactCorrupt, Normalizer

    torch.manual_seed(0)
    path = save_sae(tmp_path / "sae", TopKSAE(8, 16, 2), Normalizer(torch.zeros(8), torch.ones(8)), {})
    load_sae(path)
    weights = path / "sae.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorrupt, match="recorded checksum: delete the folder and re-materialize `sae`"):
        load_sae(path)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ArtifactCorrupt, match="truncated or corrupt"):
        load_sae(path)
