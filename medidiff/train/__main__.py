"""``python -m medidiff.train`` / ``torchrun --nproc_per_node=N -m medidiff.train ...``."""

import typer

from ..commands.train import train


def main() -> None:
    typer.run(train)


if __name__ == "__main__":
    main()
