"""The meta-learning engine: torch and numpy only, so it trains, benchmarks and tests on its own.

Parameters are plain ``dict[str, Tensor]`` (``Params``); ``functional.inner_steps`` is the one inner loop;
``algorithms`` holds MAML, first-order MAML, ANIL, Meta-SGD, MAML++ options and Reptile over it.
"""

from app.meta.algorithms import ALGORITHMS, MAML, Algorithm, Reptile, build_algorithm, vectorizes
from app.meta.batch import TaskBatch
from app.meta.evaluate import Estimate, evaluate
from app.meta.functional import InnerLoop, Learner, Params, adapt, inner_steps
from app.meta.nets import NETS, build_net
from app.meta.train import Progress, meta_train

__all__ = [
    "ALGORITHMS",
    "MAML",
    "NETS",
    "Algorithm",
    "Estimate",
    "InnerLoop",
    "Learner",
    "Params",
    "Progress",
    "Reptile",
    "TaskBatch",
    "adapt",
    "build_algorithm",
    "build_net",
    "evaluate",
    "inner_steps",
    "meta_train",
    "vectorizes",
]
