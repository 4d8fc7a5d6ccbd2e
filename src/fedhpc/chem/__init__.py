"""The flagship domain: SMolInstruct-format chemistry tasks, their dataset, its split, and scoring.

- `tasks`: the four tasks (question templates, core tags, RDKit-computed answers).
- `build`: `build_dataset` writes `<out>/<split>/<task>.jsonl` from RDKit's NCI molecules;
  `build_federated` writes `<out>/dataset/` and `<out>/facilities/<name>/train/`.
- `partition`: `iid`, `by_task` and `dirichlet` splits across facilities, and their folders.
- `smolinstruct`: `load_records` for our layout, the real SMolInstruct release and plain JSONL.
- `metrics`: answer extraction between core tags, `score` / `score_all` per task.
- `baselines`: each task's trivial baseline (majority class, training mean, echoed input or most
  frequent training answer), answered as tagged text and scored like a model.
- `bootstrap`: 95% percentile bootstrap intervals over questions, paired with the baseline's.

RDKit is needed only to build; importing this package does not import it.
"""

from fedhpc.chem.build import build_dataset, build_federated
from fedhpc.chem.metrics import canonical_formula, extract_core, score, score_all, task_kind
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
    "build_dataset",
    "build_federated",
    "canonical_formula",
    "extract_core",
    "load_records",
    "parse_facilities",
    "partition",
    "partition_facilities",
    "score",
    "score_all",
    "task_kind",
    "write_facility_dirs",
    "write_split",
]
