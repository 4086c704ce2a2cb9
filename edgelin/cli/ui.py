"""What the commands show: progress bars for the library's `on_progress`, the validation table, notes."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from edgelin.cli import console


@contextlib.contextmanager
def progress_bars() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress display, one bar per stage; yields on_progress(stage, done, total).

    A run that fails takes its bars away, so an error stays the one line the user sees.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bars:
        tasks: dict[str, Any] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total)
            bars.update(tasks[stage], completed=done, total=total)

        try:
            yield on_progress
        except BaseException:
            for task in tasks.values():
                bars.remove_task(task)
            raise


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def print_summary(result: dict[str, Any], package: Path, report: Optional[Path]) -> None:
    """One table: sizes, loss increase, KL, top-1 agreement, and where the report is."""
    from rich.table import Table

    if not result:
        console.print(f"wrote [bold]{package}[/] (not validated)")
        return
    t = Table(title=f"{package} ({result['precision'].get('scheme', 'fp32')})", show_header=True)
    t.add_column("")
    t.add_column("FP32 reference", justify="right")
    t.add_column("candidate", justify="right")
    t.add_row("size", _size(result["size_bytes_reference"]), f"{_size(result['size_bytes_candidate'])} "
              f"(x{result['size_ratio']:.2f})")
    t.add_row("loss (nats/token)", f"{result['loss_reference']:.4f}", f"{result['loss_candidate']:.4f}")
    t.add_row("loss increase", "", f"{result['loss_increase_pct']:+.3f}%")
    t.add_row("KL mean / p99", "", f"{result['kl_mean']:.2e} / {result['kl_p99']:.2e}")
    t.add_row("top-1 agreement", "", f"{100 * result['top1_agreement']:.2f}%")
    t.add_row("tokens compared", "", f"{result['streams']} x {result['horizon']}")
    t.add_row("report", "", str(report) if report else "-")
    console.print(t)


def note(message: str) -> None:
    """A yellow `note:` line (something the user may want to act on, not an error)."""
    console.print(f"[yellow]note:[/] {message}")


def print_fit(package: Path, profile: str, violations: dict[str, int]) -> None:
    """Whether `package` fits `profile`, from `check_package`'s violations counted by rule."""
    if violations:
        note(f"{package} still breaks {profile}'s rules ("
             + ", ".join(f"{n} {rule}" for rule, n in sorted(violations.items()))
             + f"); see `edgelin check {package} --target {profile}`")
    else:
        console.print(f"{package} fits {profile}")
