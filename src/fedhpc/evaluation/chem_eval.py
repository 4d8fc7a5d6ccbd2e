"""Score a global model on a chemistry dataset's test split, the way SMolInstruct's evaluation does."""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedhpc.chem.metrics import score_all
from fedhpc.chem.smolinstruct import load_records
from fedhpc.config import ModelConfig
from fedhpc.evaluation.generation import generate_answers, load_model

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
    max_new_tokens: int = 32,
    device: str = "cpu",
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """{"scores": {task: {metric: value}}, "examples": n, "seconds": s, "samples": [first few answers]}."""
    started = time.time()
    records = sample_per_task(load_records(data, split=split), limit_per_task)
    model, tokenizer = load_model(model_config, global_dir, torch.device(device))
    predictions = generate_answers(
        model,
        tokenizer,
        [record["input"] for record in records],
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        on_batch=on_batch,
    )
    scores = score_all(predictions, records)
    log.info("evaluated %d examples in %.1f s", len(records), time.time() - started)
    samples = [
        {"task": r["task"], "input": r["input"], "reference": r["output"], "prediction": p}
        for r, p in list(zip(records, predictions))[:: max(1, len(records) // 8)]
    ]
    return {"scores": scores, "examples": len(records), "seconds": round(time.time() - started, 2), "samples": samples}
