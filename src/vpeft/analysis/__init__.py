"""Do PEFT methods with similar accuracy make the same mistakes? Per-task prediction analysis.

For one task this module reads every method's final test predictions and writes six tables to
``runs/<study>/<task>/analysis/``:

``agreement``          per ordered method pair: prediction agreement, Jaccard overlap of the error
                       sets, and the both-wrong / only-one-right fractions (fractions in [0, 1]).
``accuracy``           per method: test top-1, the val200 top-1 of the selected grid point, mean
                       confidence and 15-bin ECE (all in %, confidence as a fraction).
``oracle``             one row: % of test examples that at least one method gets right.
``ensembles``          one row per (members rule, combiner): the ensemble's test top-1 and its gain
                       over the best member and over the member with the best val200 top-1.
``confidence``         per method: confident (max prob >= threshold) right/wrong counts and a
                       10-bin histogram of the max probability, over all test examples
                       (``hist_i``) and split into right (``hist_right_i``) and wrong
                       (``hist_wrong_i``) predictions; all three are fractions of the whole test
                       set, so ``hist_right_i + hist_wrong_i == hist_i``.
``confident_overlap``  per ordered method pair: Jaccard overlap of the confidently-right and of
                       the confidently-wrong example sets, their intersections' sizes, and the
                       number of examples ``method_a`` is confidently right on while ``method_b``
                       is confidently wrong (where combining the two can help most).

Conventions:

* Members of ``top{k}_by_val`` ensembles are chosen by ``best_val_top1`` from ``selection.json``
  only (ties: the methods' given order); test labels never choose anything. Test accuracy appears
  only as a reported outcome (e.g. ``oracle.best_single``).
* A Jaccard overlap of two empty sets is 1.0 (the two methods agree perfectly on the empty set),
  so the columns never hold NaN.
* A method whose final run diverged (no test rows, non-finite logits) is excluded from every table;
  it is listed, with the reason, in each table's schema metadata under :data:`METADATA_KEY`.
* Softmax is computed in float64 after subtracting the row maximum; argmax ties go to the lowest
  class id. Everything is deterministic.

Memory: :func:`run_task_analysis` streams (:func:`analyze_files`). Pass 1 reads each method's
file on its own, a block of rows at a time (checks, saved predictions); pass 2 reads every usable
method's logits in lockstep, :data:`WORK_BYTES` worth of examples at a time, computing each
softmax once per block and adding it to every ensemble that holds the method. Only per-example
outcomes (predictions, max probability) of every method are kept, never a methods x examples x
classes array, so the peak is about 0.35 GB for sun397 and 16 methods (it was 2.1 GB);
:func:`memory_mb` is what a job asks the scheduler for. Every per-element sum takes the members
in the same order as before, whatever the block size, so the tables are bit-identical to the
all-in-memory computation (``tests/test_analysis_memory.py``).
"""
from vpeft.analysis.analyze import analysis_dir, analyze_files, analyze_task, run_task_analysis
from vpeft.analysis.ensembles import COMBINERS, ensemble_predict, softmax, top_k_by_val
from vpeft.analysis.memory import PLANNING_NUM_TEST, WORK_BYTES, memory_mb, planned_num_test
from vpeft.analysis.predictions import AnalysisInputError, TaskPredictions, load_task_predictions
from vpeft.analysis.tables import (ECE_BINS, HIST_BINS, HIST_PREFIXES, METADATA_KEY, SCHEMAS,
                                   TABLES, expected_calibration_error, table_metadata,
                                   write_task_analysis)

__all__ = [
    "COMBINERS",
    "ECE_BINS",
    "HIST_BINS",
    "HIST_PREFIXES",
    "METADATA_KEY",
    "PLANNING_NUM_TEST",
    "SCHEMAS",
    "TABLES",
    "AnalysisInputError",
    "WORK_BYTES",
    "TaskPredictions",
    "analysis_dir",
    "analyze_files",
    "analyze_task",
    "ensemble_predict",
    "expected_calibration_error",
    "load_task_predictions",
    "memory_mb",
    "planned_num_test",
    "run_task_analysis",
    "softmax",
    "table_metadata",
    "top_k_by_val",
    "write_task_analysis",
]
