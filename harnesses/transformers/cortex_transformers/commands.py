"""The harness's commands on the ``cortex`` command line (entry point group ``cortex.commands``).

``cortex demo-model DIR`` is this harness's: the core CLI finds it through the entry point and
imports this module only when the command is named or listed, so ``cortex`` itself imports no
harness. torch is imported when the command runs, not when it is listed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click


@click.command("demo-model")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=click.Choice(["tiny", "small"]), default="tiny", show_default=True)
@click.option("--fim", is_flag=True, help="Give its tokenizer fill-in-the-middle tokens.")
@click.option("--embed", is_flag=True, help="Write the tiny embedding model instead.")
def demo_model(directory: Path, seed: int, size: str, fim: bool, embed: bool) -> None:
    """Write the built-in demo model (random weights, local tokenizer) to DIRECTORY."""
    from cortex_transformers.demo import write_demo_embedding_model, write_demo_model

    if embed:
        path = write_demo_embedding_model(directory, seed=seed)
    else:
        path = write_demo_model(directory, seed=seed, size=size, fim=fim)  # type: ignore[arg-type]
    logging.getLogger("cortex").info("demo model written to %s", path)
    click.echo(str(path))
