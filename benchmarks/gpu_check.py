"""The whole GPU check in one call: environment, GPU tests, export + parity, benchmarks, one report.

Written for the device machine this project is sometimes lent (one NVIDIA H200, 15 minutes of device
time in all, no network; see docs/benchmarks.md, "GPU check"), and testable on any CPU machine::

    python benchmarks/gpu_check.py --out OUT                  # CUDA when torch sees a GPU, else CPU mode
    python benchmarks/gpu_check.py --out OUT --device cpu --size 1024
    make gpu-check OUT=OUT

Steps, each in its own subprocess with a time budget; a failed step is recorded (pass / fail / skip and
the reason) and the run goes on with whatever the later steps can still do:

1. ``env``: nvidia-smi (name, memory, driver), torch and its CUDA, onnxruntime and its providers,
   tensorrt (or "absent"), and the project's own dependencies (missing ones travel as wheels);
2. ``pytest``: ``pytest -m "gpu or tensorrt"`` (the conftest skips those tests without a GPU / TensorRT,
   and runs them where there is one), output in ``OUT/pytest.log``;
3. ``train``: a U-Net on the built-in sample data with ``flair-deploy train --sample-data`` (ResNet-34,
   12 epochs on CUDA); ``--epochs 0``, or a failed training, builds a quickly fitted checkpoint
   through the project's API instead;
4. ``export``: ``flair-deploy export --fp16 --int8`` (dynamic H/W, so the benchmarks run 512-px tiles)
   and its parity gates checked against PyTorch, plus ``--tensorrt`` engines when TensorRT is installed.
   It runs with ``--no-verify``: a variant that misses its gate fails the step (the export's own verdict)
   but is kept, so that the benchmarks still run every variant;
5. ``parity``: the gate results of every variant, from the export's ``<name>.parity.json``;
6. ``benchmark``: ``flair-deploy benchmark`` model-only at batches 1, 16, 32, in two runs: torch FP16
   (eager, channels_last, cuda_graphs; FP32 eager on a CPU), then onnxruntime (CUDA I/O binding, the
   TensorRT provider) and TensorRT engines x fp32, fp16, int8 (rows that cannot run say why);
7. ``raster`` + ``detect``: a 16384 x 16384 five-band uint8 sample orthophoto (``--size``), mapped by
   ``flair-deploy detect`` in blend mode (torch FP16, batch 16 on CUDA): tiles/s, Mpx/s, stage seconds,
   peak RSS, and the GPU memory peak (torch's allocator in the detect process, and nvidia-smi sampling).

``OUT`` receives at most 8 files of at most 16 MiB: ``gpu-check.json`` (every number, the machine, the
versions, each step's status and duration), ``gpu-check.md`` (tables ready to paste into
docs/benchmarks.md), ``logs.txt`` (the tail of every step's output), ``pytest.log``, ``parity.json``
(the export's), ``bench-torch.json`` and ``bench-onnx.json`` (the benchmark's own reports). The report is
rewritten after every step, so a run cut short still leaves one.

Child processes import the ``flair_deploy`` of this checkout (``src/`` is put first on PYTHONPATH) and
are started as ``python -m flair_deploy ...``, so nothing needs installing beyond the dependencies.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Self

SCRIPT = str(Path(__file__).resolve())
ROOT = Path(SCRIPT).parents[1]
SCHEMA = 1
NAME = "gpu-check"  # artifact base name of the export

OUT_MAX_FILES = 8
OUT_MAX_BYTES = 16 * 2**20
LOG_TAIL_LINES = 80  # per step, in logs.txt
MIN_STEP_S = 5.0  # a step with less time left than this is skipped
RESERVE_S = 5.0  # kept back from the global budget for the report

STEPS = ("env", "pytest", "train", "export", "parity", "benchmark", "raster", "detect")
TITLES = {
    "env": "environment (nvidia-smi, torch, onnxruntime, tensorrt)",
    "pytest": 'pytest -m "gpu or tensorrt"',
    "train": "sample model (flair-deploy train --sample-data)",
    "export": "export FP32/FP16/INT8 ONNX (+ TensorRT engines) with parity gates",
    "parity": "parity gates of each export",
    "benchmark": "model-only benchmark (flair-deploy benchmark)",
    "raster": "synthetic 5-band uint8 orthophoto",
    "detect": "end-to-end flair-deploy detect (blend)",
}
#: Seconds per step at most (the global --budget caps them too). detect's scales with --size.
BUDGETS = {
    "env": 30.0,
    "pytest": 100.0,
    "train": 100.0,
    "export": 90.0,
    "parity": 10.0,
    "benchmark": 110.0,
    "raster": 60.0,
    "detect": 150.0,
}
#: Project modules the check needs (import name -> distribution), reported by the env step.
PROJECT_DEPS = {
    "numpy": "numpy",
    "rasterio": "rasterio",
    "pydantic": "pydantic",
    "yaml": "PyYAML",
    "typer": "typer",
    "rich": "rich",
    "psutil": "psutil",
    "onnxruntime": "onnxruntime",
    "array_api_compat": "array-api-compat",
    "torch": "torch",
    "lightning": "lightning",
    "segmentation_models_pytorch": "segmentation-models-pytorch",
    "safetensors": "safetensors",
    "tensorboard": "tensorboard",
    "matplotlib": "matplotlib",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "onnxslim": "onnxslim",
    "pytest": "pytest",
    "hypothesis": "hypothesis",
    "pynvml": "nvidia-ml-py",
}


@dataclass(frozen=True)
class Profile:
    """What the check runs on one kind of device (each field has a command-line option)."""

    size: int  # edge of the detect raster, px
    tile: int  # benchmark and detect tile edge, px
    batches: tuple[int, ...]  # model-only batch sizes
    min_time: float  # benchmark --min-time
    min_iters: int  # benchmark --min-iters
    epochs: int  # training epochs (0: quick-fit checkpoint, no training)
    encoder: str
    depth: int  # encoder depth
    detect_backend: str
    detect_precision: str
    detect_batch: int
    calibration_tiles: int
    parity_tiles: int
    train_set: tuple[str, ...] = ()  # extra `train --set` overrides


PROFILES = {
    # The FLAIR production shape: U-Net/ResNet-34, 512-px tiles with a 128-px blend overlap.
    "cuda": Profile(
        size=16384,
        tile=512,
        batches=(1, 16, 32),
        min_time=1.0,
        min_iters=10,
        epochs=12,
        encoder="resnet34",
        depth=5,
        detect_backend="torch",
        detect_precision="fp16",
        detect_batch=16,
        calibration_tiles=100,
        parity_tiles=16,
    ),
    # Small enough for a 2-core machine: the same steps on the CPU backends, one short epoch.
    "cpu": Profile(
        size=1024,
        tile=128,
        batches=(1, 2),
        min_time=0.1,
        min_iters=2,
        epochs=1,
        encoder="resnet18",
        depth=3,
        detect_backend="onnxruntime",
        detect_precision="fp32",
        detect_batch=4,
        calibration_tiles=32,
        parity_tiles=8,
        train_set=("trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.accelerator=cpu"),
    ),
}


# ---------------------------------------------------------------------------------------------- steps
@dataclass
class Step:
    """One step's outcome, as it appears in the report."""

    name: str
    title: str
    status: str = "pending"  # pass | fail | skip | pending
    reason: str = ""
    seconds: float = 0.0
    budget_s: float = 0.0
    commands: list[list[str]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def done(self, status: str, reason: str = "") -> None:
        self.status, self.reason = status, reason


class Interrupted(Exception):
    """SIGTERM/SIGINT: the report is written with what is known, then the check stops."""


def _first_line(text: str, limit: int = 300) -> str:
    text = text.strip()
    return (text.splitlines()[0] if text else "")[:limit]


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def last_error(text: str) -> str:
    """The most telling line of a failed command's output: its ``error:`` line, else the last one."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:") or re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln):
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


class Check:
    """State of one run: clock, budget, work folder, steps, and the subprocess runner."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.started = dt.datetime.now(dt.UTC)
        self.deadline: float = self.t0 + float(args.budget)
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        if args.work:
            self.work = Path(args.work).resolve()
            self.work.mkdir(parents=True, exist_ok=True)
        else:
            self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        (self.work / "logs").mkdir(exist_ok=True)
        self.steps = {n: Step(n, TITLES[n]) for n in STEPS}
        self.device = "cpu" if args.device == "auto" else args.device
        self.profile = PROFILES["cuda" if self.device.startswith("cuda") else "cpu"]
        self.env_info: dict[str, Any] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.child_env = dict(os.environ)
        src = str(ROOT / "src")
        self.child_env["PYTHONPATH"] = os.pathsep.join(
            [src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]
        )
        self.child_env.setdefault("PYTHONUNBUFFERED", "1")
        self.child_env.setdefault("HF_HUB_OFFLINE", "1")
        self.child_env.setdefault("NO_COLOR", "1")
        self.child_env["COLUMNS"] = "160"  # rich tables: wide enough to stay readable in the logs
        # Filled by the steps: what the later steps use.
        self.checkpoint: Path | None = None
        self.data_dir = self.work / "train" / "sample-data"
        self.models_dir = self.work / "models"
        self.onnx: dict[str, Path] = {}
        self.engines: dict[str, Path] = {}
        self.raster: Path | None = None

    # -- clock
    def clock(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        print(f"[{self.clock():6.1f} s] {text}", flush=True)

    def remaining(self) -> float:
        return self.deadline - time.monotonic() - RESERVE_S

    def budget_for(self, name: str) -> float:
        budget = BUDGETS[name]
        if name == "detect":  # about 268 Mpx at 16384²: scale with the pixel count, 30 s at least
            budget = max(30.0, budget * (self.profile.size / 16384) ** 2)
        return min(budget, self.remaining())

    # -- processes
    def python(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "flair_deploy", *args]

    def run(
        self, step: Step, cmd: Sequence[str], timeout: float, *, log: Path | None = None
    ) -> tuple[int | None, str]:
        """Run *cmd* (cwd: the repository root) into a log file; return (exit status or None on timeout, output).

        The command runs in its own process group, which is ended (SIGTERM, then SIGKILL) at the timeout.
        """
        cmd = [str(c) for c in cmd]
        step.commands.append(cmd)
        log = log or self.work / "logs" / f"{step.name}.log"
        timeout = max(1.0, timeout)
        start = time.monotonic()
        with log.open("ab") as fh:
            fh.write(f"$ {' '.join(cmd)}\n".encode())
            fh.flush()
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=self.child_env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                rc: int | None = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop_child()
                rc = None
                fh.write(f"\n[gpu-check] timed out after {timeout:.0f} s: process group ended\n".encode())
            except BaseException:  # SIGTERM/SIGINT (Interrupted): end the child before unwinding
                self.stop_child()
                fh.write(b"\n[gpu-check] interrupted: process group ended\n")
                raise
            finally:
                self.proc = None
            fh.write(f"[gpu-check] exit {rc} after {time.monotonic() - start:.1f} s\n".encode())
        text = log.read_text(encoding="utf-8", errors="replace")
        # Only this command's part of the (appended) log.
        marker = f"$ {' '.join(cmd)}\n"
        return rc, text[text.rfind(marker) + len(marker) :]

    def stop_child(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def files(self) -> dict[str, str]:
        return {p.name: str(p) for p in sorted(self.out.iterdir()) if p.is_file()}


def parse_json_tail(text: str) -> dict[str, Any] | None:
    """The last line of *text* that is a JSON object (what the ``_child`` helpers print)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(line)
                if isinstance(value, dict):
                    return value
    return None


def nvidia_smi() -> dict[str, Any]:
    """GPU name, memory, driver and CUDA version from nvidia-smi, or why there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"available": False, "reason": "nvidia-smi not found"}
    fields: tuple[str, ...] = ("name", "memory.total", "memory.used", "driver_version", "compute_cap")
    info: dict[str, Any] = {"available": True, "gpus": []}
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
        if out.returncode != 0:  # an older driver without compute_cap
            fields = fields[:-1]
            out = subprocess.run(
                [exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                check=False,
                capture_output=True,
                text=True,
                timeout=20,
            )
        for line in out.stdout.strip().splitlines():
            values = [v.strip() for v in line.split(",")]
            gpu: dict[str, Any] = dict(zip(fields, values, strict=False))
            for key in ("memory.total", "memory.used"):
                with contextlib.suppress(KeyError, ValueError):
                    gpu[key.replace(".", "_") + "_mib"] = int(gpu.pop(key))
            info["gpus"].append(gpu)
        if out.returncode != 0:
            info.update(available=False, reason=_first_line(out.stderr or out.stdout))
        head = subprocess.run([exe], check=False, capture_output=True, text=True, timeout=20).stdout
        m = re.search(r"CUDA Version:\s*([\d.]+)", head)
        info["driver_cuda"] = m.group(1) if m else None
    except (OSError, subprocess.SubprocessError) as exc:
        info.update(available=False, reason=f"nvidia-smi failed: {exc}")
    return info


class GpuMemorySampler:
    """Peak of the GPU's used memory (all processes) from ``nvidia-smi -lms`` while a block runs."""

    def __init__(self, interval_ms: int = 200) -> None:
        self.interval_ms = interval_ms
        self.baseline_mib: int | None = None
        self.peak_mib: int | None = None
        self.samples = 0
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return self
        query = [exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
            self.baseline_mib = int(
                subprocess.run(query, check=False, capture_output=True, text=True, timeout=10).stdout
            )
        try:
            self._proc = subprocess.Popen(
                [*query, "-lms", str(self.interval_ms)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
        except OSError:
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):
                value = int(line.strip())
                self.samples += 1
                self.peak_mib = value if self.peak_mib is None else max(self.peak_mib, value)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            if self._proc.poll() is None:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def as_dict(self) -> dict[str, Any]:
        return {
            "baseline_mib": self.baseline_mib,
            "peak_mib": self.peak_mib,
            "peak_over_baseline_mib": (
                self.peak_mib - self.baseline_mib
                if self.peak_mib is not None and self.baseline_mib is not None
                else None
            ),
            "samples": self.samples,
            "interval_ms": self.interval_ms,
        }


# --- 1. environment
def step_env(c: Check, step: Step, timeout: float) -> None:
    smi = nvidia_smi()
    rc, text = c.run(step, c.python(SCRIPT, "_child", "env"), timeout)
    info = parse_json_tail(text) if rc == 0 else None
    step.details["nvidia_smi"] = smi
    if info is None:
        step.done("fail", "timed out" if rc is None else f"environment probe failed: {last_error(text)}")
        c.env_info = {"nvidia_smi": smi}
        if c.args.device == "auto":
            c.device, c.profile = "cpu", resolve_profile(c.args, "cpu")
        return
    info["nvidia_smi"] = smi
    c.env_info = info
    step.details.update(info)
    torch_info = info.get("torch") or {}
    has_cuda = bool(torch_info.get("cuda_available"))
    if c.args.device == "auto":
        c.device = "cuda" if has_cuda else "cpu"
    c.profile = resolve_profile(c.args, "cuda" if c.device.startswith("cuda") else "cpu")
    step.details["mode"] = c.device
    gpu = (smi.get("gpus") or [{}])[0] if smi.get("available") else {}
    parts = []
    if gpu:
        parts.append(
            f"{gpu.get('name')}, {gpu.get('memory_total_mib')} MiB, driver {gpu.get('driver_version')}"
            f" (CUDA {smi.get('driver_cuda')})"
        )
    else:
        parts.append(f"no GPU ({smi.get('reason', 'nvidia-smi found none')})")
    parts.append(f"torch {torch_info.get('version')} (CUDA build {torch_info.get('cuda') or 'none'})")
    ort = info.get("onnxruntime") or {}
    parts.append(f"onnxruntime {ort.get('version')} [{', '.join(ort.get('providers') or [])}]")
    parts.append(f"tensorrt {info.get('tensorrt') or 'absent'}")
    missing = [d for d, v in (info.get("deps") or {}).items() if v is None and d != "nvidia-ml-py"]
    if missing:
        parts.append(f"MISSING: {', '.join(missing)} (carry them as wheels: make gpu-wheels)")
    summary = "; ".join(parts) + f"; mode {c.device}"
    if c.device.startswith("cuda") and not has_cuda:
        step.done("fail", f"--device {c.device} but torch sees no CUDA device: {summary}")
    elif missing:
        step.done("fail", summary)
    else:
        step.done("pass", summary)


def resolve_profile(args: argparse.Namespace, kind: str) -> Profile:
    p = PROFILES[kind]
    overrides: dict[str, Any] = {}
    for name in ("size", "tile", "min_time", "min_iters", "epochs", "encoder", "depth"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.batches:
        overrides["batches"] = tuple(int(b) for b in args.batches.split(","))
    for name in ("backend", "precision", "batch"):
        value = getattr(args, f"detect_{name}")
        if value is not None:
            overrides[f"detect_{name}"] = value
    return replace(p, **overrides)


# --- 2. pytest
_PYTEST_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")


def parse_pytest(text: str) -> dict[str, Any]:
    """Counts of pytest's closing line, and each distinct skip reason."""
    counts: dict[str, int] = {}
    for line in reversed(text.splitlines()):
        if re.search(r"\b(passed|failed|skipped|deselected|errors?|no tests ran)\b", line) and " in " in line:
            for n, what in _PYTEST_COUNTS.findall(line):
                counts["errors" if what.startswith("error") else what] = int(n)
            break
    reasons = sorted(set(re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.+)$", text, flags=re.MULTILINE)))
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.MULTILINE)
    return {"counts": counts, "skip_reasons": reasons, "failed": failed}


def step_pytest(c: Check, step: Step, timeout: float) -> None:
    log = c.out / "pytest.log"
    log.unlink(missing_ok=True)
    cmd = c.python(
        "-m", "pytest", "-m", "gpu or tensorrt", "-p", "no:cacheprovider", "-rA", *c.args.pytest_args
    )
    rc, text = c.run(step, cmd, timeout, log=log)
    res = parse_pytest(text)
    step.details.update(res, log=str(log), exit_status=rc)
    counts = res["counts"]
    said = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no summary"
    if rc is None:
        step.done("fail", f"timed out after {timeout:.0f} s ({said})")
    elif rc == 5:
        step.done("skip", "no GPU/TensorRT tests collected")
    elif rc != 0:
        step.done("fail", f"{said}; failed: {', '.join(res['failed'][:5]) or last_error(text)}")
    elif counts.get("passed", 0) == 0:
        step.done("skip", f"{said}: {'; '.join(res['skip_reasons']) or 'all skipped'}")
    else:
        step.done(
            "pass", said + (f" (skipped: {'; '.join(res['skip_reasons'])})" if res["skip_reasons"] else "")
        )


# --- 3. sample model
def step_train(c: Check, step: Step, timeout: float) -> None:
    p = c.profile
    train_dir = c.work / "train"
    ckpt = train_dir / "checkpoints" / "best.ckpt"
    end = time.monotonic() + timeout
    if p.epochs > 0:
        cmd = c.cli(
            "train", "--sample-data", "--out", str(train_dir), "--epochs", str(p.epochs), "--no-progress",
            "--overwrite", "--set", f"model.encoder={p.encoder}", "--set", f"model.encoder_depth={p.depth}",
            *(f"--set={kv}" for kv in p.train_set),
            *c.args.train_set,
        )  # fmt: skip
        # Keep a quarter of the budget (20 s at least) for the quick-fit fallback.
        rc, text = c.run(step, cmd, max(5.0, timeout - max(20.0, timeout / 4)))
        m = re.search(r"best checkpoint \(val_miou ([\d.]+)\)", text)
        step.details["val_miou"] = float(m.group(1)) if m else None
        speed = re.search(r"done in ([\d.]+) min: (\d+) epochs, ([\d.]+) training patches/s", text)
        if speed:
            step.details.update(
                train_minutes=float(speed.group(1)),
                epochs=int(speed.group(2)),
                patches_per_s=float(speed.group(3)),
            )
        if rc == 0 and ckpt.is_file():
            c.checkpoint = ckpt
            step.details.update(checkpoint=str(ckpt), source="flair-deploy train --sample-data")
            step.done(
                "pass",
                f"unet/{p.encoder} depth {p.depth}, {p.epochs} epochs on {c.device}, val mIoU "
                f"{step.details['val_miou']}"
                + (f", {step.details['patches_per_s']} patches/s" if speed else ""),
            )
            return
        failure = "timed out" if rc is None else last_error(text)
    else:
        failure = None
    # Quick fit through the project's API: decisive logits, so the INT8 gate means something.
    quick = c.work / "quick" / "quick.ckpt"
    quick.parent.mkdir(parents=True, exist_ok=True)
    cmd = c.python(
        SCRIPT, "_child", "init-model", str(quick), str(c.data_dir), p.encoder, str(p.depth),
        str(max(p.calibration_tiles, 16)), str(max(p.parity_tiles, 8)), str(c.args.quick_steps),
        str(c.args.quick_batch),
    )  # fmt: skip
    rc, text = c.run(step, cmd, max(5.0, end - time.monotonic()))
    if rc == 0 and quick.is_file():
        c.checkpoint = quick
        info = parse_json_tail(text) or {}
        step.details.update(checkpoint=str(quick), source="quick fit (build_model + save_checkpoint)", **info)
        if failure is None:
            step.done(
                "pass", f"--epochs 0: quick-fit unet/{p.encoder} depth {p.depth} ({info.get('steps')} steps)"
            )
        else:
            step.done("fail", f"training failed ({failure}); continued with a quick-fit checkpoint")
    else:
        step.done(
            "fail", f"no checkpoint: {failure or ''} / quick fit: {last_error(text) if rc else 'timed out'}"
        )


# --- 4. export, 5. parity
def has_cuda(c: Check) -> bool:
    return bool((c.env_info.get("torch") or {}).get("cuda_available"))


def tensorrt_present(c: Check) -> bool:
    return bool(c.env_info.get("tensorrt")) and c.device.startswith("cuda")


def step_export(c: Check, step: Step, timeout: float) -> None:
    """One export of every variant; the gate verdicts come from the export's own parity report.

    ``--no-verify`` keeps a variant that misses its gate (an enforcing export would delete them all,
    and a second export would cost the device's minutes): the export still checks every gate and says
    which failed, this step then fails with those verdicts, and the benchmarks still have all variants.
    """
    if c.checkpoint is None:
        step.done("skip", "no checkpoint (the train step failed)")
        return
    p = c.profile
    args = [
        "export", str(c.checkpoint), "--out", str(c.models_dir), "--name", NAME, "--fp16", "--int8",
        "--calibration", str(c.data_dir / "train.csv"), "--calibration-tiles", str(p.calibration_tiles),
        "--validation", str(c.data_dir / "val.csv"), "--parity-tiles", str(p.parity_tiles),
        "--dynamic-hw", "--no-verify", "--overwrite", "--quiet",
    ]  # fmt: skip
    if tensorrt_present(c):
        args += ["--tensorrt", "--set", f"trt.max_tile={p.tile}", "--engine-cache", str(c.work / "trt-cache")]
        step.details["tensorrt"] = f"TensorRT {c.env_info.get('tensorrt')}: engines built"
    else:
        why = "absent" if not c.env_info.get("tensorrt") else "present but no CUDA device"
        step.details["tensorrt"] = f"TensorRT {why}: engines not built"
    rc, text = c.run(step, c.cli(*args), timeout)
    c.onnx = {
        pr: path for pr in ("fp32", "fp16", "int8") if (path := c.models_dir / f"{NAME}.{pr}.onnx").is_file()
    }
    c.engines = {
        pr: path
        for pr in ("fp32", "fp16", "int8")
        if (path := c.models_dir / f"{NAME}.{pr}.engine").is_file()
    }
    step.details.update(
        onnx={k: str(v) for k, v in c.onnx.items()}, engines={k: str(v) for k, v in c.engines.items()}
    )
    parity_json = c.models_dir / f"{NAME}.parity.json"
    failed: list[str] = []
    if parity_json.is_file():
        shutil.copy2(parity_json, c.out / "parity.json")
        with contextlib.suppress(ValueError, OSError):
            report = json.loads(parity_json.read_text(encoding="utf-8"))
            failed = [
                f"{v.get('variant')}: {'; '.join(v.get('failures') or ['failed'])}"
                for v in report.get("variants", [])
                if not v.get("passed", True)
            ]
    made = ", ".join(c.onnx) or "none"
    if rc is None:
        step.done("fail", f"timed out after {timeout:.0f} s (ONNX written: {made})")
    elif rc != 0:
        step.done("fail", f"{last_error(text)} (ONNX written: {made})")
    elif failed:
        step.done(
            "fail",
            f"parity gate missed by {'; '.join(failed)} (kept for the benchmarks); ONNX {made}; {step.details['tensorrt']}",
        )
    else:
        step.done("pass", f"every gate met; ONNX {made}; {step.details['tensorrt']}")


def step_parity(c: Check, step: Step, timeout: float) -> None:
    path = c.out / "parity.json"
    if not path.is_file():
        step.done("skip", "no parity report (the export step did not get that far)")
        return
    report = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for v in report.get("variants", []):
        rows.append(
            {
                "variant": v.get("variant"),
                "tiles": v.get("tiles"),
                "agreement": v.get("agreement"),
                "min_agreement": (v.get("gate") or {}).get("min_agreement"),
                "max_abs_logit": v.get("max_abs_logit"),
                "gate_max_abs_logit": (v.get("gate") or {}).get("max_abs_logit"),
                "delta_miou": v.get("delta_miou"),
                "gate_max_delta_miou": (v.get("gate") or {}).get("max_delta_miou"),
                "passed": v.get("passed"),
                "failures": v.get("failures") or [],
            }
        )
    step.details.update(variants=rows, tiles_from=report.get("tiles"), reference=report.get("reference"))
    said = ", ".join(
        f"{r['variant']} {100 * r['agreement']:.3f} %" if r["agreement"] is not None else f"{r['variant']} ?"
        for r in rows
    )
    failed = [r for r in rows if not r["passed"]]
    if failed:
        step.done(
            "fail",
            f"{said}; failed: " + "; ".join(f"{r['variant']}: {', '.join(r['failures'])}" for r in failed),
        )
    else:
        step.done("pass", f"all gates met ({said})")


# --- 6. model-only benchmark
def summarize_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    keys = (
        "mode", "backend", "variant", "precision", "device", "batch", "tile", "status", "reason", "setup_s",
        "warmup_s", "iterations", "p50_ms", "p90_ms", "p99_ms", "tiles_per_s", "mpx_per_s", "achieved_gflops",
        "ceiling_gflops", "ceiling_fraction", "argmax_agreement", "max_abs_dlogit", "peak_rss_mib",
        "peak_device_mib",
    )  # fmt: skip
    return [{k: row.get(k) for k in keys} for row in report.get("rows", [])]


_PROGRESS_OK = re.compile(
    r"^\s*model-only\s+(?P<backend>torch|onnxruntime|tensorrt)\s+(?P<precision>fp32|fp16|bf16|int8)\s+"
    r"(?P<variant>\S+)\s+batch (?P<batch>\d+) tile (?P<tile>\d+)\s+(?P<tps>[\d.]+) tiles/s"
)
_PROGRESS_OTHER = re.compile(
    r"^\s*model-only\s+(?P<backend>torch|onnxruntime|tensorrt)\s+(?P<precision>fp32|fp16|bf16|int8)\s+"
    r"(?P<variant>\S+)\s+(?P<status>skipped|failed): (?P<reason>.+)$"
)


def parse_bench_progress(text: str) -> list[dict[str, Any]]:
    """Rows from the benchmark's progress lines (stderr): what a run cut short by its budget measured."""
    rows = []
    for line in text.splitlines():
        if m := _PROGRESS_OK.match(line):
            tps, tile = float(m["tps"]), int(m["tile"])
            rows.append(
                {
                    "mode": "model-only",
                    "backend": m["backend"],
                    "variant": m["variant"],
                    "precision": m["precision"],
                    "batch": int(m["batch"]),
                    "tile": tile,
                    "status": "ok",
                    "reason": "from the progress line (the run was cut short)",
                    "tiles_per_s": tps,
                    "mpx_per_s": tps * tile * tile / 1e6,
                }
            )
        elif m := _PROGRESS_OTHER.match(line):
            rows.append(
                {
                    "mode": "model-only",
                    "backend": m["backend"],
                    "variant": m["variant"],
                    "precision": m["precision"],
                    "status": m["status"],
                    "reason": m["reason"].strip(),
                }
            )
    return rows


def bench_groups(c: Check) -> list[tuple[str, list[str]]]:
    """One ``flair-deploy benchmark`` run per backend group: (name, options).

    torch runs apart from the exported files, at its own precisions (FP16 autocast on a GPU; on a CPU
    FP32 only, as CPU FP16 autocast would take minutes), so that each run's report survives the other's
    failure or timeout. The checkpoint is given to both: it is the parity reference (torch FP32, CPU).
    """
    cuda = c.device.startswith("cuda")
    ckpt = [str(c.checkpoint)] if c.checkpoint is not None else []
    groups = []
    if ckpt:
        groups.append(
            (
                "torch",
                [
                    "--model", ",".join(ckpt), "--backends", "torch",
                    "--precisions", "fp16" if cuda else "fp32",
                    "--variants", "eager,channels_last,cuda_graphs" if cuda else "eager",
                ],
            )
        )  # fmt: skip
    files = [str(m) for m in (c.onnx.get("fp32"), *c.engines.values()) if m is not None]
    if files:
        groups.append(
            (
                "onnx",
                [
                    "--model", ",".join(ckpt + files), "--backends", "onnxruntime,tensorrt",
                    "--precisions", "fp32,fp16,int8",
                ],
            )
        )  # fmt: skip
    return groups


def step_benchmark(c: Check, step: Step, timeout: float) -> None:
    groups = bench_groups(c)
    if not groups:
        step.done("skip", "no model (train and export failed)")
        return
    p = c.profile
    end = time.monotonic() + timeout
    common = [
        "--device", c.device, "--batch", ",".join(map(str, p.batches)), "--tile", str(p.tile),
        "--min-time", str(p.min_time), "--min-iters", str(p.min_iters),
        "--warmup", "1" if p.min_iters < 5 else "2", "--parity-tiles", "4",
    ]  # fmt: skip
    # The ceiling from a dense FP16 matmul probe, where torch sees the GPU (it raises without one).
    peak = ["--measure-peak"] if c.device.startswith("cuda") and has_cuda(c) else []
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    notes: list[str] = []
    reports = {}
    for i, (name, opts) in enumerate(groups):
        out_json = c.out / f"bench-{name}.json"
        out_json.unlink(missing_ok=True)
        left = end - time.monotonic()
        share = left * 0.45 if i == 0 and len(groups) > 1 else left
        md = c.work / f"bench-{name}.md"
        cmd = c.cli("benchmark", *opts, *common, *peak, "--json", str(out_json), "--markdown", str(md))
        rc, text = c.run(step, cmd, share)
        if rc not in (0, None) and peak and "measure_peak" in text and not out_json.is_file():
            notes.append(f"{name}: --measure-peak failed ({last_error(text)}), rerun without it")
            peak = []  # the datasheet ceilings then, for this run and the next
            cmd = c.cli("benchmark", *opts, *common, "--json", str(out_json), "--markdown", str(md))
            rc, text = c.run(step, cmd, max(5.0, min(share, end - time.monotonic())))
        group_rows: list[dict[str, Any]] = []
        if out_json.is_file():
            report = json.loads(out_json.read_text(encoding="utf-8"))
            group_rows = summarize_rows(report)
            reports[name] = {
                "ceilings": report.get("ceilings"),
                "parity_reference": report.get("parity_reference"),
                "settings": report.get("settings"),
                "fingerprint": report.get("fingerprint"),
            }
        else:
            group_rows = parse_bench_progress(text)
        rows += group_rows
        if (
            rc == 1
            and "nothing could be measured" in text
            and all(r["status"] == "skipped" for r in group_rows)
        ):
            notes.append(f"{name}: every row skipped here (reasons in the table)")
        elif rc != 0:
            problems.append(
                f"{name}: " + (f"timed out after {share:.0f} s" if rc is None else last_error(text))
            )
    step.details.update(rows=rows, reports=reports)
    n = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "failed")}
    said = f"{n['ok']} rows measured, {n['skipped']} skipped, {n['failed']} failed"
    best = max((r for r in rows if r["status"] == "ok"), key=lambda r: r["tiles_per_s"] or 0, default=None)
    if best:
        said += (
            f"; best {best['backend']} {best['variant']} {best['precision']} batch {best['batch']}: "
            f"{best['tiles_per_s']:.1f} tiles/s"
        )
    step.details["notes"] = notes
    said += "".join(f"; note: {n}" for n in notes)
    if problems:
        step.done("fail", "; ".join(problems) + f" ({said})")
    elif n["ok"] == 0:
        step.done("skip", said)
    else:
        step.done("pass", said)


# --- 7. raster and end-to-end detect
def step_raster(c: Check, step: Step, timeout: float) -> None:
    size = c.profile.size
    path = c.work / f"ortho{size}.tif"
    workers = max(1, min(os.cpu_count() or 1, 16))
    rc, text = c.run(step, c.python(SCRIPT, "_child", "raster", str(path), str(size), str(workers)), timeout)
    info = parse_json_tail(text) if rc == 0 else None
    if info is None or not path.is_file():
        step.done("fail", "timed out" if rc is None else last_error(text))
        return
    c.raster = path
    step.details.update(info)
    step.done(
        "pass",
        f"{size}×{size} px, 5 bands uint8, {info['mib']:.0f} MiB in {info['seconds']:.1f} s ({workers} workers)",
    )


_DETECT_TEXT = {
    "mpx_per_s": r"([\d.]+) Mpx/s",
    "tiles_per_s": r"([\d.]+) tiles/s",
    "tiles_inferred": r"\((\d+) tiles, ",
    "peak_rss_mb": r"peak RSS (\d+) MiB",
    "busy_percent": r"model busy (\d+)%",
}


def parse_detect_text(text: str) -> dict[str, Any]:
    """detect's closing summary lines, when its summary object could not be captured."""
    out: dict[str, Any] = {}
    for key, pattern in _DETECT_TEXT.items():
        m = re.search(pattern, text)
        if m:
            out[key] = float(m.group(1))
    m = re.search(r"stage seconds: (.+)", text)
    if m:
        out["seconds"] = {k: float(v) for k, v in re.findall(r"([a-z0-9]+) ([\d.]+)", m.group(1))}
    m = re.search(r"in ([\d.]+) s: ", text)
    if m:
        out.setdefault("seconds", {})["wall"] = float(m.group(1))
    return out


def step_detect(c: Check, step: Step, timeout: float) -> None:
    if c.raster is None:
        step.done("skip", "no raster (the raster step failed)")
        return
    p = c.profile
    backend, precision = p.detect_backend, p.detect_precision
    if backend == "torch":
        model = c.checkpoint
    elif backend == "onnxruntime":
        model = c.onnx.get(precision) or c.onnx.get("fp32")
    else:
        model = c.engines.get(precision)
    if model is None:
        step.done("skip", f"no {backend} {precision} model (train/export failed)")
        return
    summary_json = c.work / "detect-summary.json"
    summary_json.unlink(missing_ok=True)
    overlap = p.tile // 4
    detect_args = [
        "detect", str(c.raster), "--model", str(model), "--out", str(c.work / "map.tif"), "--backend", backend,
        "--device", c.device, "--precision", precision, "--batch-size", str(p.detect_batch),
        "--stitching", "blend", "--tile", str(p.tile), "--overlap", str(overlap), "--overwrite", "--quiet",
    ]  # fmt: skip
    cmd = c.python(SCRIPT, "_child", "detect", str(summary_json), "--", *detect_args)
    with GpuMemorySampler() if c.device.startswith("cuda") else contextlib.nullcontext() as sampler:
        rc, text = c.run(step, cmd, timeout)
    child = json.loads(summary_json.read_text(encoding="utf-8")) if summary_json.is_file() else {}
    summary = child.get("summary") or parse_detect_text(text)
    step.details.update(
        raster=str(c.raster),
        size=p.size,
        model=str(model),
        backend=backend,
        precision=precision,
        batch=p.detect_batch,
        tile=p.tile,
        overlap=overlap,
        stitching="blend",
        summary=summary,
        summary_source="DetectSummary" if child.get("summary") else "parsed from detect's output",
        process_max_rss_mib=child.get("ru_maxrss_mib"),
        torch_cuda=child.get("torch_cuda"),
        nvidia_smi_memory=sampler.as_dict() if sampler is not None else None,
    )
    if rc != 0:
        step.done("fail", f"timed out after {timeout:.0f} s" if rc is None else last_error(text))
        return
    tps, mpx = summary.get("tiles_per_s"), summary.get("mpx_per_s")
    gpu = ""
    if child.get("torch_cuda"):
        gpu = f", torch peak {child['torch_cuda']['max_allocated_mib']:.0f} MiB"
    if sampler is not None and sampler.peak_mib is not None:
        gpu += f", nvidia-smi peak {sampler.peak_mib} MiB"
    step.done(
        "pass",
        f"{backend} {precision} batch {p.detect_batch}, {p.size}² blend: {tps:.1f} tiles/s, {mpx:.1f} Mpx/s, "
        f"peak RSS {summary.get('peak_rss_mb', 0):.0f} MiB{gpu}",
    )


STEP_FUNCS: dict[str, Callable[[Check, Step, float], None]] = {
    "env": step_env,
    "pytest": step_pytest,
    "train": step_train,
    "export": step_export,
    "parity": step_parity,
    "benchmark": step_benchmark,
    "raster": step_raster,
    "detect": step_detect,
}


# ---------------------------------------------------------------------------------------------- report
def _f(value: Any, spec: str = ".1f", scale: float = 1.0) -> str:
    if value is None or isinstance(value, str):
        return "–" if value is None else value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if spec.endswith("d"):
        return format(round(value * scale), spec)
    return format(value * scale, spec)


def render_markdown(report: dict[str, Any]) -> str:
    env = report.get("environment") or {}
    smi = env.get("nvidia_smi") or {}
    gpu = (smi.get("gpus") or [{}])[0] if smi.get("available") else {}
    torch_info = env.get("torch") or {}
    ort = env.get("onnxruntime") or {}
    machine = (
        f"{gpu.get('name')} ({gpu.get('memory_total_mib')} MiB, driver {gpu.get('driver_version')}, "
        f"CUDA {smi.get('driver_cuda')})"
        if gpu
        else "no GPU"
    )
    lines = [
        f"### GPU check: {machine}, {report['host']['cpus']} CPUs, mode {report['mode']}",
        "",
        (
            f"Run {report['started_utc']} by `benchmarks/gpu_check.py` ({report['total_s']:.0f} s of a "
            f"{report['budget_s']:.0f} s budget). torch {torch_info.get('version')} (CUDA "
            f"{torch_info.get('cuda') or 'none'}, cuDNN {torch_info.get('cudnn')}), onnxruntime "
            f"{ort.get('version')} ({', '.join(ort.get('providers') or [])}), TensorRT "
            f"{env.get('tensorrt') or 'absent'}, Python {env.get('python')}."
        ),
        "",
        "| step | status | seconds | budget s | result |",
        "|---|---|---|---|---|",
    ]
    for s in report["steps"]:
        reason = s["reason"].replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {s['name']} | **{s['status']}** | {s['seconds']:.1f} | {s['budget_s']:.0f} | {reason} |"
        )
    steps = {s["name"]: s for s in report["steps"]}
    parity = steps["parity"]["details"].get("variants")
    if parity:
        lines += [
            "",
            f"Parity against PyTorch FP32 ({steps['parity']['details'].get('tiles_from')}):",
            "",
            "| variant | tiles | argmax agreement | gate | max \\|Δlogit\\| | ΔmIoU points | passed |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in parity:
            lines.append(
                f"| {r['variant']} | {r['tiles']} | {_f(r['agreement'], '.3f', 100)} % | "
                f"≥ {_f(r['min_agreement'], '.2f', 100)} % | {_f(r['max_abs_logit'], '.3g')} | "
                f"{_f(r['delta_miou'], '.3f')} | {'yes' if r['passed'] else 'NO'} |"
            )
    rows = steps["benchmark"]["details"].get("rows")
    if rows:
        lines += [
            "",
            "Model-only (`flair-deploy benchmark`; latency includes the host↔device copies):",
            "",
            (
                "| backend | variant | precision | batch | tile | p50 ms | tiles/s | Mpx/s | % of ceiling | "
                "agreement vs torch FP32 | peak device MiB | status |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason')}"
            lines.append(
                f"| {r.get('backend')} | {r.get('variant')} | {r.get('precision')} | {_f(r.get('batch'), 'd')} | "
                f"{_f(r.get('tile'), 'd')} | {_f(r.get('p50_ms'), '.2f')} | {_f(r.get('tiles_per_s'), '.1f')} | "
                f"{_f(r.get('mpx_per_s'), '.1f')} | {_f(r.get('ceiling_fraction'), '.1f', 100)} | "
                f"{_f(r.get('argmax_agreement'), '.3f', 100)} | {_f(r.get('peak_device_mib'), '.0f')} | "
                f"{status.replace('|', '/')} |"
            )
    det = steps["detect"]["details"]
    summary = det.get("summary")
    if summary:
        sec = summary.get("seconds") or {}
        stage_names = ("read", "preprocess", "h2d", "compute", "d2h", "stitch", "write", "wall")
        torch_cuda = det.get("torch_cuda") or {}
        smi_mem = det.get("nvidia_smi_memory") or {}
        busy = summary.get("busy")
        if busy is None and summary.get("busy_percent") is not None:
            busy = summary["busy_percent"] / 100
        lines += [
            "",
            (
                f"End-to-end (`flair-deploy detect`, {det['size']}² five-band uint8 sample orthophoto, "
                f"{det['stitching']}, tile {det['tile']}, overlap {det['overlap']}):"
            ),
            "",
            "| backend | precision | batch | tiles | tiles/s | Mpx/s | "
            + " / ".join(stage_names)
            + " s | busy | peak RSS MiB | GPU peak MiB: torch allocated / nvidia-smi used |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| {det['backend']} | {det['precision']} | {det['batch']} | "
            f"{_f(summary.get('tiles_inferred'), '.0f')} | {_f(summary.get('tiles_per_s'), '.1f')} | "
            f"{_f(summary.get('mpx_per_s'), '.1f')} | "
            + " / ".join(_f(sec.get(k), ".1f") for k in stage_names)
            + f" | {_f(busy, '.0f', 100)} % | {_f(summary.get('peak_rss_mb'), '.0f')} | "
            f"{_f(torch_cuda.get('max_allocated_mib'), '.0f')} / {_f(smi_mem.get('peak_mib'), '.0f')} |",
        ]
    return "\n".join(lines) + "\n"


def build_report(c: Check) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "tool": "benchmarks/gpu_check.py",
        "started_utc": c.started.isoformat(timespec="seconds"),
        "total_s": round(c.clock(), 1),
        "budget_s": c.args.budget,
        "mode": c.device,
        "profile": asdict(c.profile),
        "argv": sys.argv[1:],
        "host": {
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
        },
        "environment": c.env_info,
        "steps": [asdict(s) for s in c.steps.values()],
    }


def cap_file(path: Path, limit: int = OUT_MAX_BYTES) -> None:
    """Keep the last *limit* bytes of an oversized file (what comes back from $OUT is capped)."""
    if path.is_file() and path.stat().st_size > limit:
        data = path.read_bytes()[-(limit - 200) :]
        path.write_bytes(b"[gpu-check: truncated to the last %d bytes]\n" % len(data) + data)


def write_report(c: Check) -> dict[str, Any]:
    report = build_report(c)
    (c.out / "gpu-check.md").write_text(render_markdown(report), encoding="utf-8")
    chunks = []
    for s in c.steps.values():
        log = c.work / "logs" / f"{s.name}.log"
        if s.name == "pytest" and (c.out / "pytest.log").is_file():
            log = c.out / "pytest.log"
        body = tail(log.read_text(encoding="utf-8", errors="replace")) if log.is_file() else "(no output)"
        chunks.append(f"===== {s.name}: {s.status} ({s.seconds:.1f} s) {s.reason}\n{body}\n")
    (c.out / "logs.txt").write_text("\n".join(chunks), encoding="utf-8")
    report["files"] = sorted(c.files())
    (c.out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    for path in c.out.iterdir():
        cap_file(path)
    return report


def safe_write_report(c: Check) -> dict[str, Any] | None:
    """write_report, whose own failure is printed and never stops the check."""
    try:
        return write_report(c)
    except Exception:  # noqa: BLE001
        c.say("warning: writing the report failed:\n" + traceback.format_exc())
        return None


# ---------------------------------------------------------------------------------------------- driver
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="gpu_check.py",
        description="The whole GPU check in one call (see the module docstring and docs/benchmarks.md).",
    )
    ap.add_argument("--out", required=True, help="Report folder ($OUT on the device machine).")
    ap.add_argument(
        "--device", default="auto", help="auto (CUDA when torch sees a GPU), cuda, cuda:<i> or cpu."
    )
    ap.add_argument("--budget", type=float, default=480.0, help="Seconds for the whole run (default 480).")
    ap.add_argument("--size", type=int, help="Edge of the detect raster, px (16384 on CUDA, 1024 on CPU).")
    ap.add_argument("--tile", type=int, help="Benchmark and detect tile edge (512 on CUDA, 256 on CPU).")
    ap.add_argument("--batches", help="Model-only batch sizes, comma list (1,16,32 on CUDA, 1,4 on CPU).")
    ap.add_argument("--min-time", type=float, help="benchmark --min-time per row (1.0 on CUDA, 0.2 on CPU).")
    ap.add_argument("--min-iters", type=int, help="benchmark --min-iters per row (10 on CUDA, 2 on CPU).")
    ap.add_argument("--epochs", type=int, help="Training epochs (12 on CUDA, 1 on CPU); 0: quick-fit only.")
    ap.add_argument(
        "--quick-steps", type=int, default=60, help="Optimiser steps of the quick fit (default 60)."
    )
    ap.add_argument("--quick-batch", type=int, default=8, help="Patches per quick-fit step (default 8).")
    ap.add_argument("--encoder", help="SMP encoder (resnet34 on CUDA, resnet18 on CPU).")
    ap.add_argument("--depth", type=int, help="Encoder depth, 3-5 (5 on CUDA, 3 on CPU).")
    ap.add_argument("--detect-backend", choices=("torch", "onnxruntime", "tensorrt"), help="torch on CUDA.")
    ap.add_argument("--detect-precision", choices=("fp32", "fp16", "bf16", "int8"), help="fp16 on CUDA.")
    ap.add_argument("--detect-batch", type=int, help="detect --batch-size (16 on CUDA, 4 on CPU).")
    ap.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                    type=lambda kv: f"--set={kv}", help="Extra `train --set` override (repeatable).")  # fmt: skip
    ap.add_argument("--pytest-args", nargs="*", default=[], help="Extra pytest arguments (e.g. test paths).")
    ap.add_argument("--skip", default="", help=f"Comma list of steps to skip: {', '.join(STEPS)}.")
    ap.add_argument("--work", help="Work folder (default: a new temporary folder, removed at the end).")
    ap.add_argument("--keep-work", action="store_true", help="Keep the work folder (models, raster, logs).")
    args = ap.parse_args(argv)
    unknown = set(filter(None, args.skip.split(","))) - set(STEPS)
    if unknown:
        ap.error(f"--skip: unknown step(s) {', '.join(sorted(unknown))}; steps are {', '.join(STEPS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    c = Check(args)
    skip = set(filter(None, args.skip.split(",")))
    c.profile = resolve_profile(args, "cuda" if c.device.startswith("cuda") else "cpu")

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    c.say(f"gpu-check: out {c.out}, work {c.work}, budget {args.budget:.0f} s")
    try:
        for name in STEPS:
            step = c.steps[name]
            if name in skip:
                step.done("skip", "--skip")
                c.say(f"{name}: skipped (--skip)")
                continue
            budget = c.budget_for(name)
            if budget < MIN_STEP_S:
                step.done("skip", f"global budget of {args.budget:.0f} s spent")
                c.say(f"{name}: skipped (budget spent)")
                continue
            step.budget_s = round(budget, 1)
            c.say(f"{name}: {step.title} (budget {budget:.0f} s)")
            start = time.monotonic()
            try:
                STEP_FUNCS[name](c, step, budget)
            except Interrupted:
                step.done("fail", "interrupted")
                raise
            except Exception as exc:  # noqa: BLE001  (one broken step must not stop the others)
                step.done("fail", f"gpu_check internal error: {type(exc).__name__}: {exc}")
                with (c.work / "logs" / f"{name}.log").open("a", encoding="utf-8") as fh:
                    fh.write(traceback.format_exc())
            finally:
                step.seconds = round(time.monotonic() - start, 1)
                c.say(f"{name}: {step.status.upper()} in {step.seconds:.1f} s: {step.reason}")
                safe_write_report(c)
    except Interrupted as exc:
        c.say(f"interrupted ({exc}): writing the report")
        c.stop_child()
        for s in c.steps.values():
            if s.status == "pending":
                s.done("skip", f"not run: interrupted ({exc})")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    report = safe_write_report(c) or build_report(c)
    if not args.keep_work and not args.work:
        shutil.rmtree(c.work, ignore_errors=True)
    files = c.files()
    if len(files) > OUT_MAX_FILES:  # pragma: no cover - the check writes 7 at most
        c.say(f"warning: {len(files)} files in {c.out}, only {OUT_MAX_FILES} come back from the device")
    c.say(f"done in {report['total_s']:.0f} s; {len(files)} files in {c.out}: {', '.join(files)}")
    print()
    with contextlib.suppress(Exception):
        print(render_markdown(report), flush=True)
    failed = [s.name for s in c.steps.values() if s.status == "fail"]
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------- children
def child_env() -> None:
    """Print one JSON line: Python, torch/CUDA, onnxruntime, tensorrt, the project's dependencies."""
    info: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable}
    deps: dict[str, str | None] = {}
    for module, dist in PROJECT_DEPS.items():
        if importlib.util.find_spec(module) is None:
            deps[dist] = None
            continue
        try:
            deps[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            deps[dist] = "present"
    info["deps"] = deps
    try:
        import flair_deploy

        info["flair_deploy"] = {
            "version": flair_deploy.__version__,
            "path": str(Path(flair_deploy.__file__).parent),
        }
    except Exception as exc:  # noqa: BLE001  (a missing dependency: reported, the probe goes on)
        info["flair_deploy"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        import torch

        t: dict[str, Any] = {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "threads": torch.get_num_threads(),
        }
        if t["cuda_available"]:
            props = torch.cuda.get_device_properties(0)
            t.update(
                device_count=torch.cuda.device_count(),
                device_name=props.name,
                capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                total_memory_mib=props.total_memory // 2**20,
                multiprocessors=props.multi_processor_count,
            )
        info["torch"] = t
    except Exception as exc:  # noqa: BLE001
        info["torch"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = {
            "version": ort.__version__,
            "providers": ort.get_available_providers(),
            "device": ort.get_device(),
        }
    except Exception as exc:  # noqa: BLE001
        info["onnxruntime"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        import tensorrt

        info["tensorrt"] = str(tensorrt.__version__)
    except Exception:  # noqa: BLE001  (absent, or unusable: both are "no engines")
        info["tensorrt"] = None
    print(json.dumps(info, default=str))


def child_init_model(
    ckpt: str, data_dir: str, encoder: str, depth: str, n_train: str, n_val: str, steps_s: str, batch_s: str
) -> None:
    """A quickly fitted sample U-Net (no Lightning), plus a small sample dataset for calibration/parity."""
    import numpy as np
    import torch

    from flair_deploy.artifacts import save_checkpoint
    from flair_deploy.description import ModelDescription
    from flair_deploy.models import build_model
    from flair_deploy.sample import make_sample_dataset, render_scene, sample_description

    start = time.perf_counter()
    make_sample_dataset(Path(data_dir), n_train=int(n_train), n_val=int(n_val), n_test=1, overwrite=True)
    base = sample_description(64)
    desc = ModelDescription.model_validate(
        {
            **base.model_dump(mode="json"),
            "name": f"gpu-check-unet-{encoder}-d{depth}",
            "architecture": {"arch": "unet", "encoder": encoder, "encoder_depth": int(depth)},
        }
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cores = os.cpu_count() or 1
    if device == "cpu" and cores <= 2 and os.getloadavg()[0] > cores - 0.5:
        torch.set_num_threads(1)  # a busy 2-core machine: two threads fight the other jobs (4x slower seen)
    model = build_model(desc).to(device)
    index = {c.code: i for i, c in enumerate(desc.classes)}
    lut = np.zeros(256, dtype=np.int64)
    for code, i in index.items():
        lut[code] = i
    rng = np.random.default_rng(0)
    images, labels = [], []
    edge = 2 ** int(depth) * 4  # small patches: seconds on a CPU; the network is fully convolutional
    for _ in range(64):
        image, mask = render_scene(int(rng.integers(0, 10**6)), int(rng.integers(0, 10**6)), edge, edge)
        images.append(image.astype(np.float32))
        labels.append(lut[mask])
    x, y = torch.from_numpy(np.stack(images)).to(device), torch.from_numpy(np.stack(labels)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    steps = int(steps_s)
    loss = torch.zeros(())
    for _ in range(steps):
        idx = torch.randint(0, len(x), (int(batch_s),), device=device)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().cpu()
    save_checkpoint(Path(ckpt), model, desc)
    print(
        json.dumps(
            {
                "steps": steps,
                "loss": round(float(loss.detach()), 4),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


def _render_block(job: tuple[int, int, int, int, int, int]) -> tuple[int, int, Any]:
    from flair_deploy.sample import render_scene

    world_row, world_col, r, col, h, w = job
    image, _ = render_scene(world_row + r, world_col + col, h, w, seed=0)
    return r, col, image


def child_raster(path: str, size_s: str, workers_s: str) -> None:
    """A *size*² five-band uint8 sample orthophoto, rendered in parallel blocks (same world as the demo).

    The layout follows ``flair_deploy.sample.make_sample_ortho`` (tiled 512², pixel-interleaved, uncompressed,
    EPSG:2154 at 0.2 m, nodata 0 that the scene never draws in R, G, B or NIR); only the rendering is spread
    over *workers* processes, so that 268 Mpx take seconds rather than a minute.
    """
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from flair_deploy.flair_format import FLAIR_BANDS

    size, workers = int(size_s), int(workers_s)
    start = time.perf_counter()
    gsd, x0, y0 = 0.2, 650_000.0, 6_862_000.0  # make_sample_ortho's default origin
    # The sample world: column c at easting 0.2 c, row r at northing 7 200 000 - 0.2 r.
    world_col, world_row = round(x0 / gsd), round((7_200_000.0 - y0) / gsd)
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 5, "dtype": "uint8", "crs": "EPSG:2154",
        "transform": from_origin(x0, y0, gsd, gsd), "nodata": 0, "tiled": True, "blockxsize": 512,
        "blockysize": 512, "interleave": "pixel", "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    bh, bw = 512, min(size, 4096)
    jobs = [
        (world_row, world_col, r, col, min(bh, size - r), min(bw, size - col))
        for r in range(0, size, bh)
        for col in range(0, size, bw)
    ]
    with rasterio.open(path, "w", **profile) as dst:
        dst.descriptions = tuple(FLAIR_BANDS)
        if workers > 1 and len(jobs) > 4:
            import concurrent.futures as cf
            import multiprocessing as mp

            ctx = mp.get_context("fork") if sys.platform.startswith("linux") else None
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                for r, col, image in pool.map(_render_block, jobs, chunksize=1):
                    dst.write(image, window=Window(col, r, image.shape[2], image.shape[1]))
        else:
            for job in jobs:
                r, col, image = _render_block(job)
                dst.write(image, window=Window(col, r, image.shape[2], image.shape[1]))
    mib = Path(path).stat().st_size / 2**20
    print(
        json.dumps(
            {
                "path": path,
                "size": size,
                "mib": round(mib, 1),
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
    )


def child_detect(summary_path: str, argv: list[str]) -> None:
    """Run the flair-deploy CLI in this process, then write detect's summary and the memory peaks.

    ``flair_deploy.inference.detect.detect`` is wrapped to keep its :class:`DetectSummary`; torch's CUDA
    allocator peak and this process's peak RSS are read at the end.
    """
    import resource

    captured: dict[str, Any] = {}
    try:
        # The module itself: flair_deploy.inference re-exports a function of the same name.
        det = importlib.import_module("flair_deploy.inference.detect")

        original = det.detect

        def wrapped(*a: Any, **k: Any) -> Any:
            summary = original(*a, **k)
            captured["summary"] = summary.as_dict()
            return summary

        setattr(det, "detect", wrapped)  # noqa: B010  (the CLI imports it from the module when it runs)
    except Exception as exc:  # noqa: BLE001  (the CLI then reports the same error itself)
        captured["wrap_error"] = f"{type(exc).__name__}: {exc}"
    from flair_deploy.cli import main as cli_main

    code: int = 0
    try:
        cli_main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        info: dict[str, Any] = {
            "summary": captured.get("summary"),
            "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        if "wrap_error" in captured:
            info["wrap_error"] = captured["wrap_error"]
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            info["torch_cuda"] = {
                "max_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "max_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1),
            }
        Path(summary_path).write_text(json.dumps(info, default=str) + "\n", encoding="utf-8")
    sys.exit(code)


def child(argv: list[str]) -> None:
    kind, rest = argv[0], argv[1:]
    if kind == "env":
        child_env()
    elif kind == "init-model":
        child_init_model(*rest)
    elif kind == "raster":
        child_raster(*rest)
    elif kind == "detect":
        split = rest.index("--")
        child_detect(rest[0], rest[split + 1 :])
    else:
        raise SystemExit(f"unknown child {kind!r}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2:])
    else:
        sys.exit(main())
