"""Worker types, one module each; `KINDS` is the dispatch `main` uses."""

from orchestrator.roles import WorkerType
from orchestrator.worker.types.aggregated import AggregatedWorker
from orchestrator.worker.types.base import WorkerKind
from orchestrator.worker.types.decode import DecodeWorker
from orchestrator.worker.types.embedding import EmbeddingWorker
from orchestrator.worker.types.prefill import PrefillWorker

KINDS: dict[WorkerType, type[WorkerKind]] = {
    WorkerType.aggregated: AggregatedWorker,
    WorkerType.prefill: PrefillWorker,
    WorkerType.decode: DecodeWorker,
    WorkerType.embedding: EmbeddingWorker,
}

__all__ = ["KINDS", "WorkerKind"]
