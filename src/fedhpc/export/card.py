"""The exported directory's README.md: a model card made from what the run recorded, nothing typed in.

Base model, facilities, rounds, algorithm and, where the exported round was
evaluated (`eval/rNNNN.json`), each task's primary metric with its n, 95%
interval and the trivial baseline's value. A round without scores says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedhpc.export.selection import Selected

FORMS = {
    "adapter": ("peft", "a LoRA adapter (PEFT) for the base model"),
    "merged": ("transformers", "the base model with the LoRA adapters merged into its weights"),
    "full": ("transformers", "every weight of the model (full fine-tuning)"),
}


def model_card(selected: Selected, form: str, base_name: str, dtype: str) -> str:
    """The card's Markdown, with a YAML front matter the Hugging Face Hub reads."""
    library, what = FORMS[form]
    document = selected.experiment
    algorithm = document.get("algorithm") or {}
    facilities = [str(f.get("name")) for f in document.get("facilities") or []]
    lora = selected.model.lora
    training = "full fine-tuning" if selected.model.peft == "none" else (
        f"LoRA r={lora.r}, alpha={lora.alpha:g} on {', '.join(lora.target_modules)}")
    front = ["---", f"library_name: {library}", "tags: [fedhpc, federated-learning]"]
    if _is_hub_id(base_name):
        front.insert(1, f"base_model: {base_name}")
    lines = [
        *front, "---", "",
        f"# {document.get('name', selected.run_dir.root.name)}: round {selected.round}", "",
        f"This directory holds {what}, exported by `fedhpc export` from the run in `{selected.run_dir.root}` "
        f"({selected.how}).", "",
        "| | |", "|---|---|",
        f"| base model | `{base_name}` |",
        f"| facilities | {len(facilities)}: {', '.join(facilities)} |",
        f"| rounds | round {selected.round} exported; {selected.rounds_completed} of "
        f"{algorithm.get('rounds', '?')} completed |",
        f"| algorithm | {algorithm.get('name', '?')}, {algorithm.get('local_steps', '?')} local steps a round, "
        f"lr {algorithm.get('lr', '?')} |",
        f"| training | {training} |",
        f"| weights | {dtype} |",
        "",
        *_scores(selected.run_dir.eval_path(selected.round), selected.round),
        "## Load it", "", "```python", *_loading(form, base_name), "```", "",
    ]
    return "\n".join(lines)


def _scores(path: Path, round: int) -> list[str]:
    if not path.is_file():
        return ["## Evaluation", "", f"Round {round} was not evaluated by the run.", ""]
    results: Mapping[str, Any] = json.loads(path.read_text())
    lenient = " Answers extracted leniently (not LlaSMol's strict extraction)." if results.get("lenient") else ""
    lines = [
        "## Evaluation", "",
        f"Round {round} on the `{results.get('split')}` split of `{results.get('data')}` "
        f"({results.get('examples')} questions).{lenient}", "",
        "| task | metric | value | 95% interval | n | baseline | beats baseline |", "|---|---|---|---|---|---|---|",
    ]
    for task, entry in sorted(results.get("tasks", {}).items()):
        metric = entry["primary"]
        value = entry["metrics"].get(metric, {})
        baseline = entry.get("baseline") or {}
        base_value = (baseline.get("metrics") or {}).get(metric, {}).get("value")
        arrow = "↑" if entry.get("higher_is_better", True) else "↓"
        lines.append(
            f"| {task} | {metric} {arrow} | {_number(value.get('value'))} | {_interval(value.get('ci95'))} | "
            f"{entry.get('n')} | {baseline.get('name', '')} {_number(base_value)} | "
            f"{'yes' if entry.get('beats_baseline') else 'no'} |"
        )
    return [*lines, ""]


def _loading(form: str, base_name: str) -> list[str]:
    if form == "adapter":
        return [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f"base = AutoModelForCausalLM.from_pretrained({base_name!r})",
            "model = PeftModel.from_pretrained(base, 'THIS_DIRECTORY')",
            "tokenizer = AutoTokenizer.from_pretrained('THIS_DIRECTORY')",
        ]
    return [
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        "model = AutoModelForCausalLM.from_pretrained('THIS_DIRECTORY')",
        "tokenizer = AutoTokenizer.from_pretrained('THIS_DIRECTORY')",
    ]


def _is_hub_id(name: str) -> bool:
    """Only a Hub id belongs in `base_model:` (the Hub links it); a local path or ``tiny-llama`` does not."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and not Path(name).exists()


def _number(value: object) -> str:
    return "n/a" if value is None else f"{float(value):.4g}"  # type: ignore[arg-type]


def _interval(ci95: object) -> str:
    if not isinstance(ci95, list) or len(ci95) != 2 or None in ci95:
        return "n/a"
    return f"[{ci95[0]:.4g}, {ci95[1]:.4g}]"
