"""torchrun with gloo on the CPU: two processes, fake data, a tiny model."""
import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sbattn
from sbattn.data import load_cifar10
from sbattn.errors import UserError
from sbattn.records import RunPaths
from sbattn.records.rundir import run_lock
from sbattn.train.evaluation import evaluate

sys.path.insert(0, str(Path(__file__).parent))
from _runs import run_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# augment none and a modest learning rate, so that one and two processes can be compared step for step; batch 64,
# 16 steps an epoch: two ranks on two cores pay for each collective (the synchronised BatchNorm's 28 a step) in
# context switches, 40% of the file's CPU time at batch 32
ARGS = ["--device=cpu", "--dataset=fake", "--width=0.0625", "--batch_size=64", "--precision=fp32", "--epochs=3",
        "--milestones=[2]", "--seed=0", "--augment=none", "--init_lr=0.02", "--dist-timeout=60"]
RUN = run_name(*ARGS)
# Four ranks, more so: two epochs of 8 steps
FOUR = ["--epochs=2", "--milestones=[1]", "--batch_size=128"]
RUN_FOUR = run_name(*ARGS, *FOUR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(out, nproc, *extra):
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
                f"--master_port={free_port()}"] if nproc > 1 else []
    return [sys.executable, "-W", "ignore", *launcher, "-m", "sbattn", "train", *ARGS, f"--output-dir={out}", *extra]


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run(out, nproc, *extra):
    proc = subprocess.run(command(out, nproc, *extra), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def history(out, name=RUN):
    return json.loads((out / f"{name}.json").read_text())["history"]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    out = tmp_path_factory.mktemp("two")
    proc = run(out, 2)
    return out, proc


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    out = tmp_path_factory.mktemp("four")
    proc = run(out, 4, *FOUR)
    return out, proc


def test_two_processes_write_the_files_once(two):
    out, proc = two
    assert len((out / "results.txt").read_text().splitlines()) == 1
    assert proc.stdout.count("final test accuracy") == 1  # progress from rank 0 only
    assert sorted(p.suffix for p in out.iterdir()) == [".csv", ".json", ".png", ".pth", ".txt"]


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """The recipe trained by one plain process (no torchrun)."""
    out = tmp_path_factory.mktemp("one")
    run(out, 1)
    return out


def test_two_processes_follow_one_process(two, one):
    one, both = history(one), history(two[0])
    for a, b in zip(one, both):
        for key in ("train_loss", "eval_loss"):
            # The global batch split and batch norm synchronised: only rounding differs, and it grows with the
            # steps (5e-4 after the first epoch, 1e-3 after the third); a wrong gradient scale or an unsynchronised
            # statistic moves the losses by percents.
            assert b[key] == pytest.approx(a[key], rel=2.5e-3), key
        assert b["lr"] == a["lr"]


def test_eval_accuracy_counts_every_sample_once(two):
    out, _ = two
    model = sbattn.load(out / f"{RUN}.pth")
    data = load_cifar10(dataset="fake")
    x = torch.from_numpy(data.test_images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        correct = (model(x).argmax(1).numpy() == data.test_labels).sum()
    assert history(out)[-1]["eval_acc"] == pytest.approx(correct / len(x), abs=1e-9)


def _evaluate_on_rank(rank, world_size, init, n, result):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = sbattn.vgg16(width=0.0625).eval()
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    evaluation = evaluate(model, images, labels, batch_size=8, rank=rank, world_size=world_size)
    from sbattn.train.distributed import _where  # what a rank that stops answering now is said to be in
    result[rank] = (evaluation.loss, evaluation.acc), _where["collective"]
    dist.destroy_process_group()


def test_evaluate_sums_counts_not_averages(tmp_path):
    n = 37  # shards of 19 and 18: averaging per-rank accuracies would be wrong
    torch.manual_seed(0)
    model = sbattn.vgg16(width=0.0625).eval()
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    expected = evaluate(model, images, labels, batch_size=8)
    expected = (expected.loss, expected.acc)
    result = mp.Manager().dict()
    mp.spawn(_evaluate_on_rank, args=(2, f"file://{tmp_path}/rendezvous", n, result), nprocs=2)
    for rank in (0, 1):
        assert result[rank][0] == pytest.approx(expected, rel=1e-6)
        assert result[rank][1] == "the evaluation's sums (all_reduce)"


def test_killed_two_process_run_resumes_identically(two, tmp_path):
    """kill -9 of torchrun's whole process group. Its workers, in sessions of their own, outlive it; told by the
    kernel that their agent died (PR_SET_PDEATHSIG), they take the SIGTERM path: checkpoint at the ranks' next step
    agreement, release the lock, exit. Until they have, a resume is refused, naming the leftover; the test waits
    for them to be gone, then the resume finishes as the uninterrupted run."""
    said = tmp_path / "killed-job.out"
    with said.open("w") as sink:  # the workers write to the agent's standard output, which they inherit
        proc = subprocess.Popen(command(tmp_path, 2), cwd=ROOT, env=ENV, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    ckpt, ends = tmp_path / f"{RUN}.ckpt", {}
    try:
        deadline = time.time() + 120
        while not ckpt.exists():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        # Children of the agent's main thread: the kernel's signal follows the thread that started a process.
        workers = [_rank_process(proc.pid, rank) for rank in (0, 1)]
        ends = {worker: os.pidfd_open(worker) for worker in workers}  # not this process's children: no wait()
        for worker in workers:
            os.kill(worker, signal.SIGSTOP)  # held still: rank 0 holds the lock while the resume asks for it
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        with pytest.raises(UserError) as refused, run_lock(RunPaths(tmp_path, RUN)):
            pass
        assert (f"pid {workers[0]}, a worker of a torchrun job whose agent (pid {proc.pid}) is gone, still holds "
                f"{tmp_path / RUN}.lock: a leftover of the killed job" in str(refused.value)), str(refused.value)
        assert "within 60 s (its --dist-timeout) at most" in str(refused.value)
        for worker in workers:
            os.kill(worker, signal.SIGCONT)
        left = running(ends, seconds=60)
        assert not left, f"workers {left} still running 60 s after their agent was killed"
    finally:  # nothing left behind, whatever failed
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for worker in running(ends, seconds=0):
            os.kill(worker, signal.SIGKILL)
        for fd in ends.values():
            os.close(fd)
    out = said.read_text()
    assert f"SIGTERM (the torchrun agent that started this process, pid {proc.pid}, is gone): stopped at epoch " in out
    assert "resume with: torchrun --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=" in out  # the agent's
    assert not (tmp_path / f"{RUN}.json").exists() and not (tmp_path / f"{RUN}.lock").exists()
    run(tmp_path, 2, "--resume")
    drop = {"seconds", "images_per_sec", "eval_seconds"}
    strip = lambda h: [{k: v for k, v in e.items() if k not in drop} for e in h]  # noqa: E731
    assert strip(history(tmp_path)) == strip(history(two[0]))


def running(ends: dict[int, int], seconds: float) -> list[int]:
    """Which of the processes (pid: its pidfd) are still running after up to `seconds`: a pidfd becomes readable
    when its process ends, whoever its parent is, and never names another process that took the pid since."""
    deadline = time.monotonic() + seconds
    while True:
        ready, _, _ = select.select(list(ends.values()), [], [], max(0.0, min(0.2, deadline - time.monotonic())))
        left = [pid for pid, fd in ends.items() if fd not in ready]
        if not left or time.monotonic() >= deadline:
            return left


def test_a_lock_held_by_a_worker_whose_agent_is_gone_is_named_a_leftover_of_the_killed_job(tmp_path):
    """What the lock says when another process holds it: a torchrun worker whose agent lives is another training;
    one whose parent is no longer the agent it recorded is the leftover of a killed job, which stops by itself."""
    paths = RunPaths(tmp_path, RUN)
    with run_lock(paths, (os.getppid(), 300.0)):  # this process, a worker of its parent
        with pytest.raises(UserError, match=rf"^another process \(pid {os.getpid()}\) is training "):
            with run_lock(paths):
                pass
    gone = os.getppid() + 1  # the agent this process recorded, which is no longer its parent
    with run_lock(paths, (gone, 300.0)):
        with pytest.raises(UserError) as refused, run_lock(paths):
            pass
    assert str(refused.value).startswith(f"pid {os.getpid()}, a worker of a torchrun job whose agent (pid {gone}) "
                                         f"is gone, still holds {paths.lock}: a leftover of the killed job, not "
                                         f"another training"), str(refused.value)
    assert "within 300 s (its --dist-timeout) at most: run this again once it has" in str(refused.value)
    assert not paths.lock.exists()


def test_a_worker_follows_its_agent_and_starts_nothing_when_the_agent_died_before_it_asked(monkeypatch):
    """Under torchrun the worker asks for SIGTERM at its agent's death; the agent dead before the kernel took
    the request (this process's parent no longer the one it had at its start): one line, nothing trained."""
    from sbattn.train import process as agent
    asked = []
    monkeypatch.setattr(agent, "_ask_for_a_signal_at_parent_death", lambda signum: asked.append(signum) or True)
    monkeypatch.setattr(agent, "_followed", None)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert agent.follow_agent() is None and asked == []  # not started by torchrun's agent: nothing asked
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setattr(agent, "_STARTED_BY", os.getppid())
    assert agent.follow_agent() == os.getppid() and asked == [signal.SIGTERM] and not agent.agent_gone()
    monkeypatch.setattr(agent, "_STARTED_BY", os.getppid() + 1)
    with pytest.raises(UserError, match=rf"the torchrun agent that started this process \(pid "
                                                      rf"{os.getppid() + 1}\) has gone .*nothing was trained"):
        agent.follow_agent()


def test_a_repeated_sigterm_asks_the_same_stop_and_a_second_ctrl_c_stops_at_once():
    """A worker whose agent dies gets a SIGTERM for each of the agent's threads as they end: one stop, whose
    checkpoint no later SIGTERM cuts short; a second Ctrl-C still stops at once."""
    from sbattn.train.process import StopRequest
    stop = StopRequest()
    with stop.installed():
        try:
            for _ in range(3):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)  # the handler runs here
        except KeyboardInterrupt:
            pytest.fail("a repeated SIGTERM stopped at once, cutting the first one's checkpoint short")
        assert stop.signal == signal.SIGTERM and stop.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)


def test_a_sigterm_after_the_stop_leaves_the_process_to_end_with_130():
    """Once a run stopped (its checkpoint written), a further SIGTERM or SIGHUP before the process exits must not
    kill it with 143: the handlers nothing else had set stay ignoring them; an unstopped run restores them."""
    from sbattn.train.process import StopRequest
    previous = {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with StopRequest().installed():
            pass
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # nothing stopped: as it was
        with StopRequest().installed():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # the handler runs here
        assert signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)  # with the default restored, this would end the test's process
        time.sleep(0.01)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def test_a_closed_terminal_stops_the_run_as_sigterm_does():
    """SIGHUP (the terminal or ssh session that started the run closed) asks the same stop at a step's end, with
    its checkpoint and resume line, not Python's default death."""
    from sbattn.train.process import StopRequest
    stop = StopRequest()
    with stop.installed():
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.01)  # the handler runs here
        assert stop.signal == signal.SIGHUP and stop.name == "SIGHUP"


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (torchrun's agent: its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


@pytest.mark.parametrize("ranks, extra, step", [
    ("two", (), "0"), ("four", (*FOUR, "--checkpoint-steps=4"), "[1-9][0-9]*")],
    ids=["from-the-epochs-end", "four-ranks-at-the-step"])
def test_a_worker_killed_mid_epoch_is_restarted_by_torchrun_and_the_run_resumes_by_itself(request, tmp_path, ranks,
                                                                                          extra, step):
    """torchrun --max-restarts=1: one worker SIGKILLed mid-epoch; the agent restarts them all, which continue from
    the last checkpoint without being told (TORCHELASTIC_RESTART_COUNT) and finish bit for bit as the uninterrupted
    run: from the epoch's start, or with --checkpoint-steps from the last such step. At four ranks the restarted
    DDP's first step lays its gradient buckets out as a new DDP does: the averaging must not depend on it."""
    uninterrupted, nproc, name = request.getfixturevalue(ranks), {"two": 2, "four": 4}[ranks], run_name(*ARGS, *extra)
    argv = command(tmp_path, nproc, *extra)
    argv.insert(argv.index(f"--nproc_per_node={nproc}") + 1, "--max-restarts=1")
    proc, ckpt = started_until_its_checkpoint(argv, tmp_path, name)
    time.sleep(0.3 if not extra else 0.0)  # into epoch 2; or just after a checkpoint inside epoch 1
    workers = children(proc.pid)
    assert len(workers) == nproc, workers
    os.kill(workers[-1], signal.SIGKILL)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    assert "torchrun restarted the workers (restart 1): continuing from the last checkpoint" in out
    assert re.search(rf"resuming {name} at epoch [0-9]+, step {step}\n", out), out[-2000:]
    drop = {"seconds", "images_per_sec", "eval_seconds"}
    strip = lambda h: [{k: v for k, v in e.items() if k not in drop} for e in h]  # noqa: E731
    assert strip(history(tmp_path, name)) == strip(history(uninterrupted[0], name))
    a, b = (torch.load(d / f"{name}.pth", weights_only=True)["state_dict"] for d in (tmp_path, uninterrupted[0]))
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert len((tmp_path / "results.txt").read_text().splitlines()) == 1


def two_agents(out: Path, node_flags=((), ())) -> list[subprocess.CompletedProcess]:
    """Two torchrun agents on loopback, one process each, meeting at a c10d rendezvous: two "nodes" of one
    machine; `node_flags`: each node's extra sbattn options."""
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    for node, flags in enumerate(node_flags):
        argv = [sys.executable, "-W", "ignore", "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
                "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", "--rdzv_id=sbattn-test",
                "-m", "sbattn", "train", *ARGS, f"--output-dir={out}", *flags]
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    done = []
    for proc in procs:
        out_text, err_text = proc.communicate(timeout=240)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out_text, err_text))
    return done


def test_two_agents_on_loopback_train_as_the_two_process_run(two, tmp_path):
    nodes = two_agents(tmp_path)
    assert all(p.returncode == 0 for p in nodes), [p.stdout[-1500:] + p.stderr[-1500:] for p in nodes]
    drop = {"seconds", "images_per_sec", "eval_seconds"}
    strip = lambda h: [{k: v for k, v in e.items() if k not in drop} for e in h]  # noqa: E731
    assert strip(history(tmp_path)) == strip(history(two[0]))
    assert sum(p.stdout.count("final test accuracy") for p in nodes) == 1  # rank 0 speaks, on one of the nodes


def test_a_node_joining_an_elastic_job_continues_the_run_with_both(tmp_path):
    """torchrun --nnodes=1:2 on loopback (c10d, TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, which torch 2.13's agents need
    for a join): one node trains alone, its worker killed once and restarted (its agent's restart count 1); a
    second node joins inside epoch 2 (its count 0). The first agent stops its worker (SIGTERM: a checkpoint inside
    the epoch, by one process); the new round's two workers meet although their agents' counts differ, continue the
    run by themselves from the end of epoch 1, kept aside for this, and finish it; the run records both sizes."""
    args = [*ARGS, f"--output-dir={tmp_path}", "--checkpoint-steps=4"]
    endpoint, env = f"127.0.0.1:{free_port()}", {**ENV, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    launch = [sys.executable, "-W", "ignore", "-m", "torch.distributed.run", "--nnodes=1:2", "--nproc_per_node=1",
              "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", "--rdzv_id=sbattn-join", "--max-restarts=1",
              "--monitor-interval=0.2", "--rdzv-conf=last_call_timeout=1", "-m", "sbattn", "train", *args]
    logs = [open(tmp_path / f"node{n}.log", "w+") for n in (0, 1)]
    said = lambda: "".join(log.seek(0) or log.read() for log in logs)  # noqa: E731
    deadline = time.time() + 180

    def wait_for(done):
        while not done():
            assert first.poll() is None and time.time() < deadline, said()[-3000:]
            time.sleep(0.02)

    first = subprocess.Popen(launch, cwd=ROOT, env=env, stdout=logs[0], stderr=subprocess.STDOUT, text=True)
    ckpt, kept = tmp_path / f"{RUN}.ckpt", tmp_path / f"{RUN}.ckpt.epoch-end"
    wait_for(ckpt.exists)
    (worker,) = children(first.pid)
    os.kill(worker, signal.SIGKILL)
    wait_for(kept.exists)  # the restarted worker inside epoch 2: epoch 1's end kept aside
    (worker,) = children(first.pid)
    os.kill(worker, signal.SIGSTOP)  # held there until the second node is in (the run is short)
    stops = said().count("closing signal SIGTERM")
    second = subprocess.Popen(launch, cwd=ROOT, env=env, stdout=logs[1], stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: said().count("closing signal SIGTERM") > stops)  # the first agent saw the new node
    os.kill(worker, signal.SIGCONT)
    codes = [p.wait(timeout=240) for p in (first, second)]
    assert codes == [0, 0], said()[-4000:]
    assert "torchrun restarted the workers (restart 1)" in said() and "SIGTERM: stopped at epoch 2, step" in said()
    assert f"going on from the end of epoch 1 ({kept})" in said() and "resuming with 2 process(es)" in said()
    record = json.loads((tmp_path / f"{RUN}.json").read_text())
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3]
    sessions = [*record["summary"]["earlier_sessions"], record["summary"]["provenance"]]
    assert [s["processes"] for s in sessions] == [1, 1, 2]
    assert all(s["torchrun_job"] == "sbattn-join" for s in sessions)
    assert not kept.exists() and not ckpt.exists()
    assert len((tmp_path / "results.txt").read_text().splitlines()) == 1


@pytest.mark.parametrize("flags, differences", [
    (("--init_lr=0.03",), [("init_lr", "0.03", "0.02")]),
    (("--checkpoint-steps=4", "--sync-bn=false"), [("checkpoint_steps", "4", "0"), ("sync_bn", "False", "True")])])
def test_ranks_started_with_different_recipes_stop_at_the_start_with_one_line(tmp_path, flags, differences):
    """The recipe, and the options that change the collectives or the result (a checkpoint every K steps, synced
    BatchNorm), must be every rank's: else one line names each option and both values, printed once."""
    nodes = two_agents(tmp_path, node_flags=((), flags))
    assert all(p.returncode != 0 for p in nodes)
    said = [line for p in nodes for line in p.stderr.splitlines() if line.startswith("sbattn train: ")]
    # which node's process is rank 0 is the rendezvous' choice
    def named(there: int) -> str:  # each option with the node-with-flags' value there (1) or on rank 0 (2)
        return "; ".join(f"{d[0]} {d[there]} there, {d[3 - there]} on rank 0" for d in differences)
    either = [f"was started differently from rank 0 ({named(there)}" for there in (1, 2)]
    assert len(said) == 1 and any(words in said[0] for words in either), (said, either)
    assert not any(tmp_path.glob(f"{RUN}.*")), sorted(tmp_path.iterdir())  # nothing written, nor left behind


def test_suites_refuse_torchrun_with_a_message(monkeypatch, capsys):
    from sbattn.cli import main
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["compare", "--dataset=fake"]) == 2
    assert "torchrun" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")  # every rank refuses, rank 0 alone says so
    assert main(["compare", "--dataset=fake"]) == 2 and capsys.readouterr().err == ""


def test_a_run_checkpointed_at_an_epochs_end_by_one_process_continues_with_two(tmp_path):
    """As an elastic job that comes back with another number of processes: the same recipe continues, with fresh
    augmentation streams, and says so."""
    proc = subprocess.Popen(command(tmp_path, 1), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt, deadline = tmp_path / f"{RUN}.ckpt", time.time() + 120
    while not ckpt.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert torch.load(ckpt, weights_only=True)["step"] == 0  # an epoch's end
    done = run(tmp_path, 2, "--resume")
    assert "resuming with 2 process(es) a run checkpointed with 1: the same recipe, other augmentation draws" in \
        done.stdout
    assert [h["epoch"] for h in history(tmp_path)] == [1, 2, 3]


def failing(out, *extra):
    proc = subprocess.run(command(out, 2, *extra), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    return proc.stderr


def test_an_error_every_rank_hits_is_printed_once(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{RUN}.ckpt").write_bytes(b"an unfinished run's checkpoint")  # each rank continues from it: damaged
    err = failing(out)
    assert err.count("sbattn train: error:") == 1 and "is damaged or not an sbattn file" in err, err
    assert "[rank1]: Traceback" not in err and "[rank0]: Traceback" not in err


def test_a_rank_left_behind_by_a_failed_peer_adds_no_traceback(tmp_path):
    out = tmp_path / "out"
    (out / "results.txt").mkdir(parents=True)  # rank 0 alone refuses it; rank 1 waits for it in a collective
    err = failing(out)
    assert err.count("sbattn train: error:") == 1 and "results.txt is not a regular file" in err
    assert "[rank1]: Traceback" not in err and "RuntimeError" not in err  # torchrun's own summary aside


def test_a_full_disk_on_rank_0_is_one_line_from_every_rank(tmp_path):
    """Rank 0 alone writes; a file-size limit (Python ignores SIGXFSZ, so the write fails as on a full disk) breaks
    its first checkpoint: one "make room" line naming the torchrun resume command, no torch or gloo traceback."""
    import resource
    out = tmp_path / "out"
    limit = 100_000  # the checkpoint is ~350 kB

    proc = subprocess.run(command(out, 2), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "sbattn train: error:" in line]
    assert len(lines) == 1, proc.stderr
    assert f"cannot write {out}/{RUN}.ckpt (File too large)" in lines[0] and "make room" in lines[0]
    assert "torchrun --nproc_per_node=2" in lines[0], lines[0]
    assert "[rank0]: Traceback" not in proc.stderr and "[rank1]: Traceback" not in proc.stderr  # torchrun's own aside
    assert "inline_container" not in proc.stderr
    assert not (out / f"{RUN}.lock").exists() and not (out / f"{RUN}.ckpt").exists()


def started_until_its_checkpoint(argv: list[str], out: Path, name: str = RUN) -> tuple[subprocess.Popen, Path]:
    """`argv` started, once the first checkpoint of run `name` is in `out`."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt, deadline = out / f"{name}.ckpt", time.time() + 120
    while not ckpt.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"no checkpoint: exit status {proc.poll()}; {proc.communicate()[1][-3000:]}")
        time.sleep(0.05)
    return proc, ckpt


def test_sigterm_to_torchrun_checkpoints_every_rank_and_prints_the_users_own_launch(two, tmp_path):
    """The agent passes SIGTERM to its workers; they agree on a step, checkpoint, and rank 0 prints a resume
    command carrying the launcher's own flags (here --max-restarts and the rendezvous address), which finishes
    the run as if it had never stopped."""
    argv = command(tmp_path, 2)
    argv.insert(argv.index("--nproc_per_node=2") + 1, "--max-restarts=0")
    proc, ckpt = started_until_its_checkpoint(argv, tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    resume = next(line for line in out.splitlines() if "resume with: " in line).split("resume with: ")[1]
    port = next(a for a in argv if a.startswith("--master_port="))
    assert resume.startswith(f"torchrun --nproc_per_node=2 --max-restarts=0 --master_addr=127.0.0.1 {port} -m "
                             f"sbattn train --config "), resume
    assert "[rank0]: Traceback" not in err and "[rank1]: Traceback" not in err
    words = shlex.split(resume.replace(port, f"--master_port={free_port()}"))
    subprocess.run([sys.executable, "-W", "ignore", "-m", "torch.distributed.run", *words[1:]], cwd=ROOT, env=ENV,
                   check=True, capture_output=True, timeout=300)
    drop = {"seconds", "images_per_sec", "eval_seconds"}
    strip = lambda h: [{k: v for k, v in e.items() if k not in drop} for e in h]  # noqa: E731
    assert strip(history(tmp_path)) == strip(history(two[0]))


@pytest.mark.parametrize("cmdline, expected", [
    (["/v/bin/python", "/v/bin/torchrun", "--nnodes=1:2", "--max-restarts", "3", "--rdzv_backend=c10d",
      "--rdzv_endpoint=127.0.0.1:29400", "-m", "sbattn", "train", "--epochs", "2"],
     ["torchrun", "--nnodes=1:2", "--max-restarts", "3", "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:29400",
      "-m"]),
    (["python", "-m", "torch.distributed.run", "--nproc_per_node", "2", "/v/bin/sbattn", "train", "-m", "x"],
     ["torchrun", "--nproc_per_node", "2"]),
    (["bash", "-c", "sbattn train"], None),
    (["/v/bin/python", "/v/bin/torchrun", "--no-such-flag"], None),
])
def test_the_launch_is_read_up_to_the_training_script(cmdline, expected, capsys):
    from sbattn.train.process import launcher_argv
    assert launcher_argv(cmdline) == expected
    assert capsys.readouterr().err == ""


def _rank_process(agent: int, rank: int) -> int:
    """The pid of the torchrun agent's worker of `rank`."""
    for child in map(int, Path(f"/proc/{agent}/task/{agent}/children").read_text().split()):
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return child
    raise AssertionError(f"no worker of rank {rank}")


def _running(pid: int) -> bool:
    """Whether process `pid` still runs (neither gone nor a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_a_hung_rank_stops_the_run_in_the_timeout_with_one_line_naming_it(tmp_path):
    """SIGSTOP on rank 1 after its first checkpoint: rank 0 gives up after --dist-timeout, naming rank 1, where it
    was last seen and the collective, and exits non-zero (the agent then ends rank 1); the checkpoint is kept. 15 s,
    not less: on two loaded cores a start-up collective took longer than 3 s."""
    argv = [a for a in command(tmp_path, 2) if not a.startswith("--dist-timeout")] + ["--dist-timeout=15"]
    argv.insert(argv.index("--nproc_per_node=2") + 1, "--shutdown-timeout=2")
    proc, ckpt = started_until_its_checkpoint(argv, tmp_path)
    rank0, rank1 = _rank_process(proc.pid, 0), _rank_process(proc.pid, 1)
    os.kill(rank1, signal.SIGSTOP)
    stopped = time.time()
    while _running(rank0) and time.time() - stopped < 60:
        time.sleep(0.1)
    # Rank 0 has given up. Rank 1 was hung for a while, not for ever: continued, it takes the agent's SIGTERM at once
    # (a stopped process leaves it pending, and the agent waits 30 s, idle, before its SIGKILL).
    os.kill(rank1, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.time() - stopped < 60
    lines = [line for line in err.splitlines() if "sbattn train: error:" in line]
    assert len(lines) == 1, err
    # Where rank 1 was last seen depends on where the signal caught it: the end of epoch 1 or inside epoch 2.
    assert re.search(r"rank 0: rank 1 \(last seen at epoch [12], step \d+\) did not answer in ", lines[0]), lines[0]
    assert "the last good checkpoint is kept" in lines[0] and ckpt.exists()
    assert "[rank0]: Traceback" not in err


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf"), 86401])
def test_a_timeout_that_is_no_number_of_seconds_is_refused(seconds):
    with pytest.raises(sbattn.ConfigError, match="dist_timeout=.*must be a number of seconds > 0"):
        sbattn.TrainConfig(device="cpu", dist_timeout=seconds)


@pytest.mark.parametrize("args, code", [(["summary", "--arch=vgg16", "--attention=none", "--width=0.0625"], 0),
                                        (["summary", "--width=-1"], 2)])
def test_a_process_that_joined_a_group_ends_after_its_atexit_handlers_without_finalization(tmp_path, args, code):
    """A torchrun worker's `main` ends the process (distributed.leave): exit code kept, atexit handlers run and
    output flushed, but no Python finalization, in which gloo's threads can abort a finished run (SIGABRT)."""
    script = f"""
import atexit
from sbattn.cli import main
from sbattn.train import distributed
distributed._joined = True  # as setup leaves it under torchrun
atexit.register(print, "atexit ran")
class Finalized:
    def __del__(self):
        print("finalized")
kept = Finalized()
print("buffered", end="")
main({args!r})
print("main returned")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.startswith("buffered") and proc.stdout.endswith("atexit ran\n"), proc.stdout
    assert "main returned" not in proc.stdout and "finalized" not in proc.stdout


def test_a_one_process_torchrun_job_restarts_resumes_and_stops_like_a_bigger_one(one, tmp_path):
    """torchrun with one process is torchrun: a worker SIGKILLed under --max-restarts=1 is restarted and continues
    from its checkpoint, ending as the plain one-process run; SIGTERM prints the torchrun launch to resume with."""
    launch = [sys.executable, "-W", "ignore", "-m", "torch.distributed.run", "--nproc_per_node=1",
              "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    argv = [*launch, "--max-restarts=1", "-m", "sbattn", "train", *ARGS, f"--output-dir={tmp_path / 'killed'}"]
    proc, _ = started_until_its_checkpoint(argv, tmp_path / "killed")
    os.kill(children(proc.pid)[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    assert "torchrun restarted the workers (restart 1): continuing from the last checkpoint" in out
    drop = {"seconds", "images_per_sec", "eval_seconds"}
    strip = lambda h: [{k: v for k, v in e.items() if k not in drop} for e in h]  # noqa: E731
    assert strip(history(tmp_path / "killed")) == strip(history(one))

    argv = [*launch, "-m", "sbattn", "train", *ARGS, f"--output-dir={tmp_path / 'stopped'}"]
    proc, _ = started_until_its_checkpoint(argv, tmp_path / "stopped")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    resume = next(line for line in out.splitlines() if "resume with: " in line).split("resume with: ")[1]
    assert resume.startswith("torchrun --nproc_per_node=1 --master_addr=127.0.0.1 --master_port="), resume


def test_a_last_batch_too_small_to_share_among_the_ranks_is_refused():
    """N processes train on every image, as one does: a last batch that would leave a rank one sample is refused
    in one line (it was dropped: 1,020 images an epoch over 4 ranks against 1,024 in one process)."""
    from sbattn.train.loop import _check_last_batch
    for n, batch, ranks in [(1024, 60, 1), (1024, 60, 2), (1024, 64, 4), (1024, 1016, 4)]:
        _check_last_batch(n, batch, ranks)  # one process; 2 a rank; no last batch; 8 left, 2 a rank
    with pytest.raises(UserError, match=r"^--batch_size 60 on 1,024 training images leaves a last batch of 4, "
                                        r"under 2 a process over 4 processes .* one of at least 8$"):
        _check_last_batch(1024, 60, 4)
