"""`fedhpc data chem` and `data smolinstruct`: build a chemistry dataset and split it across facilities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fedhpc.cli.common import console, failure
from fedhpc.errors import FedhpcError


def data_chem(
    out: Annotated[Path, typer.Option("--out", help="Output directory (replaced if fedhpc wrote it before).")],
    facilities: Annotated[
        str,
        typer.Option(help="'3' | 'a,b,c' | 'a=0.5,b=0.3' (shares) | 'a=1200,b=600' (counts) | 'a:s2f,b:logp+tpsa' (tasks)"),
    ] = "3",
    scheme: Annotated[Optional[str], typer.Option(help="iid | by_task | dirichlet (default: by_task when tasks are named, else iid)")] = None,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration (smaller: more skewed)")] = 0.5,
    seed: int = 0,
    max_molecules: Annotated[Optional[int], typer.Option(help="Use only the first N molecules")] = None,
    balanced: Annotated[
        bool, typer.Option("--balanced", help="As many Yes as No records in every split of each yes/no task")
    ] = False,
) -> None:
    """Build a SMolInstruct-format chemistry dataset from RDKit's molecules, split across facilities.

    With tasks named in --facilities, only those tasks are built."""
    from fedhpc.chem.build import build_federated

    from fedhpc.errors import DataError

    try:
        result = build_federated(
            out, facilities, scheme=scheme, alpha=alpha, seed=seed, max_molecules=max_molecules, balanced=balanced
        )
    except DataError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e
    except FedhpcError as e:
        raise failure(e) from e
    Console().print(f"wrote {out}/dataset (train/dev/test) and {out}/facilities/<name>/train")
    Console().print_json(data={k: v for k, v in result.items() if k in ("facilities", "counts", "scheme")})


def data_smolinstruct(
    release: Annotated[
        Path, typer.Option("--release", help="The extracted SMolInstruct data.zip (data/ or its parent).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output directory (replaced if fedhpc wrote it before).")],
    facilities: Annotated[
        str,
        typer.Option(help="'a,b' | 'a=0.5,b=0.3' | 'a=1200,b=600' | 'a=360:s2f+esol,b:sider' (tasks; a count left "
                          "out: every record of them)"),
    ],
    partition: Annotated[
        Optional[str],
        typer.Option(help="by_task | iid | dirichlet:ALPHA (default: by_task when tasks are named, else iid)"),
    ] = None,
    seed: int = 0,
    selfies: Annotated[bool, typer.Option("--selfies", help="Read raw_selfies/ (SELFIES) instead of raw/.")] = False,
) -> None:
    """Build training and evaluation data from the real SMolInstruct release, split across facilities."""
    from fedhpc.chem.release_build import build_from_release, summary_lines
    from fedhpc.errors import DataError

    try:
        result = build_from_release(release, out, facilities, partition=partition, seed=seed, selfies=selfies)
    except DataError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e
    except FedhpcError as e:
        raise failure(e) from e
    Console().print(
        f"wrote {out}/dataset (train, dev, test, test_subset) and {out}/facilities/<name>/train "
        f"({result['scheme']}, seed {seed}{', SELFIES' if selfies else ''})", highlight=False, soft_wrap=True
    )
    for line in summary_lines(result):
        Console().print(line, highlight=False, soft_wrap=True)
