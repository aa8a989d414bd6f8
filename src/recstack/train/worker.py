"""Entry point for launchers:
`torchrun --standalone --nproc-per-node N -m recstack.train.worker CONFIG --data DIR --out RUN`.

Takes the same arguments as `recstack train`; each process runs one rank (rank 0 writes RUN).
"""

from __future__ import annotations

import sys

import typer

from recstack.train.cli import train

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(train)


def main(argv: list[str] | None = None) -> None:
    from recstack.errors import RecstackError

    try:
        app(args=argv, prog_name="recstack.train.worker", standalone_mode=True)
    except RecstackError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
