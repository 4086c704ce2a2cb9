"""Plot the linearization reference run: held-out loss of each linearized model against the tokens
it used (attention transfer, then fine-tuning), beside the teacher's best held-out loss.

    python examples/models/plot_linearize.py   # reads and writes examples/models/linearize-logs/
"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOGS = Path(__file__).parent / "linearize-logs"


def main() -> None:
    teacher = json.loads((LOGS / "teacher_train_log.json").read_text())
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    tokens = [e["step"] * 64 * 256 / 1e6 for e in teacher["eval"]]
    left.plot(tokens, [e["val_loss"] for e in teacher["eval"]], color="black")
    left.set(title=f"teacher (llama-10m): best {teacher['best_val']:.4f}", xlabel="training tokens (M)", ylabel="held-out loss (nats/byte)")
    for path in sorted(LOGS.glob("lin-*_train_log.json")):
        name = path.name.removesuffix("_train_log.json")
        summary = json.loads((LOGS / f"{name}.json").read_text())
        log = json.loads(path.read_text())
        transfer = summary["tokens"] - log["steps_done"] * 64 * 256
        x = [transfer / 1e6] + [(transfer + e["step"] * 64 * 256) / 1e6 for e in log["eval"]]
        y = [summary["after_transfer_val_loss"]] + [e["val_loss"] for e in log["eval"]]
        right.plot(x, y, marker=".", label=f"{summary['into']} {summary['feature_map']} lr {name.split('-lr')[1]}: {summary['after_finetune_val_loss']:.4f}")
    right.axhline(teacher["best_val"], color="black", linestyle="--", label=f"teacher {teacher['best_val']:.4f}")
    right.set(title="linearized (10% of the teacher's tokens)", xlabel="tokens used (M): transfer, then fine-tuning",
              ylim=(teacher["best_val"] - 0.05, teacher["best_val"] + 0.25))
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(LOGS / "linearize.png", dpi=110)


if __name__ == "__main__":
    main()
