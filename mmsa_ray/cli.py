"""`mmsa-ray <command> ...`: one subcommand per job, each the `main(argv)` of its module.

The same modules back `python jobs/<name>.py` for `ray job submit`, so the CLI and the
cluster entrypoints take the same flags. Modules are imported only when their command
runs: `mmsa-ray --help` stays fast and needs neither torch nor Ray.
"""

from __future__ import annotations

import importlib
import signal
import sys

# command -> (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "make-sample-data": ("mmsa_ray.sample_data", "write a small synthetic dataset in MELD layout"),
    "demo": ("mmsa_ray.demo", "sample data -> train -> label, on local Ray with offline models"),
    "featurize": ("mmsa_ray.featurize", "cache frozen-encoder features of clips as Parquet (Ray Data)"),
    "train": ("mmsa_ray.train", "train the model data-parallel (Ray Train)"),
    "evaluate": ("mmsa_ray.evaluate", "metrics, confusion matrices and a report for a checkpoint"),
    "label": ("mmsa_ray.label", "label a video archive into Parquet (Ray Data)"),
    "serve": ("mmsa_ray.serve", "serve the model over HTTP (Ray Serve)"),
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
    try:
        module = importlib.import_module(COMMANDS[command][0])
        return int(module.main(argv) or 0)
    except KeyboardInterrupt:
        return _interrupted(command)
    except Exception as e:
        if not _wrong_input(e):
            raise
        print(f"mmsa-ray {command}: error: {e}", file=sys.stderr)
        return 2


def _interrupted(command: str) -> int:
    """Ctrl-C: one line, Ray (and Serve) shut down, exit status 130 (128 + SIGINT) as shells
    expect. A second Ctrl-C while shutting down is ignored, so it cannot end in a traceback.
    The commands' own `finally` blocks have already run: files are left complete or absent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"\nmmsa-ray {command}: interrupted", file=sys.stderr, flush=True)
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            if "ray.serve" in sys.modules:
                sys.modules["ray.serve"].shutdown()
            ray.shutdown()
        except Exception:  # noqa: BLE001 - shutting down after an interrupt: nothing left to report
            pass
    return 130


def _wrong_input(e: Exception) -> bool:
    from mmsa_ray.media import MediaError

    return isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError,
                          ValueError, MediaError))


if __name__ == "__main__":
    sys.exit(main())
