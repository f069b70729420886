"""CIFAR-10 and CIFAR-100 from a local copy, through ``torchvision.datasets`` (never downloaded).

Reference: A. Krizhevsky (2009), *Learning Multiple Layers of Features from Tiny Images*, tech. report,
University of Toronto; https://www.cs.toronto.edu/~kriz/cifar.html.

``root`` must contain the extracted "python version" folder (``cifar-10-batches-py`` or ``cifar-100-python``).
5,000 training images (stratified, seeded by ``data_seed``) are held out as the validation split. Training
images get the standard augmentation (random 32x32 crop of the 4-pixel zero-padded image, horizontal flip,
He et al. 2016); validation, test and ``train_eval`` only ``ToTensor`` and per-channel normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Subset

from bayessparse.data.bundle import DataBundle
from bayessparse.data.noise import check_label_noise, symmetric_label_noise
from bayessparse.data.splits import Stream, check_data_seed, reject_n_samples, rng_for, stratified_holdout
from bayessparse.errors import ConfigError

VAL_SIZE = 5000
INPUT_SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class CifarSpec:
    """What differs between CIFAR-10 and CIFAR-100: the torchvision class, class count, channel statistics."""

    name: str
    torchvision_class: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# Per-channel mean and standard deviation of the 50,000 training images, pixel values in [0, 1].
SPECS = {
    "cifar10": CifarSpec("cifar10", "CIFAR10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": CifarSpec("cifar100", "CIFAR100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def load_cifar10(
    *, data_seed: int = 0, root: str | None = None, label_noise: float = 0.0, n_samples: int | None = None
) -> DataBundle:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (``n_samples`` is rejected)."""
    return load_cifar(SPECS["cifar10"], data_seed=data_seed, root=root, label_noise=label_noise, n_samples=n_samples)


def load_cifar100(
    *, data_seed: int = 0, root: str | None = None, label_noise: float = 0.0, n_samples: int | None = None
) -> DataBundle:
    """CIFAR-100 (fine labels) from ``root/cifar-100-python`` (``n_samples`` is rejected)."""
    return load_cifar(SPECS["cifar100"], data_seed=data_seed, root=root, label_noise=label_noise, n_samples=n_samples)


def load_cifar(
    spec: CifarSpec, *, data_seed: int, root: str | None, label_noise: float, n_samples: int | None
) -> DataBundle:
    """Train (augmented, noisy labels) / val / test splits; ``train_eval`` holds the train images un-augmented.

    The training split carries the noisy labels in both ``train`` and ``train_eval``; val and test stay clean.
    """
    data_seed = check_data_seed(data_seed)
    eps = check_label_noise(label_noise)
    reject_n_samples(spec.name, n_samples)
    root_path = locate(spec, root)
    train_set = open_split(spec, root_path, train=True, augment=True)
    eval_set = open_split(spec, root_path, train=True, augment=False)
    labels = np.asarray(train_set.targets, dtype=np.int64)
    train, val = stratified_holdout(labels, VAL_SIZE, rng_for(data_seed, Stream.SPLIT))
    labels[train] = symmetric_label_noise(labels[train], eps, spec.num_classes, data_seed)
    train_set.targets = eval_set.targets = labels.tolist()
    return DataBundle(
        name=spec.name,
        train=Subset(train_set, train.tolist()),
        val=Subset(eval_set, val.tolist()),
        test=open_split(spec, root_path, train=False, augment=False),
        num_classes=spec.num_classes,
        input_shape=INPUT_SHAPE,
        train_eval=Subset(eval_set, train.tolist()),
    )


def locate(spec: CifarSpec, root: str | None) -> Path:
    """``root`` as a path, after checking that every file torchvision reads is there; else a one-line ConfigError."""
    from torchvision import datasets

    dataset_class = getattr(datasets, spec.torchvision_class)
    folder = dataset_class.base_folder
    how = f"put the python version '{folder}' folder (from {dataset_class.filename}) under ROOT, pass --data-root ROOT"
    if root is None:
        raise ConfigError(f"dataset '{spec.name}' needs local files (nothing is downloaded): {how}")
    root_path = Path(root).expanduser().resolve()
    files = [name for name, _ in dataset_class.train_list + dataset_class.test_list] + [dataset_class.meta["filename"]]
    needed = [root_path / folder] + [root_path / folder / name for name in files]
    missing = next((path for path in needed if not path.exists()), None)
    if missing is not None:
        raise ConfigError(f"dataset '{spec.name}': {missing} not found; {how}")
    return root_path


def open_split(spec: CifarSpec, root: Path, *, train: bool, augment: bool):
    """The torchvision dataset of one original split; a failed checksum becomes a :class:`ConfigError`."""
    from torchvision import datasets

    try:
        return getattr(datasets, spec.torchvision_class)(
            str(root), train=train, transform=image_transform(spec, augment=augment), download=False
        )
    except RuntimeError as err:
        raise ConfigError(f"dataset '{spec.name}' under {root} is unreadable ({err}); re-extract the archive") from err


def image_transform(spec: CifarSpec, *, augment: bool):
    """``ToTensor`` + per-channel ``Normalize``, preceded by crop-with-padding and flip when ``augment``."""
    from torchvision import transforms

    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])
