"""Which class each explanation is about: the prediction, the true label, or a fixed class."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cnnlab.errors import ExplainError

#: What ``target`` may be: a keyword, a class index or name, or one index per image.
Target = str | int | Sequence[int] | torch.Tensor

KEYWORDS = ("pred", "true")


def _allowed(classes: Sequence[str] | None, num_classes: int) -> str:
    names = (
        f", a class name ({', '.join(map(str, classes[:4]))}{', ...' if len(classes) > 4 else ''})"
    )
    return f"pred, true, a class index 0..{num_classes - 1}" + (names if classes else "")


def _class_index(target: str | int, classes: Sequence[str] | None, num_classes: int) -> int:
    """A single class given by name or index; names win over digits (class '3' may not be index 3)."""
    if isinstance(target, str):
        if classes is not None and target in classes:
            return list(classes).index(target)
        try:
            target = int(target)
        except ValueError:
            raise ExplainError(
                f"target {target!r} is not allowed; use {_allowed(classes, num_classes)}"
            ) from None
    if isinstance(target, bool) or not 0 <= int(target) < num_classes:
        raise ExplainError(
            f"target {target!r} is not allowed; use {_allowed(classes, num_classes)}"
        )
    return int(target)


def resolve_targets(
    target: Target,
    logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    classes: Sequence[str] | None = None,
) -> torch.Tensor:
    """One class index per image (int64, on the logits' device).

    Args:
        target: ``"pred"`` (the model's top class), ``"true"`` (needs ``labels``), a class
            index or name (the same for every image), or one index per image.
        logits: N x K model outputs, used for ``pred`` and for the number of classes.
        labels: N true labels, when known.
        classes: class names, index = label, for targets given by name.

    Raises:
        ExplainError: unknown class, ``true`` without labels, or a wrong number of indices.
    """
    n, k = logits.shape
    device = logits.device
    if isinstance(target, str) and target.lower() in KEYWORDS:
        if target.lower() == "pred":
            return logits.argmax(1)
        if labels is None:
            raise ExplainError(
                "target 'true' needs the true labels, which image files do not have; "
                "use pred or a class"
            )
        true = torch.as_tensor(labels, dtype=torch.int64, device=device).reshape(-1)
        if true.numel() != n:
            raise ExplainError(f"got {true.numel()} labels for {n} images; give one per image")
        return true
    if isinstance(target, str | int):
        return torch.full((n,), _class_index(target, classes, k), dtype=torch.int64, device=device)
    per_image = torch.as_tensor(target, dtype=torch.int64, device=device).reshape(-1)
    if per_image.numel() != n:
        raise ExplainError(f"got {per_image.numel()} targets for {n} images; give one per image")
    if per_image.numel() and (int(per_image.min()) < 0 or int(per_image.max()) >= k):
        raise ExplainError(f"targets must be class indices 0..{k - 1}, got {per_image.tolist()}")
    return per_image
