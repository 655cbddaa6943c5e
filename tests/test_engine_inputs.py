"""Bad inputs to the engine raise errors a user can act on; nets rebuild from their configs."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

from app.meta import MAML, InnerLoop, Learner, TaskBatch, adapt, build_algorithm, build_net


@pytest.mark.parametrize(
    "config",
    [
        {"name": "mlp", "sizes": [1, 40, 40, 1]},
        {"name": "mlp", "sizes": [3, 8, 2]},
        {"name": "conv4", "ways": 5, "channels": 1, "hidden": 64, "size": 28},
    ],
)
def test_net_rebuilds_from_its_config(config: dict) -> None:
    net = build_net(config)
    again = build_net(net.config)
    assert net.config == again.config == {**net.config, **config}
    assert [v.shape for v in net.state_dict().values()] == [v.shape for v in again.state_dict().values()]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"name": "resnet"}, "net name must be one of"),
        ({"name": "mlp", "depth": 3}, "bad options for net 'mlp'"),
        ({"name": "mlp", "sizes": [1]}, "at least an input and an output"),
        ({"name": "conv4", "ways": 1}, "ways >= 2"),
    ],
)
def test_bad_net_configs_are_refused(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_net(config)


def test_bad_algorithm_and_inner_loop_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="algorithm must be one of"):
        build_algorithm("prototypical", InnerLoop())
    with pytest.raises(ValueError, match="inner steps must be an integer >= 0"):
        InnerLoop(steps=-1)
    with pytest.raises(ValueError, match="inner lr must be finite"):
        InnerLoop(lr=float("nan"))
    with pytest.raises(ValueError, match="one inner lr per step"):
        InnerLoop(steps=3, lr=(0.1, 0.2))
    with pytest.raises(ValueError, match="adapts must be"):
        InnerLoop(adapts="body")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one step loss weight per inner step"):
        MAML(InnerLoop(2), step_loss_weights=(1.0,))


@pytest.mark.parametrize(
    ("x", "y", "error", "message"),
    [
        (torch.zeros(5, 2), torch.zeros(5, 1), ValueError, r"support x must have shape \(N, 1\)"),
        (torch.zeros(5, 1), torch.zeros(4, 1), ValueError, "one target per example"),
        (torch.zeros(0, 1), torch.zeros(0, 1), ValueError, "support set is empty"),
        (torch.tensor([[0.0], [float("nan")]]), torch.zeros(2, 1), ValueError, "support x holds non-finite"),
        (torch.zeros(2, 1), torch.tensor([[1.0], [float("inf")]]), ValueError, "support y holds non-finite"),
        (torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1), TypeError, "floating-point"),
        (torch.zeros(2, 1), torch.zeros(2, 3), ValueError, r"support y must have shape \(N, 1\)"),
    ],
)
def test_bad_regression_support_sets_are_refused(
    sinusoid_learner: Learner, x: torch.Tensor, y: torch.Tensor, error: type, message: str
) -> None:
    params = dict(sinusoid_learner.net.named_parameters())
    with pytest.raises(error, match=message):
        adapt(sinusoid_learner, params, x, y, InnerLoop(1, 0.01))


def test_bad_labels_are_refused(conv4_learner: Learner) -> None:
    params = dict(conv4_learner.net.named_parameters())
    x = torch.zeros(3, 1, 28, 28)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        adapt(conv4_learner, params, x, torch.tensor([0, 1, 5]), InnerLoop(1, 0.4))
    with pytest.raises(TypeError, match="integer class label"):
        adapt(conv4_learner, params, x, torch.zeros(3), InnerLoop(1, 0.4))


def test_mismatched_task_batches_are_refused(sinusoid_learner: Learner, sinusoid_batch: TaskBatch) -> None:
    with pytest.raises(ValueError, match="share a non-empty task dimension"):
        TaskBatch(
            sinusoid_batch.support_x,
            sinusoid_batch.support_y,
            sinusoid_batch.query_x[:2],
            sinusoid_batch.query_y[:2],
        )
    broken = TaskBatch(
        sinusoid_batch.support_x,
        sinusoid_batch.support_y,
        sinusoid_batch.query_x,
        sinusoid_batch.query_y[:, :3],
    )
    with pytest.raises(ValueError, match="query y must have one target per example"):
        MAML().meta_loss(sinusoid_learner, dict(sinusoid_learner.net.named_parameters()), broken)


def test_engine_imports_torch_and_numpy_only() -> None:
    """app/meta must run on a machine with nothing but torch, numpy and Python (ARCHITECTURE.md)."""
    engine = Path(__file__).resolve().parents[1] / "app" / "meta"
    allowed = {"torch", "numpy", "app", *sys.stdlib_module_names}
    for path in engine.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for module in modules:
                assert module.split(".")[0] in allowed, f"{path.name} imports {module}"
                if module.startswith("app."):
                    assert module.startswith("app.meta"), (
                        f"{path.name} imports {module} from above the engine"
                    )
