"""The Inception path of FID: a weights file in torch-fidelity's format (the file it downloads to
TORCH_HOME/hub/checkpoints) is found and loaded. No real weights can be downloaded here, so the
file holds a randomly initialised FID Inception v3, saved as torch-fidelity saves its own."""

from __future__ import annotations

import pytest
import torch

from regene_ray.evaluation.fid import (
    INCEPTION_FILE,
    InceptionFeatures,
    choose_feature_net,
    extract_features,
    find_inception_weights,
)

fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """(TORCH_HOME holding a random FID Inception v3's state dict, that network)."""
    cls = fidelity.FeatureExtractorInceptionV3
    real_load = cls.load_state_dict
    cls.load_state_dict = lambda self, *a, **k: None  # build it without downloading weights
    try:
        fidelity_url = fidelity.load_state_dict_from_url
        fidelity.load_state_dict_from_url = lambda *a, **k: {}
        torch.manual_seed(0)
        net = cls("inception-v3-compat", ["2048"])
    finally:
        cls.load_state_dict = real_load
        fidelity.load_state_dict_from_url = fidelity_url
    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(net.state_dict(), home / "hub" / "checkpoints" / INCEPTION_FILE)
    return home, net.eval()


def test_the_weights_file_is_found_and_loaded(random_inception, monkeypatch):
    home, net = random_inception
    monkeypatch.setenv("TORCH_HOME", str(home))
    path, why = find_inception_weights()
    assert path == home / "hub" / "checkpoints" / INCEPTION_FILE and "found" in why
    feats = choose_feature_net(neutral=None)
    assert feats.name == "inception-v3-pool3" and feats.dim == 2048
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    got = extract_features(feats, x, "cpu")
    assert got.shape == (3, 2048) and got.dtype == torch.float64
    with torch.no_grad():  # the saved network's own pool3 features of the same images
        want = net(x.repeat(1, 3, 1, 1))[0].reshape(3, -1).double()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    other = InceptionFeatures(path)  # a second load gives the same network
    torch.testing.assert_close(extract_features(type(feats)(feats.name, other, 2048), x, "cpu"),
                               got)


def test_an_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--inception-weights .* does not exist"):
        find_inception_weights(tmp_path / "nope.pth")
