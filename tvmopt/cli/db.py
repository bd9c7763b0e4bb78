"""`tvmopt db`: inspect and share the tuning database."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import TvmoptError
from .app import cli, db_option, echo_json, table

@cli.group()
def db():
    """Inspect and share the tuning database (SQLite; see --db / TVMOPT_DB).

    Many processes on one host can tune into one file at once. Across hosts, copy files and
    `tvmopt db merge` them: SQLite's WAL mode is not safe on a network filesystem.
    """


def _open_db(db_path, readonly=False):
    from ..database import open_database

    return open_database(db_path, readonly=readonly)


def _us(seconds) -> str:
    return f"{seconds * 1e6:.1f}"


@db.command("stats")
@db_option
@click.option("--json", "as_json", is_flag=True)
def db_stats(db_path, as_json):
    """Per target: workloads, records, failures and the best latency of each workload."""
    with _open_db(db_path, readonly=True) as store:
        stats = store.stats()
        path = store.path
    if as_json:
        echo_json({"path": str(path), "targets": stats})
        return
    if not stats:
        click.echo(f"{path}: no tuning records yet")
        return
    for t in stats:
        click.echo(f"{t['target_key']}: {t['workloads']} workloads, {t['records']} records, "
                   f"{t['failures']} failed candidates")
        rows = [[b["workload_id"], b["name"] or "", b["ir_sha256"][:12], b["records"],
                 _us(b["best_sec"])] for b in t["best"]]
        click.echo(table(rows, ["id", "task", "ir sha256", "records", "best µs"]) + "\n")
        if t["layers"]:
            click.echo(f"{t['target_key']}: {t['tactic_records']} tactic records, "
                       f"{t['tactic_failures']} failed tactics")
            rows = [[l["layer_key"], l["provider"], l["tactic"], l["records"], _us(l["best_sec"])]
                    for l in t["layers"]]
            click.echo(table(rows, ["layer", "library", "best tactic", "records", "best µs"])
                       + "\n")


@db.command("show")
@click.argument("workload")
@db_option
@click.option("--top", default=5, show_default=True, help="Records shown per target.")
@click.option("--ir", "show_ir", is_flag=True, help="Also print the workload's TIR.")
def db_show(workload, db_path, top, show_ir):
    """One workload (by id, IR-hash prefix or task name): its best records per target."""
    with _open_db(db_path, readonly=True) as store:
        matches = store.find_workloads(workload)
        if not matches:
            raise TvmoptError(f"no workload matches {workload!r}; `tvmopt db stats` lists them")
        if len(matches) > 1:
            raise TvmoptError(f"{workload!r} matches {len(matches)} workloads (ids "
                              f"{', '.join(str(m['id']) for m in matches[:10])}); give an id")
        w = matches[0]
        records = store.workload_records(w["id"], top)
        ir_text = store.load_workload_mod(w["id"]).script() if show_ir else None
    click.echo(f"workload {w['id']}  {w['name'] or ''}\n  ir sha256  {w['ir_sha256']}\n"
               f"  shash      {w['shash']}\n  first seen {w['created_at']}")
    rows = [[r["target_key"], _us(r["mean_sec"]), r["device"] or "", r["tvm_version"],
             (r["run_uid"] or "")[:12], r["created_at"]] for r in records]
    click.echo(table(rows, ["target", "µs", "device", "tvm", "run", "measured at"])
               if rows else "  no successful records")
    if ir_text:
        click.echo(ir_text)


@db.command("merge")
@click.argument("other", type=click.Path(dir_okay=False, path_type=Path))
@db_option
def db_merge(other, db_path):
    """Add another tvmopt database's records (idempotent; provenance kept)."""
    with _open_db(db_path) as store:
        added = store.merge_from(other)
    click.echo(f"merged {other}: {added.summary()}")  # rows added, and any skipped and why


@db.command("prune")
@click.option("--keep", type=int, required=True, help="Records kept per workload and target.")
@db_option
def db_prune(keep, db_path):
    """Delete all but the best N records of each workload (and tactics of each library layer)
    on each target."""
    with _open_db(db_path) as store:
        records, tactics = store.prune(keep)
    click.echo(f"deleted {records} records and {tactics} tactic records, kept the best {keep} "
               "per workload (and per library layer) and target")


@db.command("export")
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json", show_default=True,
              help="json: TVM's JSONDatabase files, usable by plain MetaSchedule.")
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False, path_type=Path))
@db_option
def db_export(fmt, out, db_path):
    """Write database_workload.json and database_tuning_record.json into a directory, and the
    kernel-library tactic records beside them (tvmopt_tactic_records.json)."""
    from ..database.store import is_export
    from ..outputs import check_output, written_whole

    with _open_db(db_path, readonly=True) as store:
        out = check_output(out, flag="-o", kind="tvmopt export", replaceable=is_export,
                           directory=True, example="export", protected=_database_files(store))
        with written_whole(out, directory=True) as partial:
            n_workloads, n_records, n_tactics = store.export_json(partial)
    click.echo(f"exported {n_workloads} workloads, {n_records} records and {n_tactics} tactic "
               f"records to {out}")


@db.command("import")
@click.argument("directory", type=click.Path(path_type=Path))
@db_option
def db_import(directory, db_path):
    """Read TVM JSONDatabase files (database_workload.json, database_tuning_record.json), and
    tactic records where an export wrote them."""
    with _open_db(db_path) as store:
        counts = store.import_json(directory)
    click.echo(f"imported from {directory}: {counts['added']} records added, "
               f"{counts['duplicate']} already present, {counts['failure']} failed candidates, "
               f"{counts['invalid']} with a latency of zero or less and {counts['no_target']} "
               f"without a target skipped; tactic records: {counts['tactics_added']} added, "
               f"{counts['tactics_duplicate']} already present, {counts['tactics_invalid']} "
               "invalid skipped")


@db.command("plot")
@db_option
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="Image to write (PNG, SVG or PDF, from the suffix).")
@click.option("--target", "target", default=None,
              help="Target key (as `db stats` shows) or preset [default: the only one].")
def db_plot(db_path, out, target):
    """Best latency against trials, per task and for the model (needs matplotlib)."""
    from ..outputs import check_output, written_whole
    from ..plot import FORMATS, choose_target, is_plot, plot_tuning

    with _open_db(db_path, readonly=True) as store:
        out = check_output(out, flag="-o", kind="tvmopt plot", replaceable=is_plot,
                           example="tuning.png", protected=_database_files(store))
        if out.suffix.lower().lstrip(".") not in FORMATS:
            raise TvmoptError(f"-o {out}: give a file name ending in "
                              + ", ".join(f".{f}" for f in FORMATS) + " (the image format)")
        key = choose_target(store, target)
        with written_whole(out) as partial:
            n = plot_tuning(store, key, partial)
    click.echo(f"wrote {out}: {n} task curves and the model estimate for {key}")


def _database_files(store):
    return [(f"{store.path}{end}", "the tuning database in use") for end in ("", "-wal", "-shm")]

