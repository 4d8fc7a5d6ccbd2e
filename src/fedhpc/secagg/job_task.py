"""Secure aggregation's part of a worker task (`WorkerTask.secure_aggregation`) and the files its jobs publish.

Three jobs carry it: a training job (`train`: where the facility's keys live, the round's roster), the
key job (`secagg-keys`: publishes the facility's signed advertisement, once per run) and the unmask job
(`secagg-unmask`: the server's request and the survivors' shares messages; publishes the answer).
"""

from __future__ import annotations

from typing import Any

from fedhpc.secagg.roster import RoundRoster

ADVERT_FILE = "advert.json"
REPLY_FILE = "reply.json"


def train_part(keys_dir: str, roster: RoundRoster) -> dict[str, Any]:
    return {"keys_dir": keys_dir, "roster": roster.to_json()}


def keys_part(keys_dir: str) -> dict[str, Any]:
    return {"keys_dir": keys_dir}


def unmask_part(keys_dir: str, roster: RoundRoster, request: dict[str, Any],
                shares: dict[str, Any]) -> dict[str, Any]:
    return {"keys_dir": keys_dir, "roster": roster.to_json(), "request": request, "shares": shares}
