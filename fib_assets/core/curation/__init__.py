"""The curator loop without Dagster: rank blocks by model uncertainty (:mod:`.uncertainty`),
export the top-K as Paintera proofreading tasks and re-import corrections as the next
ground-truth revision (:mod:`.tasks`), and a simulated curator with an effort model
(:mod:`.simulate`)."""

from fib_assets.core.curation.simulate import (
    EffortModel,
    SimulatedRound,
    TaskCorrection,
    count_edits,
    simulate_corrections,
    write_corrected_container,
)
from fib_assets.core.curation.tasks import (
    PredictionLabelSource,
    ProofreadingTask,
    TaskList,
    export_tasks,
    reimport_task,
    submit_correction,
)
from fib_assets.core.curation.uncertainty import BlockScore, PredictionMaps, rank_blocks, top_k

__all__ = [
    "BlockScore",
    "EffortModel",
    "PredictionLabelSource",
    "PredictionMaps",
    "ProofreadingTask",
    "SimulatedRound",
    "TaskCorrection",
    "TaskList",
    "count_edits",
    "export_tasks",
    "rank_blocks",
    "reimport_task",
    "simulate_corrections",
    "submit_correction",
    "top_k",
    "write_corrected_container",
]
