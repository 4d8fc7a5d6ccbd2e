"""Score a global model on a chemistry dataset's split, the way LlaSMol scores SMolInstruct.

The answers are generated task by task (each task has its own budget of new
tokens, `decoding.max_new_tokens_for`), written as a predictions file, and
scored by the same code `fedhpc score` uses, so the two commands compose.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedhpc.chem.smolinstruct import load_records
from fedhpc.config import Device, ModelConfig
from fedhpc.evaluation.decoding import max_new_tokens_for
from fedhpc.evaluation.generation import generate_answers, load_model
from fedhpc.evaluation.predictions import Prediction
from fedhpc.evaluation.results import gold_records, samples, score_questions, training_answers
from fedhpc.worker.device import resolve_device
from fedhpc.worker.distributed import RankEnv

log = logging.getLogger(__name__)


def sample_per_task(records: list[dict[str, Any]], limit: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """At most `limit` records of each task, chosen by a seeded draw (the same for every round)."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_task[record["task"]].append(record)
    chosen = []
    for task in sorted(by_task):
        items = by_task[task]
        if limit is not None and len(items) > limit:
            items = random.Random(seed).sample(items, limit)
        chosen.extend(items)
    return chosen


def evaluate_chem(
    model_config: ModelConfig,
    global_dir: Path | None,
    data: Path,
    *,
    split: str = "test",
    limit_per_task: int | None = None,
    batch_size: int = 16,
    num_beams: int = 1,
    max_new_tokens: int | Mapping[str, int] | None = None,
    lenient: bool = False,
    device: Device = "cpu",
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], list[Prediction]]:
    """The results document (less `round`, `data` and `split`) and the answers it scored, in question order.

    `max_new_tokens`: one budget for every task, per-family overrides, or None for
    the defaults (`decoding`). `on_batch(done, total)` reports generation progress.
    """
    started = time.time()
    split_records = load_records(data, split=split)
    questions = sample_per_task(split_records, limit_per_task)
    model, tokenizer = load_model(model_config, global_dir, resolve_device(device, RankEnv()))
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, question in enumerate(questions):
        by_task[question["task"]].append(i)
    budgets = {task: max_new_tokens_for(task, questions[ids[0]], max_new_tokens) for task, ids in by_task.items()}
    texts: list[str] = [""] * len(questions)
    done = 0
    for task in sorted(by_task):
        ids = by_task[task]
        answers = generate_answers(
            model,
            tokenizer,
            [questions[i]["input"] for i in ids],
            batch_size=batch_size,
            max_new_tokens=budgets[task],
            num_beams=num_beams,
            on_batch=None if on_batch is None else lambda d, _, base=done: on_batch(base + d, len(questions)),
        )
        for i, text in zip(ids, answers, strict=True):
            texts[i] = text
        done += len(ids)
    answers_per_question = [[text] for text in texts]
    names = sorted(by_task)
    golds = gold_records(data, split, names, split_records)
    tasks = score_questions(questions, answers_per_question, golds, training_answers(data, names), lenient=lenient)
    log.info("evaluated %d questions in %.1f s", len(questions), time.time() - started)
    predictions = [
        Prediction(str(q["task"]), str(q["split"]), int(q["idx"]), q.get("target"), text)
        for q, text in zip(questions, texts, strict=True)
    ]
    result = {
        "examples": len(questions),
        "seconds": round(time.time() - started, 2),
        "lenient": lenient,
        "decoding": {"num_beams": num_beams, "max_new_tokens": dict(sorted(budgets.items()))},
        "tasks": tasks,
        "samples": samples(questions, answers_per_question),
    }
    return result, predictions
