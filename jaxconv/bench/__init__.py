"""The benchmark suite: jaxconv's convolutions against the einsum reference and peers.

``jaxconv bench`` (or ``python -m benchmarks``) runs named suites — layer shapes from LeNet,
ResNet (CIFAR and 224x224), MobileNetV2 and special cases, forward and backward; and model
train steps — and writes ``results.json`` (after every row), ``report.md`` and PNG plots.

The building blocks are public for scripts and tests: :func:`measure` (warm-up, compile apart,
median/min/max), :func:`agreement` (relative error against the reference),
:func:`matmul_ceiling`, :func:`collect_environment`, :func:`cpu_model`, the suites
(:data:`LAYER_SUITES`, :data:`MODEL_SUITES`, :class:`ConvCase`) and the report renderers.
"""

from jaxconv.bench._cases import LAYER_SUITES as LAYER_SUITES
from jaxconv.bench._cases import MODES as MODES
from jaxconv.bench._cases import ConvCase as ConvCase
from jaxconv.bench._env import DATASHEET_PEAKS as DATASHEET_PEAKS
from jaxconv.bench._env import collect_environment as collect_environment
from jaxconv.bench._env import cpu_model as cpu_model
from jaxconv.bench._env import datasheet_peak as datasheet_peak
from jaxconv.bench._env import matmul_ceiling as matmul_ceiling
from jaxconv.bench._harness import Agreement as Agreement
from jaxconv.bench._harness import Timing as Timing
from jaxconv.bench._harness import agreement as agreement
from jaxconv.bench._harness import default_tolerance as default_tolerance
from jaxconv.bench._harness import measure as measure
from jaxconv.bench._models import MODEL_SUITES as MODEL_SUITES
from jaxconv.bench._report import render_markdown as render_markdown
from jaxconv.bench._report import write_report as write_report
from jaxconv.bench._runner import all_suites as all_suites
from jaxconv.bench._runner import execute as execute

__all__ = [
    "LAYER_SUITES",
    "MODES",
    "MODEL_SUITES",
    "DATASHEET_PEAKS",
    "Agreement",
    "ConvCase",
    "Timing",
    "agreement",
    "all_suites",
    "collect_environment",
    "cpu_model",
    "datasheet_peak",
    "default_tolerance",
    "execute",
    "matmul_ceiling",
    "measure",
    "render_markdown",
    "write_report",
]
