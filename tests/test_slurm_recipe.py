"""``scripts/slurm/pipeline.sh`` end to end on one machine, SLURM simulated.

A stand-in ``sbatch`` on PATH records each submission and answers a job id; :class:`Slurm`
then runs the recorded jobs as SLURM would: in order, each only once its dependency holds
(``afterok``: every task of that job exited 0; ``afterany``: that job ran), array tasks at
once with ``SLURM_ARRAY_TASK_ID``/``_COUNT``/``_MIN``/``_MAX``, the environment ``sbatch`` was
called in with the ``--export`` variables (``--export=ALL,...``), and
stdout and stderr into the ``--output`` file. Every command is real: MiniLM encodes a 40-node
Cora slice in 2 shards, torchrun trains on 2 CPU ranks (gloo), 2 array tasks predict, one job
assembles and one reports. Infer task 1 is preempted: assembly exits 3 (``infer --status``)
and the report never runs; resubmitting only that task (``FROM=infer ARRAY=1``) completes the
chain, and the assembled predictions equal a one-process ``pipeline infer`` byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts/slurm/pipeline.sh"
ENCODE = REPO / "scripts/slurm/encode_array.sh"
NODES = 40
INFER_ARGS = "--split all --exit patience:1 --device cpu"
SETTINGS = dict(
    ENCODE_SHARDS="2", INFER_PARTS="2", TRAIN_PROCS="2", MODEL="minilm-l6",
    ENCODE_ARGS="--max-length 32 --block-size 16 --batch-tokens 256 --device cpu",
    TRAIN_ARGS="--seeds 0 --epochs 3 --patience 3 --batch-size 16 --hidden-channels 32 --dropout 0 --num-threads 1 --device cpu",
    INFER_ARGS=INFER_ARGS,
)


class Slurm:
    """A stand-in ``sbatch`` (``bin/sbatch``, logging its arguments) and the jobs it was given, run in order."""

    def __init__(self, root: Path):
        self.bin, self.log = root / "bin", root / "sbatch.jsonl"
        self.bin.mkdir()
        (self.bin / "sbatch").write_text(
            f"#!{sys.executable}\nimport json, sys\nlog = {str(self.log)!r}\n"
            "import os\nwith open(log, 'a') as f:\n    f.write(json.dumps([sys.argv[1:], dict(os.environ)]) + '\\n')\n"
            "print(1000 + sum(1 for _ in open(log)))\n")
        (self.bin / "sbatch").chmod(0o755)
        self.ran = 0  # submissions run so far
        self.codes: dict[str, list[int] | None] = {}  # job id -> exit codes of its tasks; None: never ran

    def env(self, **extra: str) -> dict[str, str]:
        python = Path(sys.executable)
        return {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VENV": str(python.parents[1]),
                "PIPELINE": str(python.parent / "pipeline"), "TORCHRUN": str(python.parent / "torchrun"), **extra}

    def submit(self, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=self.env(**extra), capture_output=True, text=True, timeout=60)

    def submissions(self, env: bool = False) -> list:
        """The arguments of each submission, or (arguments, the submitter's environment)."""
        jobs = [json.loads(line) for line in self.log.read_text().splitlines()]
        return jobs if env else [argv for argv, _ in jobs]

    def run(self, preempt: dict[str, set[int]] | None = None) -> dict[str, str]:
        """Run the submissions not run yet; ``{job name: "ok" | "failed" | "never"}``. ``preempt``:
        array tasks (job name -> task ids) killed before they start (exit 143, as by SIGTERM)."""
        states = {}
        for number, (argv, submitter) in enumerate(self.submissions(env=True)[self.ran:], start=1001 + self.ran):
            job = str(number)
            opts = dict(a[2:].partition("=")[::2] for a in argv if a.startswith("--"))
            script, mode = [a for a in argv if not a.startswith("--")]
            kind, _, dep = opts.get("dependency", ":").partition(":")
            done = self.codes.get(dep) if dep else []
            if done is None or (kind == "afterok" and any(done)):
                self.codes[job] = None  # DependencyNeverSatisfied
            else:
                lost = (preempt or {}).get(opts["job-name"], set())
                self.codes[job] = self._run(job, opts, script, mode, submitter, lost)
            states[opts["job-name"]] = "never" if self.codes[job] is None else "ok" if not any(self.codes[job]) else "failed"
        self.ran = len(self.submissions())
        return states

    def _run(self, job: str, opts: dict, script: str, mode: str, submitter: dict, lost: set[int]) -> list[int]:
        exports = dict(kv.split("=", 1) for kv in opts["export"].split(",")[1:])  # ALL,K=V,...
        tasks = [None]
        if "array" in opts:
            spec = opts["array"].split("%")[0]
            tasks = [i for part in spec.split(",") for i in
                     range(int(part.split("-")[0]), int(part.split("-")[-1]) + 1)]
        procs = []
        for task in tasks:
            env = {**submitter, **exports, "SLURM_JOB_ID": job}  # --export=ALL: sbatch's environment
            out = opts["output"].replace("%j", job).replace("%A", job)
            if task is not None:
                env.update(SLURM_ARRAY_JOB_ID=job, SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_COUNT=str(len(tasks)),
                           SLURM_ARRAY_TASK_MIN=str(min(tasks)), SLURM_ARRAY_TASK_MAX=str(max(tasks)))
                out = out.replace("%a", str(task))
            with open(out, "w") as log:
                if task in lost:
                    log.write("preempted\n")
                    procs.append(143)
                    continue
                procs.append(subprocess.Popen(["bash", script, mode], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        return [p if isinstance(p, int) else p.wait(timeout=300) for p in procs]


def test_the_recipe_chains_every_stage_and_resumes_a_preempted_part(tmp_path, cora_graph, cli):
    work, slurm = tmp_path / "work", Slurm(tmp_path)
    logs, pred = work / "logs", work / "predictions"
    res = slurm.submit(WORK=str(work), GRAPH=str(cora_graph(NODES)), **SETTINGS)
    assert res.returncode == 0, res.stderr
    assert res.stdout == (f"jobs: encode 1001 encode-status 1002 train 1003 infer 1004 assemble 1005 report 1006; "
                          f"outputs in {work}/, logs in {logs}/\n")
    common = ["--export=ALL,NUM_SHARDS=2,OUT=" + str(work / "cache.zarr")]
    assert slurm.submissions() == [
        ["--parsable", "--job-name=encode", "--array=0-1", f"--output={logs}/encode-%A_%a.out", *common, str(ENCODE), "task"],
        ["--parsable", "--job-name=encode-status", "--dependency=afterany:1001", f"--output={logs}/encode-status-%j.out",
         *common, str(ENCODE), "status"],
        ["--parsable", "--job-name=train", "--dependency=afterok:1002", f"--output={logs}/train-%j.out", *common, str(SCRIPT), "train"],
        ["--parsable", "--job-name=infer", "--dependency=afterok:1003", "--array=0-1", f"--output={logs}/infer-%A_%a.out",
         *common, str(SCRIPT), "infer"],
        ["--parsable", "--job-name=assemble", "--dependency=afterany:1004", f"--output={logs}/assemble-%j.out",
         *common, str(SCRIPT), "assemble"],
        ["--parsable", "--job-name=report", "--dependency=afterok:1005", f"--output={logs}/report-%j.out", *common, str(SCRIPT), "report"],
    ]

    # infer task 1 is preempted: assembly finds part 1 missing (exit 3) and the report never runs
    states = slurm.run(preempt={"infer": {1}})
    assert states == {"encode": "ok", "encode-status": "ok", "train": "ok", "infer": "failed", "assemble": "failed",
                      "report": "never"}, {p.name: p.read_text()[-2000:] for p in logs.iterdir()}
    config = work / "predictions.parts" / "infer_config.json"
    assert (logs / "assemble-1005.out").read_text().splitlines()[-2:] == [
        f"predictions {pred}: parts done 1/2 ({work / 'predictions.parts'})",
        f"  missing part 1: `pipeline infer --config {config} --shard 1/2`"]
    assert sorted(p.name for p in work.iterdir()) == ["cache.zarr", "logs", "predictions.parts", "run"]
    assert json.loads((work / "run" / "checkpoint.json").read_text())["world_size"] == 2  # trained by 2 torchrun ranks

    # resubmit only that task: part 0 is left as it is, and the chain completes
    part0 = (work / "predictions.parts" / "part-0-of-2" / "predictions.parquet").stat().st_mtime_ns
    res = slurm.submit(WORK=str(work), FROM="infer", ARRAY="1", **SETTINGS)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"jobs: infer 1007 assemble 1008 report 1009; outputs in {work}/, logs in {logs}/\n"
    assert slurm.submissions()[6:] == [
        ["--parsable", "--job-name=infer", "--array=1", f"--output={logs}/infer-%A_%a.out", *common, str(SCRIPT), "infer"],
        ["--parsable", "--job-name=assemble", "--dependency=afterany:1007", f"--output={logs}/assemble-%j.out",
         *common, str(SCRIPT), "assemble"],
        ["--parsable", "--job-name=report", "--dependency=afterok:1008", f"--output={logs}/report-%j.out", *common, str(SCRIPT), "report"],
    ]
    assert slurm.run() == {"infer": "ok", "assemble": "ok", "report": "ok"}, (logs / "assemble-1008.out").read_text()
    assert (work / "predictions.parts" / "part-0-of-2" / "predictions.parquet").stat().st_mtime_ns == part0
    assert "parts done 2/2" in (logs / "assemble-1008.out").read_text()

    assert sorted(p.name for p in work.iterdir()) == ["cache.zarr", "logs", "predictions", "predictions.parts", "report", "run"]
    assert sorted(p.name for p in logs.iterdir()) == [
        "assemble-1005.out", "assemble-1008.out", "encode-1001_0.out", "encode-1001_1.out", "encode-status-1002.out",
        "infer-1004_0.out", "infer-1004_1.out", "infer-1007_1.out", "report-1009.out", "train-1003.out"]
    assert sorted(p.name for p in (work / "predictions.parts").iterdir()) == [
        ".pipeline-artifact.json", "infer_config.json", "part-0-of-2", "part-1-of-2", "parts.json"]
    assert sorted(p.name for p in pred.iterdir()) == [".pipeline-artifact.json", "infer_config.json", "predictions.parquet", "summary.json"]
    assert (work / "report" / "report.md").is_file()

    # the assembled predictions are a one-process run's, byte for byte
    one = cli("infer", "--checkpoint", work / "run", "--out", tmp_path / "one", *INFER_ARGS.split())
    assert one.exit_code == 0, one.output
    assert (pred / "predictions.parquet").read_bytes() == (tmp_path / "one" / "predictions.parquet").read_bytes()
    assert json.loads((pred / "summary.json").read_text())["num_targets"] == NODES


def test_the_recipe_refuses_an_unknown_stage(tmp_path):
    slurm = Slurm(tmp_path)
    res = slurm.submit(WORK=str(tmp_path / "work"), FROM="predict")
    assert res.returncode == 2 and res.stderr == "FROM=predict: choose one of encode train infer assemble report\n"
    assert not slurm.log.exists() and not (tmp_path / "work").exists()
    assert os.access(SCRIPT, os.X_OK)
