"""Globus: who fedhpc acts as (Auth), and what it checks before a run touches an endpoint.

`auth` hands out Transfer and Compute clients without ever prompting;
`login` holds the one interactive flow (``fedhpc login``) and ``logout`` /
``whoami``; `facilities` reads the Globus parts of an experiment without
importing globus-sdk, so ``fedhpc validate`` works without the ``globus``
extra; `online_checks` is ``fedhpc validate --online``.
"""
