"""The registered data sets, written as data: files, checksums, folders, mirrors.

Adding a data set in a format cnnlab already reads is one entry here. Checksums
are those of the official files (sha256 of the decompressed IDX files; the md5s
CIFAR's authors publish), so a copy found anywhere on disk can be trusted.
"""

from __future__ import annotations

from types import MappingProxyType

from cnnlab.data.base import DataSource
from cnnlab.data.cifar import CifarSource, LabelSet
from cnnlab.data.idx import IdxSource
from cnnlab.data.imagefolder import ImageFolderSource
from cnnlab.data.locate import FileSpec
from cnnlab.registry import Registry

DATASETS: Registry[DataSource] = Registry("data set")


def _idx_files(checksums: dict[str, str]) -> MappingProxyType:
    prefixes = {"train": "train", "test": "t10k"}
    return MappingProxyType(
        {
            split: (
                FileSpec(f"{p}-images-idx3-ubyte", sha256=checksums[f"{p}-images"]),
                FileSpec(f"{p}-labels-idx1-ubyte", sha256=checksums[f"{p}-labels"]),
            )
            for split, p in prefixes.items()
        }
    )


MNIST = IdxSource(
    name="mnist",
    description="handwritten digits 0-9, 28x28 grayscale, 60,000 train / 10,000 test",
    classes=tuple(str(d) for d in range(10)),
    files=_idx_files(
        {
            "train-images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        }
    ),
    subfolders=("", "mnist", "MNIST/raw", "MNIST"),
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    download_folder="mnist",
    how_to_get=(
        "get the four .gz files from https://ossci-datasets.s3.amazonaws.com/mnist/ "
        "(or http://yann.lecun.com/exdb/mnist/) and put them in one of those folders"
    ),
)

FASHION_MNIST = IdxSource(
    name="fashion-mnist",
    description="Zalando clothing images in 10 classes, 28x28 grayscale, 60,000 train / 10,000 test",
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    files=_idx_files(
        {
            "train-images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        }
    ),
    subfolders=("", "fashion-mnist", "FashionMNIST/raw", "FashionMNIST"),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    download_folder="fashion-mnist",
    how_to_get=(
        "on Debian/Ubuntu run 'apt install dataset-fashion-mnist' (files land in "
        "/usr/share/datasets/fashion-mnist), or get the four .gz files from "
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ and put them in one of those folders"
    ),
)

CIFAR10 = CifarSource(
    name="cifar10",
    description="32x32 colour photos in 10 classes, 50,000 train / 10,000 test",
    files=MappingProxyType(
        {
            "train": tuple(
                FileSpec(f"data_batch_{i}", md5=md5, gzip_ok=False)
                for i, md5 in enumerate(
                    (
                        "c99cafc152244af753f735de768cd75f",
                        "d4bba439e000b95fd0a9bffe97cbabec",
                        "54ebc095f3ab1f0389bbae665268c751",
                        "634d18415352ddfa80567beed471001a",
                        "482c414d41f54cd18b22e5b47cb7c3cb",
                    ),
                    1,
                )
            ),
            "test": (
                FileSpec("test_batch", md5="40351d587109b95175f43aff81a1287e", gzip_ok=False),
            ),
        }
    ),
    meta=FileSpec("batches.meta", md5="5ff9c542aee3614f3951f8cda6e48888", gzip_ok=False),
    label_sets=MappingProxyType({"default": LabelSet("labels", "label_names")}),
    num_classes=MappingProxyType({"default": 10}),
    subfolders=("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10", ""),
    archive=FileSpec(
        "cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a", gzip_ok=False
    ),
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    how_to_get=(
        "get https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it "
        "(it holds cifar-10-batches-py/) into one of those folders"
    ),
)

CIFAR100 = CifarSource(
    name="cifar100",
    description="32x32 colour photos in 100 classes (20 superclasses), 50,000 train / 10,000 test",
    files=MappingProxyType(
        {
            "train": (FileSpec("train", md5="16019d7e3df5f24257cddd939b257f8d", gzip_ok=False),),
            "test": (FileSpec("test", md5="f0ef6b0ae62326f3e7ffdfab6717acfc", gzip_ok=False),),
        }
    ),
    meta=FileSpec("meta", md5="7973b15100ade9c7d40fb424638fde48", gzip_ok=False),
    label_sets=MappingProxyType(
        {
            "fine": LabelSet("fine_labels", "fine_label_names"),
            "coarse": LabelSet("coarse_labels", "coarse_label_names"),
        }
    ),
    num_classes=MappingProxyType({"fine": 100, "coarse": 20}),
    subfolders=("cifar-100-python", "cifar100/cifar-100-python", "cifar100", ""),
    archive=FileSpec(
        "cifar-100-python.tar.gz", md5="eb9058c3a382ffc7106e4002c42a8d85", gzip_ok=False
    ),
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    how_to_get=(
        "get https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it "
        "(it holds cifar-100-python/) into one of those folders"
    ),
)

for _source in (MNIST, FASHION_MNIST, CIFAR10, CIFAR100, ImageFolderSource()):
    DATASETS.add(_source.name, _source, description=_source.description)
