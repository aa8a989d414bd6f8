"""`recstack shard ...`: table pools and tasks, planners, measured placement cost, TorchRec plans, bench."""

from __future__ import annotations

import typer

from recstack.shard.cli_bench import bench_cmd
from recstack.shard.cli_measure import measure_cmd
from recstack.shard.cli_plan import export_torchrec_cmd, import_torchrec_cmd, plan_cmd
from recstack.shard.cli_pool import pool_cmd, tasks_cmd

app = typer.Typer(no_args_is_help=True)
app.command("pool")(pool_cmd)
app.command("tasks")(tasks_cmd)
app.command("plan")(plan_cmd)
app.command("measure")(measure_cmd)
app.command("export-torchrec")(export_torchrec_cmd)
app.command("import-torchrec")(import_torchrec_cmd)
app.command("bench")(bench_cmd)
