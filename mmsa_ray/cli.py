"""`mmsa-ray <command> ...`: one subcommand per job, each the `main(argv)` of its module.

The same modules back `python jobs/<name>.py` for `ray job submit`, so the CLI and the
cluster entrypoints take the same flags. Modules are imported only when their command
runs: `mmsa-ray --help` stays fast and needs neither torch nor Ray.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading

# command -> (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "make-sample-data": ("mmsa_ray.train.sample_data", "write a small synthetic dataset in MELD layout"),
    "demo": ("mmsa_ray.demo", "sample data -> train -> label, on local Ray with offline models"),
    "featurize": ("mmsa_ray.train.featurize", "cache frozen-encoder features of clips as Parquet (Ray Data)"),
    "train": ("mmsa_ray.train.driver", "train the model data-parallel (Ray Train)"),
    "evaluate": ("mmsa_ray.train.evaluate", "metrics, confusion matrices, calibration and a report for a checkpoint"),
    "calibrate": ("mmsa_ray.train.calibrate_checkpoint", "fit a checkpoint's calibration and uncertainty threshold "
                  "on MELD dev"),
    "average": ("mmsa_ray.train.average", "average the weights of checkpoints trained from one start (a soup)"),
    "transcribe": ("mmsa_ray.batch.transcribe", "transcribe speech into timed utterances as Parquet (Ray Data)"),
    "label": ("mmsa_ray.batch.label", "label a video archive into Parquet (Ray Data)"),
    "serve": ("mmsa_ray.serve.launch", "serve the model over HTTP (Ray Serve), with an upload page at /"),
    "report": ("mmsa_ray.report.html", "an offline HTML report (timelines, player) and subtitles of a label output"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: mmsa-ray <command> [options]   (mmsa-ray <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"mmsa-ray: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return run(command, rest)


def run(command: str, argv: list[str]) -> int:
    """Run one command's `main(argv)` (the CLI and `python jobs/<command>.py` alike).

    Wrong input -- a missing path, a bad MELD CSV, manifest or checkpoint, an undecodable
    file that is the whole input, an output that must not be replaced -- ends with one
    line on stderr and exit status 2, as a bad flag does. The library reports those as
    OSError subclasses, ValueError (MeldFormatError among them) and MediaError; any
    other exception keeps its traceback. Ctrl-C ends with one line and exit status 130.
    """
    ctrl_c = _CtrlC(command)
    try:
        module = importlib.import_module(COMMANDS[command][0])
        return int(module.main(argv) or 0)
    except KeyboardInterrupt:
        return ctrl_c.finish()
    except Exception as e:
        if not _wrong_input(e):
            raise
        print(f"mmsa-ray {command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        ctrl_c.restore()


class _CtrlC:
    """Ctrl-C ends a command with one line, `mmsa-ray <command>: interrupted`, and exit status
    130 (128 + SIGINT, as shells expect). The line is printed at once; from then on the
    process prints nothing more (Ray's and Serve's messages while they shut down included)
    and a second Ctrl-C is ignored, so that it cannot end in a traceback. The commands'
    `finally` blocks run as the interrupt unwinds (Ray and Serve shut down, files are left
    complete or absent); `finish` shuts down whatever is still up."""

    def __init__(self, command: str):
        self.command = command
        self.said = False
        self.streams = (sys.stdout, sys.stderr)
        self.handler = None
        if threading.current_thread() is threading.main_thread():
            self.handler = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame):
        self._say()
        raise KeyboardInterrupt

    def _say(self) -> None:
        if self.said:
            return
        self.said = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"\nmmsa-ray {self.command}: interrupted", file=sys.stderr, flush=True)
        sys.stdout = sys.stderr = open(os.devnull, "w")  # Ray's worker lines are printed through these

    def finish(self) -> int:
        self._say()
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            try:
                if "ray.serve" in sys.modules:
                    sys.modules["ray.serve"].shutdown()
                ray.shutdown()
            except Exception:  # noqa: BLE001 - shutting down after an interrupt: nothing left to report
                pass
        return 130

    def restore(self) -> None:
        if self.said:
            devnull = sys.stdout
            sys.stdout, sys.stderr = self.streams
            devnull.close()
        if self.handler is not None:
            signal.signal(signal.SIGINT, self.handler)


def _wrong_input(e: Exception) -> bool:
    from mmsa_ray.media.types import MediaError

    return isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError,
                          ValueError, MediaError))


if __name__ == "__main__":
    sys.exit(main())
