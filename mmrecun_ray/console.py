"""The driver's console: one live progress display per loop run, a one-line summary when
it ends, and log routing.

A quiet console (the default of the CLI): the project's own records go to
``mmrecun.log`` and reach the terminal from WARNING up; Ray's, Ray Data's, Ray Train's
and Ray Tune's driver-side records go to ``ray.log`` (the terminal sees their errors
only); worker processes' output stays in the Ray session's logs (Ray started with
``log_to_driver=False``), linked as ``ray-session``; Python warnings go to
``mmrecun.log``. The files are written in a temp folder while the command runs and end in
``<out>/logs/`` (:func:`finish`). ``verbose`` brings all of it back to the terminal (and
debug records of the project into the file).

Progress: the loop (rank 0) calls a *sink* once per evaluation with its metrics
(``epoch`` 0-based, ``epochs``, ``loss``, ``valid_recall@20``, ``best_valid_recall@20``,
``best_epoch``, ``forget_recall@20`` when forgetting; a start event has ``epoch`` -1). In
local mode the sink is the :class:`RunProgress` itself (the loop runs in this process); with
workers it is a :class:`QueueSink` over a Ray queue that a driver thread drains into the
display. On a terminal the display is a tqdm bar on stderr; elsewhere (a pipe, a job log)
a plain line at most every ``interval_s`` seconds. Either way :meth:`RunProgress.close`
prints one summary line per run on stdout.

This module imports nothing of the package (a leaf); Ray and tqdm are imported lazily.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

#: the project's logger (every module logs under it)
PROJECT_LOGGER = "mmrecun_ray"
#: Ray's driver-side loggers routed to ``ray.log``
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air")
#: the keys of a loop event the display and the summary use
EVENT_KEYS = ("job", "epoch", "epochs", "steps", "loss", "valid_recall@20", "best_valid_recall@20",
              "best_epoch", "forget_recall@20")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

Sink = Callable[[dict[str, Any]], None]


@dataclass
class _State:
    configured: bool = False
    verbose: bool = False
    log_dir: Path | None = None
    live: bool | None = None  # None: a live bar when stderr is a terminal
    interval_s: float = 30.0


_STATE = _State()


def configured() -> bool:
    """Whether :func:`configure` ran in this process (the CLI's runs show progress)."""
    return _STATE.configured


def verbose() -> bool:
    """Whether Ray's and the project's chatter is shown on the terminal."""
    return _STATE.verbose


def log_dir() -> Path | None:
    """Where this process's logs go (None before :func:`configure`)."""
    return _STATE.log_dir


class _QuietFilter(logging.Filter):
    """Passes a console handler's records when verbose, else only from ``level`` up."""

    def __init__(self, level: int) -> None:
        super().__init__("mmrecun-quiet")
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return _STATE.verbose or record.levelno >= self.level


class _TqdmHandler(logging.StreamHandler):
    """A console handler that writes through ``tqdm.write`` (no garbled progress bar)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _file_handler(path: Path, level: int) -> logging.FileHandler:
    h = logging.FileHandler(path, encoding="utf-8")
    h.setLevel(level)
    h.setFormatter(logging.Formatter(_FORMAT))
    h.set_name(f"mmrecun-file:{path.name}")
    return h


def _replace_handler(logger: logging.Logger, handler: logging.Handler) -> None:
    for h in list(logger.handlers):
        if h.get_name() == handler.get_name():
            logger.removeHandler(h)
            h.close()
    logger.addHandler(handler)


def configure(verbose: bool = False, live: bool | None = None, interval_s: float = 30.0) -> Path:
    """Route this process's logs (see the module docstring) into a fresh folder under the
    temp dir (:func:`finish` moves them next to the command's output: writing into an
    ``--out`` before the command runs would make it look occupied). Returns the folder."""
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="mmrecun-logs-"))
    _STATE.configured, _STATE.verbose, _STATE.log_dir = True, bool(verbose), d
    _STATE.live, _STATE.interval_s = live, float(interval_s)

    project = logging.getLogger(PROJECT_LOGGER)
    project.setLevel(logging.DEBUG if verbose else logging.INFO)
    _replace_handler(project, _file_handler(d / "mmrecun.log", logging.DEBUG if verbose else logging.INFO))
    tty = _TqdmHandler()
    tty.set_name("mmrecun-console")
    tty.setFormatter(logging.Formatter(_FORMAT if verbose else "%(levelname)s: %(message)s"))
    tty.setLevel(logging.DEBUG if verbose else logging.WARNING)
    tty.addFilter(lambda r: r.name != f"{PROJECT_LOGGER}.console")  # notes are printed already
    _replace_handler(project, tty)

    logging.captureWarnings(True)
    warn = logging.getLogger("py.warnings")
    warn.propagate = bool(verbose)
    _replace_handler(warn, _file_handler(d / "mmrecun.log", logging.WARNING))
    route_ray_logs()
    return d


def _our_handlers() -> list[tuple[logging.Logger, logging.Handler]]:
    out = []
    for name in (PROJECT_LOGGER, "py.warnings", *RAY_LOGGERS):
        lg = logging.getLogger(name)
        out += [(lg, h) for h in lg.handlers if (h.get_name() or "").startswith("mmrecun-file:")]
    return out


def finish(out_dir: str | Path | None) -> Path | None:
    """End the log routing of :func:`configure`: close the log files and, when
    ``out_dir`` is a local folder the command wrote something into, append them to
    ``out_dir/logs/`` (``ray-session`` re-pointed). Returns where the logs are now."""
    d = _STATE.log_dir
    if d is None:
        return None
    for lg, h in _our_handlers():
        lg.removeHandler(h)
        h.close()
    logging.captureWarnings(False)
    _STATE.log_dir = None
    target = Path(out_dir) / "logs" if out_dir is not None and "://" not in str(out_dir) else None
    if target is None or not target.parent.is_dir() or not any(
            c.name != "logs" for c in target.parent.iterdir()):
        return d
    target.mkdir(exist_ok=True)
    for f in sorted(d.iterdir()):
        dest = target / f.name
        if f.is_symlink():
            if dest.is_symlink() or dest.exists():
                dest.unlink()
            dest.symlink_to(os.readlink(f), target_is_directory=True)
            f.unlink()
        else:
            with open(dest, "ab") as w, open(f, "rb") as r:
                w.write(r.read())
            f.unlink()
    try:
        d.rmdir()
    except OSError:
        pass
    return target


def route_ray_logs() -> None:
    """Ray's driver-side loggers into ``ray.log``; their console handlers muted below
    ERROR unless verbose; Ray Data's progress bars only when verbose. Idempotent; call
    again after Ray or one of its libraries (re)configures its loggers."""
    if not _STATE.configured or _STATE.log_dir is None:
        return
    for name in RAY_LOGGERS:
        lg = logging.getLogger(name)
        if name == RAY_LOGGERS[0] or not lg.propagate:  # else its records reach "ray"'s file
            _replace_handler(lg, _file_handler(_STATE.log_dir / "ray.log", logging.INFO))
        else:
            for h in [h for h in lg.handlers if (h.get_name() or "").startswith("mmrecun-file:")]:
                lg.removeHandler(h)
        for h in lg.handlers:
            is_file = isinstance(h, logging.FileHandler) or "File" in type(h).__name__
            if not is_file and not any(isinstance(f, _QuietFilter) for f in h.filters):
                h.addFilter(_QuietFilter(logging.ERROR))
    if "ray.data" in sys.modules:
        ctx = sys.modules["ray.data"].DataContext.get_current()
        ctx.enable_progress_bars = _STATE.verbose
        ctx.execution_options.verbose_progress = _STATE.verbose


def ray_init_options() -> dict[str, Any]:
    """``ray.init`` keyword arguments of the console: worker output reaches the driver
    only when verbose (else it stays in the Ray session's log folder)."""
    return {"log_to_driver": _STATE.verbose or not _STATE.configured}


def link_ray_session() -> Path | None:
    """``<log dir>/ray-session`` -> the Ray session's log folder (worker output, Ray
    Data's and Ray Train's own files), when Ray runs on this node; returns the link."""
    if _STATE.log_dir is None:
        return None
    try:
        import ray
        session = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    except Exception:  # noqa: BLE001 - not on a node of ours (a client, a remote cluster)
        return None
    link = _STATE.log_dir / "ray-session"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(session, target_is_directory=True)
    return link


def note(message: str) -> None:
    """A line for the user on stdout (never through a live bar), also in the log file."""
    from tqdm import tqdm
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()
    logging.getLogger(f"{PROJECT_LOGGER}.console").info("%s", message)


def on_driver() -> bool:
    """True in the process that runs the CLI (not a Ray task or actor, e.g. a Tune trial)."""
    import ray
    return not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _duration(s: float) -> str:
    s = max(0.0, float(s))
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


class RunProgress:
    """The live display of one loop run on the driver, and the sink of its events.

    Args:
        label: what runs (``train-lightgcn``, ``unlearn-gold-s1``, ...).
        epochs: the run's epoch cap (the ETA is an upper bound: early stopping may end
            the run sooner).
        mode: how it runs (``local``, ``2 workers``).
        stream: where the live display goes (default stderr); the summary goes to stdout.
        live: a tqdm bar (True) or plain lines at most every ``interval_s`` (False);
            default: a bar when ``stream`` is a terminal.
    """

    def __init__(self, label: str, epochs: int, mode: str, stream: TextIO | None = None,
                 live: bool | None = None, interval_s: float | None = None) -> None:
        self.label, self.epochs, self.mode = label, int(epochs), mode
        self.stream = stream or sys.stderr
        live = _STATE.live if live is None else live
        self.live = self.stream.isatty() if live is None else bool(live)
        self.interval_s = _STATE.interval_s if interval_s is None else float(interval_s)
        self.t0 = time.perf_counter()
        self.last: dict[str, Any] = {}
        self.start: dict[str, Any] = {}
        self._printed = self.t0
        self._lock = threading.Lock()
        self._bar = None
        if self.live:
            from tqdm import tqdm
            self._bar = tqdm(total=self.epochs, desc=f"{label} [{mode}]", unit="ep", file=self.stream,
                             leave=False, dynamic_ncols=True,
                             bar_format="{desc} {n_fmt}/{total_fmt} ep |{bar:16}| {postfix} "
                                        "[{elapsed}<{remaining}]")

    def __call__(self, event: dict[str, Any]) -> None:
        """One evaluation's metrics from the loop (``epoch`` -1: the starting model)."""
        e = {k: event[k] for k in EVENT_KEYS if k in event}
        with self._lock:
            if int(e.get("epoch", -1)) < 0:
                self.start = e
                return
            self.last = e
            line = self._postfix(e)
            if self._bar is not None:
                self._bar.n = int(e["epoch"]) + 1
                self._bar.set_postfix_str(line, refresh=True)
            elif time.perf_counter() - self._printed >= self.interval_s:
                self._printed = time.perf_counter()
                print(f"  {self.label} [{self.mode}] epoch {int(e['epoch']) + 1}/{self.epochs}: {line} "
                      f"({_duration(self._printed - self.t0)}, ETA <= {_duration(self._eta(e))})",
                      file=self.stream, flush=True)

    def _eta(self, e: dict[str, Any]) -> float:
        done = int(e.get("epoch", -1)) + 1
        return (time.perf_counter() - self.t0) / max(done, 1) * max(self.epochs - done, 0)

    @staticmethod
    def _postfix(e: dict[str, Any]) -> str:
        parts = [f"loss {_fmt(e.get('loss'))}", f"valid R@20 {_fmt(e.get('valid_recall@20'))}"]
        if "forget_recall@20" in e:
            parts.append(f"forget R@20 {_fmt(e.get('forget_recall@20'))}")
        best_epoch = e.get("best_epoch")
        at = "" if best_epoch is None else (" @start" if best_epoch < 0 else f" @{int(best_epoch) + 1}")
        parts.append(f"best {_fmt(e.get('best_valid_recall@20'))}{at}")
        return ", ".join(parts)

    def summary(self, epochs_run: int | None = None, wall_seconds: float | None = None) -> str:
        """The run's one line: epochs run of the cap, last metrics, kept score, wall time."""
        e = self.last or self.start
        run = epochs_run if epochs_run is not None else int(e.get("epoch", -1)) + 1
        why = "" if run >= self.epochs else (" (no step needed)" if run == 0 else " (stopped early)")
        wall = time.perf_counter() - self.t0 if wall_seconds is None else wall_seconds
        body = self._postfix(e) if e else "no evaluation"
        return f"{self.label} [{self.mode}]: {run}/{self.epochs} epochs{why}, {body}, {_duration(wall)}"

    def close(self, epochs_run: int | None = None, wall_seconds: float | None = None,
              failed: bool = False) -> None:
        """End the display; print the summary line (unless the run failed: the error is
        the CLI's one line)."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        if not failed:
            note(self.summary(epochs_run, wall_seconds))


class RunsProgress:
    """The displays of the runs of one Ray Train run (one, or :func:`run_loops`' several,
    one after the other): events carry their run's index as ``job`` (none: the first);
    a run's display opens at its first event and closes, with its summary line, when the
    next run's first event arrives or at :meth:`close`."""

    def __init__(self, labels: list[str], epochs: list[int], mode: str, **display: Any) -> None:
        self.labels, self.epochs, self.mode, self.display = labels, epochs, mode, display
        self.runs: dict[int, RunProgress] = {}
        self.closed: set[int] = set()
        self._lock = threading.Lock()

    def _run(self, i: int) -> RunProgress:
        with self._lock:
            if i not in self.runs:
                for j, r in self.runs.items():
                    if j < i and j not in self.closed:
                        self.closed.add(j)
                        r.close()
                self.runs[i] = RunProgress(self.labels[i], self.epochs[i], self.mode, **self.display)
            return self.runs[i]

    def __call__(self, event: dict[str, Any]) -> None:
        self._run(int(event.get("job") or 0))(event)

    def close(self, results: list[tuple[int, float]] | None = None, failed: bool = False) -> None:
        """End every display still open; ``results``: ``(epochs run, wall seconds)`` per
        run, for the summary lines (a run that sent no event gets its line too)."""
        if failed:
            for r in self.runs.values():
                r.close(failed=True)
            return
        for i, (epochs_run, wall) in enumerate(results or []):
            if i in self.closed:
                continue
            self._run(i).close(epochs_run, wall)
            self.closed.add(i)


class QueueSink:
    """A picklable sink for Ray Train workers: puts the event's display keys on a Ray
    queue the driver drains (:func:`drain_into`)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def __call__(self, event: dict[str, Any]) -> None:
        item = {k: event[k] for k in EVENT_KEYS if k in event}
        try:
            self.queue.put_nowait(item)
        except Exception:  # noqa: BLE001 - a display must never fail a run
            pass


_QUEUE: Any = None


def progress_queue() -> Any:
    """This driver's Ray queue for progress events (one actor, created once, reused by
    every run; it takes no CPU)."""
    global _QUEUE
    if _QUEUE is None:
        from ray.util.queue import Queue
        _QUEUE = Queue(actor_options={"num_cpus": 0})
    return _QUEUE


def forget_queue() -> None:
    """Drop the queue handle (call when Ray shuts down: its actor dies with it)."""
    global _QUEUE
    _QUEUE = None


class drain_into:
    """Context manager: a driver thread moves the queue's events into ``sink`` while the
    block runs (a Ray Train ``fit()``), then drains what is left."""

    def __init__(self, queue: Any, sink: Sink, poll_s: float = 0.5) -> None:
        self.queue, self.sink, self.poll_s = queue, sink, poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmrecun-progress", daemon=True)

    def _take(self, block: bool) -> None:
        from ray.util.queue import Empty
        try:
            items = [self.queue.get(block=True, timeout=self.poll_s)] if block else \
                self.queue.get_nowait_batch(self.queue.qsize())
        except Empty:
            return
        for item in items:
            self.sink(item)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._take(block=True)
            except Exception:  # noqa: BLE001 - Ray going away mid-poll: stop displaying
                return

    def __enter__(self) -> "drain_into":
        try:  # events a failed earlier run left behind are not this run's
            self.queue.get_nowait_batch(self.queue.qsize())
        except Exception:  # noqa: BLE001
            pass
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5 * self.poll_s)
        try:
            self._take(block=False)
        except Exception:  # noqa: BLE001
            pass
