"""Task kinds: what the model predicts, its loss and how it is measured.

A task kind (beside the method and the model) is one module here with a registered
`TaskKind` subclass; `config.task_kind` names it ("classification" today). The engine asks it
  * `num_outputs(data_task)`: the size of the model's output head (classes);
  * `loss(logits, batch)`: the scalar training loss of one batch, over its mask == 1 rows
    (jit-traced inside the train step);
  * `eval_sums(logits, batch)`: per-batch sums of a metric's sufficient statistics over the
    real rows, e.g. {'correct', 'count', 'loss'}; they are added over batches and processes
    (the arrays of a global batch), never averaged per batch;
  * `metrics(sums)`: the metric values from the totals, e.g. {'top1', 'loss'};
  * `metric_names`: what `metrics` returns (what `config.evals.<name>.metrics` may ask for).
A dense kind (segmentation) takes per-pixel logits [B, H, W, C] and labels [B, H, W] with
an ignore index; its `eval_sums` returns a [C, C] confusion matrix (summed over batches and
processes like every sum) and `metrics` derives mIoU from the total matrix. `eval_sums` must
return 'count' (examples seen), so evaluation can check that every example counted once.
"""

from heat_jax.tasks.base import TaskKind, available_task_kinds, get_task_kind, register_task_kind
from heat_jax.tasks import classification  # noqa: F401  (registers "classification")
from heat_jax.tasks import segmentation  # noqa: F401,E402  (registers "segmentation")

__all__ = ["TaskKind", "available_task_kinds", "get_task_kind", "register_task_kind"]
