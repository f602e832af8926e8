"""Typer options shared by the ``optsteps`` commands."""

import typer

ParamsOpt = typer.Option("params.yaml", "--params", help="The params file (one source of configuration).")
