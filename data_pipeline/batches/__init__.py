"""Layer 5, batches: the Grain input pipeline (sequences -> padded or packed numpy batches).

Modules: `grain_pipeline` (the pipeline and its batch contract), `packing` (length buckets,
first-fit packing), `augment` (seeded image augmentation), `chain_coverage` (how much of each
stage a config trains) and `pipeline_benchmark` (throughput by worker count).
"""

from data_pipeline.batches.grain_pipeline import (
    BATCH_FIELDS,
    PipelineConfig,
    build_eval_iterator,
    build_train_iterator,
)

__all__ = ["BATCH_FIELDS", "PipelineConfig", "build_eval_iterator", "build_train_iterator"]
