"""Real MNIST (a few thousand images, small model): the acceptance bar of the core issue."""

import pytest

from regene_ray.classifier import ArchConfig
from regene_ray.data import DataConfig
from regene_ray.losses import LossConfig
from regene_ray.run import RunConfig, train_run
from regene_ray.train import ClassifierTrainConfig, DecoderTrainConfig


@pytest.mark.slow
def test_mnist_subset_classifies_and_reconstructs(mnist_root, tmp_path):
    cfg = RunConfig(
        data=DataConfig(dataset="mnist", data_root=str(mnist_root), max_train=4000,
                        max_test=1000),
        classifier=ArchConfig(depth=2, convs_per_block=1, base_channels=16, latent_dim=64),
        classifier_training=ClassifierTrainConfig(epochs=5, batch_size=64, lr=3e-3),
        decoder_training=DecoderTrainConfig(epochs=5, batch_size=64, lr=3e-3,
                                            loss=LossConfig(perceptual="classifier")),
        acceptance_candidates=500,
        grid_n_parents=[2, 3],
    )
    m = train_run(cfg, tmp_path / "mnist", device="cpu")
    assert m["test_accuracy"] > 0.95
    assert m["recon_test_mae"] < m["class_mean_baseline_mae"]
    assert m["acceptance"]["2"]["accepted"] > 0.3
