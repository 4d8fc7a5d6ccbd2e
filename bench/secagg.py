"""Benchmark secure aggregation's cost: masking at a facility, unmasking at the server, and the bytes.

    .venv/bin/python bench/secagg.py --facilities 10 --params 20e6 --tensors 64 [--dropped 1]

A LoRA-sized tensor set (P parameters in T equal fp32 tensors, values ~N(0, 0.01)) per facility, K
facilities with keys in a temporary directory. Timed, on this machine's CPU, one facility at a time:

- `mask_s`: one facility's `MaskedRound.mask` over every tensor (encode + self mask + K-1 pair masks);
- `shares_s` / `shares_bytes`: its signed, encrypted shares message (JSON);
- `reply_s` / `reply_bytes`: its answer to the unmask request (decrypting K shares, revealing seeds);
- `server_sum_s`: the server adding the K' = K - dropped masked updates (uint64), tensor by tensor;
- `server_unmask_s`: rebuilding the K' self-mask seeds and removing K' self masks and K'·dropped pair
  masks from the sum;
- `masked_update_bytes` vs `plain_update_bytes`: 8 bytes per parameter in Z_2^64 vs 4 (fp32).

Prints one JSON line; `max_abs_error` is the decoded sum's largest distance from the float64 plain sum.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from fedhpc.secagg.fixed_point import FixedPoint
from fedhpc.secagg.keys import FacilityKeys, KeyPins
from fedhpc.secagg.masking import MaskedRound
from fedhpc.secagg.roster import RoundRoster
from fedhpc.secagg.unmask_reply import unmask_reply
from fedhpc.secagg.unmasking import Unmasker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facilities", type=int, default=10)
    parser.add_argument("--params", type=float, default=20e6)
    parser.add_argument("--tensors", type=int, default=64)
    parser.add_argument("--dropped", type=int, default=1, help="facilities that drop before masking")
    args = parser.parse_args()
    count, per_tensor = args.facilities, int(args.params) // args.tensors
    names = [f"site-{i:02d}" for i in range(count)]
    with tempfile.TemporaryDirectory() as tmp:
        keys = {name: FacilityKeys.load_or_create(name, Path(tmp) / name) for name in names}
        pins = KeyPins()
        for name in names:
            pins.accept(keys[name].advertisement(), facility=name)
        roster = RoundRoster(run_id="bench", round=1, threshold=max(count // 2 + 1, math.ceil(2 * count / 3)),
                             fixed_point=FixedPoint(), participants={name: pins.get(name) for name in names})
        tensor_names = [f"layers.{i}.lora" for i in range(args.tensors)]
        survivors = names[args.dropped:]
        rng = np.random.default_rng(0)
        plain_sum = {t: np.zeros(per_tensor) for t in tensor_names}
        masked_sum: dict[str, np.ndarray] = {}
        shares, mask_s, shares_s, sum_s = {}, [], [], 0.0
        for name in survivors:  # one facility's tensors at a time, as each facility would hold only its own
            update = {t: (rng.standard_normal(per_tensor) * 0.01).astype(np.float32) for t in tensor_names}
            for t, values in update.items():
                plain_sum[t] += values
            masking = MaskedRound(keys[name], roster)
            started = time.perf_counter()
            masked = {t: masking.mask(t, values) for t, values in update.items()}
            mask_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            shares[name] = masking.share_message()
            shares_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            for t, values in masked.items():
                if t in masked_sum:
                    masked_sum[t] += values
                else:
                    masked_sum[t] = values.copy()
            sum_s += time.perf_counter() - started
        unmasker = Unmasker(roster, shares)
        request = unmasker.request()
        reply_s, reply_bytes = [], 0
        for name in survivors:
            started = time.perf_counter()
            reply = unmask_reply(keys[name], roster, request, shares)
            reply_s.append(time.perf_counter() - started)
            reply_bytes = len(json.dumps(reply))
            unmasker.accept(name, reply)
        started = time.perf_counter()
        error = max(float(np.max(np.abs(unmasker.unmask(t, masked_sum[t]) - plain_sum[t]))) for t in tensor_names)
        unmask_s = time.perf_counter() - started
    params = per_tensor * args.tensors
    print(json.dumps({
        "bench": "secagg", "facilities": count, "dropped": args.dropped, "threshold": roster.threshold,
        "params": params, "tensors": args.tensors,
        "mask_s": round(float(np.median(mask_s)), 3), "shares_s": round(float(np.median(shares_s)), 4),
        "shares_bytes": len(json.dumps(next(iter(shares.values())))),
        "reply_s": round(float(np.median(reply_s)), 4), "reply_bytes": reply_bytes,
        "server_sum_s": round(sum_s, 3), "server_unmask_s": round(unmask_s, 3),
        "masked_update_bytes": 8 * params, "plain_update_bytes": 4 * params,
        "max_abs_error": error, "error_bound": len(survivors) * 2.0 ** -(roster.fixed_point.fractional_bits + 1),
    }))


if __name__ == "__main__":
    main()
