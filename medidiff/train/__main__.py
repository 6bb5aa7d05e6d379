"""``python -m medidiff.train`` / ``torchrun --nproc_per_node=N -m medidiff.train ...``."""

import typer

from .cli import train


def main() -> None:
    typer.run(train)


if __name__ == "__main__":
    main()
