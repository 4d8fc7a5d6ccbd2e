"""Secure aggregation: the server learns the sum of the facilities' updates, not any one of them.

Double masking after Bonawitz et al. (CCS 2017), built for tens of facilities; docs/secure-aggregation.md
states the protocol, its threat model and its costs. The modules, one job each:

- `signed.py`: canonical JSON, base64 and Ed25519 signatures on every message;
- `keys.py`: a facility's long-term keys (created once in its own directory), its signed advertisement,
  and the server's trust-on-first-use pins;
- `roster.py`: one round's participants and parameters, and the per-round secrets two facilities agree on;
- `fixed_point.py`: floats to the ring Z_2^64 and back, with the range that keeps a sum from wrapping;
- `prg.py`: a seed expanded, tensor by tensor, into a uint64 mask (ChaCha20);
- `masking.py`: the facility's masked update (self mask and pair masks);
- `shares.py`: the self-mask seed's Shamir shares, encrypted to each participant, signed, checked;
- `upload.py`: the masked update as it crosses to the server, and the server's check of it;
- `unmask_reply.py`: the facility's answer to the server's unmask request;
- `unmasking.py`: the server's side: check the answers, rebuild the seeds, strip the masks off the sum;
- `job_task.py`: secure aggregation's part of a worker task and the files its short jobs publish.

Torch-free on purpose (numpy and `cryptography` only), so a short unmask job starts fast.
"""
