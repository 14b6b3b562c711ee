"""What a command prints: our own lines, one progress line, and Ray's noise hidden unless --verbose.

Every command (`featurize`, `train`, `label`, `demo`, `evaluate`, `serve`) calls `setup(verbose)`
first and starts Ray with `init_ray()`, and long Ray Data jobs run inside `progress(...)`.

Quiet (the default) hides, in the driver and in every worker of the job:

- Ray's INFO lines: the `ray` logger of the driver (`ray.init(logging_level=)`), Ray Data
  (`RAY_DATA_LOG_LEVEL`), Ray Train (`RunConfig(logging_config=train_logging_config())`),
  Ray Serve (`serve_logging_config()`);
- each worker line printed twice: Ray Train patches `print` in its workers to tee into a
  logger as well (`RAY_TRAIN_ENABLE_PRINT_PATCH=0`);
- Ray Data's progress bars (one `progress` line replaces them) and the warning that they
  are off; transformers' "Loading weights" bars; warnings raised inside Ray's own modules
  (deprecations of Ray internals used by Ray itself).

Warnings and errors of Ray stay visible (its C++ core's error lines too: lowering
RAY_BACKEND_LOG_LEVEL makes every process print a line saying so), and every full log
stays in Ray's session directory (/tmp/ray/session_latest/logs). `--verbose` leaves Ray's
defaults alone. Environment variables reach workers through `runtime_env` (so a cluster's workers are quiet
too) and `worker_process_setup_hook` (`setup_worker`) applies the rest in each worker process.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

_state = {"verbose": False}

# Passed on to Ray's workers whatever the mode: offline model loading is a choice of the user.
PASSTHROUGH_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

# Set in the driver and in every worker when quiet (see the module docstring).
QUIET_ENV = {
    "MMSA_RAY_QUIET": "1",  # read by setup_worker
    "RAY_DATA_LOG_LEVEL": "WARNING",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' tqdm follows huggingface_hub's switch
}

# Ray's own modules warn about Ray internals that Ray itself calls (e.g. a deprecated
# ExecutionOptions field set by Ray Train): nothing a user of this tool can act on.
_RAY_MODULES = r"ray(\..*)?$"

# Ray modules whose logger is named by file path (`logging.getLogger(__file__)`), so that no
# "ray.*" level reaches it: Ray Train's "Reporting training result ..." line per worker and epoch.
_RAY_FILE_LOGGERS = ("train/v2/_internal/execution/context.py",)

# Warnings we cause on purpose: Ray Data's progress bars are off because `progress` draws one line.
_RAY_LOG_ONCE_KEYS = ("ray_data_progress_manager_disabled",)


def add_verbose_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show everything Ray logs (INFO lines, its progress bars, every worker line); "
                        "default: our own lines, one progress line, Ray's warnings and errors")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Every subcommand's parse: `--verbose` added to its parser, argv parsed, and this process's
    output set up quiet or verbose (before Ray starts)."""
    add_verbose_arg(parser)
    args = parser.parse_args(argv)
    setup(args.verbose)
    return args


def min_max(text: str) -> tuple[int, int]:
    """An argparse type for actor pool sizes: "MIN,MAX", or "N" for N,N."""
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX or N (whole numbers), got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX or N, got {text!r}")
    return parts[0], parts[1]


def setup(verbose: bool = False) -> None:
    """Configure this (driver) process for quiet or verbose output. Call before Ray starts."""
    _state["verbose"] = bool(verbose)
    if verbose:
        return
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    _quiet_this_process()


def _quiet_this_process() -> None:
    """The in-process part of quiet mode (driver and, through the setup hook, workers)."""
    warnings.filterwarnings("ignore", module=_RAY_MODULES)
    if "ray.data" in sys.modules:  # already configured at import: the env var came too late
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    try:
        import ray
        from ray.util.debug import log_once
    except ImportError:  # pragma: no cover - Ray is a dependency
        return
    for path in _RAY_FILE_LOGGERS:
        logging.getLogger(os.path.join(os.path.dirname(ray.__file__), *path.split("/"))).setLevel(logging.WARNING)
    for key in _RAY_LOG_ONCE_KEYS:
        log_once(key)  # marks it as logged


def setup_worker() -> None:
    """Ray `worker_process_setup_hook` of the jobs `init_ray` starts: runs once in each worker
    process, before any task. Never raises (a failing hook would end the worker)."""
    try:
        import ray

        # Ray's state API in workers (Ray Train's PlacementGroupCleaner) looks the cluster up
        # when no address is set, and on a machine running several Rays it fails with a
        # traceback ("Found multiple active Ray instances"): name this worker's own cluster.
        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001 - only a better address for Ray's own lookups
        pass
    if os.environ.get("MMSA_RAY_QUIET") == "1":
        try:
            _quiet_this_process()
        except Exception:  # noqa: BLE001 - output settings must not stop a worker
            pass


def ray_init_kwargs(verbose: bool | None = None, runtime_env: dict | None = None, **kwargs: Any) -> dict:
    """Keyword arguments for `ray.init` in this mode. `runtime_env` is merged (its env_vars
    win over ours); other `kwargs` are passed through (address, num_cpus, ...)."""
    verbose = _state["verbose"] if verbose is None else verbose
    env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
    renv = dict(runtime_env or {})
    renv.setdefault("worker_process_setup_hook", f"{__name__}.setup_worker")
    if not verbose:
        env.update(QUIET_ENV)
    env.update(renv.get("env_vars") or {})
    if env:
        renv["env_vars"] = env
    out: dict[str, Any] = {"log_to_driver": True}  # our own worker lines ([train] epoch ...) come through it
    if not verbose:
        out["logging_level"] = logging.WARNING
    if renv:
        out["runtime_env"] = renv
    out.update(kwargs)
    return out


def init_ray(address: str | None = None, **kwargs: Any) -> bool:
    """Start (or join, with an address / RAY_ADDRESS) Ray unless it runs in this process.
    Returns True when this call started it (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    if not _state["verbose"]:
        # The token notice is logged at WARNING on every new local Ray.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(**ray_init_kwargs(address=address, **kwargs))
    return True


def train_logging_config():
    """Ray Train's `RunConfig(logging_config=...)` for this mode."""
    from ray.train import LoggingConfig

    return LoggingConfig(log_level="INFO" if _state["verbose"] else "WARNING")


def serve_logging_config():
    """Ray Serve's `LoggingConfig` (controller, proxy, replicas) for this mode: quiet keeps
    warnings and errors, verbose keeps Serve's INFO lines and per-request access log."""
    from ray.serve.schema import LoggingConfig

    if not _state["verbose"]:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    return LoggingConfig(log_level="INFO" if _state["verbose"] else "WARNING")


# ----------------------------------------------------------------------------- progress


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """One line: `label [#####-----] done/total unit (pct) · rate · ETA · elapsed`.

    On a terminal the line is redrawn in place (at most `redraw_s` apart); elsewhere (a
    log file, a pipe, CI) a new line is printed at most every `interval_s` seconds when the
    count moved, and, while it stands still (start-up, a long first batch), after 1, 2, 4,
    ... times `interval_s` (at most 5 minutes apart); `close()` prints the last one.
    `update(done)` takes the absolute count and may be called from any thread, as often as wanted.
    """

    def __init__(self, label: str, total: int | None, unit: str = "rows", stream: TextIO | None = None,
                 interval_s: float = 15.0, redraw_s: float = 0.2, width: int = 20):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = redraw_s if self.tty else interval_s
        self.width = width
        self.done = 0
        self.start = time.monotonic()
        self._first: tuple[float, int] | None = None  # (time, count) when work first showed: rate leaves start-up out
        self._last_draw = self.start
        self._drawn = 0  # the count on the last line printed (0: none yet)
        self._quiet_gap = self.interval_s  # log mode: seconds before the next line while the count stands still
        self._lock = threading.Lock()
        self._closed = False

    def update(self, done: int) -> None:
        with self._lock:
            if self._closed:
                return
            now = time.monotonic()
            if done > self.done:
                self.done = done
                if self._first is None:
                    self._first = (now, done)
            if self.tty:
                if now - self._last_draw >= self.interval_s:
                    self._draw(now)
            elif self.done != self._drawn:
                if now - self._last_draw >= self.interval_s:
                    self._draw(now)
                    self._quiet_gap = self.interval_s
            elif now - self._last_draw >= self._quiet_gap:  # nothing new: a heartbeat, ever less often
                self._draw(now)
                self._quiet_gap = min(2 * self._quiet_gap, 300.0)

    def rate(self, now: float | None = None, overall: bool = False) -> float | None:
        """Units per second: since the first count came (start-up left out) once that spans
        a few seconds, else (or with `overall`) over the whole run; None before any count."""
        now = time.monotonic() if now is None else now
        if not overall and self._first is not None and self.done > self._first[1] and now - self._first[0] >= 3.0:
            return (self.done - self._first[1]) / (now - self._first[0])
        return self.done / (now - self.start) if self.done and now - self.start >= 1.0 else None

    def line(self, now: float | None = None, final: bool = False) -> str:
        now = time.monotonic() if now is None else now
        parts = []
        if self.total:
            filled = min(self.width, int(self.width * self.done / self.total))
            parts.append(f"{self.label} [{'#' * filled}{'-' * (self.width - filled)}] "
                         f"{self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)")
        else:
            parts.append(f"{self.label} {self.done} {self.unit}")
        rate = self.rate(now, overall=final)
        if rate:
            parts.append(f"{rate:.2f} {self.unit}/s" if rate < 10 else f"{rate:.0f} {self.unit}/s")
            if self.total and self.done < self.total:
                parts.append(f"ETA {_clock((self.total - self.done) / rate)}")
        parts.append(f"{_clock(now - self.start)} elapsed")
        return " · ".join(parts)

    def _draw(self, now: float, final: bool = False) -> None:
        self._last_draw, self._drawn = now, self.done
        text = self.line(now, final)
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K" + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.tty or self._drawn != self.done:  # a log already has this count's line
                self._draw(time.monotonic(), final=True)


_active: list[Progress] = []  # the progress line fed by Ray Data executions of this process


@contextlib.contextmanager
def progress(label: str, total: int | None, unit: str = "rows", dataset=None, **kwargs: Any) -> Iterator[Progress]:
    """A `Progress` line fed by the Ray Data executions that run in this process inside the
    block. The count is the rows that came out of the operator feeding the sink (the model
    stage of `label` and `featurize`): what is done, not what was read.

    `dataset`: the Dataset executed in the block (it holds its own copy of the DataContext);
    without it the global DataContext is set for the block, so the datasets must be created
    inside it."""
    from ray.data import DataContext

    ctx = dataset.context if dataset is not None else DataContext.get_current()
    callback = _callback_class()
    registered = callback in ctx.custom_execution_callback_classes
    if not registered:
        ctx.custom_execution_callback_classes.append(callback)
    previous_bars = ctx.enable_progress_bars
    if not _state["verbose"]:
        ctx.enable_progress_bars = False  # this line replaces Ray Data's bars
    bar = Progress(label, total, unit, **kwargs)
    _active.append(bar)
    try:
        yield bar
    finally:
        _active.remove(bar)
        ctx.enable_progress_bars = previous_bars
        if not registered:
            ctx.custom_execution_callback_classes.remove(callback)
        bar.close()


def rows_done(executor) -> int | None:
    """Rows out of the operator that feeds the sink of a streaming execution (out of the last
    operator when there is no sink); None when the plan cannot be read."""
    node = getattr(executor, "_output_node", None)  # Ray 2.60's StreamingExecutor
    if not node:
        return None
    op = node[0]
    try:
        if op.name.startswith("Write") and op.input_dependencies:
            return int(op.input_dependencies[0].metrics.rows_task_outputs_generated)
        return int(op.metrics.row_outputs_taken)
    except AttributeError:
        return None


@functools.cache
def _callback_class() -> type:
    """The Ray Data execution callback (driver side) that feeds the active `progress` line.
    Built on first use, so that importing this module does not import Ray Data; it pickles by
    reference as `mmsa_ray.console._DatasetProgress` (module `__getattr__` below)."""
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    class _DatasetProgress(ExecutionCallback):
        def on_execution_step(self, executor) -> None:
            if _active:
                done = rows_done(executor)
                if done is not None:
                    _active[-1].update(done)

        def after_execution_succeeds(self, executor) -> None:
            self.on_execution_step(executor)

    _DatasetProgress.__module__ = __name__
    _DatasetProgress.__qualname__ = "_DatasetProgress"
    return _DatasetProgress


def __getattr__(name: str):
    if name == "_DatasetProgress":
        return _callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
