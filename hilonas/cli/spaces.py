"""``hilonas space list|show``: the shipped search spaces and what one can produce."""
from __future__ import annotations

import typer

from hilonas.mixers import MIXERS

# A stage's `mixer` field takes these values; the list comes from the registry, never written out here.
MIXERS_EPILOG = "Mixers (a stage's mixer field): " + "; ".join(f"{s.name}: {s.description}" for s in MIXERS.values())

app = typer.Typer(no_args_is_help=True, help="Search spaces: list the shipped ones, show one.", epilog=MIXERS_EPILOG)


@app.command("list")
def space_list() -> None:
    """The search spaces shipped with hilonas."""
    from hilonas.spaces import SearchSpace, packaged_spaces

    for name in sorted(packaged_spaces()):
        space = SearchSpace.load(name)
        typer.echo(f"{name:14s} {space.size():>12,} architectures  {len(space.enumerate_blocks()):>4} blocks  "
                   f"{space.description}")


@app.command("show", epilog=MIXERS_EPILOG)
def space_show(space: str = typer.Argument(..., help="a shipped space name or a YAML path"),
               blocks: bool = typer.Option(False, "--blocks", help="also list every distinct latency block")) -> None:
    """Check a space and print its choices (and its blocks with --blocks)."""
    from hilonas.spaces import SearchSpace

    sp = SearchSpace.load(space)
    typer.echo(sp.describe())
    keys = sp.enumerate_blocks()
    typer.echo(f"  {len(keys)} distinct blocks; references: {', '.join(r for r, _ in sp.references) or 'none'}")
    if blocks:
        for k in keys:
            typer.echo(f"    {k.id}")
