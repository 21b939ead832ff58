"""What regene-ray knows about the source datasets a run can be trained on: a display name, the
licence (a Hugging Face licence identifier, or "unknown"), where it says so, and the source's
Hugging Face dataset id and home page. A generated set is derived from its source's images, so
its card states the source's licence, and says "unknown" rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    name: str
    licence: str  # a Hugging Face card licence id: mit, cc-by-4.0, other, unknown
    licence_note: str  # where the licence comes from, or what to do when it is unknown
    hf_id: str | None = None  # the source's Hugging Face dataset id
    url: str | None = None  # its home page

    @property
    def known(self) -> bool:
        return self.licence != "unknown"


SOURCES = {
    "mnist": Source("MNIST", "mit", "the licence the Hugging Face card of ylecun/mnist records",
                    "ylecun/mnist", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": Source("Fashion-MNIST", "mit", "zalandoresearch/fashion-mnist's LICENSE "
                            "file (MIT)", "zalando-datasets/fashion_mnist",
                            "https://github.com/zalandoresearch/fashion-mnist"),
    "cifar10": Source("CIFAR-10", "unknown", "CIFAR-10 is published without a licence (the "
                      "Hugging Face card of uoft-cs/cifar10 records 'unknown'); check the terms "
                      "of https://www.cs.toronto.edu/~kriz/cifar.html before sharing",
                      "uoft-cs/cifar10", "https://www.cs.toronto.edu/~kriz/cifar.html"),
    "digits": Source("scikit-learn digits (UCI Optical Recognition of Handwritten Digits)",
                     "cc-by-4.0", "the UCI Machine Learning Repository's licence for the set",
                     None, "https://archive.ics.uci.edu/dataset/80"),
    "celeba": Source("CelebA", "other", "the CelebA agreement: non-commercial research and "
                     "educational use only", None,
                     "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"),
}


def source_of(dataset: str) -> Source:
    """The Source of a data config's `dataset` (celeba:Attribute as celeba; folder:<path> and
    anything unknown: licence unknown, saying to state it before sharing)."""
    base = dataset.split(":", 1)[0]
    if base in SOURCES:
        return SOURCES[base]
    what = f"the image folder {dataset[len('folder:'):]}" if base == "folder" else dataset
    return Source(what, "unknown", "regene-ray does not know the licence of these images: "
                  "state it in this card before sharing the set")
