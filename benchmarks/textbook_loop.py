"""The textbook training loop, kept as the measuring stick for cnnlab's engine.

This is the loop of d2l's ``train_ch6`` as people run it: a torchvision data set
decoded per sample, ``ToTensor`` (and ``Resize`` when the model wants bigger
images), a ``DataLoader`` with ``shuffle=True``, a per-batch Python loop that
reads the loss and the accuracy back to the host (``.item()``) every step, and
d2l's accuracy evaluation. The model is the very same cnnlab network the engine
trains (same layers, Xavier init), with torch's stock layers where cnnlab has
faster versions of its own (``stock_layers``), as d2l writes them; so the two
numbers differ by the loop and by cnnlab's layers.

Two speeds are reported: ``examples_per_sec`` over the wall time of the training
loop (loader included: what a user waits for), and ``d2l_examples_per_sec``, the
number d2l prints, whose timer runs only around the step and so leaves the loader
out. Run ``python benchmarks/textbook_loop.py --help``. Run alone, it keeps glibc's
default allocator, under which its CPU speed swings from one process to the next
(docs/benchmarks.md); ``speed.py`` gives it the engine's setting first.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


def _cifar_archive(name: str = "cifar-10-jpeg.tar.gz") -> Path:
    """The CIFAR-10 JPEG archive: in $CNNLAB_DATA when there (where benchmarks/gpu.sh
    carries it to the GPU machine), else beside the checkout in ../shared/data."""
    data = os.environ.get("CNNLAB_DATA")
    if data and (Path(data) / name).is_file():
        return Path(data) / name
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / name


CIFAR_JPEG = _cifar_archive()


@dataclass
class TextbookResult:
    """One textbook run: what it trained, how long the loop took, how well it did."""

    model: str
    data: str
    device: str
    epochs: int
    batch_size: int
    lr: float
    train_examples: int  # examples seen in training, all epochs
    train_seconds: float  # wall time of the training loops (loader included, evaluation not)
    examples_per_sec: float
    d2l_examples_per_sec: float  # d2l's timer: only the steps, not the loader
    total_seconds: float  # training and evaluation, data set construction excluded
    train_loss: float
    train_acc: float
    test_acc: float
    num_workers: int


def cache_dir() -> Path:
    from cnnlab.data.locate import cache_root

    return cache_root() / "benchmarks"


def fashion_source() -> Path:
    """Where the gzipped IDX files are: ``$CNNLAB_DATA/fashion-mnist`` (as cnnlab looks), else Debian's."""
    env = os.environ.get("CNNLAB_DATA")
    if env:
        for base in env.split(os.pathsep):
            folder = Path(base).expanduser() / "fashion-mnist"
            if (folder / f"{FASHION_FILES[0]}.gz").is_file():
                return folder
    return FASHION_SYSTEM


def fashion_mnist_root(cache: Path | None = None) -> Path:
    """A folder torchvision's FashionMNIST reads: ``ROOT/FashionMNIST/raw/<decompressed IDX files>``.

    Debian ships the files gzipped again (their md5 differs from torchvision's
    list), and torchvision's reader wants them decompressed, so they are
    decompressed once into the cache.
    """
    root = (cache or cache_dir()) / "torchvision"
    raw = root / "FashionMNIST" / "raw"
    if all((raw / f).is_file() for f in FASHION_FILES):
        return root
    raw.mkdir(parents=True, exist_ok=True)
    source = fashion_source()
    for name in FASHION_FILES:
        src = source / f"{name}.gz"
        if not src.is_file():
            raise SystemExit(
                f"error: {src} not found; install it with: apt install dataset-fashion-mnist"
            )
        tmp = raw / f".{name}.tmp"
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        tmp.replace(raw / name)
    return root


def cifar_jpeg_root(archive: Path = CIFAR_JPEG) -> Path | None:
    """The extracted CIFAR-10 JPEG tree (shared with cnnlab's cache), or None when the archive is absent."""
    if not archive.is_file():
        return None
    from cnnlab.data.imagefolder import extract_cached, tree_root

    return tree_root(extract_cached(archive.resolve()))


def datasets(data: str, resize: int | None) -> tuple[Dataset, Dataset, int]:
    """Train and test sets the textbook way (per-sample PIL transforms), and the input channels."""
    import torchvision
    from torchvision import transforms

    steps = [transforms.Resize(resize)] if resize else []
    trans = transforms.Compose([*steps, transforms.ToTensor()])
    if data == "fashion-mnist":
        root = fashion_mnist_root()
        train = torchvision.datasets.FashionMNIST(
            root=root, train=True, transform=trans, download=False
        )
        test = torchvision.datasets.FashionMNIST(
            root=root, train=False, transform=trans, download=False
        )
        return train, test, 1
    if data == "cifar10-jpeg":
        tree = cifar_jpeg_root()
        if tree is None:
            raise SystemExit(f"error: {CIFAR_JPEG} not found")
        train = torchvision.datasets.ImageFolder(str(tree / "train"), transform=trans)
        test = torchvision.datasets.ImageFolder(str(tree / "test"), transform=trans)
        return train, test, 3
    raise SystemExit(
        f"error: data {data!r} is not known here; choose fashion-mnist or cifar10-jpeg"
    )


def _subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(ds, idx.tolist())


def _xavier(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(m.weight)


def evaluate_accuracy(net: nn.Module, data_iter: DataLoader, device: torch.device) -> float:
    """d2l's ``evaluate_accuracy_gpu``: eval mode, one host read per batch."""
    net.eval()
    correct, total = 0.0, 0
    with torch.no_grad():
        for X, y in data_iter:
            X, y = X.to(device), y.to(device)
            correct += float((net(X).argmax(dim=1) == y).sum())
            total += y.numel()
    return correct / max(total, 1)


def stock_layers(net: nn.Module) -> nn.Module:
    """Swap cnnlab's own pooling and flatten layers for torch's, in place; return ``net``.

    cnnlab's :class:`~cnnlab.layers.AvgPool2d` and :class:`~cnnlab.layers.Flatten`
    compute the same numbers faster; the textbook network is built from
    ``nn.AvgPool2d`` and ``nn.Flatten``, as d2l's is.
    """
    from cnnlab import layers

    for parent in list(net.modules()):
        for name, child in parent.named_children():
            if isinstance(child, layers.AvgPool2d):
                stock = nn.AvgPool2d(
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.ceil_mode,
                    child.count_include_pad,
                    child.divisor_override,
                )
                setattr(parent, name, stock)
            elif isinstance(child, layers.Flatten):
                setattr(parent, name, nn.Flatten(child.start_dim, child.end_dim))
    return net


def train_textbook(
    model: str = "lenet5",
    data: str = "fashion-mnist",
    *,
    model_options: dict[str, Any] | None = None,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 0.9,
    resize: int | None = None,
    device: str = "cpu",
    num_workers: int = 0,
    subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
) -> TextbookResult:
    """Train ``model`` with the textbook loop and return its timings and accuracies."""
    from cnnlab.models import create_model

    torch.manual_seed(seed)
    dev = torch.device(device)
    train_ds, test_ds, channels = datasets(data, resize)
    train_ds = _subset(train_ds, subset, seed)
    test_ds = _subset(test_ds, test_subset, seed + 1)
    train_iter = DataLoader(train_ds, batch_size, shuffle=True, num_workers=num_workers)
    test_iter = DataLoader(test_ds, batch_size, shuffle=False, num_workers=num_workers)
    size = resize or (28 if data == "fashion-mnist" else 32)
    net = create_model(
        model, num_classes=10, in_channels=channels, input_size=size, **(model_options or {})
    )
    stock_layers(net)
    net.apply(_xavier)
    net.to(dev)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()

    train_seconds = step_seconds = 0.0
    seen = 0
    t_total = time.perf_counter()
    for _ in range(epochs):
        net.train()
        loss_sum = correct = 0.0
        n = 0
        t_epoch = time.perf_counter()
        for X, y in train_iter:
            t_step = time.perf_counter()
            optimizer.zero_grad()
            X, y = X.to(dev), y.to(dev)
            y_hat = net(X)
            l = loss(y_hat, y)
            l.backward()
            optimizer.step()
            with torch.no_grad():
                loss_sum += l.item() * X.shape[0]
                correct += (y_hat.argmax(dim=1) == y).sum().item()
                n += X.shape[0]
            step_seconds += time.perf_counter() - t_step
        train_seconds += time.perf_counter() - t_epoch
        seen += n
        test_acc = evaluate_accuracy(net, test_iter, dev)
    return TextbookResult(
        model=model,
        data=data,
        device=str(dev),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        train_examples=seen,
        train_seconds=train_seconds,
        examples_per_sec=seen / train_seconds,
        d2l_examples_per_sec=seen / step_seconds,
        total_seconds=time.perf_counter() - t_total,
        train_loss=loss_sum / n,
        train_acc=correct / n,
        test_acc=test_acc,
        num_workers=num_workers,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5")
    p.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist", "cifar10-jpeg"])
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option, e.g. stem=small",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.9)
    p.add_argument("--resize", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=0, help="DataLoader num_workers")
    p.add_argument("--subset", type=int, default=None, help="train on this many images")
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    from cnnlab.config import parse_value

    options = {}
    for item in args.option:
        key, _, value = item.partition("=")
        options[key] = parse_value(value)
    r = train_textbook(
        args.model,
        args.data,
        model_options=options,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        resize=args.resize,
        device=args.device,
        num_workers=args.workers,
        subset=args.subset,
        test_subset=args.test_subset,
    )
    if args.json:
        print(json.dumps(asdict(r), indent=2))
    else:
        print(
            f"loss {r.train_loss:.3f}, train acc {r.train_acc:.3f}, test acc {r.test_acc:.3f}\n"
            f"{r.examples_per_sec:,.0f} examples/sec on {r.device} ({r.train_seconds:.1f} s of training, "
            f"{r.num_workers} loader workers); d2l's timer says {r.d2l_examples_per_sec:,.0f} examples/sec"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
