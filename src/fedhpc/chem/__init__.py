"""The flagship domain: SMolInstruct-format chemistry tasks, their dataset, its split, and scoring.

- `tasks`: the RDKit-answered tasks (question templates, core tags, answers computed from the molecule).
- `build`: `build_dataset` writes `<out>/<split>/<task>.jsonl` from RDKit's NCI molecules;
  `build_federated` writes `<out>/dataset/` and `<out>/facilities/<name>/train/`.
- `partition`: `iid`, `by_task` and `dirichlet` splits across facilities, and their folders.
- `smolinstruct`: `load_records` for our layout, the real SMolInstruct release and plain JSONL;
  `release` reads the release itself and `release_build` splits it across facilities.
- `extraction`: LlaSMol's strict answer extraction between core tags (`lenient=True`: tolerant).
- `metrics`: LlaSMol's scoring of the 14 SMolInstruct tasks and ours: `prepare` reads and
  compares every answer once, `aggregate` makes a task's metrics of any selection of
  questions, `score_task` does both; `primary_metric` is the number that stands for a task.
- `baselines`: each task's trivial baseline (majority class, training mean, echoed input or most
  frequent training answer), answered as tagged text and scored like a model.
- `bootstrap`: 95% percentile bootstrap intervals over questions, paired with the baseline's.

RDKit (building, SMILES scoring) and NLTK (captions) are imported only when used: importing
this package imports neither, so the worker can read records without them.
"""

from fedhpc.chem.build import build_dataset, build_federated
from fedhpc.chem.metrics import (
    aggregate,
    canonical_formula,
    extract_core,
    prepare,
    primary_metric,
    score_task,
    task_family,
)
from fedhpc.chem.partition import (
    FacilitySpec,
    parse_facilities,
    partition,
    partition_facilities,
    write_facility_dirs,
)
from fedhpc.chem.smolinstruct import load_records, write_split
from fedhpc.chem.tasks import ALL_TASKS, TASKS, TaskSpec

__all__ = [
    "ALL_TASKS",
    "TASKS",
    "FacilitySpec",
    "TaskSpec",
    "aggregate",
    "build_dataset",
    "build_federated",
    "canonical_formula",
    "extract_core",
    "load_records",
    "parse_facilities",
    "partition",
    "partition_facilities",
    "prepare",
    "primary_metric",
    "score_task",
    "task_family",
    "write_facility_dirs",
    "write_split",
]
