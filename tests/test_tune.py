"""`tvmopt tune` on the CPU with tiny budgets: records, resume, Ctrl-C, kill -9, RPC, bad input."""

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import models
import records
import tvmopt
from conftest import assert_one_line_error, empty_database, free_port
from tvmopt import build, plot, prepare, runtime, targets, tuning
from tvmopt.database import open_database

TVMOPT = [sys.executable, "-m", "tvmopt"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return models.tiny_conv(tmp_path_factory.mktemp("tune") / "tiny_conv.onnx")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny):
    """One 32-trial tune shared by the tests that read its results."""
    db = tmp_path_factory.mktemp("tuned") / "team.db"
    proc = subprocess.run([*TVMOPT, "tune", str(tiny), "--target", "host", "--trials", "32",
                           "--batch-size", "16", "--db", str(db), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return db, json.loads(proc.stdout), proc.stderr


def test_tune_stores_records_and_reports_tasks(tuned, tiny):
    db, report, stderr = tuned
    assert report["trials_total"] == report["trials_this_run"] == 32
    (task,) = report["tasks"]
    assert task["name"].startswith("fused_conv2d") and task["flops"] > 0 and task["weight"] == 1
    assert task["best_sec"] > 0 and task["gflops"] > 0 and task["tensor_core"] is False
    assert set(report["seconds"]) == {"search", "build", "measure", "database", "tactics"}
    # Progress lines when not a terminal. The baseline (here the plain loop nest) is measured
    # first, so the estimate exists from the first line; then a small first round, then a full one.
    lines = [line for line in stderr.splitlines() if line.startswith("tasks ")]
    assert [line.split()[3] for line in lines] == ["1/32", "17/32", "32/32"]
    assert "est. latency ?" not in lines[0] and "ETA" in lines[0]
    assert task["best_sec"] <= task["baseline_sec"]
    with open_database(db, readonly=True) as store:
        (run,) = list(store.db["runs"].rows)
        measured = store.count_records() + store.db["failures"].count
        best = min(r["mean_sec"] for r in store.db["records"].rows)
        devices = {r["device"] for r in store.db["records"].rows}
    assert measured == 32 and run["trials"] == 32 and run["ended_at"]
    assert "tvmopt tune" in run["command"] and run["model_sha256"]
    assert best == pytest.approx(task["best_sec"])
    assert devices and "" not in devices


def _with_a_faster_schedule(db, tiny, tmp_path):
    """A copy of the tuned database plus a schedule faster than its baseline: whether 32 trials
    of search beat the default schedule is up to the search, which may not."""
    from tvmopt.tasks import extract_tasks

    copy = tmp_path / "faster.db"
    with sqlite3.connect(db) as source, sqlite3.connect(copy) as dest:
        source.backup(dest)
    host = targets.resolve("host")
    (task,) = extract_tasks(prepare.prepare(tiny, host).mod, host.tvm_target())
    with open_database(copy) as store:
        fastest = min(r["mean_sec"] for r in store.db["records"].rows if r["mean_sec"])
        records.commit_schedule(store, task, host.tvm_target(), fastest / 2, tuned=True)
    return copy


def test_tuned_build_takes_the_kernel_from_the_record(tuned, tiny, tmp_path):
    db = _with_a_faster_schedule(tuned[0], tiny, tmp_path)
    host = targets.resolve("host")
    tuned_lib = build.build(tiny, host, tmp_path / "tuned.so", db_path=db)
    untuned_lib = build.build(tiny, host, tmp_path / "untuned.so", db_path=empty_database(
        tmp_path / "empty.db"))
    assert len(tuned_lib.tuned) == 1 and untuned_lib.tuned == []
    (task,) = tuned_lib.tasks
    kernels = [k for k, t in tuned_lib.manifest["kernels"].items() if t == task.name]
    assert kernels and all(tuned_lib.manifest["kernel_providers"][k] == "tuned" for k in kernels)
    assert all(untuned_lib.manifest["kernel_providers"][k] == "default" for k in kernels)
    model = tvmopt.load(tuned_lib.path)
    x = runtime.random_inputs(model.inputs)
    (m,) = runtime.compare(model(x), runtime.onnxruntime_outputs(tiny, x))
    assert m.max_rel < 1e-4


def test_profile_marks_the_tuned_kernel(tuned, tiny, tmp_path, invoke):
    db, report = _with_a_faster_schedule(tuned[0], tiny, tmp_path), tuned[1]
    lib = build.build(tiny, targets.resolve("host"), tmp_path / "tuned.so", db_path=db).path
    result = invoke("profile", lib, "--json", "--repeat", "5")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["kernels"]
    (task,) = report["tasks"]
    tuned_rows = [r for r in rows if r["tuned"]]
    assert tuned_rows and all(r["task"] == task["name"] for r in tuned_rows)
    assert all(r["provider"] == "tuned" for r in tuned_rows)


def test_db_plot_draws_the_tuning_curves(tuned, tmp_path, invoke):
    db, report, _ = tuned
    with open_database(db, readonly=True) as store:
        (key,) = [s["target_key"] for s in store.stats()]
        tasks, model = plot.tuning_curves(store, key)
    (curve,) = tasks
    (task,) = report["tasks"]
    assert curve.label == f"{task['name']} (x{task['weight']})"  # weight from the tune run
    assert curve.trials[-1] == 32  # failed trials count as trials too
    assert curve.best_ms == sorted(curve.best_ms, reverse=True)  # best-so-far never rises
    assert curve.best_ms[-1] == pytest.approx(task["best_sec"] * 1e3)
    assert model.best_ms[-1] == pytest.approx(task["weight"] * task["best_sec"] * 1e3)
    out = tmp_path / "curve.png"
    result = invoke("db", "plot", "--db", db, "-o", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_one_line_error(invoke("db", "plot", "--db", db, "-o", out, "--target", "cuda-sm80"),
                          "no records for cuda-sm80")


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_db_plot_replaces_only_its_own_charts(tuned, tmp_path, invoke, fmt):
    """Reliability cases P01-P04, P06: a user's file, the database being read, a symlink and a
    directory are refused before anything is written; an earlier chart is replaced."""
    db = tmp_path / f"plotdb.{fmt}"  # a database whose name looks like a chart
    shutil.copy(tuned[0], db)
    draft = tmp_path / f"report.{fmt}"
    draft.write_text("my thesis draft")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / f"link.{fmt}"
    link.symlink_to(victim)
    for out, fragment in [(draft, "is not a tvmopt plot"), (db, "the tuning database in use"),
                          (link, "symbolic link"), (f"{tmp_path}/plots/", "names a directory"),
                          (tmp_path / "chart.txt", "ending in .png, .svg, .pdf")]:
        assert_one_line_error(invoke("db", "plot", "--db", db, "-o", out), fragment)
    assert draft.read_text() == "my thesis draft" and victim.read_text() == "keep me"
    with open_database(db, readonly=True) as store:
        assert store.count_records() > 0  # still a database
    chart = tmp_path / f"chart.{fmt}"
    for _ in range(2):  # the second run replaces the first run's chart
        result = invoke("db", "plot", "--db", db, "-o", chart)
        assert result.exit_code == 0, result.output
    assert plot.is_plot(chart) and not plot.is_plot(draft)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_db_plot_and_merge_read_a_file_from_before_run_tasks(tuned, tmp_path, invoke):
    db, report, _ = tuned
    old = tmp_path / "old.db"
    shutil.copy(db, old)
    with sqlite3.connect(old) as conn:  # as schema m001 wrote it
        conn.execute("DROP TABLE run_tasks")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm002_run_tasks'")
    with open_database(old, readonly=True) as store:
        (key,) = [s["target_key"] for s in store.stats()]
        (curve,), _ = plot.tuning_curves(store, key)
    assert curve.trials[-1] == 32 and curve.label.endswith("(x1)")  # no weights recorded
    assert invoke("db", "plot", "--db", old, "-o", tmp_path / "old.png").exit_code == 0
    result = invoke("db", "merge", old, "--db", tmp_path / "new.db")
    assert result.exit_code == 0, result.output


def test_rerun_resumes_and_warm_starts(tuned, tiny, invoke):
    db, _, _ = tuned
    result = invoke("tune", tiny, "--target", "host", "--trials", "32", "--db", db)
    assert result.exit_code == 0, result.output
    assert "already spent" in result.output
    result = invoke("tune", tiny, "--target", "host", "--trials", "40", "--batch-size", "8",
                    "--db", db, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["trials_total"] == 40 and report["trials_this_run"] == 8
    assert "warm start: cost model trained on" in result.output


def _wait_for_progress(proc, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        # after a search round (with -v and more, the log puts a time and a name first)
        if re.search(r"(^|INFO )tasks \d+/\d+ ", line) and line.rstrip().endswith("]"):
            return line
    raise AssertionError("no progress line from tvmopt tune")


def _measured(db) -> tuple[int, int, int, str | None]:
    """(records, failures, trials the run counted, when it ended) of a one-run database."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        records, failures = (conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                             for t in ("records", "failures"))
        trials, ended = conn.execute("SELECT trials, ended_at FROM runs").fetchone()
    return records, failures, trials, ended


@pytest.mark.parametrize("how, code", [("terminal Ctrl-C", 130), ("SIGTERM", 143)])
def test_a_stop_signal_finishes_the_batch_and_prints_resume(tiny, tmp_path, how, code):
    """A terminal sends Ctrl-C to the whole process group, workers included; `timeout` and
    systemd send SIGTERM. Either way the batch in flight is measured, not lost as failures."""
    db = tmp_path / "int.db"
    proc = subprocess.Popen([*TVMOPT, "tune", str(tiny), "--target", "host", "--trials", "500",
                             "--batch-size", "8", "--db", str(db)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_progress(proc)
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert "stopped: interrupted after the current batch" in out and "Traceback" not in err
    assert f"resume with: tvmopt tune {tiny}" in err
    records, failures, trials, ended = _measured(db)
    # The baseline, then whole rounds of 8.
    assert failures == 0 and records == trials and (trials - 1) % 8 == 0 and trials >= 9 and ended


def test_a_second_ctrl_c_stops_at_once_and_still_prints_resume(tiny, tmp_path):
    db = tmp_path / "int.db"
    proc = subprocess.Popen([*TVMOPT, "-vv", "tune", str(tiny), "--target", "host", "--trials",
                             "500", "--batch-size", "8", "--db", str(db)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_progress(proc)
    for line in proc.stderr:  # the next round is being built and measured: it takes seconds
        if "building and measuring" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    for line in proc.stderr:  # the first is acknowledged; the second lands in the same round
        if "stopping after the current batch" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "internal error" not in err and "Traceback" not in err
    assert f"stopped at once; resume with: tvmopt -vv tune {tiny}" in err
    records, failures, trials, ended = _measured(db)
    assert records + failures == trials == 1 + 8 and ended  # the baseline and the first round


def test_kill_9_tuner_keeps_committed_records(tiny, tmp_path):
    db = tmp_path / "killed.db"
    proc = subprocess.Popen([*TVMOPT, "tune", str(tiny), "--target", "host", "--trials", "500",
                             "--batch-size", "8", "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = _wait_for_progress(proc)
    committed = int(line.split("trials ")[1].split("/")[0])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open_database(db) as store:
        assert store.count_records() + store.db["failures"].count >= committed
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_tune_through_rpc_tracker_and_two_servers(tiny, tmp_path, rpc_tracker, invoke):
    db = tmp_path / "rpc.db"
    result = invoke("tune", tiny, "--target", "host", "--trials", "16", "--batch-size", "8",
                    "--db", db, "--rpc-tracker", rpc_tracker, "--rpc-key", "tvmopt-test", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tasks"][0]["best_sec"] > 0
    with open_database(db, readonly=True) as store:
        devices = {r["device"] for r in store.db["records"].rows}
    assert devices == {f"rpc:tvmopt-test@{rpc_tracker}"}


def test_time_budget_and_shared_anchor_tuning(tmp_path):
    """Two kernels with one anchor conv are searched once; the winner is measured on both. The
    run stops when the next round would not fit in the budget (patience too large to stop it
    first: how soon a small search converges depends on the machine)."""
    # one pixel wide: the default schedule cannot vectorise the convs, so the search finds a new
    # best to share
    model = models.shared_anchor(tmp_path / "shared.onnx", size=16, width=1)
    db = tmp_path / "t.db"
    report = tuning.tune(model, targets.resolve("host"), db_path=db, options=tuning.TuneOptions(
        trials=100000, batch_size=8, time_budget_s=60, patience=10**6)).as_dict()
    assert report["stop_reason"].startswith("time budget reached")
    # A round that started within the budget may end past it, by about one round: bounded by
    # this run's own round time, so a slow or busy machine (longer rounds) is not a failure.
    rounds = max(1, (report["trials_this_run"] - 2) // 8)  # after the two baselines
    busy = sum(report["seconds"][k] for k in ("search", "build", "measure", "database"))
    per_round = busy / rounds
    assert report["elapsed_s"] <= 60 + 2 * per_round, (report["elapsed_s"], per_round)
    leader, sibling = report["tasks"]
    assert sibling["finished"] == f"tuned with {leader['name']}"
    # the leader: baseline + search rounds; the sibling: baseline + one transfer per new best
    assert leader["trials"] >= 1 + 8 and leader["trials"] > sibling["trials"] > 1
    assert sibling["best_sec"] < sibling["baseline_sec"]
    lib = build.build(model, targets.resolve("host"), tmp_path / "m.so", db_path=db)
    assert set(lib.manifest["kernel_providers"].values()) == {"tuned"}
    x = runtime.random_inputs(tvmopt.load(lib.path).inputs)
    (m,) = runtime.compare(tvmopt.load(lib.path)(x), runtime.onnxruntime_outputs(model, x))
    assert m.max_rel < 1e-4


def test_a_measured_baseline_alone_builds_as_untuned(tiny, tmp_path, invoke):
    db = tmp_path / "b.db"
    result = invoke("tune", tiny, "--target", "host", "--trials", "1", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    (task,) = json.loads(result.stdout)["tasks"]
    assert task["trials"] == 1 and task["best_sec"] == task["baseline_sec"] > 0
    lib = build.build(tiny, targets.resolve("host"), tmp_path / "m.so", db_path=db)
    assert lib.tuned == [] and set(lib.manifest["kernel_providers"].values()) == {"default"}


def test_trials_0_measures_library_tactics_only(tmp_path, tiny, invoke):
    """No kernel library on a CPU: nothing to measure, no TIR baseline or search either."""
    from tvmopt.database import open_database

    db = tmp_path / "t.db"
    result = invoke("tune", tiny, "--target", "host", "--trials", "0", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "--trials 0" in report["stop_reason"] and report["trials_this_run"] == 0
    with open_database(db, readonly=True) as store:
        assert store.db["records"].count == 0


# --- bad input --------------------------------------------------------------------------------


def test_unreachable_tracker_fails_fast(tiny, invoke):
    start = time.monotonic()
    result = invoke("tune", tiny, "--target", "host", "--rpc-tracker", f"127.0.0.1:{free_port()}",
                    "--rpc-key", "gpu")
    assert_one_line_error(result, "unreachable")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("args,fragment", [
    (["--target", "tpu-v9"], "unknown target"),
    (["--target", "host", "--trials", "-1"], "--trials must be 0 (kernel-library tactics only)"),
    (["--target", "host", "--time-budget", "soon"], "--time-budget"),
    (["--target", "host", "--rpc-key", "gpu"], "go together"),
    (["--target", "host", "--rpc-tracker", "nowhere", "--rpc-key", "gpu"], "HOST:PORT"),
])
def test_bad_tune_arguments(tiny, invoke, args, fragment):
    assert_one_line_error(invoke("tune", tiny, *args), fragment)


def test_model_without_tunable_task(tmp_path, invoke):
    path = models.data_movement_only(tmp_path / "dm.onnx")
    assert_one_line_error(invoke("tune", path, "--target", "host"), "no tunable task")


def test_a_changed_default_schedule_is_measured_with_the_budget_spent(tmp_path, tiny, invoke):
    """A database tuned before the default schedule changed holds records but none of what the
    build now gives the kernel untuned: `tune` measures that baseline although the trial budget
    is spent, and the build keeps whichever is faster (here the default, the old record being
    slow); a second tune then has nothing to do."""
    from tvmopt.tasks import extract_tasks

    host = targets.resolve("host")
    (task,) = extract_tasks(prepare.prepare(tiny, host).mod, host.tvm_target())
    db = tmp_path / "old.db"
    with open_database(db) as store:
        records.commit_schedule(store, task, host.tvm_target(), 1.0, tuned=True)
    tune = ["tune", tiny, "--target", "host", "--trials", "1", "--db", db, "--json"]
    result = invoke(*tune)
    assert result.exit_code == 0, result.output
    (measured,) = json.loads(result.stdout)["tasks"]
    assert 0 < measured["baseline_sec"] < 1.0 and measured["best_sec"] == measured["baseline_sec"]
    lib = build.build(tiny, host, tmp_path / "m.so", db_path=db)
    assert lib.tuned == [] and set(lib.manifest["kernel_providers"].values()) == {"default"}
    again = json.loads(invoke(*tune).stdout)
    assert again["stop_reason"].startswith("the budget of 1 trials is already spent")
